/**
 * Batch runs on one machine: listing items (folders, globs, manifests), the resumable output (torn last
 * line, lock), the batch() API with the bundled model (typed error records for bad items, results that do
 * not depend on concurrency, abort and resume) and the `plm batch` CLI's progress lines and --json summary.
 */
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { batch, BatchOutput, BatchRecord, defaultModelDir, listItems, loadModel, PerceptionLM, PlmError, readManifest } from '../lib';
import { globToRegExp } from '../lib/batch';
import { byId, CLI, comparable, readRecords, ROOT, SCENES, SHAPES, trueCaption, writeManifest } from './helpers/batch_records';

let scratch: string;
let model: PerceptionLM;

beforeAll(async () => {
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-batch-'));
  if (!fs.existsSync(CLI)) spawnSync('npm', ['run', 'build:ts'], { cwd: ROOT, stdio: 'inherit' });
  model = await loadModel(defaultModelDir(), { backend: 'cpu' });
});
afterAll(() => {
  model?.dispose();
  fs.rmSync(scratch, { recursive: true, force: true });
});

async function codeOf(p: Promise<unknown>): Promise<{ code: string; message: string }> {
  const e = await p.then(
    () => undefined,
    (x: unknown) => x,
  );
  expect(e).toBeInstanceOf(PlmError);
  return { code: (e as PlmError).code, message: (e as PlmError).message };
}

async function collectAll(it: AsyncIterable<BatchRecord>): Promise<BatchRecord[]> {
  const out: BatchRecord[] = [];
  for await (const r of it) out.push(r);
  return out;
}

describe('items', () => {
  let dir: string;
  beforeAll(() => {
    dir = path.join(scratch, 'tree');
    fs.mkdirSync(path.join(dir, 'a', 'b'), { recursive: true });
    fs.mkdirSync(path.join(dir, 'x'), { recursive: true });
    for (const f of ['a/1.png', 'a/b/2.jpg', 'a/b/3.JPEG', 'a/b/clip.mp4', 'x/4.png']) fs.writeFileSync(path.join(dir, f), 'not really an image');
    fs.writeFileSync(path.join(dir, 'a', 'b', 'notes.txt'), 'skipped: not media');
  });

  test('a folder: its media files, recursively and sorted, ids relative to it; videos recognised', async () => {
    const items = await listItems(['a'], { cwd: dir });
    expect(items.map((i) => i.id)).toEqual(['1.png', 'b/2.jpg', 'b/3.JPEG', 'b/clip.mp4']);
    expect(items[0]).toEqual({ id: '1.png', image: path.join(dir, 'a', '1.png') });
    expect(items[3]).toEqual({ id: 'b/clip.mp4', video: path.join(dir, 'a', 'b', 'clip.mp4') });
    expect((await listItems(['a'], { cwd: dir, extensions: ['.jpg', '.jpeg'] })).map((i) => i.id)).toEqual(['b/2.jpg', 'b/3.JPEG']);
  });

  test('globs: ids relative to the literal folder; **, {a,b}, ?, [..]', async () => {
    expect((await listItems(['a/**/*.jpg'], { cwd: dir })).map((i) => i.id)).toEqual(['b/2.jpg']);
    expect((await listItems(['{a,x}/*.png'], { cwd: dir })).map((i) => i.id)).toEqual(['a/1.png', 'x/4.png']);
    expect((await listItems([`${dir}/a/*`], { cwd: '/' })).map((i) => i.id)).toEqual(['1.png']);
    const re = globToRegExp('**/[0-9]?.{jpg,png}');
    expect(['12.png', 'q/w/34.jpg'].every((s) => re.test(s))).toBe(true);
    expect(['1.png', 'a2.png', '12.gif', 'q/w/34.jpgx'].some((s) => re.test(s))).toBe(false);
    expect(globToRegExp('a/[!b]*').test('a/cat')).toBe(true);
    expect(globToRegExp('a/[!b]*').test('a/bat')).toBe(false);
  });

  test('a manifest: paths relative to its folder, prompt / maxTokens / meta kept', async () => {
    const m = path.join(dir, 'm.jsonl');
    fs.writeFileSync(m, '{"id": "one", "image": "a/1.png", "prompt": "How many?", "maxTokens": 8, "meta": {"k": [1]}}\n\n{"id": 7, "video": "/abs/v.mp4"}\n');
    expect(await readManifest(m)).toEqual([
      { id: 'one', image: path.join(dir, 'a', '1.png'), prompt: 'How many?', maxTokens: 8, meta: { k: [1] } },
      { id: '7', video: '/abs/v.mp4' },
    ]);
  });

  test('bad inputs stop before any work with a typed error naming the place', async () => {
    const m = path.join(dir, 'bad.jsonl');
    fs.writeFileSync(m, '{"id": "ok", "image": "a.png"}\n{"id": "broken", "image": \n');
    expect(await codeOf(listItems([m]))).toEqual({ code: 'ERR_CORRUPT_FILE', message: expect.stringMatching(/bad\.jsonl:2 is not JSON/) as unknown as string });
    fs.writeFileSync(m, '{"id": "both", "image": "a.png", "video": "b.mp4"}\n');
    expect((await codeOf(listItems([m]))).message).toMatch(/bad\.jsonl:1: item "both" needs exactly one of "image" and "video"/);
    fs.writeFileSync(m, '{"image": "a.png"}\n');
    expect((await codeOf(listItems([m]))).code).toBe('ERR_INVALID_ARGUMENT');
    fs.writeFileSync(m, '{"id": "n", "image": "a.png", "maxTokens": 0}\n');
    expect((await codeOf(listItems([m]))).message).toMatch(/maxTokens/);
    expect((await codeOf(listItems(['nope/'], { cwd: dir }))).code).toBe('ERR_FILE_NOT_FOUND');
    expect((await codeOf(listItems(['nope/*.png'], { cwd: dir }))).code).toBe('ERR_FILE_NOT_FOUND');
    const dup = await codeOf(listItems(['a/*.png', 'a'], { cwd: dir }));
    expect(dup.code).toBe('ERR_INVALID_ARGUMENT');
    expect(dup.message).toMatch(/the id "1\.png" comes from both a\/\*\.png and a/);
  });
});

