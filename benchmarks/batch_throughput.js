#!/usr/bin/env node
// Images per hour: `plm batch` over a set of images against one `plm describe` per file (each a new
// process that loads the model), on the same images with the same settings, alternated in rounds.
//
//   node benchmarks/batch_throughput.js [--model DIR] [--images 20] [--describe 10] [--max-tiles 4]
//        [--max-tokens 32] [--size 896] [--rounds 1] [--concurrency N] [--samples] [--json OUT]
//
// --samples uses copies of the bundled scenes (one pixel changed in each, so no two are the same image)
// instead of generated noise images (WxW PNGs, --size), which a PLM checkpoint needs to fill --max-tiles tiles. Both modes run greedy (temperature 0), so they
// generate the same tokens; the script checks that the texts agree. Wall clock includes model loads:
// that is the point of the comparison. Uses the built CLI (dist/lib/cli.js: npm run build:ts).
'use strict';
const { spawnSync } = require('child_process');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { opt, flag } = require('./cli_args');

const root = path.resolve(__dirname, '..');
const cli = path.join(root, 'dist', 'lib', 'cli.js');
const model = opt('model', null);
const nBatch = Number(opt('images', 20));
const nDescribe = Number(opt('describe', 10));
const maxTiles = opt('max-tiles', null);
const maxTokens = String(opt('max-tokens', 32));
const size = Number(opt('size', 896));
const rounds = Number(opt('rounds', 1));
const concurrency = opt('concurrency', null);
const useSamples = flag('samples');

async function makeImages(dir, n) {
  const sharp = require('sharp');
  if (useSamples) {
    // Distinct files (one pixel changed per copy), so that the engine's image-feature cache gets no hits.
    const samples = ['scene1.png', 'scene2.png', 'scene3.png'].map((f) => path.join(root, 'samples', f));
    const files = [];
    for (let i = 0; i < n; i++) {
      const { data, info } = await sharp(samples[i % samples.length]).removeAlpha().raw().toBuffer({ resolveWithObject: true });
      data[0] = i & 255;
      data[1] = (i >> 8) & 255;
      const f = path.join(dir, `s${String(i).padStart(3, '0')}.png`);
      await sharp(data, { raw: { width: info.width, height: info.height, channels: 3 } }).png().toFile(f);
      files.push(f);
    }
    return files;
  }
  const files = [];
  for (let i = 0; i < n; i++) {
    const px = Buffer.alloc(size * size * 3);
    let s = (i + 1) * 2654435761;
    for (let k = 0; k < px.length; k++) {
      s = (s * 1103515245 + 12345) >>> 0;
      px[k] = ((k % (size * 3)) * 255) / (size * 3) / 2 + (s >>> 25); // gradient + noise, distinct per image
    }
    const f = path.join(dir, `img${String(i).padStart(3, '0')}.png`);
    await sharp(px, { raw: { width: size, height: size, channels: 3 } }).png({ compressionLevel: 1 }).toFile(f);
    files.push(f);
  }
  return files;
}

function common() {
  return [
    ...(model ? ['--model', path.resolve(model)] : []),
    ...(maxTiles ? ['--max-tiles', maxTiles] : []),
    '--max-tokens', maxTokens,
    '--temperature', '0',
    '-q',
  ];
}

function timed(args) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', maxBuffer: 1 << 26 });
  const ms = Number(process.hrtime.bigint() - t0) / 1e6;
  if (r.status !== 0) throw new Error(`plm ${args.join(' ')} failed: ${r.stderr}`);
  return { ms, stdout: r.stdout };
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-batch-bench-'));
  try {
    const images = await makeImages(dir, Math.max(nBatch, nDescribe));
    const manifest = path.join(dir, 'items.jsonl');
    fs.writeFileSync(manifest, images.slice(0, nBatch).map((f, i) => JSON.stringify({ id: `i${i}`, image: f })).join('\n') + '\n');
    const loadBefore = os.loadavg();
    const res = { describe: [], batch: [] };
    const describeText = new Map();
    let batchRecords = [];
    for (let r = 0; r < rounds; r++) {
      const d = [];
      for (let i = 0; i < nDescribe; i++) {
        const t = timed(['describe', images[i], '--json', ...common()]);
        d.push(t.ms);
        describeText.set(images[i], JSON.parse(t.stdout).text);
      }
      res.describe.push({ images: nDescribe, ms: d.reduce((a, b) => a + b, 0), perImageMs: d });
      const out = path.join(dir, `out-${r}.jsonl`);
      const b = timed(['batch', manifest, '-o', out, '--json', ...(concurrency ? ['--concurrency', concurrency] : []), ...common()]);
      const summary = JSON.parse(b.stdout);
      batchRecords = fs.readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l));
      res.batch.push({ images: nBatch, ms: b.ms, loadMs: summary.loadMs, failed: summary.failed });
    }
    let same = 0;
    let compared = 0;
    for (const rec of batchRecords) {
      if (!describeText.has(rec.image)) continue;
      compared++;
      if (describeText.get(rec.image) === rec.text) same++;
    }
    const perHour = (runs) => {
      const n = runs.reduce((a, x) => a + x.images, 0);
      const ms = runs.reduce((a, x) => a + x.ms, 0);
      return Math.round((n * 3_600_000) / ms);
    };
    const rec0 = batchRecords[0] || {};
    const result = {
      model: rec0.model ? rec0.model.name : model,
      maxTiles: maxTiles ? Number(maxTiles) : null,
      numTiles: rec0.numTiles,
      promptTokens: rec0.promptTokens,
      completionTokens: rec0.completionTokens,
      maxTokens: Number(maxTokens),
      images: useSamples ? 'bundled scenes, distinct copies' : `${size}x${size} png`,
      concurrency: concurrency ? Number(concurrency) : 'default',
      describePerHour: perHour(res.describe),
      batchPerHour: perHour(res.batch),
      speedup: Number((perHour(res.batch) / perHour(res.describe)).toFixed(2)),
      textsAgree: `${same}/${compared}`,
      describe: res.describe.map((x) => ({ images: x.images, s: +(x.ms / 1000).toFixed(1), meanPerImageS: +(x.ms / x.images / 1000).toFixed(2) })),
      batch: res.batch.map((x) => ({ images: x.images, s: +(x.ms / 1000).toFixed(1), loadS: +(x.loadMs / 1000).toFixed(1), failed: x.failed })),
      loadavg: { before: loadBefore.map((x) => +x.toFixed(2)), after: os.loadavg().map((x) => +x.toFixed(2)) },
      cpus: os.cpus().length,
      date: new Date().toISOString(),
    };
    console.log(JSON.stringify(result, null, 2));
    const outJson = opt('json', null);
    if (outJson) fs.writeFileSync(outJson, JSON.stringify(result, null, 2));
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
