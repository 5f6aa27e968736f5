/**
 * The CPU kernels themselves, at every ISA level this machine has (`PLM_CPU_ISA`, native/cpu/cpu_features.h):
 * native/tools/plm_matmul_test (every weight dtype against a double reference; precision bf16 within its stated
 * bound; the fused prologues, epilogues and bf16 tile hand-overs bit-identical to the unfused steps) and
 * native/tools/plm_attention_test (bf16 attention against the f32 kernel, tile output bit-identical). The tools
 * are built here with cmake into build-tools/ (incremental after the first run), or taken from PLM_TOOLS_DIR
 * when that names a folder where they are already built (.ci/run: build/, from .ci/native_checks.sh); each must
 * exit 0 and report the level it was asked to run at.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';

const root = path.resolve(__dirname, '..');
const prebuilt = process.env.PLM_TOOLS_DIR ? path.resolve(root, process.env.PLM_TOOLS_DIR) : '';
const buildDir = prebuilt || path.join(root, 'build-tools');
const exe = (name: string) => path.join(buildDir, name);

jest.setTimeout(20 * 60 * 1000);

let levels: string[] = [];

beforeAll(() => {
  if (prebuilt) {
    for (const tool of ['plm_matmul_test', 'plm_attention_test'])
      if (!fs.existsSync(exe(tool))) throw new Error(`PLM_TOOLS_DIR=${prebuilt} has no ${tool}: build it (cmake --build ${prebuilt} --target ${tool}) or unset PLM_TOOLS_DIR`);
    levels = execFileSync(exe('plm_matmul_test'), ['--isa-levels'], { encoding: 'utf8' }).trim().split('\n');
    return;
  }
  execFileSync('cmake', ['-S', root, '-B', buildDir, '-DCMAKE_BUILD_TYPE=Release', '-DPLM_CUDA=OFF', '-DPLM_BUILD_TOOLS=ON'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  execFileSync('cmake', ['--build', buildDir, '--target', 'plm_matmul_test', 'plm_attention_test', '-j', '2'], {
    stdio: ['ignore', 'ignore', 'inherit'],
  });
  levels = execFileSync(exe('plm_matmul_test'), ['--isa-levels'], { encoding: 'utf8' }).trim().split('\n');
});

test('the tools were built and list the ISA levels of this CPU, best first, down to portable', () => {
  expect(fs.existsSync(exe('plm_attention_test'))).toBe(true);
  expect(levels.length).toBeGreaterThanOrEqual(1);
  expect(levels[levels.length - 1]).toBe('portable');
});

function run(tool: string, args: string[], isa: string) {
  const r = spawnSync(exe(tool), args, { encoding: 'utf8', env: { ...process.env, PLM_CPU_ISA: isa }, timeout: 10 * 60 * 1000 });
  return { code: r.status, out: `${r.stdout ?? ''}${r.stderr ?? ''}` };
}

// One test per level, known only after beforeAll: the levels are checked in one loop with a message per level.
test('plm_matmul_test passes at every ISA level', () => {
  const failures: string[] = [];
  for (const isa of levels) {
    const r = run('plm_matmul_test', [], isa);
    const head = r.out.split('\n')[0];
    if (r.code !== 0 || !head.startsWith(`isa: ${isa} (PLM_CPU_ISA=${isa})`) || !/\nOK: \d+ cases/.test(r.out))
      failures.push(`${isa}: exit ${r.code}\n${r.out.split('\n').filter((l) => /FAIL|isa:|OK:/.test(l)).join('\n')}`);
  }
  expect(failures).toEqual([]);
});

test('plm_attention_test passes at every ISA level', () => {
  const failures: string[] = [];
  for (const isa of levels) {
    const r = run('plm_attention_test', ['--no-timing'], isa);
    if (r.code !== 0 || !/ 0 failed/.test(r.out))
      failures.push(`${isa}: exit ${r.code}\n${r.out.split('\n').filter((l) => /FAIL|failed/.test(l)).join('\n')}`);
  }
  expect(failures).toEqual([]);
});
