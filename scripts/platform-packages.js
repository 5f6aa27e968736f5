#!/usr/bin/env node
// Builds the per-platform npm packages of prebuilt binaries (@perception-lm/<os>-<cpu>[-<libc>]), the way the
// main package's optionalDependencies pick one per machine. The list of platforms is PLATFORM_PACKAGES in
// lib/addon_loader.ts (run `npm run build:ts` first: this script reads dist/lib/addon_loader.js).
//
//   node scripts/platform-packages.js list
//       the platform packages, whether each ships the CUDA library, and the version they must have
//   node scripts/platform-packages.js stage [--from DIR] [--out DIR] [--platform NAME] [--allow-missing-cuda] [--pack]
//       writes <out>/<name>/ (package.json with os/cpu/libc, perception-lm.node, libplm_cuda.so on linux-x64,
//       LICENSE, NOTICE, README.md); --pack also runs `npm pack` there and prints the tarball's path.
//       --from: a folder holding the addon (perception-lm.node or perception_lm.node) and, for linux-x64,
//         libplm_cuda.so. Default: prebuilds/<platform>-<arch>/ (`npm run build:prebuilt`: stripped, CUDA
//         included when nvcc exists), else build/Release/ (a local build; copied, then stripped when `strip` exists).
//       --platform: the package to stage, e.g. linux-arm64-gnu (default: this machine's). Binaries built
//         elsewhere (a CI job on that platform) can be staged here with --from; their ELF / Mach-O header
//         must match the platform, so an x64 binary never lands in an arm64 package.
//       --out: default npm-platform/ (git-ignored).
//       --allow-missing-cuda: stage linux-x64 without libplm_cuda.so (for tests; never publish that).
//   node scripts/platform-packages.js optional-deps [--write]
//       prints (--write: sets) package.json's optionalDependencies: every platform package at this version.
//       Do this only once they are all published: npm ci fails on an optional dependency the registry lacks.
//
// Publishing a release: on each platform, `npm run build:prebuilt && node scripts/platform-packages.js stage`,
// then `npm publish --access public` in each staged folder, then `optional-deps --write`, `npm install` (lock
// file) and `npm publish` of perception-lm. docs/install.md has the whole procedure.
'use strict';
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');

function fail(message) {
  console.error(`platform-packages: ${message}`);
  process.exit(1);
}

function loader() {
  const file = path.join(root, 'dist', 'lib', 'addon_loader.js');
  if (!fs.existsSync(file)) fail(`${path.relative(root, file)} is missing: run npm run build:ts first`);
  return require(file);
}

function arg(name) {
  const i = process.argv.indexOf(name);
  if (i < 0) return undefined;
  const v = process.argv[i + 1];
  if (v === undefined || v.startsWith('--')) fail(`${name} needs a value`);
  return v;
}

const mainPkg = JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8'));

/** The short name of a platform package: '@perception-lm/linux-x64-gnu' -> 'linux-x64-gnu'. */
function shortName(p) {
  return p.name.split('/').pop();
}

/**
 * The CPU a native binary was built for, from its header: ELF e_machine or Mach-O cputype.
 * Returns { os, cpu } with Node's names, or undefined when the file is neither.
 */
function binaryTarget(file) {
  const fd = fs.openSync(file, 'r');
  const b = Buffer.alloc(20);
  try {
    fs.readSync(fd, b, 0, 20, 0);
  } finally {
    fs.closeSync(fd);
  }
  if (b[0] === 0x7f && b[1] === 0x45 && b[2] === 0x4c && b[3] === 0x46) {
    const machine = b[5] === 1 ? b.readUInt16LE(18) : b.readUInt16BE(18);
    const cpu = { 62: 'x64', 183: 'arm64', 3: 'ia32', 40: 'arm' }[machine];
    return { os: 'linux', cpu: cpu || `elf-machine-${machine}` };
  }
  const magic = b.readUInt32LE(0);
  if (magic === 0xfeedfacf) {
    const cputype = b.readUInt32LE(4);
    const cpu = { 0x0100000c: 'arm64', 0x01000007: 'x64' }[cputype];
    return { os: 'darwin', cpu: cpu || `macho-cputype-${cputype.toString(16)}` };
  }
  return undefined;
}

