/**
 * `npm pack`, then install the tarball into an empty folder with a PATH that has no cmake, no
 * compiler and no nvcc: the prebuilt addon must load and `plm describe` must run on the bundled
 * model. Needs prebuilds/<platform>-<arch>/ (`npm run prebuild`); builds it when missing (slow: run
 * `npm run prebuild` as a CI step before the tests). PLM_SKIP_PACKAGE_TEST=1 skips this file.
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';

const root = path.resolve(__dirname, '..');
const skip = process.env.PLM_SKIP_PACKAGE_TEST === '1';
const maybe = skip ? test.skip : test;
if (skip) console.log('package.test.ts skipped: PLM_SKIP_PACKAGE_TEST=1');

/** A bin dir with node/npm/sh and core utilities only (no cmake, c++, g++, cc, gcc, nvcc, make). */
function minimalBin(dir: string): string {
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin, { recursive: true });
  // The real npm-cli.js behind the npm on PATH (npm's bin is a symlink to it).
  const npmCli = fs.realpathSync(execFileSync('sh', ['-c', 'command -v npm'], { encoding: 'utf8' }).trim());
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  fs.writeFileSync(path.join(bin, 'npm'), `#!/bin/sh\nexec "${process.execPath}" "${npmCli}" "$@"\n`, { mode: 0o755 });
  const tools = ['sh', 'bash', 'env', 'ls', 'cat', 'cp', 'mv', 'rm', 'mkdir', 'chmod', 'uname', 'tar', 'gzip', 'sed', 'grep', 'dirname', 'basename', 'readlink', 'true', 'false', 'test', 'which'];
  for (const t of tools) {
    const r = spawnSync('sh', ['-c', `command -v ${t}`], { encoding: 'utf8' });
    const p = r.stdout.trim();
    if (r.status === 0 && p.startsWith('/')) fs.symlinkSync(p, path.join(bin, t));
  }
  return bin;
}

maybe('npm pack + install without a compiler; require() and plm describe work', () => {
  const platformDir = path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
  if (!fs.existsSync(platformDir)) {
    console.log('prebuilds/ missing: running npm run prebuild (CPU only) first');
    execFileSync(process.execPath, [path.join(root, 'scripts', 'prebuild.js')], { cwd: root, stdio: 'inherit', env: { ...process.env, PLM_CMAKE_ARGS: process.env.PLM_CMAKE_ARGS ?? '-DPLM_CUDA=OFF' } });
  }
  if (!fs.existsSync(path.join(root, 'dist', 'lib', 'cli.js'))) {
    execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', path.join(root, 'tsconfig.json')], { cwd: root, stdio: 'inherit' });
  }
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-pack-'));
  try {
    // --ignore-scripts: dist/ exists already; prepare (tsc) would only repeat it.
    const packed = JSON.parse(execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', tmp], { cwd: root, encoding: 'utf8' })) as Array<{ filename: string; size: number; unpackedSize: number; files: Array<{ path: string }> }>;
    const info = packed[0];
    const tarball = path.join(tmp, path.basename(info.filename));
    const files = info.files.map((f) => f.path);
    expect(files).toContain('dist/lib/cli.js');
    expect(files).toContain(`prebuilds/${process.platform}-${process.arch}/perception-lm.node`);
    expect(files).toContain('models/plm-tiny-random/tokenizer.json');
    expect(files).toContain('models/plm-tiny-random/model.safetensors');
    expect(files).toContain('models/plm-tiny/model.safetensors');
    expect(files).toContain('samples/shapes.png');
    expect(files).toContain('samples/scene2.png');
    expect(files.some((f) => f.startsWith('test/'))).toBe(false);
    expect(files.some((f) => f.startsWith('build/'))).toBe(false);

    const app = path.join(tmp, 'app');
    fs.mkdirSync(app);
    fs.writeFileSync(path.join(app, 'package.json'), '{"name":"app","version":"1.0.0","private":true}');
    const bin = minimalBin(tmp);
    const env = { HOME: process.env.HOME ?? os.homedir(), PATH: bin, npm_config_cache: process.env.npm_config_cache ?? path.join(os.homedir(), '.npm') };
    for (const t of ['cmake', 'c++', 'g++', 'gcc', 'cc', 'nvcc', 'make']) {
      expect(spawnSync('sh', ['-c', `command -v ${t}`], { env }).status).not.toBe(0);
    }
    const t0 = Date.now();
    const inst = spawnSync('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--omit=dev', tarball], { cwd: app, env, encoding: 'utf8', shell: false, timeout: 240000 });
    const installMs = Date.now() - t0;
    if (inst.status !== 0) console.log(inst.stdout, inst.stderr);
    expect(inst.status).toBe(0);
    // npm >= 11.x may not run install scripts (allowScripts); when it does, it must use the prebuild.
    if (/perception-lm: /.test(inst.stdout + inst.stderr)) expect(inst.stdout + inst.stderr).toMatch(/using the prebuilt native addon/);
    console.log(`tarball ${(info.size / 1048576).toFixed(2)} MiB (unpacked ${(info.unpackedSize / 1048576).toFixed(2)} MiB, ${files.length} files); install ${(installMs / 1000).toFixed(1)} s`);

    const pkgDir = path.join(app, 'node_modules', 'perception-lm');
    expect(fs.existsSync(path.join(pkgDir, 'build'))).toBe(false);
    const load = spawnSync('node', ['-e', "const p=require('perception-lm');console.log(JSON.stringify({v:p.version,cpu:p.cpuFeatures().length>=0,dir:p.bundledModelDir()}))"], { cwd: app, env, encoding: 'utf8' });
    expect(load.status).toBe(0);
    expect(JSON.parse(load.stdout).dir).toBe(path.join(fs.realpathSync(pkgDir), 'models', 'plm-tiny-random'));
    const plm = path.join(app, 'node_modules', '.bin', 'plm');
    const d = spawnSync(plm, ['describe', path.join(pkgDir, 'samples', 'scene2.png'), '--json'], { cwd: app, env, encoding: 'utf8', timeout: 60000 });
    if (d.status !== 0) console.log(d.stdout, d.stderr);
    expect(d.status).toBe(0);
    // the installed package's default model (models/plm-tiny) describes its own sample correctly
    const scenes = JSON.parse(fs.readFileSync(path.join(pkgDir, 'samples', 'scenes.json'), 'utf8')) as { scenes: { image: string; caption: string }[] };
    expect(JSON.parse(d.stdout).text).toBe(scenes.scenes.find((x) => x.image === 'scene2.png')!.caption);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}, 300000);
