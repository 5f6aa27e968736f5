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

test('every run of the bundled toy model says so in one stderr line, also with -q; an explicit --model does not', () => {
  const toyLine = /^plm: note: no --model given: running the bundled toy model .*only knows coloured shapes.*--model facebook\/Perception-LM-1B/m;
  for (const args of [['describe', 'samples/scene1.png', '--max-tokens', '2'], ['describe', 'samples/scene1.png', '--max-tokens', '2', '-q'], ['info']]) {
    const r = plm(args);
    expect(r.code).toBe(0);
    expect(r.stderr.match(new RegExp(toyLine.source, 'gm'))).toHaveLength(1);
  }
  const explicit = plm(['describe', 'samples/scene1.png', '--max-tokens', '2', '--model', 'models/plm-tiny']);
  expect(explicit.code).toBe(0);
  expect(explicit.stderr).not.toMatch(/toy model/);
  // --help describes the default for what it is (it used to say "random-weight").
  const help = plm(['describe', '--help']).stdout.replace(/\s+/g, ' ');
  expect(help).toMatch(/default: the bundled toy model, which only knows coloured shapes/);
  expect(help).not.toMatch(/random-weight/);
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

test.each([[], ['generate'], ['describe'], ['info'], ['chat'], ['pull'], ['list'], ['rm'], ['serve'], ['bench'], ['batch'], ['worker'], ['quantize']])('--help of %p with examples', (...cmd) => {
  const r = plm([...cmd, '--help']);
  expect(r.code).toBe(0);
  expect(r.stdout).toMatch(/Usage: plm/);
  expect(r.stdout).toMatch(/Examples:/);
});

test('an error prints "plm: ERR_..." and exits 1', () => {
  const r = plm(['describe', 'no/such/file.png']);
  expect(r.code).toBe(1);
  expect(r.stderr).toMatch(/^plm: ERR_FILE_NOT_FOUND: /m);
});

test.each([
  [['pull', 'not a repo'], /"not a repo" is not a hub repo id/], // ours
  [['describe', 'samples/scene1.png', '--bogus'], /unknown option '--bogus'/], // commander's
  [['describe', 'samples/scene1.png', '--threads', 'many'], /--threads must be an integer >= 0/], // our parser, through commander
  [['describe', 'samples/scene1.png', '--precision', 'f16'], /--precision.*f16.*is invalid/], // commander's choices
  [['describe'], /missing required argument 'file'/],
  [['serve', '--max-tokens', '600', '--max-tokens-limit', '500'], /--max-tokens\) 600 is above maxTokensLimit \(--max-tokens-limit\) 500/],
  [['nosuchcommand'], /unknown command 'nosuchcommand'/],
])('an argument error %p prints "plm: ERR_INVALID_ARGUMENT: ..." and exits 2', (args, message) => {
  const r = plm(args as string[]);
  expect(r.code).toBe(2);
  expect(r.stderr).toMatch(/^plm: ERR_INVALID_ARGUMENT: /m);
  expect(r.stderr).toMatch(message as RegExp);
  expect(r.stderr).not.toMatch(/^error: /m);
});

test('--model owner/name that is not downloaded fails with the plm pull command to run', () => {
  const empty = fs.mkdtempSync(path.join(require('os').tmpdir(), 'plm-cli-store-'));
  try {
    const r = plm(['describe', 'samples/scene1.png', '--model', 'acme/not-here'], { PLM_MODELS_DIR: empty, HF_HUB_CACHE: empty });
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^plm: ERR_FILE_NOT_FOUND: .*download it with: plm pull acme\/not-here$/m);
  } finally {
    fs.rmSync(empty, { recursive: true, force: true });
  }
});

