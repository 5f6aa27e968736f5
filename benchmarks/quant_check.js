#!/usr/bin/env node
// Accuracy of weight-only quantization against the unquantized checkpoint (same activation precision):
// teacher-forced logits over a prompt (every row: top-1 agreement and KL(p_ref || p_quant) in nats), and
// greedy decode agreement (how many of the first --gen tokens match; decode runs the quantized GEMV kernels).
//   node benchmarks/quant_check.js [--model DIR] [--n 64] [--gen 32] [--precision f32|bf16] [--quant int8,q4]
'use strict';
const path = require('path');
const { opt } = require('./cli_args');
const root = path.resolve(__dirname, '..');
const native = require('node-gyp-build')(root);
const dir = path.resolve(root, opt('model', '.bench/plm-1b-random'));
const n = Number(opt('n', 64));
const gen = Number(opt('gen', 32));
const precision = opt('precision', 'f32');
const quants = opt('quant', 'int8,q4').split(',');

function logSoftmax(row) {
  let mx = -Infinity;
  for (const v of row) mx = Math.max(mx, v);
  let s = 0;
  for (const v of row) s += Math.exp(v - mx);
  const lse = mx + Math.log(s);
  return Float64Array.from(row, (v) => v - lse);
}

(async () => {
  const cfg = JSON.parse(require('fs').readFileSync(path.join(dir, 'config.json'), 'utf8'));
  const vocab = (cfg.text_config || cfg).vocab_size;
  const ids = new Int32Array(n);
  for (let i = 0; i < n; ++i) ids[i] = vocab > 128000 ? (i === 0 ? 128000 : 1000 + ((i * 7919) % 100000)) : (1 + i * 7919) % vocab;
  const run = async (quantize) => {
    const m = await native.loadModel(dir, { backend: 'cpu', threads: 2, maxContext: 4096, precision, quantize }, () => {});
    const V = m.info().config.text.vocab_size;
    const logits = (await m.forward(ids, null, 0, n, false, null)).logits;
    const g = await m.generate(ids.subarray(0, 16), null, 0, { maxTokens: gen, temperature: 0, stopIds: [-1] }, () => {}, native.createCancelToken());
    if (m.dispose) m.dispose();
    return { V, logits, tokens: Array.from(g.tokens) };
  };
  const ref = await run('none');
  const out = { model: dir, precision, prompt: n, gen, results: {} };
  for (const q of quants) {
    const r = await run(q);
    let agree = 0, klSum = 0, klMax = 0, se = 0, ss = 0;
    for (let i = 0; i < n; ++i) {
      const a = ref.logits.subarray(i * ref.V, (i + 1) * ref.V), b = r.logits.subarray(i * ref.V, (i + 1) * ref.V);
      const la = logSoftmax(a), lb = logSoftmax(b);
      let kl = 0, ia = 0, ib = 0;
      for (let j = 0; j < ref.V; ++j) {
        kl += Math.exp(la[j]) * (la[j] - lb[j]);
        se += (a[j] - b[j]) ** 2;
        ss += a[j] ** 2;
        if (a[j] > a[ia]) ia = j;
        if (b[j] > b[ib]) ib = j;
      }
      if (ia === ib) ++agree;
      klSum += kl;
      klMax = Math.max(klMax, kl);
    }
    let same = 0;
    while (same < ref.tokens.length && ref.tokens[same] === r.tokens[same]) ++same;
    const relRms = Math.sqrt(se / ss);
    out.results[q] = { top1: agree / n, klMean: klSum / n, klMax, logitsRelRms: relRms, greedyPrefixMatch: `${same}/${ref.tokens.length}` };
    console.log(`${q}: top-1 agreement ${agree}/${n}, KL mean ${(klSum / n).toExponential(2)} max ${klMax.toExponential(2)} nats, logits rel. RMS error ${relRms.toExponential(2)}, ` +
      `greedy decode identical for the first ${same}/${ref.tokens.length} tokens`);
  }
  const json = opt('json', null);
  if (json) require('fs').writeFileSync(json, JSON.stringify(out, null, 2));
})().catch((e) => { console.error(e); process.exit(1); });
