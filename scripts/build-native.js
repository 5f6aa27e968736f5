#!/usr/bin/env node
// Builds the native addon (and the CUDA library when nvcc is present) from source with cmake-js.
// Fails early with an install hint when a required system tool is missing.
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');

const root = path.resolve(__dirname, '..');

function have(cmd, args = ['--version']) {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return r.status === 0;
}

function fail(message) {
  console.error(`perception-lm: ${message}`);
  process.exit(1);
}

if (!have('cmake')) {
  fail('cmake was not found on PATH. Install it (Debian/Ubuntu: apt-get install cmake; macOS: brew install cmake) ' +
    'or use a platform with a prebuilt binary.');
}
const cxx = process.env.CXX || 'c++';
if (!have(cxx)) {
  fail(`a C++17 compiler (${cxx}) was not found. Install one (Debian/Ubuntu: apt-get install g++; ` +
    'macOS: xcode-select --install).');
}

const cmakeJs = require.resolve('cmake-js/bin/cmake-js');
// Extra CMake definitions, e.g. PLM_CMAKE_ARGS="-DPLM_CUDA=OFF -DPLM_CUDA_ARCHS=90a-real". They only take
// effect at configure time, so their presence makes this a full configure + build ('rebuild').
const defs = (process.env.PLM_CMAKE_ARGS || '').split(/\s+/).filter(Boolean);
const args = [cmakeJs, process.argv.includes('--rebuild') || defs.length > 0 ? 'rebuild' : 'build'];
for (const def of defs) args.push(`--CD${def.replace(/^-D/, '')}`);
const parallel = process.env.CMAKE_BUILD_PARALLEL_LEVEL || String(require('os').availableParallelism?.() || 2);
const r = spawnSync(process.execPath, args, {
  cwd: root,
  stdio: 'inherit',
  env: { ...process.env, CMAKE_BUILD_PARALLEL_LEVEL: parallel },
});
process.exit(r.status === null ? 1 : r.status);
