#!/usr/bin/env node
// Many sequences on one model (issue 18), ours: aggregate decode throughput with N concurrent sequences, the
// time to first token of a chat's second turn about an image, and the KV cache memory of N long sequences.
//   node benchmarks/sequences.js [--model .bench/plm-1b-random] [--precision bf16] [--threads 2]
//        [--sequences 1,2,4,8] [--prompt 16] [--decode-tokens 48] [--chat-tiles 4] [--question 20]
//        [--only decode,chat,memory,stream] [--kv-model DIR] [--kv-tokens 4096] [--json OUT]
// Decode: N requests of --prompt tokens each start together; the rate is the number of tokens emitted while
// all N were generating divided by the length of that window (the steady state; prefill excluded).
// Chat: turn 1 = an image of --chat-tiles tiles + a short question; turn 2 = a --question-token question; the
// time to first token of each (turn 2 reuses turn 1's cached context).
// Memory: N sequences of --kv-tokens prompt tokens on --kv-model (a checkpoint with the KV geometry of the
// model under test, e.g. benchmarks/make_kv_geometry_checkpoint.py): KV bytes held vs N x tokens x bytes per
// token, and the resident memory before/after.
// Stream: one sequence generates while a request with a --chat-tiles image arrives: its token gaps before and
// during the newcomer's prompt, and the newcomer's time to first token, against that request alone.
// The peer (node-llama-cpp with sequences: N on the same weights) is benchmarks/llama_cpp_peer.js --sequences.
'use strict';
const path = require('path');
const fs = require('fs');
const os = require('os');

const { opt } = require('./cli_args');
const root = path.resolve(__dirname, '..');
const { loadModel } = require(path.join(root, 'dist', 'lib', 'index.js'));

const modelDir = path.resolve(root, opt('model', '.bench/plm-1b-random'));
const precision = opt('precision', 'bf16');
const threads = Number(opt('threads', 2));
const seqCounts = opt('sequences', '1,2,4,8').split(',').map(Number);
const promptLen = Number(opt('prompt', 16));
const decodeTokens = Number(opt('decode-tokens', 48));
const chatTiles = Number(opt('chat-tiles', 4));
const questionLen = Number(opt('question', 20));
const only = opt('only', 'decode,chat,memory,stream').split(',');
const kvModel = opt('kv-model', '');
const kvTokens = Number(opt('kv-tokens', 4096));
const jsonOut = opt('json', '');

function ids(n, seed) {
  const out = [128000];
  let s = seed >>> 0;
  while (out.length < n) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    out.push(1000 + (s % 100000));
  }
  return out;
}

/** Tokens emitted by all streams while every one of them was generating, per second. */
function steadyRate(streams) {
  const start = Math.max(...streams.map((t) => t[0]));
  const end = Math.min(...streams.map((t) => t[t.length - 1]));
  let n = 0;
  for (const t of streams) for (const x of t) if (x > start && x <= end) n++;
  return end > start ? (n * 1000) / (end - start) : 0;
}

async function decode(results) {
  const model = await loadModel(modelDir, { backend: 'cpu', threads, precision, sequences: Math.max(...seqCounts), maxContext: 2048 });
  try {
    await model.complete({ inputIds: ids(promptLen, 1), maxTokens: 4 });  // warm-up
    const rows = [];
    for (const n of seqCounts) {
      await model.clearCache();
      const streams = [];
      const t0 = performance.now();
      await Promise.all(
        Array.from({ length: n }, async (_, i) => {
          const times = [];
          for await (const c of model.generate({ inputIds: ids(promptLen, 100 + i), maxTokens: decodeTokens, temperature: 0, stopTokenIds: [] })) {
            if (c.tokenId >= 0) times.push(performance.now());
          }
          streams.push(times);
        }),
      );
      const wall = performance.now() - t0;
      const rate = steadyRate(streams);
      rows.push({ sequences: n, aggregateTokPerS: rate, perSequenceTokPerS: rate / n, wallMs: wall, tokens: streams.reduce((a, s) => a + s.length, 0) });
      console.log(`decode x${n}: ${rate.toFixed(2)} tok/s aggregate (${(rate / n).toFixed(2)} per sequence), ${(wall / 1000).toFixed(1)} s wall`);
    }
    const one = rows.find((r) => r.sequences === 1);
    for (const r of rows) r.vsSingle = one ? r.aggregateTokPerS / one.aggregateTokPerS : null;
    results.decode = rows;
  } finally {
    model.dispose();
  }
}

