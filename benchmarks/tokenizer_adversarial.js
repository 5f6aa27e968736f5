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
// Ordinary English with a real vocabulary: the README files of the installed packages (prose and some code).
function readmes() {
  const nm = path.join(__dirname, '..', 'node_modules');
  let out = '';
  for (const d of fs.readdirSync(nm)) {
    for (const f of ['README.md', 'readme.md', 'Readme.md']) {
      try {
        out += fs.readFileSync(path.join(nm, d, f), 'utf8') + '\n';
        break;
      } catch {
        // no README in this package
      }
    }
  }
  return out;
}
const README_TEXT = readmes();
const inputs = {
  english: build(() => ENGLISH),
  'English READMEs': build(() => README_TEXT),
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

/** Wall time and the longest the event loop was blocked while `fn` ran (a 1 ms interval's largest gap). */
async function loadDelay(label, fn) {
  const h = monitorEventLoopDelay({ resolution: 2 });
  let last = performance.now();
  let maxGap = 0;
  const iv = setInterval(() => {
    const now = performance.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
  }, 1);
  await new Promise((res) => setTimeout(res, 20));
  h.enable();
  maxGap = 0;
  last = performance.now();
  const t0 = Date.now();
  const v = await fn();
  const ms = Date.now() - t0;
  await new Promise((res) => setTimeout(res, 20));
  h.disable();
  clearInterval(iv);
  console.log(`${label}: ${ms} ms wall, longest event-loop block ${maxGap.toFixed(1)} ms (monitorEventLoopDelay max ${(h.max / 1e6).toFixed(1)} ms)`);
  return v;
}

async function main() {
  console.log(`node ${process.version}, ${os.cpus()[0].model}, ${os.cpus().length} cpus, load ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  // Load: A/B/A/B, then loadModel as a whole (the tokenizer is one of its stages).
  await loadDelay('PlmTokenizer.load (worker)', () => PlmTokenizer.load(DIR));
  await loadDelay('PlmTokenizer.fromDirectory (this thread)', async () => PlmTokenizer.fromDirectory(DIR));
  const tok = await loadDelay('PlmTokenizer.load (worker)', () => PlmTokenizer.load(DIR));
  await loadDelay('PlmTokenizer.fromDirectory (this thread)', async () => PlmTokenizer.fromDirectory(DIR));
  const { loadModel } = require('../dist/lib/model');
  for (let i = 0; i < 2; i++) (await loadDelay('loadModel(models/plm-tiny, cpu)', () => loadModel(DIR, { backend: 'cpu' }))).dispose();
  const lib = args.includes('--library')
    ? new Tokenizer(JSON.parse(fs.readFileSync(path.join(DIR, 'tokenizer.json'), 'utf8')), JSON.parse(fs.readFileSync(path.join(DIR, 'tokenizer_config.json'), 'utf8')))
    : null;
  tok.encode(inputs.english.slice(0, 10000)); // warm-up
  console.log(`${N} UTF-16 units each; each case alternates with English (E/X/E/X/E/X), ratio = best X / best E;`);
  console.log(`E = one English paragraph repeated (every word cached), and the READMEs of node_modules (a real vocabulary)`);
  let worst = 0;
  let worstReadme = 0;
  for (const [name, text] of Object.entries(inputs)) {
    if (name === 'english') continue;
    const e = [];
    const rd = [];
    const x = [];
    let ids;
    for (let k = 0; k < 3; k++) {
      e.push(time(() => tok.encode(inputs.english))[0]);
      rd.push(time(() => tok.encode(inputs['English READMEs']))[0]);
      const [ms, v] = time(() => tok.encode(text));
      x.push(ms);
      ids = v;
    }
    const ratio = Math.min(...x) / Math.min(...e);
    const ratioReadme = Math.min(...x) / Math.min(...rd);
    if (name !== 'English READMEs') {
      worst = Math.max(worst, ratio);
      worstReadme = Math.max(worstReadme, ratioReadme);
    }
    let libPart = '';
    if (lib) {
      const [l, lids] = time(() => lib.encode(text, { add_special_tokens: false }).ids);
      const same = lids.length === ids.length && lids.every((y, i) => y === ids[i]);
      libPart = `, @huggingface/tokenizers ${l.toFixed(0)} ms (${same ? 'same ids' : 'DIFFERENT ids'})`;
    }
    console.log(
      `  ${name.padEnd(22)} ${Math.min(...x).toFixed(0).padStart(6)} ms  vs paragraph ${Math.min(...e).toFixed(0).padStart(5)} ms x${ratio.toFixed(2)}` +
        `  vs READMEs ${Math.min(...rd).toFixed(0).padStart(5)} ms x${ratioReadme.toFixed(2)}  ${ids.length} tokens${libPart}`,
    );
  }
  console.log(`worst adversarial / READMEs: x${worstReadme.toFixed(2)}`);
  console.log(`worst adversarial / English: x${worst.toFixed(2)}`);
}
main();
