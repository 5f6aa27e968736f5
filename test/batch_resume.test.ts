/**
 * `plm batch` survives kill -9: 200 items of the bundled samples, killed at random points three times and
 * started again with the same output, give the same records as an uninterrupted run (temperature 0, timings
 * aside), each id once. The kill points come from a seeded PRNG (PLM_BATCH_KILL_SEED replays a run).
 */
import { ChildProcess, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { byId, CLI, comparable, prng, readRecords, ROOT, SCENES, SHAPES, trueCaption, writeManifest } from './helpers/batch_records';

const N = 200;
const PROMPTS = ['Describe the image.', 'How many objects are there?', 'What color is the star?', 'Where is the white cross?', 'What shape is the red object?'];

let scratch: string;
const children: ChildProcess[] = [];
beforeAll(() => {
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-batch-resume-'));
  if (!fs.existsSync(CLI)) spawnSync('npm', ['run', 'build:ts'], { cwd: ROOT, stdio: 'inherit' });
});
afterAll(() => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  fs.rmSync(scratch, { recursive: true, force: true });
});

function lineCount(file: string): number {
  if (!fs.existsSync(file)) return 0;
  const b = fs.readFileSync(file);
  let n = 0;
  for (const c of b) if (c === 0x0a) n++;
  return n;
}

function start(args: string[]): { child: ChildProcess; done: Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }> } {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: scratch, stdio: ['ignore', 'ignore', 'pipe'] });
  children.push(child);
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, stderr })),
  );
  return { child, done };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test(`${N} items killed at random points three times and resumed equal an uninterrupted run, record for record`, async () => {
  const images = [...SCENES, SHAPES];
  const items = Array.from({ length: N }, (_, i) => ({
    id: `item-${String(i).padStart(3, '0')}`,
    image: images[i % images.length],
    prompt: PROMPTS[Math.floor(i / images.length) % PROMPTS.length],
    ...(i % 7 === 3 ? { maxTokens: 5 } : {}),
  }));
  writeManifest(path.join(scratch, 'items.jsonl'), items);
  // --model given: without it every run prints the one-line toy-model notice, and this checks that -q is silent.
  const args = (out: string): string[] => ['batch', 'items.jsonl', '-o', out, '--model', path.join(ROOT, 'models', 'plm-tiny'), '--temperature', '0', '--max-tokens', '48', '-q'];

  const ref = await start(args('reference.jsonl')).done;
  expect(ref.stderr).toBe('');
  expect(ref.code).toBe(0);

  const seed = Number(process.env.PLM_BATCH_KILL_SEED ?? Date.now() % 1_000_000);
  const rand = prng(seed);
  const out = path.join(scratch, 'resumed.jsonl');
  const kills: string[] = [];
  for (let k = 0; k < 3; k++) {
    const before = lineCount(out);
    const target = before + 5 + Math.floor(rand() * 40); // kill after 5-44 more records ...
    const extraMs = Math.floor(rand() * 80); // ... and 0-79 ms, so the kill lands anywhere in an item
    const run = start(args('resumed.jsonl'));
    while (lineCount(out) < target && run.child.exitCode === null) await sleep(5);
    await sleep(extraMs);
    run.child.kill('SIGKILL');
    const r = await run.done;
    kills.push(`${before}->${lineCount(out)} (+${extraMs} ms)`);
    expect({ seed, kill: k, signal: r.signal }).toEqual({ seed, kill: k, signal: 'SIGKILL' });
    if (k === 2) fs.appendFileSync(out, '{"id":"item-199","text":"a write cut short by a cr'); // as if the kill had hit mid-write
  }
  expect(lineCount(out)).toBeLessThan(N);
  const last = await start(args('resumed.jsonl').filter((a) => a !== '-q')).done;
  expect(last.code).toBe(0);
  expect(last.stderr).toMatch(/cut a torn last line \(\d+ bytes\)/);

  const want = byId(readRecords(path.join(scratch, 'reference.jsonl')));
  const got = byId(readRecords(out)); // throws on a duplicated id
  expect(want.size).toBe(N);
  expect([...got.keys()].sort()).toEqual([...want.keys()].sort());
  for (const [id, r] of want) expect({ seed, kills, record: comparable(got.get(id) as never) }).toEqual({ seed, kills, record: comparable(r) });
  // The reference itself is right where the bundled model knows the answer.
  for (const r of want.values()) {
    expect(r.error).toBeUndefined();
    if (r.prompt === 'Describe the image.' && r.image !== SHAPES && r.params.maxTokens === 48) expect(r.text).toBe(trueCaption(r.image as string));
  }
  const capped = [...want.values()].filter((r) => r.params.maxTokens === 5);
  expect(capped.length).toBe(Math.ceil((N - 3) / 7));
  expect(capped.every((r) => (r.completionTokens as number) <= 5)).toBe(true);
  expect(capped.some((r) => r.finishReason === 'length')).toBe(true);
}, 600_000); // ~30 s on an idle 2-core machine; generous for a loaded one
