#!/usr/bin/env node
// Pools several interleaved runs of benchmarks/compare.js: each figure becomes the median of every run of every
// round of every run directory given, ours against the same peer as in compare.js.
//   node benchmarks/pool_runs.js .bench/compare_a .bench/compare_b [...]
'use strict';
const fs = require('fs');
const path = require('path');

const dirs = process.argv.slice(2);
if (!dirs.length) {
  console.error('usage: node benchmarks/pool_runs.js DIR [DIR...] (output folders of benchmarks/compare.js)');
  process.exit(1);
}
const median = (v) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
// Every value of `key` in DIR/CHILD_r*.json (or DIR/CHILD.json for a single round).
function runs(child, key) {
  const all = [];
  for (const dir of dirs)
    for (const f of fs.readdirSync(dir))
      if (f === `${child}.json` || (f.startsWith(`${child}_r`) && f.endsWith('.json'))) {
        const j = JSON.parse(fs.readFileSync(path.join(dir, f), 'utf8'));
        if (Array.isArray(j[key])) all.push(...j[key]);
      }
  return all;
}
// [label, ours child, peer child, runs key, lower is better]
const rows = [
  ['decode tok/s, bf16 vs llama.cpp F16', 'ours_bf16', 'llama_cpp_f16', 'decodeRuns', false],
  ['decode tok/s, int8 vs llama.cpp Q8_0', 'ours_int8', 'llama_cpp_q8_0', 'decodeRuns', false],
  ['decode tok/s, bf16 vs torch bf16', 'ours_bf16', 'torch_bf16', 'decodeRuns', false],
  ['prefill 512 tok/s vs torch bf16', 'ours_bf16', 'torch_bf16', 'prefill512Runs', false],
  ['prefill 4096 tok/s vs torch bf16', 'ours_bf16', 'torch_bf16', 'prefill4096Runs', false],
  ['vision ms per tile vs torch bf16', 'ours_bf16', 'torch_bf16', 'visionRuns', true],
  ['TTFT 4 tiles ms vs torch bf16', 'ours_bf16', 'torch_bf16', 'ttft4Runs', true],
  ['TTFT 5 tiles ms vs torch bf16', 'ours_bf16', 'torch_bf16', 'ttft5Runs', true],
  ['TTFT 36 tiles ms vs torch bf16', 'ours_bf16', 'torch_bf16', 'ttft36Runs', true],
];
console.log(`Pooled over ${dirs.join(', ')}\n\n| figure | ours [runs] | peer [runs] | ours vs peer |\n| --- | --- | --- | --- |`);
for (const [label, ours, peer, key, lower] of rows) {
  const a = runs(ours, key), b = runs(peer, key);
  if (!a.length || !b.length) continue;
  const ma = median(a), mb = median(b);
  console.log(`| ${label} | ${ma.toFixed(1)} [${a.length}] | ${mb.toFixed(1)} [${b.length}] | ${(lower ? mb / ma : ma / mb).toFixed(2)}x |`);
}
