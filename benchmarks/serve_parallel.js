#!/usr/bin/env node
// `plm serve` with N concurrent clients vs the same N requests one after another (issue 18): each client asks
// about a different image (N solid-colour images with a different shape each), at temperature 0, with
// --max-tokens new tokens. One model, one server (parallel N, sequences N); the serial pass sends request i+1
// after request i has answered, the concurrent pass sends all N at once. Reports both wall times, their ratio
// and that the answers are the same text (temperature 0: batched decode is bitwise the serial one).
//   node benchmarks/serve_parallel.js [--model .bench/plm-1b-random] [--clients 8] [--max-tokens 128]
//        [--max-tiles 1] [--precision bf16] [--threads 2] [--json OUT]
// Needs dist/ (npm run build:ts).
'use strict';
const path = require('path');
const fs = require('fs');
const os = require('os');
const sharp = require('sharp');

const { opt } = require('./cli_args');
const root = path.resolve(__dirname, '..');
const { loadModel, cpuKernels } = require(path.join(root, 'dist', 'lib', 'index.js'));
const { startServer } = require(path.join(root, 'dist', 'lib', 'server.js'));

const modelDir = path.resolve(root, opt('model', '.bench/plm-1b-random'));
const clients = Number(opt('clients', 8));
const maxTokens = Number(opt('max-tokens', 128));
const maxTiles = Number(opt('max-tiles', 1));
const precision = opt('precision', 'bf16');
const threads = Number(opt('threads', 2));
const jsonOut = opt('json', '');

async function image(i) {
  const hue = (i * 47) % 256;
  const svg = `<svg xmlns="http://www.w3.org/2000/svg" width="448" height="448">
    <rect width="448" height="448" fill="rgb(${hue},${255 - hue},${(i * 91) % 256})"/>
    <circle cx="${100 + i * 30}" cy="${200 - i * 10}" r="${40 + i * 5}" fill="rgb(${255 - hue},${hue},40)"/></svg>`;
  const png = await sharp(Buffer.from(svg)).png().toBuffer();
  return `data:image/png;base64,${png.toString('base64')}`;
}

async function ask(url, modelId, img) {
  const t0 = performance.now();
  const r = await fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      model: modelId,
      messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: img } }, { type: 'text', text: 'Describe the image.' }] }],
      max_tokens: maxTokens,
      temperature: 0,
    }),
  });
  const body = await r.json();
  if (r.status !== 200) throw new Error(`HTTP ${r.status}: ${JSON.stringify(body)}`);
  return { ms: performance.now() - t0, text: body.choices[0].message.content, tokens: body.usage.completion_tokens };
}

(async () => {
  const images = await Promise.all(Array.from({ length: clients }, (_, i) => image(i)));
  const model = await loadModel(modelDir, { backend: 'cpu', threads, precision, sequences: clients, maxContext: 2048 });
  const modelId = path.basename(modelDir);
  const srv = await startServer({ model, modelId, port: 0, parallel: clients, maxTiles, maxTokensLimit: maxTokens });
  try {
    await ask(srv.url, modelId, await image(clients + 1)); // warm-up: weights paged in, tokenizer worker up
    await model.clearCache(); // no image features or prefixes reused from the warm-up
    const t0 = performance.now();
    const serial = [];
    for (const img of images) serial.push(await ask(srv.url, modelId, img));
    const serialMs = performance.now() - t0;
    await model.clearCache();
    const t1 = performance.now();
    const together = await Promise.all(images.map((img) => ask(srv.url, modelId, img)));
    const parallelMs = performance.now() - t1;
    const same = together.every((r, i) => r.text === serial[i].text);
    const tokens = together.reduce((a, r) => a + r.tokens, 0);
    const k = cpuKernels();
    const result = {
      date: new Date().toISOString(),
      machine: `${k.cpuModel || os.cpus()[0].model}, ${os.cpus().length} CPUs, ISA ${k.isa}`,
      load: os.loadavg()[0],
      model: modelDir,
      precision,
      threads,
      clients,
      maxTokens,
      maxTiles,
      serialMs: Math.round(serialMs),
      parallelMs: Math.round(parallelMs),
      ratio: Number((parallelMs / serialMs).toFixed(3)),
      completionTokens: tokens,
      sameAnswers: same,
    };
    console.log(
      `${clients} clients, ${maxTiles} tile(s), ${maxTokens} tokens each: serial ${(serialMs / 1000).toFixed(1)} s, ` +
        `concurrent ${(parallelMs / 1000).toFixed(1)} s (${result.ratio}x); answers ${same ? 'identical' : 'DIFFER'}; ` +
        `load ${result.load.toFixed(2)}, ${result.machine}`,
    );
    if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify(result, null, 2) + '\n');
  } finally {
    await srv.close();
    model.dispose();
  }
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