describe('output file', () => {
  test('a torn last line is cut off, bad lines are counted, ids are read', async () => {
    const f = path.join(scratch, 'torn.jsonl');
    fs.writeFileSync(f, '{"id":"a","text":"x"}\n{"id":"b","error":{"code":"ERR_IMAGE_DECODE","message":"m"}}\nnot json\n{"id":"c","te');
    const out = await BatchOutput.open(f);
    expect([...out.scan.done].sort()).toEqual(['a', 'b']);
    expect([...out.scan.failed]).toEqual(['b']);
    expect(out.scan.truncatedBytes).toBe('{"id":"c","te'.length);
    expect(out.scan.badLines).toBe(1);
    out.append({ id: 'c', image: '/i.png', prompt: 'p', text: 'line\nbreak', params: {} });
    out.close();
    const lines = fs.readFileSync(f, 'utf8').split('\n');
    expect(lines).toHaveLength(5);
    expect(JSON.parse(lines[3])).toEqual({ id: 'c', image: '/i.png', prompt: 'p', text: 'line\nbreak', params: {} });
    expect(fs.existsSync(`${f}.lock`)).toBe(false);
  });

  test('the lock keeps a second writer out while its holder lives, and is taken over after it died', async () => {
    const f = path.join(scratch, 'locked.jsonl');
    const first = await BatchOutput.open(f);
    const e = await codeOf(BatchOutput.open(f));
    expect(e.code).toBe('ERR_INVALID_ARGUMENT');
    expect(e.message).toMatch(new RegExp(`another plm batch \\(pid ${process.pid} on `));
    first.close();
    const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], { encoding: 'utf8' });
    fs.writeFileSync(`${f}.lock`, JSON.stringify({ pid: Number(dead.stdout), host: os.hostname() }));
    const second = await BatchOutput.open(f);
    second.close();
  });
});

