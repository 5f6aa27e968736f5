/**
 * loadModel's options against the environment and their validation: an explicit `quantize` (also 'none', also
 * the CLI's --quantize none) wins over PLM_QUANTIZE, which only fills in when the option is absent; bad
 * precision / quantize values are ERR_INVALID_ARGUMENT before anything loads.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { loadModel, PlmError } from '../lib';

const ROOT = path.join(__dirname, '..');
const TINY = path.join(ROOT, 'models', 'plm-tiny-random');
const CLI = path.join(ROOT, 'dist', 'lib', 'cli.js');

beforeAll(() => {
  if (!fs.existsSync(CLI)) execFileSync('npm', ['run', 'build:ts'], { cwd: ROOT, stdio: 'inherit' });
});

describe('PLM_QUANTIZE=int8 in the environment', () => {
  // Jest gives each test file a copy of process.env that never reaches the C environment the engine reads
  // (getenv), so the API is checked in a child node process that has the variable from its start.
  test('loadModel: absent quantize takes the environment; an explicit one, also none, wins', () => {
    const script = `
      const { loadModel } = require(${JSON.stringify(path.join(ROOT, 'dist', 'lib', 'index.js'))});
      (async () => {
        const out = {};
        for (const [name, opts] of [['absent', {}], ['none', { quantize: 'none' }], ['q4', { quantize: 'q4' }]]) {
          const m = await loadModel(${JSON.stringify(TINY)}, { backend: 'cpu', threads: 1, quantizedFile: false, ...opts });
          out[name] = m.quantization.kind;
          m.dispose();
        }
        process.stdout.write(JSON.stringify(out));
      })().catch((e) => { console.error(e); process.exit(1); });`;
    const r = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8', env: { ...process.env, PLM_QUANTIZE: 'int8' }, timeout: 60000 });
    expect(r.status).toBe(0);
    expect(JSON.parse(r.stdout)).toEqual({ absent: 'int8', none: 'none', q4: 'q4' });
  });

  test('plm info --quantize none wins over the environment; without --quantize the environment applies', () => {
    const run = (extra: string[]) => {
      const r = spawnSync(process.execPath, [CLI, 'info', '--model', TINY, '--backend', 'cpu', '--json', ...extra], { encoding: 'utf8', env: { ...process.env, PLM_QUANTIZE: 'int8' }, timeout: 60000 });
      expect(r.status).toBe(0);
      return (JSON.parse(r.stdout) as { quantization: { kind: string } }).quantization.kind;
    };
    expect(run(['--quantize', 'none'])).toBe('none');
    expect(run([])).toBe('int8');
  });
});

test.each([
  [{ precision: 'f16' }, /precision must be 'auto', 'f32' or 'bf16'/],
  [{ quantize: 'int4' }, /quantize must be 'none', 'int8' or 'q4'/],
  [{ backend: 'tpu' }, /backend must be 'auto', 'cpu' or 'cuda'/],
  [{ threads: -1 }, /threads must be an integer >= 0/],
  [{ maxContext: 1.5 }, /maxContext must be an integer >= 0/],
])('loadModel(dir, %p) is ERR_INVALID_ARGUMENT', async (opts, message) => {
  const e = (await loadModel(TINY, opts as never).catch((x: unknown) => x)) as PlmError;
  expect(e).toBeInstanceOf(PlmError);
  expect(e.code).toBe('ERR_INVALID_ARGUMENT');
  expect(e.message).toMatch(message);
});