async function chat(results) {
  const model = await loadModel(modelDir, { backend: 'cpu', threads, precision, sequences: 2 });
  try {
    const S = model.config.vision.image_size;
    // A deterministic synthetic image of chatTiles tiles' worth of pixels: W x H so the tiling gives that many.
    const { preprocessImage } = require(path.join(root, 'dist', 'lib', 'index.js'));
    // chatTiles tiles in all: a (chatTiles - 1) x 1 grid plus the thumbnail (one tile when chatTiles is 1).
    const w = S * Math.max(1, chatTiles - 1), h = S;
    const data = Buffer.alloc(w * h * 3);
    for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
    const image = { data, width: w, height: h, channels: 3 };
    const maxNumTiles = Math.max(1, chatTiles - 1);
    const pre = await preprocessImage(image, { tileSize: S, maxNumTiles });
    const c = model.createChat({ maxTokens: 32, temperature: 0 });
    const q2 = Array.from({ length: questionLen }, (_, i) => ['what', 'colour', 'is', 'the', 'shape', 'at', 'left'][i % 7]).join(' ');
    const t1 = await c.send({ text: 'Describe the image.', images: [image] }, { maxNumTiles });
    const t2 = await c.send(q2);
    const tok = model.tokenizer ? model.tokenizer.encode(q2).length : null;
    results.chat = {
      tiles: pre.numTiles,
      turn1: { ttftMs: t1.timings.timeToFirstTokenMs, promptTokens: t1.timings.promptTokens, visionMs: t1.timings.visionMs, prefillMs: t1.timings.prefillMs },
      turn2: { ttftMs: t2.timings.timeToFirstTokenMs, promptTokens: t2.timings.promptTokens, cachedTokens: t2.timings.cachedTokens, questionTokens: tok, prefillMs: t2.timings.prefillMs },
      ratio: t2.timings.timeToFirstTokenMs / t1.timings.timeToFirstTokenMs,
    };
    console.log(`chat: turn 1 TTFT ${t1.timings.timeToFirstTokenMs.toFixed(0)} ms (${pre.numTiles} tiles, ${t1.timings.promptTokens} tokens); ` +
      `turn 2 TTFT ${t2.timings.timeToFirstTokenMs.toFixed(0)} ms (${t2.timings.promptTokens - t2.timings.cachedTokens} new of ${t2.timings.promptTokens} tokens): ${(100 * results.chat.ratio).toFixed(1)}%`);
    c.dispose();
  } finally {
    model.dispose();
  }
}

function syntheticImage(S, tiles) {
  // tiles in all: a (tiles - 1) x 1 grid plus the thumbnail.
  const w = S * Math.max(1, tiles - 1), h = S;
  const data = Buffer.alloc(w * h * 3);
  for (let i = 0; i < data.length; i++) data[i] = (i * 2654435761) >>> 24;
  return { image: { data, width: w, height: h, channels: 3 }, maxNumTiles: Math.max(1, tiles - 1) };
}

async function stream(results) {
  const model = await loadModel(modelDir, { backend: 'cpu', threads, precision, sequences: 2 });
  try {
    const { image, maxNumTiles } = syntheticImage(model.config.vision.image_size, chatTiles);
    const newcomer = { prompt: 'Describe the image.', images: [image], maxNumTiles, maxTokens: 1 };
    await model.clearCache();
    const aloneB = await model.complete(newcomer);
    await model.clearCache();
    const times = [];
    let bStart = 0;
    let bFirst = 0;
    let bDone;
    for await (const c of model.generate({ inputIds: ids(promptLen, 5), maxTokens: 4000, temperature: 0, stopTokenIds: [] })) {
      times.push(performance.now());
      if (times.length === 10) {
        bStart = performance.now();
        bDone = model.complete({ ...newcomer, onProgress: (p) => { if (p.stage === 'decode' && !bFirst) bFirst = performance.now(); } });
      }
      if (bFirst && times[times.length - 1] > bFirst + 1000 && times.length > 20) break;
    }
    const b = await bDone;
    const gaps = (from, to) => {
      const g = [];
      for (let i = 1; i < times.length; i++) if (times[i - 1] >= from && times[i] <= to) g.push(times[i] - times[i - 1]);
      g.sort((x, y) => x - y);
      return { count: g.length, medianMs: g[Math.floor(g.length / 2)] ?? null, maxMs: g[g.length - 1] ?? null };
    };
    results.stream = {
      tiles: chatTiles, newcomerAloneTtftMs: aloneB.timings.timeToFirstTokenMs, newcomerTtftMs: bFirst - bStart,
      gapsBefore: gaps(0, bStart), gapsDuringNewcomerPrompt: gaps(bStart, bFirst),
      newcomerPromptTokens: b.timings.promptTokens,
    };
    const r = results.stream;
    console.log(`stream: gaps before ${r.gapsBefore.medianMs?.toFixed(0)} ms median; during the newcomer's prompt ` +
      `${r.gapsDuringNewcomerPrompt.medianMs?.toFixed(0)} ms median, ${r.gapsDuringNewcomerPrompt.maxMs?.toFixed(0)} ms max ` +
      `(${r.gapsDuringNewcomerPrompt.count} tokens); newcomer TTFT ${r.newcomerTtftMs.toFixed(0)} ms vs ${r.newcomerAloneTtftMs.toFixed(0)} ms alone`);
  } finally {
    model.dispose();
  }
}

