#!/usr/bin/env node
// Peer benchmark: node-llama-cpp (llama.cpp prebuilt CPU binary) on the decoder of the same checkpoint,
// exported with benchmarks/export_gguf.py (F16 / Q8_0).
//   npm install --no-save node-llama-cpp@3.21.1
//   node benchmarks/llama_cpp_peer.js --gguf .bench/plm-1b-random-decoder-f16.gguf [--runs 3] [--prefill 512]
//        [--decode-tokens 32] [--threads 2] [--greedy 8] [--sequences 1,2,4,8] [--json OUT]
// Same synthetic token ids as benchmarks/run.js (lib/bench.ts): prefill N = time from evaluate() to the
// first sampled token for an N-token prompt; decode = tokens 2..K after a 16-token prompt (greedy).
// --greedy K prints the first K greedy tokens after the 16-token prompt (export sanity check).
// --sequences N,...: aggregate decode of N sequences of one context (createContext({ sequences: N }), N
// concurrent evaluate() calls, batched by node-llama-cpp): tokens emitted while all N generate, per second of
// that window (the same measure as benchmarks/sequences.js). Only this figure is measured when given.
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
const seqCounts = opt('sequences', '') ? opt('sequences', '').split(',').map(Number) : [];
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
  if (seqCounts.length > 0) {
    const results = { peer: `node-llama-cpp ${version}`, gguf: path.relative(root, gguf), threads, sequences: [] };
    for (const n of seqCounts) {
      const model = await llama.loadModel({ modelPath: gguf, gpuLayers: 0 });
      const ctx = await model.createContext({ contextSize: n * (16 + decodeTokens + 16), batchSize: 512, threads, sequences: n });
      const streams = await Promise.all(
        Array.from({ length: n }, async (_, i) => {
          const seq = ctx.getSequence();
          const ids = promptIds(16).map((x, k) => (k === 0 ? x : x + i));
          const times = [];
          for await (const _tok of seq.evaluate(ids, { temperature: 0 })) {
            times.push(performance.now());
            if (times.length >= decodeTokens) break;
          }
          return times;
        }),
      );
      const start = Math.max(...streams.map((t) => t[0]));
      const end = Math.min(...streams.map((t) => t[t.length - 1]));
      let k = 0;
      for (const t of streams) for (const x of t) if (x > start && x <= end) k++;
      const rate = end > start ? (k * 1000) / (end - start) : 0;
      results.sequences.push({ sequences: n, aggregateTokPerS: rate, perSequenceTokPerS: rate / n });
      console.log(`decode x${n}: ${rate.toFixed(2)} tok/s aggregate (${(rate / n).toFixed(2)} per sequence)`);
      await ctx.dispose();
      await model.dispose();
    }
    const out = opt('json', null);
    if (out) fs.writeFileSync(out, JSON.stringify(results, null, 2));
    return;
  }
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