function list() {
  const { PLATFORM_PACKAGES } = loader();
  for (const p of PLATFORM_PACKAGES) {
    console.log(`${p.name}@${mainPkg.version}  os=${p.os} cpu=${p.cpu}${p.libc ? ` libc=${p.libc}` : ''}${p.cuda ? '  + libplm_cuda.so' : ''}`);
  }
}

function optionalDeps() {
  const { PLATFORM_PACKAGES } = loader();
  const deps = {};
  for (const p of PLATFORM_PACKAGES) deps[p.name] = mainPkg.version;
  if (!process.argv.includes('--write')) {
    console.log(JSON.stringify({ optionalDependencies: deps }, null, 2));
    return;
  }
  const file = path.join(root, 'package.json');
  const pkg = JSON.parse(fs.readFileSync(file, 'utf8'));
  pkg.optionalDependencies = deps;
  fs.writeFileSync(file, JSON.stringify(pkg, null, 2) + '\n');
  console.log(`platform-packages: package.json optionalDependencies set to ${Object.keys(deps).length} packages at ${mainPkg.version}; run npm install to update the lock file`);
}

function stage() {
  const { PLATFORM_PACKAGES, PLATFORM_ADDON_FILE, CUDA_LIBRARY_FILE, hostPlatform, selectPlatformPackage, describePlatform } = loader();
  const wanted = arg('--platform');
  let pkg;
  if (wanted) {
    pkg = PLATFORM_PACKAGES.find((p) => shortName(p) === wanted || p.name === wanted);
    if (!pkg) fail(`no platform package named ${wanted}; they are: ${PLATFORM_PACKAGES.map(shortName).join(', ')}`);
  } else {
    const host = hostPlatform();
    pkg = selectPlatformPackage(host);
    if (!pkg) fail(`perception-lm defines no platform package for this machine (${describePlatform(host)}); they are: ${PLATFORM_PACKAGES.map(shortName).join(', ')}`);
  }

  // Where the binaries come from.
  let from = arg('--from');
  let strip = false;
  if (!from) {
    const prebuilt = path.join(root, 'prebuilds', `${pkg.os}-${pkg.cpu}`);
    const release = path.join(root, 'build', 'Release');
    if (fs.existsSync(prebuilt)) from = prebuilt;
    else if (fs.existsSync(release)) {
      from = release;
      strip = true;
    } else fail(`no binaries to stage: run npm run build:prebuilt (or npm run build:native), or pass --from DIR`);
  } else {
    from = path.resolve(from);
    strip = true;
  }
  const addon = [PLATFORM_ADDON_FILE, 'perception_lm.node'].map((f) => path.join(from, f)).find((f) => fs.existsSync(f));
  if (!addon) fail(`${from} holds no ${PLATFORM_ADDON_FILE} or perception_lm.node`);
  const cudaLib = path.join(from, CUDA_LIBRARY_FILE);
  const withCuda = pkg.cuda && fs.existsSync(cudaLib);
  if (pkg.cuda && !withCuda && !process.argv.includes('--allow-missing-cuda')) {
    fail(`${pkg.name} must ship ${CUDA_LIBRARY_FILE} (NVIDIA users get the GPU from it) and ${from} has none: build on a ` +
      'machine with nvcc (npm run build:prebuilt builds it when nvcc is on PATH), or pass --allow-missing-cuda for a test package');
  }
  for (const f of withCuda ? [addon, cudaLib] : [addon]) {
    const t = binaryTarget(f);
    if (!t || t.os !== pkg.os || t.cpu !== pkg.cpu) {
      fail(`${f} is built for ${t ? `${t.os}-${t.cpu}` : 'an unknown format'}, not ${pkg.os}-${pkg.cpu} (${pkg.name})`);
    }
  }

  const outRoot = path.resolve(arg('--out') || path.join(root, 'npm-platform'));
  const dir = path.join(outRoot, shortName(pkg));
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  const files = [PLATFORM_ADDON_FILE];
  fs.copyFileSync(addon, path.join(dir, PLATFORM_ADDON_FILE));
  if (withCuda) {
    fs.copyFileSync(cudaLib, path.join(dir, CUDA_LIBRARY_FILE));
    files.push(CUDA_LIBRARY_FILE);
  }
  if (strip) {
    // A local build keeps its symbols; the published binary does not need them. (prebuilds/ is stripped already.)
    const stripTool = pkg.os === process.platform && pkg.cpu === process.arch ? 'strip' : null;
    for (const f of files) {
      if (!stripTool) break;
      const r = spawnSync(stripTool, pkg.os === 'darwin' ? ['-x', path.join(dir, f)] : ['--strip-unneeded', path.join(dir, f)], { stdio: 'inherit' });
      if (r.error || r.status !== 0) {
        console.warn(`platform-packages: ${stripTool} failed on ${f}; it is staged with its symbols`);
        break;
      }
    }
  }
  for (const f of ['LICENSE']) {
    if (fs.existsSync(path.join(root, f))) {
      fs.copyFileSync(path.join(root, f), path.join(dir, f));
      files.push(f);
    }
  }
  const where = `${pkg.os}-${pkg.cpu}${pkg.libc ? ` (${pkg.libc})` : ''}`;
  fs.writeFileSync(
    path.join(dir, 'README.md'),
    `# ${pkg.name}\n\nThe prebuilt native addon of [perception-lm](https://www.npmjs.com/package/perception-lm) for ${where}` +
      (withCuda ? `, with its CUDA backend (\`${CUDA_LIBRARY_FILE}\`, which needs only the NVIDIA driver)` : '') +
      '.\n\nDo not install it yourself: perception-lm lists it as an optional dependency, and npm installs it on ' +
      `${where} only. Its version always equals perception-lm's.\n`,
  );
  files.push('README.md');
  const manifest = {
    name: pkg.name,
    version: mainPkg.version,
    description: `Prebuilt native addon of perception-lm for ${where}${withCuda ? ', with the CUDA backend' : ''}`,
    license: mainPkg.license,
    repository: mainPkg.repository,
    os: [pkg.os],
    cpu: [pkg.cpu],
    ...(pkg.libc ? { libc: [pkg.libc] } : {}),
    engines: mainPkg.engines,
    files,
    exports: {
      './package.json': './package.json',
      [`./${PLATFORM_ADDON_FILE}`]: `./${PLATFORM_ADDON_FILE}`,
    },
    // Yarn PnP: a .node file and the library it dlopen()s must be real files on disk.
    preferUnplugged: true,
  };
  fs.writeFileSync(path.join(dir, 'package.json'), JSON.stringify(manifest, null, 2) + '\n');
  for (const f of files) console.log(`platform-packages: ${path.relative(root, path.join(dir, f))} ${(fs.statSync(path.join(dir, f)).size / 1048576).toFixed(2)} MiB`);
  if (pkg.cuda && !withCuda) console.warn(`platform-packages: WARNING: ${pkg.name} staged without ${CUDA_LIBRARY_FILE} (test only; do not publish)`);

  if (process.argv.includes('--pack')) {
    const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';
    const r = spawnSync(npm, ['pack', '--json', '--pack-destination', outRoot], { cwd: dir, encoding: 'utf8' });
    if (r.status !== 0) fail(`npm pack failed in ${dir}: ${r.stderr}`);
    const info = JSON.parse(r.stdout)[0];
    console.log(`platform-packages: ${path.join(outRoot, info.filename)} (${(info.size / 1048576).toFixed(2)} MiB packed, ${(info.unpackedSize / 1048576).toFixed(2)} MiB unpacked)`);
    // The last line is the tarball's path, for scripts.
    console.log(path.join(outRoot, info.filename));
  }
}

const cmd = process.argv[2];
if (cmd === 'list') list();
else if (cmd === 'stage') stage();
else if (cmd === 'optional-deps') optionalDeps();
else {
  console.error('usage: node scripts/platform-packages.js list | stage [--from DIR] [--out DIR] [--platform NAME] [--allow-missing-cuda] [--pack] | optional-deps [--write]');
  process.exit(cmd === undefined || cmd === '--help' ? 0 : 1);
}