describe('batch() with the bundled model', () => {
  test('bad items become typed error records and every other item is done', async () => {
    const dir = path.join(scratch, 'bad-items');
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'corrupt.png'), Buffer.from(Array.from({ length: 4096 }, (_, i) => (i * 7919) & 255)));
    fs.writeFileSync(path.join(dir, 'truncated.png'), fs.readFileSync(SCENES[0]).subarray(0, 300));
    fs.writeFileSync(path.join(dir, 'text.jpg'), 'hello, I am not a JPEG');
    const manifest = path.join(dir, 'items.jsonl');
    writeManifest(manifest, [
      { id: 'good-1', image: SCENES[0] },
      { id: 'missing', image: 'does-not-exist.png' },
      { id: 'good-2', image: SCENES[1] },
      { id: 'corrupt', image: 'corrupt.png' },
      { id: 'truncated', image: 'truncated.png' },
      { id: 'text', image: 'text.jpg' },
      { id: 'too-long', image: SCENES[2], prompt: 'Describe every detail. '.repeat(3000) },
      { id: 'missing-video', video: 'nope.mp4' },
      { id: 'good-3', image: SCENES[2] },
      { id: 'shapes', image: SHAPES },
    ]);
    const out = path.join(dir, 'out.jsonl');
    const yielded = await collectAll(batch(model, await readManifest(manifest), { output: out, temperature: 0, concurrency: 3 }));
    const recs = byId(readRecords(out));
    expect(new Set(yielded.map((r) => r.id))).toEqual(new Set(recs.keys()));
    expect(recs.size).toBe(10);
    expect(recs.get('shapes')?.text).toMatch(/^Four objects: /);
    const codes = Object.fromEntries([...recs.values()].filter((r) => r.error).map((r) => [r.id, r.error?.code]));
    expect(codes).toEqual({
      missing: 'ERR_FILE_NOT_FOUND',
      corrupt: 'ERR_IMAGE_DECODE',
      truncated: 'ERR_IMAGE_DECODE',
      text: 'ERR_IMAGE_DECODE',
      'too-long': 'ERR_CONTEXT_OVERFLOW',
      'missing-video': 'ERR_FILE_NOT_FOUND',
    });
    expect(recs.get('missing')?.error?.message).toMatch(/does-not-exist\.png/);
    expect(recs.get('too-long')?.error?.message).toMatch(/context/);
    for (const [id, i] of [['good-1', 0], ['good-2', 1], ['good-3', 2]] as const) {
      const r = recs.get(id) as BatchRecord;
      expect(r.text).toBe(trueCaption(SCENES[i]));
      expect(r.finishReason).toBe('stop');
      expect(r.promptTokens).toBeGreaterThan(50);
      expect(r.completionTokens).toBeGreaterThan(5);
      expect(r.numTiles).toBeGreaterThanOrEqual(1);
      expect(r.model).toEqual({ name: 'plm-tiny', path: defaultModelDir(), backend: 'cpu', dtype: 'bfloat16', quantization: 'none' });
      expect(r.params).toEqual({ temperature: 0 });
      expect(r.timings?.totalMs).toBeGreaterThan(0);
    }
  });

  test('at temperature 0 the records do not depend on concurrency or prefetch', async () => {
    const prompts = ['Describe the image.', 'How many objects are there?', 'What shape is the red object?'];
    const items = [...SCENES, SHAPES].flatMap((img, i) => prompts.map((p, j) => ({ id: `${i}-${j}`, image: img, prompt: p, ...(j === 2 ? { maxTokens: 4 } : {}) })));
    const one = await collectAll(batch(model, items, { temperature: 0, concurrency: 1, prefetch: 0 }));
    const many = await collectAll(batch(model, items, { temperature: 0, concurrency: 4, prefetch: 3 }));
    expect(one.map((r) => r.id)).toEqual(items.map((i) => i.id)); // one at a time: input order
    const a = byId(one);
    const b = byId(many);
    expect([...b.keys()].sort()).toEqual([...a.keys()].sort());
    for (const [id, r] of a) expect(comparable(b.get(id) as BatchRecord)).toEqual(comparable(r));
    expect(a.get('0-0')?.text).toBe(trueCaption(SCENES[0]));
    expect(a.get('0-2')?.finishReason).toBe('length');
    expect(a.get('0-2')?.completionTokens).toBe(4);
  });

  test('an abort cancels the running items (no record for them), and the same output resumes', async () => {
    const items = Array.from({ length: 12 }, (_, i) => ({ id: `r${i}`, image: SCENES[i % 3] }));
    const out = path.join(scratch, 'abort.jsonl');
    const ac = new AbortController();
    const seen: string[] = [];
    const e = await codeOf(
      (async () => {
        for await (const r of batch(model, items, { output: out, temperature: 0, signal: ac.signal, concurrency: 2 })) {
          seen.push(r.id);
          if (seen.length === 3) ac.abort();
        }
      })(),
    );
    expect(e.code).toBe('ERR_CANCELLED');
    const first = readRecords(out);
    expect(first.length).toBeGreaterThanOrEqual(3);
    expect(first.length).toBeLessThan(12);
    expect(first.every((r) => !r.error && r.text === trueCaption(r.image as string))).toBe(true);
    const progress: number[] = [];
    const rest = await collectAll(batch(model, items, { output: out, temperature: 0, onProgress: (p) => progress.push(p.skipped) }));
    expect(rest.length).toBe(12 - first.length);
    expect(progress[progress.length - 1]).toBe(first.length);
    const all = byId(readRecords(out));
    expect(all.size).toBe(12);
    for (const r of all.values()) expect(r.text).toBe(trueCaption(r.image as string));
    // Breaking out of the loop stops the run too, and what finished is kept.
    const out2 = path.join(scratch, 'break.jsonl');
    for await (const r of batch(model, items, { output: out2, temperature: 0 })) {
      expect(r.error).toBeUndefined();
      break;
    }
    const kept = readRecords(out2);
    expect(kept.length).toBeGreaterThanOrEqual(1);
    expect(fs.existsSync(`${out2}.lock`)).toBe(false);
  });

  test('duplicate ids and a model without what a batch needs are refused', async () => {
    expect((await codeOf(collectAll(batch(model, [SCENES[0], SCENES[0]])))).message).toMatch(/appears twice/);
    expect((await codeOf(collectAll(batch(model, [SCENES[0]], { concurrency: 0 })))).code).toBe('ERR_INVALID_ARGUMENT');
    expect((await codeOf(collectAll(batch(model, [{ id: 'x' } as never])))).message).toMatch(/item 0: item "x" needs exactly one of/);
  });
});

