/**
 * The npm package as users get it:
 * - the addon loader's choice for any platform, and its errors (unit tests with a fake file system);
 * - the tarball's file list (`npm pack --dry-run`): what users run, nothing else;
 * - the `exports` map from `require`, ESM `import` and TypeScript, against a linked copy;
 * - the install-time message when a source build lacks its npm build tools;
 * - the whole path: `npm pack` the package and its platform package (scripts/platform-packages.js), install
 *   both into an empty folder with a PATH that has no cmake, no compiler and no nvcc; the addon must come from
 *   the platform package and `plm describe` must run on the bundled model.
 * The last one needs a built addon (build/Release, or prebuilds/ from `npm run build:prebuilt`) and the npm
 * registry or cache; PLM_SKIP_PACKAGE_TEST=1 skips it (and only it).
 */
import { execFileSync, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import {
  addonCandidates,
  addonNotFoundError,
  describePlatform,
  HostPlatform,
  loadAddon,
  LoaderFs,
  PLATFORM_PACKAGES,
  selectPlatformPackage,
} from '../lib/addon_loader';
import { isPlmError, PlmError } from '../lib/errors';

const root = path.resolve(__dirname, '..');
const pkgJson = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as {
  version: string;
  exports: Record<string, string | { types: string; default: string }>;
  dependencies: Record<string, string>;
  devDependencies: Record<string, string>;
  scripts: Record<string, string>;
  files: string[];
  repository?: { url?: string };
  license: string;
};
const skip = process.env.PLM_SKIP_PACKAGE_TEST === '1';
if (skip) console.log('package.test.ts: the pack + install test is skipped: PLM_SKIP_PACKAGE_TEST=1');

const LINUX_X64: HostPlatform = { platform: 'linux', arch: 'x64', libc: 'glibc' };

/** A file system with only the listed files and packages. */
function fakeFs(files: string[], packages: Record<string, { dir: string; version?: string }> = {}, prebuild?: string): LoaderFs {
  const set = new Set(files.map((f) => path.resolve(f)));
  return {
    exists: (f) => set.has(path.resolve(f)),
    resolvePackage: (name) => packages[name],
    prebuildPath: () => prebuild,
  };
}

function codeOf(fn: () => unknown): PlmError {
  try {
    fn();
  } catch (e) {
    expect(isPlmError(e)).toBe(true);
    return e as PlmError;
  }
  throw new Error('expected a PlmError, nothing was thrown');
}

describe('addon loader: which binary for which platform', () => {
  // a package root whose package.json has version 1.2.3 and the real build-tool pins (the rest of its files are fake)
  let fakeRoot = '';
  beforeAll(() => {
    fakeRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-loader-'));
    fs.writeFileSync(path.join(fakeRoot, 'package.json'), JSON.stringify({ name: 'perception-lm', version: '1.2.3', devDependencies: pkgJson.devDependencies }));
  });
  afterAll(() => fs.rmSync(fakeRoot, { recursive: true, force: true }));

  test('selectPlatformPackage matches os, cpu and libc', () => {
    expect(selectPlatformPackage(LINUX_X64)?.name).toBe('@perception-lm/linux-x64-gnu');
    expect(selectPlatformPackage({ platform: 'linux', arch: 'arm64', libc: 'glibc' })?.name).toBe('@perception-lm/linux-arm64-gnu');
    expect(selectPlatformPackage({ platform: 'darwin', arch: 'arm64' })?.name).toBe('@perception-lm/darwin-arm64');
    // no binary: musl, Intel macs, Windows, other systems
    expect(selectPlatformPackage({ platform: 'linux', arch: 'x64', libc: 'musl' })).toBeUndefined();
    expect(selectPlatformPackage({ platform: 'darwin', arch: 'x64' })).toBeUndefined();
    expect(selectPlatformPackage({ platform: 'win32', arch: 'x64' })).toBeUndefined();
    expect(selectPlatformPackage({ platform: 'freebsd', arch: 'x64' })).toBeUndefined();
  });

  test('every platform package is chosen for its own platform, named after it, and only linux-x64 carries CUDA', () => {
    const names = PLATFORM_PACKAGES.map((p) => p.name);
    expect(new Set(names).size).toBe(names.length);
    for (const p of PLATFORM_PACKAGES) {
      expect(selectPlatformPackage({ platform: p.os, arch: p.cpu, libc: p.libc })).toBe(p);
      expect(p.name).toBe(`@perception-lm/${p.os}-${p.cpu}${p.libc === 'glibc' ? '-gnu' : p.libc === 'musl' ? '-musl' : ''}`);
    }
    expect(PLATFORM_PACKAGES.filter((p) => p.cuda).map((p) => p.name)).toEqual(['@perception-lm/linux-x64-gnu']);
  });

  test('order: the source build, then the platform package, then prebuilds/', () => {
    const built = path.join(fakeRoot, 'build', 'Release', 'perception_lm.node');
    const prebuilt = path.join(fakeRoot, 'prebuilds', 'linux-x64', 'perception-lm.node');
    const platformAddon = path.join('/nm/@perception-lm/linux-x64-gnu', 'perception-lm.node');
    const fsys = fakeFs([built, platformAddon], { '@perception-lm/linux-x64-gnu': { dir: '/nm/@perception-lm/linux-x64-gnu', version: '1.2.3' } }, prebuilt);
    const c = addonCandidates(fakeRoot, LINUX_X64, fsys, '1.2.3');
    expect(c.map((x) => [x.source, x.file])).toEqual([
      ['source-build', built],
      ['platform-package', platformAddon],
      ['prebuilds', prebuilt],
    ]);
    // Each one that fails to load (e.g. built for another Node ABI) falls through to the next.
    const tried: string[] = [];
    const loadFrom = (ok: string) => (f: string) => {
      tried.push(f);
      if (f !== ok) throw new Error(`cannot load ${f}`);
      return { ok: true };
    };
    expect(loadAddon(fakeRoot, LINUX_X64, fsys, loadFrom(built)).source).toBe('source-build');
    expect(loadAddon(fakeRoot, LINUX_X64, fsys, loadFrom(platformAddon)).source).toBe('platform-package');
    tried.length = 0;
    const last = loadAddon(fakeRoot, LINUX_X64, fsys, loadFrom(prebuilt));
    expect([last.source, last.file]).toEqual(['prebuilds', prebuilt]);
    expect(tried).toEqual([built, platformAddon, prebuilt]);
  });

  test('a platform package of another version is skipped, and node-gyp-build pointing into build/ is not a prebuild', () => {
    const fsys = fakeFs(['/nm/p/perception-lm.node'], { '@perception-lm/linux-x64-gnu': { dir: '/nm/p', version: '0.0.9' } }, '/pkg/build/Release/perception_lm.node');
    const c = addonCandidates('/pkg', LINUX_X64, fsys, '1.0.0');
    expect(c[1].file).toBeUndefined();
    expect(c[1].missing).toMatch(/version 0\.0\.9 .*perception-lm is 1\.0\.0/);
    expect(c[2].file).toBeUndefined();
  });

  test('a candidate that exists but fails to load is reported with its error', () => {
    const fsys = fakeFs([path.join(fakeRoot, 'build', 'Release', 'perception_lm.node')]);
    const e = codeOf(() =>
      loadAddon(fakeRoot, LINUX_X64, fsys, () => {
        throw new Error('GLIBC_2.99 not found');
      }),
    );
    expect(e.code).toBe('ERR_NATIVE_NOT_FOUND');
    expect(e.message).toContain('perception_lm.node failed to load: GLIBC_2.99 not found');
    // the platform package exists for linux-x64 but is not installed: say how to install it, at this version
    expect(e.message).toContain('npm install @perception-lm/linux-x64-gnu@1.2.3');
  });

  test('Windows: ERR_UNSUPPORTED_PLATFORM naming the platform and why, without trying to load anything', () => {
    let calls = 0;
    const e = codeOf(() =>
      loadAddon(fakeRoot, { platform: 'win32', arch: 'x64' }, fakeFs([path.join(fakeRoot, 'build', 'Release', 'perception_lm.node')]), () => {
        calls++;
        return {};
      }),
    );
    expect(calls).toBe(0);
    expect(e.code).toBe('ERR_UNSUPPORTED_PLATFORM');
    expect(e.message).toContain('win32-x64');
    expect(e.message).toMatch(/mmap and dlopen/);
    expect(e.message).toMatch(/WSL2/);
    expect(e.message).toContain('docs/install.md');
  });

  test('a platform without a binary: which platform packages exist and the source-build commands, pinned', () => {
    const host = { platform: 'linux', arch: 'riscv64', libc: 'glibc' as const };
    const e = codeOf(() => loadAddon(fakeRoot, host, fakeFs([])));
    expect(e.code).toBe('ERR_NATIVE_NOT_FOUND');
    expect(e.message).toContain(describePlatform(host));
    for (const p of PLATFORM_PACKAGES) expect(e.message).toContain(p.name);
    expect(e.message).toContain(`cmake-js@${pkgJson.devDependencies['cmake-js']}`);
    expect(e.message).toContain(`node-addon-api@${pkgJson.devDependencies['node-addon-api']}`);
    expect(e.message).toContain('PLM_BUILD_FROM_SOURCE=1 npm rebuild perception-lm');
    expect(e.message).toContain('asarUnpack');
    // the same text from the error builder alone
    expect(addonNotFoundError(host, []).message).toContain('no prebuilt binary exists for linux-riscv64 (glibc)');
  });

  test('this checkout loads its own source build first', () => {
    const got = loadAddon<{ cpuFeatures(): string[] }>(root);
    expect(got.source).toBe('source-build');
    expect(Array.isArray(got.addon.cpuFeatures())).toBe(true);
  });
});

describe('package manifest and tarball', () => {
  let files: string[] = [];
  beforeAll(() => {
    const out = execFileSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: root, encoding: 'utf8' });
    files = (JSON.parse(out) as Array<{ files: Array<{ path: string }> }>)[0].files.map((f) => f.path);
  }, 60000);

  test('ships what users run: the code, the native sources, the default model, samples and the license files', () => {
    for (const f of ['LICENSE', 'NOTICE', 'LICENSE-LLAMA3', 'README.md', 'package.json', 'dist/lib/index.js', 'dist/lib/index.d.ts', 'dist/lib/cli.js', 'dist/lib/addon_loader.js',
      'models/plm-tiny/model.safetensors', 'models/plm-tiny/tokenizer.json', 'models/plm-tiny/config.json', 'samples/scene3.png', 'samples/scenes.json',
      'CMakeLists.txt', 'bindings/addon.cpp', 'native/cpu/matmul.cpp', 'native/cuda/plm_cuda_api.h', 'scripts/install.js', 'scripts/build-native.js', 'docs/install.md']) {
      expect(files).toContain(f);
    }
    // every exports target is in the tarball
    for (const [key, target] of Object.entries(pkgJson.exports)) {
      const targets = typeof target === 'string' ? [target] : [target.types, target.default];
      for (const t of targets) expect([key, files.includes(t.replace(/^\.\//, ''))]).toEqual([key, true]);
    }
  });

  test('leaves out the random test model, tests, native tools, builds and maintainer scripts', () => {
    const banned = ['models/plm-tiny-random/', 'test/', 'build/', 'prebuilds/', 'native/tools/', 'training/', 'reference/', 'benchmarks/', 'lib/', 'npm-platform/', '.ci/'];
    for (const prefix of banned) expect([prefix, files.filter((f) => f.startsWith(prefix))]).toEqual([prefix, []]);
    for (const f of ['scripts/prebuild.js', 'scripts/prebuild-node-gyp.js', 'scripts/platform-packages.js', 'scripts/check-arm64.sh', 'docs/fixtures.md']) expect(files).not.toContain(f);
    expect(files.filter((f) => f.endsWith('.o') || f.endsWith('.part'))).toEqual([]);
  });

  test('build tools are devDependencies; no script is an npm pre-hook of another; license and repository are set', () => {
    for (const t of ['cmake-js', 'node-addon-api']) {
      expect(pkgJson.dependencies[t]).toBeUndefined();
      expect(pkgJson.devDependencies[t]).toBeDefined();
    }
    // npm runs preX / postX around X: the package uses no such hooks ('prepare' is a lifecycle script of its own)
    expect(Object.keys(pkgJson.scripts).filter((n) => /^(pre|post)/.test(n) && n !== 'prepare')).toEqual([]);
    expect(pkgJson.scripts['build:prebuilt']).toBe('node scripts/prebuild.js');
    expect(pkgJson.license).toBe('Apache-2.0');
    expect(fs.readFileSync(path.join(root, 'LICENSE'), 'utf8')).toContain('Apache License');
    expect(fs.readFileSync(path.join(root, 'NOTICE'), 'utf8')).toContain('Meta Llama 3 is licensed under the Meta Llama 3 Community License, Copyright © Meta Platforms, Inc.');
    expect(pkgJson.repository?.url).toMatch(/^git\+https:\/\//);
  });
});

/** An app folder whose node_modules/perception-lm links to this checkout. */
function linkedApp(tmp: string): string {
  const app = path.join(tmp, 'linked');
  fs.mkdirSync(path.join(app, 'node_modules', '@types'), { recursive: true });
  fs.symlinkSync(root, path.join(app, 'node_modules', 'perception-lm'), 'dir');
  fs.symlinkSync(path.join(root, 'node_modules', '@types', 'node'), path.join(app, 'node_modules', '@types', 'node'), 'dir');
  return app;
}

const SUBPATHS = ['perception-lm', 'perception-lm/server', 'perception-lm/hub', 'perception-lm/queue'];
/** Prints each subpath's export names (CommonJS) or namespace keys (ESM), then the error code of a deep import. */
const CJS_PROBE = `const out = {};
for (const s of ${JSON.stringify(SUBPATHS)}) out[s] = Object.keys(require(s)).filter((k) => k !== '__esModule').sort();
try { require('perception-lm/dist/lib/model.js'); out.deep = 'loaded'; } catch (e) { out.deep = e.code; }
console.log(JSON.stringify(out));
`;
const ESM_PROBE = `const out = {};
for (const s of ${JSON.stringify(SUBPATHS)}) out[s] = Object.keys(await import(s)).filter((k) => k !== 'default' && k !== '__esModule').sort();
try { await import('perception-lm/dist/lib/model.js'); out.deep = 'loaded'; } catch (e) { out.deep = e.code; }
console.log(JSON.stringify(out));
`;

function probe(app: string, env?: NodeJS.ProcessEnv): { cjs: Record<string, unknown>; esm: Record<string, unknown> } {
  fs.writeFileSync(path.join(app, 'probe.cjs'), CJS_PROBE);
  fs.writeFileSync(path.join(app, 'probe.mjs'), ESM_PROBE);
  const res = (f: string) => {
    const r = spawnSync('node', [f], { cwd: app, env: env ?? process.env, encoding: 'utf8' });
    if (r.status !== 0) console.log(r.stdout, r.stderr);
    expect(r.status).toBe(0);
    return JSON.parse(r.stdout) as Record<string, unknown>;
  };
  return { cjs: res('probe.cjs'), esm: res('probe.mjs') };
}

function expectExports(p: { cjs: Record<string, unknown>; esm: Record<string, unknown> }): void {
  // ESM sees every CommonJS export by name (Node's static detection of the compiled modules)
  expect(p.esm).toEqual(p.cjs);
  expect(p.cjs.deep).toBe('ERR_PACKAGE_PATH_NOT_EXPORTED');
  expect(p.cjs['perception-lm']).toEqual(expect.arrayContaining(['loadModel', 'PlmError', 'batch', 'quantizeModel', 'defaultModelDir', 'version']));
  expect(p.cjs['perception-lm/server']).toEqual(expect.arrayContaining(['startServer']));
  expect(p.cjs['perception-lm/hub']).toEqual(expect.arrayContaining(['pull', 'listFiles']));
  expect(p.cjs['perception-lm/queue']).toEqual(expect.arrayContaining(['runWorker', 'enqueue', 'queueStatus']));
}

describe('exports map', () => {
  let tmp = '';
  beforeAll(() => {
    tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-exports-'));
    if (!fs.existsSync(path.join(root, 'dist', 'lib', 'index.js'))) {
      execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', path.join(root, 'tsconfig.json')], { cwd: root, stdio: 'inherit' });
    }
  }, 120000);
  afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

  test('require and import see the same named exports of ., ./server, ./hub, ./queue; deep imports are blocked', () => {
    expectExports(probe(linkedApp(tmp)));
  });

  test('TypeScript finds the types of every entry (node16 ESM and CommonJS, node10) and no deep path', () => {
    const app = path.join(tmp, 'linked');
    if (!fs.existsSync(app)) linkedApp(tmp);
    const tsc = require.resolve('typescript/bin/tsc');
    const src = `import { loadModel, PlmError, type GenerateOptions } from 'perception-lm';
import { startServer } from 'perception-lm/server';
import { pull } from 'perception-lm/hub';
import { runWorker, queueStatus } from 'perception-lm/queue';
const o: GenerateOptions = { prompt: 'x', maxTokens: 1 };
export const all = [loadModel, PlmError, startServer, pull, runWorker, queueStatus, o];
`;
    fs.writeFileSync(path.join(app, 'esm.mts'), src);
    fs.writeFileSync(path.join(app, 'cjs.cts'), src);
    fs.writeFileSync(path.join(app, 'old.ts'), src);
    fs.writeFileSync(path.join(app, 'deep.mts'), "import { loadNative } from 'perception-lm/dist/lib/native.js';\nexport const x = loadNative;\n");
    const run = (args: string[]) => spawnSync('node', [tsc, '--noEmit', '--strict', '--types', 'node', ...args], { cwd: app, encoding: 'utf8' });
    // node16 (its exports rules are also bundler's): ESM and CommonJS consumers compile; the deep import is the only error
    const node16 = run(['--module', 'node16', '--moduleResolution', 'node16', 'esm.mts', 'cjs.cts', 'deep.mts']);
    expect(node16.stdout.trim().split('\n')).toEqual([expect.stringMatching(/^deep\.mts\(1,28\): error TS2307: Cannot find module 'perception-lm\/dist\/lib\/native\.js'/)]);
    // node10 ignores exports: typesVersions maps the subpaths
    const old = run(['--module', 'commonjs', '--moduleResolution', 'node10', 'old.ts']);
    expect([old.status, old.stdout]).toEqual([0, '']);
  }, 90000);
});

describe('source-build fallback without the npm build tools', () => {
  test('build-native.js names everything missing, with the pinned versions and the commands', () => {
    const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-buildtools-'));
    try {
      fs.mkdirSync(path.join(tmp, 'scripts'));
      fs.copyFileSync(path.join(root, 'scripts', 'build-native.js'), path.join(tmp, 'scripts', 'build-native.js'));
      fs.copyFileSync(path.join(root, 'package.json'), path.join(tmp, 'package.json'));
      // PATH without cmake or a compiler; no node_modules above the temp folder
      const r = spawnSync(process.execPath, [path.join(tmp, 'scripts', 'build-native.js')], { cwd: tmp, env: { PATH: path.join(tmp, 'nothing'), HOME: tmp }, encoding: 'utf8' });
      expect(r.status).toBe(1);
      expect(r.stderr).toContain('cmake was not found');
      expect(r.stderr).toContain('C++17 compiler');
      expect(r.stderr).toContain(`npm install --save-dev cmake-js@${pkgJson.devDependencies['cmake-js']} node-addon-api@${pkgJson.devDependencies['node-addon-api']}`);
      expect(r.stderr).toContain('npm rebuild perception-lm');
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
  });
});

describe('platform packages (scripts/platform-packages.js)', () => {
  test('refuses a binary built for another platform', () => {
    const release = path.join(root, 'build', 'Release');
    const r = spawnSync(process.execPath, [path.join(root, 'scripts', 'platform-packages.js'), 'stage', '--platform', process.arch === 'arm64' ? 'linux-x64-gnu' : 'linux-arm64-gnu', '--from', release, '--out', path.join(os.tmpdir(), 'plm-never-staged')], { cwd: root, encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/is built for \S+, not linux-(arm64|x64)/);
  });
});

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

const hostPkg = selectPlatformPackage();
const installTest = skip || !hostPkg ? test.skip : test;
if (!hostPkg) console.log(`package.test.ts: no platform package for ${process.platform}-${process.arch}: the install test is skipped`);

installTest('npm pack the package and its platform package, install both without a compiler; require, import and plm describe work', () => {
  const pkg = hostPkg!;
  const built = [path.join(root, 'prebuilds', `${process.platform}-${process.arch}`), path.join(root, 'build', 'Release')].find((d) => fs.existsSync(d));
  if (!built) throw new Error('no addon to package: run npm run build:native (or npm run build:prebuilt) first');
  if (!fs.existsSync(path.join(root, 'dist', 'lib', 'cli.js'))) {
    execFileSync(process.execPath, [require.resolve('typescript/bin/tsc'), '-p', path.join(root, 'tsconfig.json')], { cwd: root, stdio: 'inherit' });
  }
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-pack-'));
  try {
    // The platform package, from the local build (with libplm_cuda.so when this machine built it).
    const withCuda = fs.existsSync(path.join(built, 'libplm_cuda.so'));
    const staged = execFileSync(process.execPath, [path.join(root, 'scripts', 'platform-packages.js'), 'stage', '--from', built, '--out', path.join(tmp, 'platform'), '--pack', ...(withCuda ? [] : ['--allow-missing-cuda'])], { cwd: root, encoding: 'utf8' });
    const platformTarball = staged.trim().split('\n').pop()!;
    expect(fs.existsSync(platformTarball)).toBe(true);
    // --ignore-scripts: dist/ exists already; prepare (tsc) would only repeat it.
    const packed = JSON.parse(execFileSync('npm', ['pack', '--json', '--ignore-scripts', '--pack-destination', tmp], { cwd: root, encoding: 'utf8' })) as Array<{ filename: string; size: number; unpackedSize: number; files: Array<{ path: string }> }>;
    const info = packed[0];
    const tarball = path.join(tmp, path.basename(info.filename));
    expect(info.files.some((f) => f.path.endsWith('.node'))).toBe(false); // binaries live in the platform package

    const app = path.join(tmp, 'app');
    fs.mkdirSync(app);
    fs.writeFileSync(path.join(app, 'package.json'), '{"name":"app","version":"1.0.0","private":true}');
    const bin = minimalBin(tmp);
    const env = { HOME: process.env.HOME ?? os.homedir(), PATH: bin, npm_config_cache: process.env.npm_config_cache ?? path.join(os.homedir(), '.npm') };
    for (const t of ['cmake', 'c++', 'g++', 'gcc', 'cc', 'nvcc', 'make']) {
      expect(spawnSync('sh', ['-c', `command -v ${t}`], { env }).status).not.toBe(0);
    }
    const t0 = Date.now();
    const inst = spawnSync('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', '--omit=dev', '--foreground-scripts', tarball, platformTarball], { cwd: app, env, encoding: 'utf8', shell: false, timeout: 240000 });
    const installMs = Date.now() - t0;
    if (inst.status !== 0) console.log(inst.stdout, inst.stderr);
    expect(inst.status).toBe(0);
    // npm >= 11.x may not run install scripts (allowScripts); when it does, it must use the platform package.
    if (/perception-lm: /.test(inst.stdout + inst.stderr)) expect(inst.stdout + inst.stderr).toMatch(/using the prebuilt native addon \(platform-package/);
    console.log(`tarball ${(info.size / 1048576).toFixed(2)} MiB (unpacked ${(info.unpackedSize / 1048576).toFixed(2)} MiB, ${info.files.length} files) + ${path.basename(platformTarball)} ${(fs.statSync(platformTarball).size / 1048576).toFixed(2)} MiB; install ${(installMs / 1000).toFixed(1)} s`);

    const pkgDir = path.join(app, 'node_modules', 'perception-lm');
    const platDir = path.join(app, 'node_modules', ...pkg.name.split('/'));
    expect(fs.existsSync(path.join(pkgDir, 'build'))).toBe(false);
    expect(fs.existsSync(path.join(pkgDir, 'models', 'plm-tiny-random'))).toBe(false);
    expect(fs.existsSync(path.join(platDir, 'perception-lm.node'))).toBe(true);
    if (withCuda) expect(fs.existsSync(path.join(platDir, 'libplm_cuda.so'))).toBe(true);
    for (const t of ['cmake-js', 'node-addon-api']) expect([t, fs.existsSync(path.join(app, 'node_modules', t))]).toEqual([t, false]);

    // the addon comes from the platform package; the default model is the shipped one
    const load = spawnSync('node', ['-e', "const p=require('perception-lm');const l=require('./node_modules/perception-lm/dist/lib/addon_loader.js');const a=l.loadAddon(require('path').resolve('node_modules/perception-lm'));console.log(JSON.stringify({v:p.version,cpu:p.cpuFeatures().length>=0,dir:p.defaultModelDir(),source:a.source,cuda:p.cudaStatus()}))"], { cwd: app, env, encoding: 'utf8' });
    if (load.status !== 0) console.log(load.stdout, load.stderr);
    expect(load.status).toBe(0);
    const loaded = JSON.parse(load.stdout) as { dir: string; source: string; cuda: string };
    expect(loaded.source).toBe('platform-package');
    expect(loaded.dir).toBe(path.join(fs.realpathSync(pkgDir), 'models', 'plm-tiny'));
    console.log(`installed package: cudaStatus() = ${loaded.cuda}`);
    if (withCuda && process.platform === 'linux' && spawnSync('sh', ['-c', 'command -v cc'], { encoding: 'utf8' }).status === 0) {
      // The addon must find the platform package's libplm_cuda.so beside itself. Without a GPU, a stand-in
      // libcuda.so.1 (an empty library) gets the addon past its driver check to the search for the library:
      // found, it is loaded and its CUDA runtime rejects the stand-in driver; removed, the search says so.
      const fake = path.join(tmp, 'fake-driver');
      fs.mkdirSync(fake);
      fs.writeFileSync(path.join(fake, 'f.c'), 'int plm_stand_in_driver(void) { return 0; }\n');
      execFileSync('cc', ['-shared', '-fPIC', '-o', path.join(fake, 'libcuda.so.1'), path.join(fake, 'f.c')]);
      const status = () => spawnSync('node', ['-e', "console.log(require('perception-lm').cudaStatus())"], { cwd: app, env: { ...env, LD_LIBRARY_PATH: fake }, encoding: 'utf8' }).stdout.trim();
      const found = status();
      expect(found).not.toMatch(/no NVIDIA driver|not built|not found next to the addon/);
      fs.renameSync(path.join(platDir, 'libplm_cuda.so'), path.join(tmp, 'libplm_cuda.so.away'));
      expect(status()).toMatch(/libplm_cuda\.so not built \(or not found next to the addon/);
      fs.renameSync(path.join(tmp, 'libplm_cuda.so.away'), path.join(platDir, 'libplm_cuda.so'));
      console.log(`with a stand-in libcuda.so.1: ${found}`);
    }
    // the exports map, from the packed copy
    expectExports(probe(app, env));

    const plm = path.join(app, 'node_modules', '.bin', 'plm');
    const d = spawnSync(plm, ['describe', path.join(pkgDir, 'samples', 'scene2.png'), '--json'], { cwd: app, env, encoding: 'utf8', timeout: 60000 });
    if (d.status !== 0) console.log(d.stdout, d.stderr);
    expect(d.status).toBe(0);
    // the installed package's default model (models/plm-tiny) describes its own sample correctly
    const scenes = JSON.parse(fs.readFileSync(path.join(pkgDir, 'samples', 'scenes.json'), 'utf8')) as { scenes: { image: string; caption: string }[] };
    expect(JSON.parse(d.stdout).text).toBe(scenes.scenes.find((x) => x.image === 'scene2.png')!.caption);

    // without the platform package: a typed error naming it and how to install it
    fs.rmSync(platDir, { recursive: true, force: true });
    const gone = spawnSync('node', ['-e', "try{require('perception-lm').cpuFeatures()}catch(e){console.log(JSON.stringify({code:e.code,message:e.message}))}"], { cwd: app, env, encoding: 'utf8' });
    const err = JSON.parse(gone.stdout) as { code: string; message: string };
    expect(err.code).toBe('ERR_NATIVE_NOT_FOUND');
    expect(err.message).toContain(`npm install ${pkg.name}@${pkgJson.version}`);
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}, 300000);
