#!/usr/bin/env node
// Tokenizer cost on 1 MiB (2^20 UTF-16 units) of ordinary English and of adversarial text (one repeated
// character, long runs without spaces, random code points, emoji, CJK, digits, whitespace, punctuation),
// through PlmTokenizer (lib/bpe.ts); `--library` also times @huggingface/tokenizers on the same inputs
// (slow: ~16 s on the repeated character). Also the tokenizer load: wall time and the event-loop delay
// (perf_hooks.monitorEventLoopDelay) of PlmTokenizer.load (worker) against the synchronous constructor.
// Needs `npm run build:ts`. Usage: node benchmarks/tokenizer_adversarial.js [--library] [--size BYTES]
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { monitorEventLoopDelay } = require('perf_hooks');
const { Tokenizer } = require('@huggingface/tokenizers');
const { PlmTokenizer } = require('../dist/lib/tokenizer');

const DIR = path.join(__dirname, '..', 'models', 'plm-tiny');
const args = process.argv.slice(2);
const N = args.includes('--size') ? Number(args[args.indexOf('--size') + 1]) : 1 << 20;

function rng(seed) {
  let s = seed >>> 0;
  return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 4294967296);
}
function build(gen) {
  let out = '';
  while (out.length < N) out += gen();
  return out.slice(0, N);
}
const r = rng(7);
const ENGLISH =
  'It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness, ' +
  'it was the epoch of belief, it was the epoch of incredulity, it was the season of Light, it was the season of ' +
  'Darkness. The quick brown fox jumps over the lazy dog; 42 questions were answered in 2025.\n';
const inputs = {
  english: build(() => ENGLISH),
  'repeated a': 'a'.repeat(N),
  'repeated space': ' '.repeat(N),
  'repeated newline': '\n'.repeat(N),
  'repeated !': '!'.repeat(N),
  'repeated 7': '7'.repeat(N),
  'letters, no spaces': build(() => String.fromCharCode(97 + Math.floor(r() * 26))),
  'random code points': build(() => String.fromCodePoint(Math.floor(r() * 0xd7ff) + 1)),
  'random bytes (latin1)': build(() => String.fromCharCode(Math.floor(r() * 256))),
  emoji: build(() => ['😀', '👍🏽', '👨‍👩‍👧‍👦', '🇫🇷', '❤️'][Math.floor(r() * 5)]),
  'CJK run': build(() => String.fromCharCode(0x4e00 + Math.floor(r() * 0x5000))),
  'space-letter pairs': build(() => ' a'),
  "contractions": build(() => "'s't're've'm'll'd"),
  'tabs and spaces': build(() => (r() < 0.5 ? '\t' : ' ')),
};

function time(fn) {
  const t0 = process.hrtime.bigint();
  const v = fn();
  return [Number(process.hrtime.bigint() - t0) / 1e6, v];
}

async function loadDelay(label, fn) {
  const h = monitorEventLoopDelay({ resolution: 5 });
  h.enable();
  const t0 = Date.now();
  const v = await fn();
  const ms = Date.now() - t0;
  await new Promise((res) => setTimeout(res, 20));
  h.disable();
  console.log(`${label}: ${ms} ms wall, event-loop delay max ${(h.max / 1e6).toFixed(1)} ms, p99 ${(h.percentile(99) / 1e6).toFixed(1)} ms`);
  return v;
}

async function main() {
  console.log(`node ${process.version}, ${os.cpus()[0].model}, ${os.cpus().length} cpus, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  // Load: A/B/A/B.
  await loadDelay('PlmTokenizer.load (worker)', () => PlmTokenizer.load(DIR));
  await loadDelay('PlmTokenizer.fromDirectory (this thread)', async () => PlmTokenizer.fromDirectory(DIR));
  const tok = await loadDelay('PlmTokenizer.load (worker)', () => PlmTokenizer.load(DIR));
  await loadDelay('PlmTokenizer.fromDirectory (this thread)', async () => PlmTokenizer.fromDirectory(DIR));
  const lib = args.includes('--library')
    ? new Tokenizer(JSON.parse(fs.readFileSync(path.join(DIR, 'tokenizer.json'), 'utf8')), JSON.parse(fs.readFileSync(path.join(DIR, 'tokenizer_config.json'), 'utf8')))
    : null;
  tok.encode(inputs.english.slice(0, 10000)); // warm-up
  const [eng1] = time(() => tok.encode(inputs.english));
  const [eng2] = time(() => tok.encode(inputs.english));
  const english = Math.min(eng1, eng2);
  console.log(`${N} UTF-16 units each; ratio = time / English (${english.toFixed(0)} ms)`);
  let worst = 0;
  for (const [name, text] of Object.entries(inputs)) {
    const [a, ids] = time(() => tok.encode(text));
    const [b] = time(() => tok.encode(text));
    const ms = Math.min(a, b);
    if (name !== 'english') worst = Math.max(worst, ms / english);
    let libPart = '';
    if (lib) {
      const [l, lids] = time(() => lib.encode(text, { add_special_tokens: false }).ids);
      const same = lids.length === ids.length && lids.every((x, i) => x === ids[i]);
      libPart = `, @huggingface/tokenizers ${l.toFixed(0)} ms (${same ? 'same ids' : 'DIFFERENT ids'})`;
    }
    console.log(`  ${name.padEnd(22)} ${ms.toFixed(0).padStart(6)} ms  x${(ms / english).toFixed(2)}  ${ids.length} tokens${libPart}`);
  }
  console.log(`worst adversarial / English: x${worst.toFixed(2)}`);
}
main();