function rssBytes() {
  const m = /VmRSS:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : process.memoryUsage().rss;
}

async function memory(results) {
  const dir = path.resolve(root, kvModel || modelDir);
  const n = Math.max(...seqCounts);
  const model = await loadModel(dir, { backend: 'cpu', threads, precision, sequences: n, maxContext: kvTokens + 576 });
  try {
    const t = model.config.text;
    const perToken = t.num_hidden_layers * 2 * t.num_key_value_heads * t.head_dim * 4;
    const rss0 = rssBytes();
    // The prompts prefill one chunk at a time while the earlier ones decode: keep them all alive until every one
    // has its first token, then read the cache once and stop them.
    const counts = new Array(n).fill(0);
    const stop = new AbortController();
    let held = 0;
    let theoretical = 0;
    let rssDuring = 0;
    await Promise.all(
      Array.from({ length: n }, async (_, i) => {
        for await (const _c of model.generate({ inputIds: ids(kvTokens, 7 + i), maxTokens: 512, temperature: 0, stopTokenIds: [], signal: stop.signal })) {
          counts[i]++;
          if (held === 0 && counts.every((c) => c > 0)) {
            held = model.stats().kvCacheBytesUsed;
            // Positions in the cache: each prompt, and every token generated but the last (not fed back yet).
            theoretical = counts.reduce((a, c) => a + kvTokens + c - 1, 0) * perToken;
            rssDuring = rssBytes();
            stop.abort();
          }
        }
      }),
    );
    const after = model.stats();
    await model.clearCache();
    results.memory = {
      model: path.relative(root, dir), sequences: n, promptTokensEach: kvTokens, bytesPerToken: perToken,
      theoreticalBytes: theoretical, peakHeldBytes: held, overTheoretical: held / theoretical - 1,
      rssBeforeBytes: rss0, rssDuringBytes: rssDuring, heldAfterEndBytes: after.kvCacheBytesUsed,
      cachedAfterEndBytes: after.kvCacheBytesCached, heldAfterClearBytes: model.stats().kvCacheBytesUsed + model.stats().kvCacheBytesCached,
    };
    console.log(`memory: ${n} x ${kvTokens}+ tokens: KV held ${(held / 2 ** 20).toFixed(1)} MiB vs ${(theoretical / 2 ** 20).toFixed(1)} MiB theoretical ` +
      `(+${(100 * (held / theoretical - 1)).toFixed(2)}%); RSS +${((rssDuring - rss0) / 2 ** 20).toFixed(0)} MiB; held after the end ${after.kvCacheBytesUsed} B`);
  } finally {
    model.dispose();
  }
}

(async () => {
  const results = {
    model: path.relative(root, modelDir), precision, threads, machine: os.cpus()[0]?.model ?? 'unknown',
    cpuFeatures: require(path.join(root, 'dist', 'lib', 'index.js')).cpuFeatures().join(' '), loadavg: os.loadavg(),
    command: `node benchmarks/sequences.js ${process.argv.slice(2).join(' ')}`,
  };
  if (only.includes('decode')) await decode(results);
  if (only.includes('chat')) await chat(results);
  if (only.includes('memory')) await memory(results);
  if (only.includes('stream')) await stream(results);
  results.loadavgAfter = os.loadavg();
  if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify(results, null, 2));
})().catch((e) => {
  console.error(e);
  process.exit(1);
});
