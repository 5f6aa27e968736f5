#!/usr/bin/env node
// prebuildify runs `<this script> rebuild <node-gyp args...>`: ignore those arguments and build with
// cmake-js instead (scripts/build-native.js --rebuild), so that build/Release/ holds the addon and,
// when nvcc exists, libplm_cuda.so (prebuildify copies shared libraries from build/Release/).
'use strict';
const path = require('path');
const { spawnSync } = require('child_process');

const root = path.resolve(__dirname, '..');
const r = spawnSync(process.execPath, [path.join(__dirname, 'build-native.js'), '--rebuild'], { cwd: root, stdio: 'inherit', env: process.env });
process.exit(r.status === null ? 1 : r.status);
