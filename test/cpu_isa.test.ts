/**
 * The model at every lower ISA level this machine has: the f32 fixture tests (test/model_fixtures.test.ts,
 * transformers to 1e-4) and the bf16 / quantized fast paths (test/cpu_fast_paths.test.ts, their stated bounds)
 * are run again in a child jest with PLM_CPU_ISA set to each level below the CPU's best (which the normal run
 * covers), so the AVX2, AVX-512 and portable kernels are checked on a CPU that would otherwise never run them.
 */
import { spawnSync } from 'child_process';
import * as path from 'path';
import { cpuKernels } from '../lib';

jest.setTimeout(30 * 60 * 1000);

const root = path.resolve(__dirname, '..');
const jestBin = path.join(root, 'node_modules', 'jest', 'bin', 'jest.js');

test('cpuKernels reports the level this process runs at and the levels below it', () => {
  const k = cpuKernels();
  expect(k.isaLevels[k.isaLevels.length - 1]).toBe('portable');
  expect(k.isaLevels).toContain(k.isa);
  if (process.env.PLM_CPU_ISA && k.isaLevels.includes(process.env.PLM_CPU_ISA)) expect(k.isa).toBe(process.env.PLM_CPU_ISA);
  else if (!process.env.PLM_CPU_ISA) expect(k.isa).toBe(k.isaLevels[0]);
  expect(k.gemmBf16.length).toBeGreaterThan(0);
  expect(k.attentionBf16.length).toBeGreaterThan(0);
});

const lower = process.env.PLM_CPU_ISA ? [] : cpuKernels().isaLevels.slice(1);

test('there is a portable level below any CPU (and so at least one child run here, unless PLM_CPU_ISA is set)', () => {
  if (!process.env.PLM_CPU_ISA) expect(lower).toContain('portable');
});

// (In the child runs PLM_CPU_ISA is set and `lower` is empty: no recursion.)
if (lower.length) test.each(lower)('PLM_CPU_ISA=%s: the fixture tests and the fast-path bounds hold', (isa) => {
  const r = spawnSync(
    process.execPath,
    [jestBin, '--ci', '--runInBand', 'test/model_fixtures.test.ts', 'test/cpu_fast_paths.test.ts', 'test/cpu_isa.test.ts'],
    { cwd: root, encoding: 'utf8', env: { ...process.env, PLM_CPU_ISA: isa }, timeout: 20 * 60 * 1000 },
  );
  const out = `${r.stdout ?? ''}${r.stderr ?? ''}`;
  if (r.status !== 0) throw new Error(`child jest at ${isa} exited ${r.status}:\n${out.slice(-4000)}`);
  expect(out).toMatch(/Tests:\s+\d+ passed, \d+ total/);
});
