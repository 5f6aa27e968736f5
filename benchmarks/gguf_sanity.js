#!/usr/bin/env node
// Sanity check of benchmarks/export_gguf.py: greedy tokens from llama.cpp (node-llama-cpp) on the exported
// decoder vs ours (precision f32) on the same prompts (the synthetic ids of benchmarks/run.js).
//   node benchmarks/gguf_sanity.js [--gguf .bench/plm-1b-random-decoder-f16.gguf] [--model .bench/plm-1b-random] [--tokens 8]
'use strict';
const path = require('path');
const { opt } = require('./cli_args');
const root = path.resolve(__dirname, '..');
const gguf = path.resolve(root, opt('gguf', '.bench/plm-1b-random-decoder-f16.gguf'));
const modelDir = path.resolve(root, opt('model', '.bench/plm-1b-random'));
const K = Number(opt('tokens', 8));
process.env.PLM_PRECISION = 'f32';
const ids = (n) => { const a = [128000]; for (let i = 1; i < n; ++i) a.push(1000 + ((i * 7919) % 100000)); return a; };
const lens = [16, 40, 100, 300];
(async () => {
  const native = require('node-gyp-build')(root);
  const ours = await native.loadModel(modelDir, { backend: 'cpu', threads: 2, maxContext: 2048, quantize: 'none', precision: 'f32' }, () => {});
  const { getLlama, LlamaLogLevel } = await import('node-llama-cpp');
  const llama = await getLlama({ gpu: false, build: 'never', logLevel: LlamaLogLevel.error });
  const lm = await llama.loadModel({ modelPath: gguf, gpuLayers: 0 });
  const ctx = await lm.createContext({ contextSize: 1024, batchSize: 512, threads: 2 });
  const seq = ctx.getSequence();
  let agree = 0, total = 0;
  for (const n of lens) {
    const g = await ours.generate(Int32Array.from(ids(n)), null, 0, { maxTokens: K, temperature: 0, stopIds: [-1] }, () => {}, native.createCancelToken());
    const a = Array.from(g.tokens);
    await seq.clearHistory();
    const b = [];
    for await (const t of seq.evaluate(ids(n), { temperature: 0 })) { b.push(t); if (b.length >= K) break; }
    let k = 0; while (k < Math.min(a.length, b.length) && a[k] === b[k]) ++k;
    agree += k; total += K;
    console.log(`prompt ${n}: ours ${a.join(' ')} | llama.cpp ${b.join(' ')} | common prefix ${k}/${K}`);
  }
  console.log(`common greedy prefix: ${agree}/${total}`);
  process.exit(0);
})().catch((e) => { console.error(e); process.exit(1); });
