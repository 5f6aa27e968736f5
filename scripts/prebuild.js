#!/usr/bin/env node
// `npm run build:prebuilt`: builds prebuilds/<platform>-<arch>/perception-lm.node (N-API, stripped) with
// prebuildify, using cmake-js through scripts/prebuild-node-gyp.js. Shared libraries that the build
// leaves in build/Release/ (libplm_cuda.so when nvcc exists) are copied next to the addon.
// PLM_CMAKE_ARGS passes CMake definitions (e.g. "-DPLM_CUDA=OFF").
//
// The build runs in a staging copy of the sources (os.tmpdir()), so that the developer's build/
// is not wiped by `cmake-js rebuild`; the result is copied to <root>/prebuilds/.
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const stage = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-prebuild-'));
for (const f of ['package.json', 'CMakeLists.txt', 'native', 'bindings', 'scripts']) {
  if (fs.existsSync(path.join(root, f))) fs.cpSync(path.join(root, f), path.join(stage, f), { recursive: true });
}
fs.symlinkSync(path.join(root, 'node_modules'), path.join(stage, 'node_modules'), 'dir');
const prebuildify = require.resolve('prebuildify/bin.js');
const wrapper = path.join(stage, 'scripts', 'prebuild-node-gyp.js');
fs.chmodSync(wrapper, 0o755); // prebuildify spawns it directly
const args = [prebuildify, '--napi', '--strip', '--node-gyp', wrapper];
const t0 = Date.now();
const r = spawnSync(process.execPath, args, { cwd: stage, stdio: 'inherit', env: process.env });
if (r.status !== 0) {
  console.error(`perception-lm: prebuildify failed (staging dir ${stage} kept)`);
  process.exit(r.status === null ? 1 : r.status);
}
const platformDir = `${process.platform}-${process.arch}`;
const dir = path.join(root, 'prebuilds', platformDir);
fs.rmSync(dir, { recursive: true, force: true });
fs.mkdirSync(dir, { recursive: true });
fs.cpSync(path.join(stage, 'prebuilds', platformDir), dir, { recursive: true });
// Belt and braces: prebuildify copies shared libraries itself; copy any it missed.
const release = path.join(stage, 'build', 'Release');
if (fs.existsSync(release)) {
  for (const f of fs.readdirSync(release)) {
    if (/\.(so|so\.\d+|dylib|dll)$/.test(f) && !fs.existsSync(path.join(dir, f))) fs.copyFileSync(path.join(release, f), path.join(dir, f));
  }
}
for (const f of fs.readdirSync(dir)) {
  console.log(`perception-lm: prebuilds/${path.basename(dir)}/${f} ${(fs.statSync(path.join(dir, f)).size / 1048576).toFixed(2)} MiB`);
}
fs.rmSync(stage, { recursive: true, force: true });
console.log(`perception-lm: prebuild done in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
