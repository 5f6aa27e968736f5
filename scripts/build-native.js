#!/usr/bin/env node
// Builds the native addon (and the CUDA library when nvcc is present) from source with cmake-js.
// Fails early, naming everything that is missing and how to install it: cmake, a C++17 compiler, and the
// npm build tools cmake-js and node-addon-api (devDependencies, so a user whose install fell back to a
// source build does not have them: a prebuilt binary needs neither).
'use strict';
const { spawnSync } = require('child_process');
const path = require('path');

const root = path.resolve(__dirname, '..');

function have(cmd, args = ['--version']) {
  const r = spawnSync(cmd, args, { stdio: 'ignore' });
  return r.status === 0;
}

/** The version this package pins for a devDependency, for the install hint. */
function devVersion(name) {
  try {
    return require(path.join(root, 'package.json')).devDependencies[name] || 'latest';
  } catch {
    return 'latest';
  }
}

function resolves(request) {
  try {
    require.resolve(request, { paths: [root] });
    return true;
  } catch {
    return false;
  }
}

const problems = [];
if (!have('cmake')) {
  problems.push('cmake was not found on PATH. Install it (Debian/Ubuntu: apt-get install cmake; macOS: brew install cmake).');
}
const cxx = process.env.CXX || 'c++';
if (!have(cxx)) {
  problems.push(`a C++17 compiler (${cxx}) was not found. Install one (Debian/Ubuntu: apt-get install g++; ` +
    'macOS: xcode-select --install).');
}
const missing = [['cmake-js', 'cmake-js/bin/cmake-js'], ['node-addon-api', 'node-addon-api']].filter(([, req]) => !resolves(req)).map(([name]) => name);
if (missing.length > 0) {
  problems.push(`the npm build tools ${missing.join(' and ')} are missing (devDependencies of perception-lm, not installed ` +
    'with it). In your project run\n' +
    `    npm install --save-dev ${missing.map((m) => `${m}@${devVersion(m)}`).join(' ')}\n` +
    '  then your install again (npm install; or npm rebuild perception-lm when it is already in node_modules).');
}
if (problems.length > 0) {
  console.error('perception-lm: cannot build the native addon from source:\n' + problems.map((p) => `  - ${p}`).join('\n') +
    '\nOr use a platform with a prebuilt binary (docs/install.md in the package lists them).');
  process.exit(1);
}

const cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
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