test('plm list shows pulled copies and HF cache models; plm rm removes only pulled copies', () => {
  const tmp = fs.mkdtempSync(path.join(require('os').tmpdir(), 'plm-cli-list-'));
  const env = { PLM_MODELS_DIR: path.join(tmp, 'models'), HF_HUB_CACHE: path.join(tmp, 'hub') };
  try {
    const tiny = path.join(root, 'models', 'plm-tiny');
    fs.cpSync(tiny, path.join(env.PLM_MODELS_DIR, 'acme--mine'), { recursive: true });
    fs.writeFileSync(path.join(env.PLM_MODELS_DIR, 'acme--mine', 'model.q4.plmq.safetensors'), Buffer.alloc(10));
    const snap = path.join(env.HF_HUB_CACHE, 'models--acme--shared', 'snapshots', 'c0ffee');
    fs.mkdirSync(snap, { recursive: true });
    fs.mkdirSync(path.join(env.HF_HUB_CACHE, 'models--acme--shared', 'refs'));
    fs.writeFileSync(path.join(env.HF_HUB_CACHE, 'models--acme--shared', 'refs', 'main'), 'c0ffee');
    // As huggingface_hub lays it out: the content in blobs/, the snapshot's entries relative symlinks to it.
    const blobs = path.join(env.HF_HUB_CACHE, 'models--acme--shared', 'blobs');
    fs.mkdirSync(blobs);
    for (const f of fs.readdirSync(tiny)) {
      fs.copyFileSync(path.join(tiny, f), path.join(blobs, `blob-${f}`));
      fs.symlinkSync(`../../blobs/blob-${f}`, path.join(snap, f));
    }

    const text = plm(['list'], env);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^NAME\s+SIZE\s+SOURCE\s+QUANTIZED\s+PATH$/m);
    expect(text.stdout).toMatch(new RegExp(`^acme/mine\\s+18\\.\\d MiB\\s+plm pull\\s+model\\.q4\\.plmq\\.safetensors\\s+${env.PLM_MODELS_DIR}/acme--mine$`, 'm'));
    expect(text.stdout).toMatch(/^acme\/shared\s+18\.\d MiB\s+hf cache @c0ffee\s+-\s+\S+snapshots\/c0ffee$/m);
    const j = JSON.parse(plm(['list', '--json'], env).stdout) as { models: Array<{ name: string; source: string }> };
    expect(j.models.map((m) => [m.name, m.source])).toEqual([['acme/mine', 'pulled'], ['acme/shared', 'hf-cache']]);

    // A name from either store works as --model.
    const d = plm(['describe', 'samples/scene1.png', '--model', 'acme/shared', '--json'], env);
    expect(d.code).toBe(0);
    expect((JSON.parse(d.stdout) as { text: string }).text).toBe(sampleCaption('scene1.png'));

    const refused = plm(['rm', 'acme/shared'], env);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^plm: ERR_FILE_NOT_FOUND: acme\/shared is not a plm pull copy: it is in the Hugging Face cache/m);
    expect(fs.existsSync(path.join(snap, 'config.json'))).toBe(true);
    const rm = plm(['rm', 'acme/mine'], env);
    expect(rm.code).toBe(0);
    expect(rm.stdout).toMatch(/^removed acme\/mine: /);
    expect(fs.existsSync(path.join(env.PLM_MODELS_DIR, 'acme--mine'))).toBe(false);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});

test('every command that loads a model takes --backend, --threads, --precision and --max-context; max tokens default once', () => {
  const { DEFAULT_MAX_TOKENS } = require('../lib/defaults') as typeof import('../lib/defaults');
  for (const cmd of ['generate', 'describe', 'info', 'chat', 'batch', 'worker', 'serve', 'bench']) {
    const help = plm([cmd, '--help']).stdout;
    for (const flag of ['--backend <name>', '--threads <n>', '--precision <p>', '--max-context <n>']) {
      expect({ cmd, flag, present: help.includes(flag) }).toEqual({ cmd, flag, present: true });
    }
  }
  for (const cmd of ['generate', 'describe', 'chat', 'batch', 'serve']) {
    const help = plm([cmd, '--help']).stdout.replace(/\s+/g, ' ');
    expect(help).toMatch(new RegExp(`--max-tokens <n> [^-]*\\(default: ${DEFAULT_MAX_TOKENS}\\)`));
  }
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

test('bench rejects an unknown --only figure (an argument error: status 2)', () => {
  const r = plm(['bench', '--model', 'models/plm-tiny-random', '--only', 'decode,nope', '--json']);
  expect(r.code).toBe(2);
  expect(r.stderr).toMatch(/^plm: ERR_INVALID_ARGUMENT: --only: unknown figure "nope"/m);
});

test('bench --backend cpu runs on the CPU and says so; --backend takes the same choices as elsewhere', () => {
  const r = plm(['bench', '--model', 'models/plm-tiny-random', '--backend', 'cpu', '--json', '--runs', '1', '--only', 'decode', '--decode-tokens', '2', '--threads', '1']);
  expect(r.code).toBe(0);
  const j = JSON.parse(r.stdout.trim()) as { backend: string; threads: number };
  expect(j.backend).toBe('cpu');
  expect(j.threads).toBe(1);
  const bad = plm(['bench', '--backend', 'tpu']);
  expect(bad.code).toBe(2);
  expect(bad.stderr).toMatch(/^plm: ERR_INVALID_ARGUMENT: option '--backend <name>' argument 'tpu' is invalid/m);
});