describe('plm batch', () => {
  function plm(args: string[], cwd: string): Promise<{ code: number | null; stdout: string; stderr: string }> {
    return new Promise((resolve) => {
      const child = spawn(process.execPath, [CLI, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('close', (code) => resolve({ code, stdout, stderr }));
    });
  }

  test('a folder: plain progress lines when stderr is not a terminal, a --json summary, and a second run skips everything', async () => {
    const dir = path.join(scratch, 'cli');
    fs.mkdirSync(path.join(dir, 'imgs', 'more'), { recursive: true });
    [...SCENES, SHAPES].forEach((s, i) => fs.copyFileSync(s, path.join(dir, 'imgs', i % 2 ? 'more' : '', path.basename(s))));
    const r = await plm(['batch', 'imgs', '-o', 'out/captions.jsonl', '--json', '--progress-interval', '0', '--temperature', '0'], dir);
    expect(r.stderr).toMatch(/plm: batch 1\/4, [\d,.]+\/h/);
    expect(r.stderr).toMatch(/plm: batch 4\/4, [\d,.]+\/h/);
    expect(r.code).toBe(0);
    const summary = JSON.parse(r.stdout) as Record<string, unknown>;
    expect(summary).toMatchObject({ output: path.join(dir, 'out', 'captions.jsonl'), total: 4, done: 4, failed: 0, skipped: 0 });
    expect(summary.itemsPerHour).toBeGreaterThan(0);
    const recs = readRecords(path.join(dir, 'out', 'captions.jsonl'));
    expect(recs.map((x) => x.id).sort()).toEqual(['more/scene2.png', 'more/shapes.png', 'scene1.png', 'scene3.png']);
    for (const x of recs) if (!x.id.endsWith('shapes.png')) expect(x.text).toBe(trueCaption(x.image as string));
    const again = await plm(['batch', 'imgs', '-o', 'out/captions.jsonl', '--json', '-q'], dir);
    expect(again.code).toBe(0);
    expect(JSON.parse(again.stdout)).toMatchObject({ total: 4, done: 0, skipped: 4 });
    expect(readRecords(path.join(dir, 'out', 'captions.jsonl'))).toHaveLength(4);
    const noOut = await plm(['batch', 'imgs'], dir);
    expect(noOut.code).toBe(2); // an argument error
    expect(noOut.stderr).toMatch(/plm: ERR_INVALID_ARGUMENT: give the output file with -o/);
  });
});
