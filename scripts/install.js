#!/usr/bin/env node
// npm install hook: use a prebuilt binary when one fits this platform, else build from source.
// PLM_BUILD_FROM_SOURCE=1 forces a source build.
'use strict';
const fs = require('fs');
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');

function prebuildFits() {
  try {
    // node-gyp-build resolves build/Release first, then prebuilds/<platform>-<arch>/ with the N-API tag.
    require('node-gyp-build').path(root);
    return true;
  } catch {
    return false;
  }
}

if (process.env.PLM_BUILD_FROM_SOURCE !== '1' && prebuildFits()) {
  console.log('perception-lm: using the prebuilt native addon');
  process.exit(0);
}
if (!fs.existsSync(path.join(root, 'CMakeLists.txt'))) {
  console.error('perception-lm: no prebuilt binary fits this platform and the sources are missing');
  process.exit(1);
}
console.log('perception-lm: building the native addon from source (cmake-js)');
const r = spawnSync(process.execPath, [path.join(__dirname, 'build-native.js')], { cwd: root, stdio: 'inherit' });
process.exit(r.status === null ? 1 : r.status);
