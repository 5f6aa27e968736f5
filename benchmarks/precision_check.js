#!/usr/bin/env node
// bf16-activation error vs the f32 path on the same checkpoint: max abs logits difference over the last
// `rows` positions of a prompt, and whether the argmax agrees. node benchmarks/precision_check.js [model] [n]
'use strict';
const path = require('path');
const root = path.resolve(__dirname, '..');
const native = require('node-gyp-build')(root);
const dir = path.resolve(root, process.argv[2] || '.bench/plm-1b-random');
const n = Number(process.argv[3] || 256);
(async () => {
  const ids = new Int32Array(n);
  ids[0] = 128000;
  for (let i = 1; i < n; ++i) ids[i] = 1000 + ((i * 7919) % 100000);
  const rows = 8;
  const out = {};
  for (const p of ['f32', 'bf16']) {
    process.env.PLM_PRECISION = p;
    const m = await native.loadModel(dir, { backend: 'cpu', threads: 2, maxContext: 4096 }, () => {});
    out[p] = (await m.forward(ids, null, 0, rows, false, null)).logits;
    out.V = m.info().config.text.vocab_size;
    if (m.dispose) m.dispose();
  }
  let maxErr = 0, maxMag = 0, agree = 0;
  for (let r = 0; r < rows; ++r) {
    const a = out.f32.subarray(r * out.V, (r + 1) * out.V), b = out.bf16.subarray(r * out.V, (r + 1) * out.V);
    let ia = 0, ib = 0;
    for (let i = 0; i < out.V; ++i) {
      maxErr = Math.max(maxErr, Math.abs(a[i] - b[i]));
      maxMag = Math.max(maxMag, Math.abs(a[i]));
      if (a[i] > a[ia]) ia = i;
      if (b[i] > b[ib]) ib = i;
    }
    if (ia === ib) ++agree;
  }
  console.log(`prompt ${n}, last ${rows} rows: max |logits_bf16 - logits_f32| = ${maxErr.toExponential(2)} ` +
    `(max |logit| ${maxMag.toFixed(1)}), argmax agreement ${agree}/${rows}`);
})().catch((e) => { console.error(e); process.exit(1); });
