/** Helpers for the batch tests: reading JSONL outputs, comparing records, the bundled samples' true captions. */
import * as fs from 'fs';
import * as path from 'path';
import type { BatchRecord } from '../../lib/batch';

export const ROOT = path.resolve(__dirname, '..', '..');
export const CLI = path.join(ROOT, 'dist', 'lib', 'cli.js');
/** The bundled samples that have a true caption (samples/scenes.json). */
export const SCENES = ['scene1.png', 'scene2.png', 'scene3.png'].map((f) => path.join(ROOT, 'samples', f));
/** A bundled sample without one (a plain drawing of shapes). */
export const SHAPES = path.join(ROOT, 'samples', 'shapes.png');

/** The ground-truth caption of a bundled sample (samples/scenes.json, written by training/make_samples.py). */
export function trueCaption(image: string): string {
  const j = JSON.parse(fs.readFileSync(path.join(ROOT, 'samples', 'scenes.json'), 'utf8')) as { scenes: { image: string; caption: string }[] };
  const s = j.scenes.find((x) => x.image === path.basename(image));
  if (!s) throw new Error(`no ${image} in samples/scenes.json`);
  return s.caption;
}

/** Every line of a JSONL output, parsed; fails the test on a line that is not JSON or not newline-terminated. */
export function readRecords(file: string): BatchRecord[] {
  const text = fs.readFileSync(file, 'utf8');
  if (text.length > 0) expect(text.endsWith('\n')).toBe(true);
  return text
    .split('\n')
    .filter((l) => l.length > 0)
    .map((l) => JSON.parse(l) as BatchRecord);
}

/** A record without the fields that differ between runs (timings, the worker that made it). */
export function comparable(r: BatchRecord): Omit<BatchRecord, 'timings' | 'worker'> {
  const { timings: _t, worker: _w, ...rest } = r;
  return rest;
}

/** Records by id; fails on a duplicated id. */
export function byId(records: BatchRecord[]): Map<string, BatchRecord> {
  const m = new Map<string, BatchRecord>();
  for (const r of records) {
    if (m.has(r.id)) throw new Error(`id ${r.id} appears twice`);
    m.set(r.id, r);
  }
  return m;
}

/** Writes a manifest (one item per line). */
export function writeManifest(file: string, items: object[]): void {
  fs.writeFileSync(file, items.map((i) => JSON.stringify(i)).join('\n') + '\n');
}

/** A small deterministic PRNG (mulberry32) so that "random" kill points can be replayed from the seed. */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
