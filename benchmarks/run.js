#!/usr/bin/env node
// CPU benchmarks on a full-size PLM-1B-shaped random checkpoint (benchmarks/make_random_checkpoint.py).
//   node benchmarks/run.js [--model .bench/plm-1b-random] [--runs 3] [--only decode,prefill,vision,ttft]
//                          [--precision f32|bf16|auto] [--prefill 512,4096] [--decode-tokens 32]
//                          [--ttft-tiles 5] [--threads 2] [--quantize none|int8|q4] [--json OUT]
// Each figure is the median of --runs runs. The measuring code is lib/bench.ts (shipped as `plm bench`),
// loaded from dist/ (npm run build:ts). Side by side with the peers: benchmarks/compare.js
// (benchmarks/torch_peer.py, benchmarks/llama_cpp_peer.js).
'use strict';
const path = require('path');
const fs = require('fs');

const { opt } = require('./cli_args');
const root = path.resolve(__dirname, '..');
const modelDir = path.resolve(root, opt('model', '.bench/plm-1b-random'));
const precision = opt('precision', 'bf16');
process.env.PLM_PRECISION = precision; // older engines read only the env var

if (!fs.existsSync(path.join(modelDir, 'config.json'))) {
  console.error(`no checkpoint at ${modelDir}: run reference/.venv/bin/python benchmarks/make_random_checkpoint.py`);
  process.exit(1);
}
const benchJs = path.join(root, 'dist', 'lib', 'bench.js');
if (!fs.existsSync(benchJs)) {
  console.error(`${path.relative(root, benchJs)} is missing: run npm run build:ts`);
  process.exit(1);
}
const { runBench } = require(benchJs);

runBench({
  model: modelDir,
  runs: Number(opt('runs', 3)),
  only: opt('only', 'decode,prefill,vision,ttft').split(','),
  precision,
  quantize: opt('quantize', 'none'),
  prefill: opt('prefill', '512').split(',').map(Number),
  decodeTokens: Number(opt('decode-tokens', 32)),
  ttftTiles: opt('ttft-tiles', '5').split(',').map(Number),
  threads: Number(opt('threads', 2)),
  maxContext: 11520,
  log: (line) => console.log(line),
})
  .then((results) => {
    const out = opt('json', null);
    if (out) fs.writeFileSync(out, JSON.stringify(results, null, 2));
  })
  .catch((e) => { console.error(e); process.exit(1); });
