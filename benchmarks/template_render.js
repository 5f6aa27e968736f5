#!/usr/bin/env node
// Chat-template rendering cost: the unbudgeted @huggingface/jinja renderer, our budgeted renderer
// (lib/template_budget.ts) and a worker-thread round trip (the alternative), on the PLM template with
// 2 and 200 messages; then how long each hostile template blocks the JS thread before its ERR_TEMPLATE.
// Needs `npm run build:ts`. Usage: node benchmarks/template_render.js
'use strict';
const { Worker } = require('worker_threads');
const os = require('os');
const { Template } = require('@huggingface/jinja');
const { ChatTemplate, PLM_CHAT_TEMPLATE } = require('../dist/lib/chat_template');

function msgs(n) {
  return Array.from({ length: n }, (_, i) => ({
    role: i % 2 === 0 ? 'user' : 'assistant',
    content: [{ type: 'text', text: `message ${i} `.repeat(20) }],
  }));
}

function timeIt(fn, iters) {
  fn();
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < iters; i++) fn();
  return Number(process.hrtime.bigint() - t0) / 1e6 / iters;
}

async function main() {
  console.log(`node ${process.version}, ${os.cpus()[0].model}, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  const plain = new Template(PLM_CHAT_TEMPLATE);
  const ours = new ChatTemplate(PLM_CHAT_TEMPLATE, { bos_token: '<|begin_of_text|>' });
  const worker = new Worker(
    `const { parentPort } = require('worker_threads'); const { Template } = require(${JSON.stringify(require.resolve('@huggingface/jinja'))});
     const t = new Template(${JSON.stringify(PLM_CHAT_TEMPLATE)});
     parentPort.on('message', (ctx) => parentPort.postMessage(t.render(ctx)));`,
    { eval: true },
  );
  const viaWorker = (ctx) => new Promise((res) => { worker.once('message', res); worker.postMessage(ctx); });
  for (const n of [2, 200]) {
    const m = msgs(n);
    const ctx = { bos_token: '<|begin_of_text|>', add_generation_prompt: true, messages: m };
    const iters = n === 2 ? 2000 : 50;
    // A/B/A/B: unbudgeted, budgeted.
    const a1 = timeIt(() => plain.render(ctx), iters);
    const b1 = timeIt(() => ours.render(m), iters);
    const a2 = timeIt(() => plain.render(ctx), iters);
    const b2 = timeIt(() => ours.render(m), iters);
    await viaWorker(ctx);
    const t0 = process.hrtime.bigint();
    for (let i = 0; i < iters; i++) await viaWorker(ctx);
    const w = Number(process.hrtime.bigint() - t0) / 1e6 / iters;
    console.log(`${n} messages: unbudgeted ${a1.toFixed(3)} / ${a2.toFixed(3)} ms, budgeted ${b1.toFixed(3)} / ${b2.toFixed(3)} ms, worker round trip ${w.toFixed(3)} ms`);
  }
  await worker.terminate();
  const hostile = {
    'range(1e8) loop': '{% for i in range(100000000) %}x{% endfor %}',
    'range(1e7)|join': "{{ range(10000000)|join(',') }}",
    '5000 x 5000 loops': '{% for i in range(5000) %}{% for j in range(5000) %}{{ j }}{% endfor %}{% endfor %}',
    '400^3 loops': '{% for i in range(400) %}{% for j in range(400) %}{% for k in range(400) %}.{% endfor %}{% endfor %}{% endfor %}',
    'binary macro recursion': '{% macro g(n) %}{% if n > 0 %}{{ g(n - 1) }}{{ g(n - 1) }}{% endif %}{% endmacro %}{{ g(40) }}',
    'linear macro recursion': '{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}',
    'string doubling': "{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
  };
  for (const [name, src] of Object.entries(hostile)) {
    const t0 = process.hrtime.bigint();
    let code = 'none';
    let limit = '';
    try {
      new ChatTemplate(src).render(msgs(2));
    } catch (e) {
      code = e.code;
      limit = (/limit (max\w+)/.exec(e.message) || [])[1] || e.message.slice(0, 60);
    }
    console.log(`${name}: ${code} ${limit} after ${(Number(process.hrtime.bigint() - t0) / 1e6).toFixed(0)} ms`);
  }
}
main();
