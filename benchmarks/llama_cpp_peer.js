#!/usr/bin/env node
// Peer benchmark: node-llama-cpp (llama.cpp prebuilt CPU binary) on the decoder of the same checkpoint,
// exported with benchmarks/export_gguf.py (F16 / Q8_0).
//   npm install --no-save node-llama-cpp@3.21.1
//   node benchmarks/llama_cpp_peer.js --gguf .bench/plm-1b-random-decoder-f16.gguf [--runs 3] [--prefill 512]
//        [--decode-tokens 32] [--threads 2] [--greedy 8] [--json OUT]
// Same synthetic token ids as benchmarks/run.js (lib/bench.ts): prefill N = time from evaluate() to the
// first sampled token for an N-token prompt; decode = tokens 2..K after a 16-token prompt (greedy).
// --greedy K prints the first K greedy tokens after the 16-token prompt (export sanity check).
'use strict';
const path = require('path');
const fs = require('fs');

const { opt } = require('./cli_args');
const root = path.resolve(__dirname, '..');
const gguf = path.resolve(root, opt('gguf', '.bench/plm-1b-random-decoder-f16.gguf'));
const runs = Number(opt('runs', 3));
const prefillLens = opt('prefill', '512').split(',').map(Number);
const decodeTokens = Number(opt('decode-tokens', 32));
const threads = Number(opt('threads', 2));
const greedyN = Number(opt('greedy', 8));
const median = (a) => { const s = [...a].sort((x, y) => x - y); return s[Math.floor(s.length / 2)]; };

function promptIds(n) {
  const ids = [128000];
  for (let i = 1; i < n; ++i) ids.push(1000 + ((i * 7919) % 100000));
  return ids;
}

(async () => {
  const { getLlama, LlamaLogLevel } = await import('node-llama-cpp');
  const version = JSON.parse(fs.readFileSync(path.join(root, 'node_modules', 'node-llama-cpp', 'package.json'), 'utf8')).version;
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  const t0 = Date.now();
  const model = await llama.loadModel({ modelPath: gguf, gpuLayers: 0 });
  const maxPrefill = Math.max(...prefillLens);
  const ctx = await model.createContext({ contextSize: Math.max(1024, maxPrefill + 64), batchSize: Math.max(512, maxPrefill), threads, sequences: 1 });
  const seq = ctx.getSequence();
  const results = { peer: `node-llama-cpp ${version}`, gguf: path.relative(root, gguf), threads, loadMs: Date.now() - t0 };

  async function run(ids, n) {
    await seq.clearHistory();
    const out = [];
    const t = process.hrtime.bigint();
    let tFirst = 0n;
    for await (const tok of seq.evaluate(ids, { temperature: 0 })) {
      if (out.length === 0) tFirst = process.hrtime.bigint();
      out.push(tok);
      if (out.length >= n) break;
    }
    const tEnd = process.hrtime.bigint();
    return { tokens: out, firstMs: Number(tFirst - t) / 1e6, restMs: Number(tEnd - tFirst) / 1e6 };
  }

  await run(promptIds(16), 2); // warm-up
  if (greedyN > 0) {
    const g = await run(promptIds(16), greedyN);
    results.greedyTokens = g.tokens;
    console.log(`greedy after the 16-token prompt: ${g.tokens.join(' ')}`);
  }
  const tps = [];
  for (let r = 0; r < runs; ++r) {
    const g = await run(promptIds(16), decodeTokens);
    tps.push((g.tokens.length - 1) / (g.restMs / 1000));
  }
  results.decodeTokPerS = median(tps);
  results.decodeRuns = tps;
  console.log(`decode: ${results.decodeTokPerS.toFixed(2)} tok/s (runs: ${tps.map((v) => v.toFixed(2)).join(', ')})`);
  for (const n of prefillLens) {
    const p = [];
    for (let r = 0; r < runs; ++r) {
      const g = await run(promptIds(n), 1);
      p.push(n / (g.firstMs / 1000));
    }
    results[`prefill${n}TokPerS`] = median(p);
    results[`prefill${n}Runs`] = p;
    console.log(`prefill ${n}: ${median(p).toFixed(1)} tok/s (runs: ${p.map((v) => v.toFixed(1)).join(', ')})`);
  }
  results.maxRssMB = process.resourceUsage().maxRSS / 1024;
  console.log(`peak RSS: ${results.maxRssMB.toFixed(0)} MB`);
  await ctx.dispose();
  await model.dispose();
  const out = opt('json', null);
  if (out) fs.writeFileSync(out, JSON.stringify(results, null, 2));
})().catch((e) => { console.error(e); process.exit(1); });
