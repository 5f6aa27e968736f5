/**
 * The real built CLI (`node dist/lib/cli.js`) as a child process. dist/ comes from `npm ci`
 * (prepare = tsc) or `npm run build:ts`; it is built here when missing.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const root = path.resolve(__dirname, '..');
const cli = path.join(root, 'dist', 'lib', 'cli.js');

beforeAll(() => {
  if (!fs.existsSync(cli)) execFileSync('npm', ['run', 'build:ts'], { cwd: root, stdio: 'inherit' });
});

test("the bin runs as the README's main command runs it (an executable file with a node shebang)", () => {
  // npx plm resolves the package's own bin and executes dist/lib/cli.js directly, so it must be executable.
  expect(fs.readFileSync(cli, 'utf8').startsWith('#!/usr/bin/env node')).toBe(true);
  expect(fs.statSync(cli).mode & 0o111).not.toBe(0);
  const r = spawnSync(cli, ['describe', 'samples/scene2.png'], { cwd: root, encoding: 'utf8', timeout: 60000 });
  expect(r.status).toBe(0);
  expect(r.stdout.trim()).toBe(sampleCaption('scene2.png'));
  expect(r.stderr).not.toMatch(/random weights/);
});

/** The ground-truth caption of a bundled sample, written by training/make_samples.py from the scene. */
function sampleCaption(image: string): string {
  const j = JSON.parse(fs.readFileSync(path.join(root, 'samples', 'scenes.json'), 'utf8')) as { scenes: { image: string; caption: string }[] };
  const s = j.scenes.find((x) => x.image === image);
  if (!s) throw new Error(`no ${image} in samples/scenes.json`);
  return s.caption;
}

test.each(['scene1.png', 'scene2.png', 'scene3.png'])(
  'describe samples/%s with the default model (models/plm-tiny) gives the scene\'s true caption', (image) => {
    const r = plm(['describe', `samples/${image}`, '--json']);
    expect(r.code).toBe(0);
    const j = JSON.parse(r.stdout.trim()) as { text: string; finishReason: string };
    expect(j.text).toBe(sampleCaption(image));
    expect(j.finishReason).toBe('stop');
  });

function plm(args: string[], env: NodeJS.ProcessEnv = {}) {
  const r = spawnSync(process.execPath, [cli, ...args], { cwd: root, encoding: 'utf8', env: { ...process.env, ...env }, timeout: 30000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('describe samples/shapes.png --json prints one JSON object with text and timings', () => {
  const r = plm(['describe', 'samples/shapes.png', '--json', '--max-tokens', '6', '--backend', 'cpu', '--model', 'models/plm-tiny-random']);
  expect(r.code).toBe(0);
  const j = JSON.parse(r.stdout.trim()) as { text: string; kind: string; timings: { promptTokens: number; totalMs: number }; tokenIds: number[] };
  expect(j.kind).toBe('image');
  expect(typeof j.text).toBe('string');
  expect(j.tokenIds.length).toBeGreaterThan(0);
  expect(j.tokenIds.length).toBeLessThanOrEqual(6);
  expect(j.timings.promptTokens).toBeGreaterThan(100);
  expect(r.stderr).toMatch(/random weights/);
});

test('info prints model, backend, cpu and cuda lines', () => {
  const r = plm(['info']);
  expect(r.code).toBe(0);
  for (const k of ['model', 'backend', 'cpu', 'cuda']) expect(r.stdout).toMatch(new RegExp(`^${k}\\s`, 'm'));
  const j = JSON.parse(plm(['info', '--json']).stdout) as { backend: string; cudaStatus: string };
  expect(j.backend).toBeTruthy();
  expect(typeof j.cudaStatus).toBe('string');
});

test.each([[], ['generate'], ['describe'], ['info'], ['chat'], ['pull'], ['serve'], ['bench']])('--help of %p with examples', (...cmd) => {
  const r = plm([...cmd, '--help']);
  expect(r.code).toBe(0);
  expect(r.stdout).toMatch(/Usage: plm/);
  expect(r.stdout).toMatch(/Examples:/);
});

test('an error prints "plm: ERR_..." and exits 1', () => {
  const r = plm(['describe', 'no/such/file.png']);
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(/^plm: ERR_FILE_NOT_FOUND: /m);
  const p = plm(['pull', 'not a repo']);
  expect(p.code).toBe(1);
  expect(p.stderr).toMatch(/^plm: ERR_INVALID_ARGUMENT: /m);
});

test('chat reads lines from a pipe, keeps history, /image attaches, /exit quits', () => {
  const r = spawnSync(process.execPath, [cli, 'chat', '-q', '--max-tokens', '4'], {
    cwd: root,
    encoding: 'utf8',
    input: 'hello\n/image samples/shapes.png\nwhat is this?\n/image nope.png\n/exit\n',
    timeout: 30000,
  });
  expect(r.status).toBe(0);
  expect(r.stdout).toMatch(/attached shapes\.png/);
  expect(r.stdout).toMatch(/plm: ERR_FILE_NOT_FOUND/);
});

test('serve starts, answers /health and stops on SIGTERM', async () => {
  const { spawn } = await import('child_process');
  const child = spawn(process.execPath, [cli, 'serve', '--port', '0', '-q'], { cwd: root });
  const url = await new Promise<string>((resolve, reject) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      const m = /listening on (http:\/\/\S+)/.exec(out);
      if (m) resolve(m[1]);
    });
    child.on('exit', (c) => reject(new Error(`serve exited ${c}`)));
    setTimeout(() => reject(new Error('serve did not start')), 20000);
  });
  const h = (await (await fetch(`${url}/health`)).json()) as { status: string };
  expect(h.status).toBe('ok');
  const code = await new Promise<number | null>((r) => {
    child.on('exit', (c) => r(c));
    child.kill('SIGTERM');
  });
  expect(code).toBe(0);
});

test('bench --model models/plm-tiny-random --json prints valid JSON with the decode and prefill figures', () => {
  const r = plm(['bench', '--model', 'models/plm-tiny-random', '--json', '--runs', '1', '--prefill', '32', '--decode-tokens', '4', '--ttft-tiles', '1']);
  expect(r.code).toBe(0);
  const j = JSON.parse(r.stdout.trim()) as Record<string, unknown>;
  expect(typeof j.decodeTokPerS).toBe('number');
  expect(j.decodeTokPerS as number).toBeGreaterThan(0);
  expect(typeof j.prefill32TokPerS).toBe('number');
  expect(j.prefill32TokPerS as number).toBeGreaterThan(0);
  expect(typeof j.visionMsPerTile).toBe('number');
  expect(typeof j.ttft1TilesMs).toBe('number');
  expect(j.maxRssMB as number).toBeGreaterThan(0);
  expect(j.runs).toBe(1);
});

test('bench rejects an unknown --only figure', () => {
  const r = plm(['bench', '--model', 'models/plm-tiny-random', '--only', 'decode,nope', '--json']);
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(/ERR_INVALID_ARGUMENT/);
});
