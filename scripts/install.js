#!/usr/bin/env node
// npm install hook: use a prebuilt binary when one loads on this machine, else build from source.
//
// - Installed from npm: the addon loader (dist/lib/addon_loader.js) tries build/Release, the platform package
//   (@perception-lm/<os>-<cpu>[-<libc>], an optional dependency) and prebuilds/; when one loads, nothing is built.
// - A git checkout builds from source (its own native/ may differ from any published binary), unless
//   build/Release already holds an addon (`npm run build:native` rebuilds it).
// - PLM_BUILD_FROM_SOURCE=1 forces a source build; PLM_BUILD_FROM_SOURCE=0 makes a checkout use the loader.
// - Windows stops here with the loader's ERR_UNSUPPORTED_PLATFORM message: there is no build for it.
'use strict';
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const force = process.env.PLM_BUILD_FROM_SOURCE;
const checkout = fs.existsSync(path.join(root, '.git'));
const loaderFile = path.join(root, 'dist', 'lib', 'addon_loader.js');

function buildFromSource() {
  if (!fs.existsSync(path.join(root, 'CMakeLists.txt'))) {
    console.error('perception-lm: no prebuilt binary fits this platform and the native sources are missing from the package');
    process.exit(1);
  }
  console.log('perception-lm: building the native addon from source (cmake-js)');
  const r = spawnSync(process.execPath, [path.join(__dirname, 'build-native.js')], { cwd: root, stdio: 'inherit' });
  process.exit(r.status === null ? 1 : r.status);
}

if (force === '1') buildFromSource();
if (checkout && force !== '0') {
  if (fs.existsSync(path.join(root, 'build', 'Release', 'perception_lm.node'))) {
    console.log('perception-lm: git checkout with build/Release/perception_lm.node: not rebuilt (npm run build:native does)');
    process.exit(0);
  }
  buildFromSource();
}
if (fs.existsSync(loaderFile)) {
  const loader = require(loaderFile);
  try {
    const { source, file } = loader.loadAddon(root);
    console.log(`perception-lm: using the prebuilt native addon (${source}: ${path.relative(root, file) || file})`);
    process.exit(0);
  } catch (e) {
    if (e && e.code === 'ERR_UNSUPPORTED_PLATFORM') {
      console.error(`perception-lm: ${e.message}`);
      process.exit(1);
    }
    console.log(`perception-lm: no prebuilt binary loads here, so it is built from source. What was tried:\n${e && e.message}`);
  }
}
buildFromSource();
