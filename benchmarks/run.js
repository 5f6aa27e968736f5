#!/usr/bin/env node
// CPU benchmarks on a full-size PLM-1B-shaped random checkpoint (benchmarks/make_random_checkpoint.py).
//   node benchmarks/run.js [--model .bench/plm-1b-random] [--runs 3] [--only decode,prefill,vision,ttft]
//                          [--precision f32|bf16] [--prefill 512,4096] [--decode-tokens 32]
//                          [--quantize none|int8|q4] [--json OUT]
// Each figure is the median of --runs runs. Precision is passed to the engine through PLM_PRECISION
// (set before the addon loads). Peers: benchmarks/peers.js (node-llama-cpp), benchmarks/torch_peer.py.
'use strict';
const path = require('path');
const fs = require('fs');

const args = process.argv.slice(2);
const opt = (name, def) => {
  const i = args.indexOf(`--${name}`);
  return i >= 0 ? args[i + 1] : def;
};
const root = path.resolve(__dirname, '..');
const modelDir = path.resolve(root, opt('model', '.bench/plm-1b-random'));
const runs = Number(opt('runs', 3));
const only = opt('only', 'decode,prefill,vision,ttft').split(',');
const precision = opt('precision', 'bf16');
const prefillLens = opt('prefill', '512').split(',').map(Number);
const decodeTokens = Number(opt('decode-tokens', 32));
const threads = Number(opt('threads', 2));
const quantize = opt('quantize', 'none');
process.env.PLM_PRECISION = precision;

if (!fs.existsSync(path.join(modelDir, 'config.json'))) {
  console.error(`no checkpoint at ${modelDir}: run reference/.venv/bin/python benchmarks/make_random_checkpoint.py`);
  process.exit(1);
}
const native = require('node-gyp-build')(root);
const median = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };
const IMG = 128002;

function promptIds(n, imageTokens = 0) {
  const ids = new Int32Array(n);
  ids[0] = 128000;
  for (let i = 1; i < n; ++i) ids[i] = 1000 + ((i * 7919) % 100000);
  for (let i = 0; i < imageTokens; ++i) ids[2 + i] = IMG;
  return ids;
}
function pixels(tiles) {
  const px = new Float32Array(tiles * 3 * 448 * 448);
  for (let i = 0; i < px.length; ++i) px[i] = Math.sin(i * 0.001);
  return px;
}

(async () => {
  const t0 = Date.now();
  const model = await native.loadModel(modelDir, { backend: 'cpu', threads, maxContext: 11520, quantize }, () => {});
  const results = { machine: require('os').cpus()[0].model, threads, precision, quantize, loadMs: Date.now() - t0 };
  const cancel = () => native.createCancelToken();
  if (only.includes('decode')) {
    const tps = [];
    for (let r = 0; r < runs; ++r) {
      const g = await model.generate(promptIds(16), null, 0, { maxTokens: decodeTokens, temperature: 0, stopIds: [-1] }, () => {}, cancel());
      tps.push((g.tokens.length - 1) / (g.decodeMs / 1000));
    }
    results.decodeTokPerS = median(tps);
    console.log(`decode: ${results.decodeTokPerS.toFixed(2)} tok/s (runs: ${tps.map((v) => v.toFixed(2)).join(', ')})`);
  }
  if (only.includes('prefill')) {
    for (const n of prefillLens) {
      const tps = [];
      for (let r = 0; r < runs; ++r) {
        const g = await model.generate(promptIds(n), null, 0, { maxTokens: 1, temperature: 0, stopIds: [-1] }, () => {}, cancel());
        tps.push(n / (g.prefillMs / 1000));
      }
      results[`prefill${n}TokPerS`] = median(tps);
      console.log(`prefill ${n}: ${median(tps).toFixed(1)} tok/s (runs: ${tps.map((v) => v.toFixed(1)).join(', ')})`);
    }
  }
  if (only.includes('vision')) {
    const px = pixels(1);
    const ms = [];
    await model.encodeImages(px, 1, null);  // warm-up
    for (let r = 0; r < runs; ++r) {
      const t = process.hrtime.bigint();
      await model.encodeImages(px, 1, null);
      ms.push(Number(process.hrtime.bigint() - t) / 1e6);
    }
    results.visionMsPerTile = median(ms);
    console.log(`vision+projector: ${median(ms).toFixed(0)} ms/tile (runs: ${ms.map((v) => v.toFixed(0)).join(', ')})`);
  }
  if (only.includes('ttft')) {
    for (const tiles of (opt('ttft-tiles', '5')).split(',').map(Number)) {
      const n = tiles * 256 + 22;
      const ids = promptIds(n, tiles * 256);
      const px = pixels(tiles);
      const ms = [], vis = [], pre = [];
      for (let r = 0; r < runs; ++r) {
        const g = await model.generate(ids, px, tiles, { maxTokens: 1, temperature: 0, stopIds: [-1] }, () => {}, cancel());
        ms.push(g.visionMs + g.prefillMs);
        vis.push(g.visionMs);
        pre.push(g.prefillMs);
      }
      results[`ttft${tiles}TilesMs`] = median(ms);
      console.log(`TTFT ${tiles} tiles (${n} tokens): ${median(ms).toFixed(0)} ms (vision ${median(vis).toFixed(0)}, prefill ${median(pre).toFixed(0)})`);
    }
  }
  results.maxRssMB = process.resourceUsage().maxRSS / 1024;
  console.log(`peak RSS: ${results.maxRssMB.toFixed(0)} MB`);
  const out = opt('json', null);
  if (out) fs.writeFileSync(out, JSON.stringify(results, null, 2));
})().catch((e) => { console.error(e); process.exit(1); });
