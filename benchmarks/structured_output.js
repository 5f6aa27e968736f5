#!/usr/bin/env node
// Structured output (responseFormat) costs: the vocabulary index build, the mask time per token, and the
// end-to-end decode time per token with and without a constraint.
//   node --expose-gc benchmarks/structured_output.js [--tokenizer models/plm-tiny] [--models models/plm-tiny,/path/plm-1b-random]
//        [--tokens 120] [--rounds 3] [--threads 2] [--only index,masks,e2e] [--json OUT]
// Loads lib/ from dist/ (npm run build:ts). Results: benchmarks/RESULTS.md, "Structured output".
'use strict';
const path = require('path');
const fs = require('fs');
const os = require('os');
const { execSync } = require('child_process');
const { opt } = require('./cli_args');

const root = path.resolve(__dirname, '..');
const dist = path.join(root, 'dist', 'lib');
if (!fs.existsSync(path.join(dist, 'json_constraint.js'))) {
  console.error('dist/lib/json_constraint.js is missing: run npm run build:ts');
  process.exit(1);
}
const { loadModel, cpuFeatures } = require(path.join(dist, 'index.js'));
const { PlmTokenizer } = require(path.join(dist, 'tokenizer.js'));
const jc = require(path.join(dist, 'json_constraint.js'));

const tokenizerDir = path.resolve(root, opt('tokenizer', 'models/plm-tiny'));
const models = opt('models', 'models/plm-tiny').split(',').filter(Boolean).map((m) => path.resolve(root, m));
const tokens = Number(opt('tokens', 120));
const rounds = Number(opt('rounds', 3));
const threads = Number(opt('threads', 2));
const jsonOut = opt('json', '');
const only = new Set(opt('only', 'index,masks,e2e').split(','));

const STOPS = [128001, 128009];
const VOCAB = 128256;

function quantiles(xs) {
  const s = [...xs].sort((a, b) => a - b);
  const q = (p) => s[Math.min(s.length - 1, Math.floor(p * s.length))];
  const mean = s.reduce((a, b) => a + b, 0) / s.length;
  return { n: s.length, mean, p50: q(0.5), p90: q(0.9), p99: q(0.99), max: s[s.length - 1] };
}
const us = (ms) => (ms * 1000).toFixed(0);

// --- documents a model would write, for replaying through the constraint -------------------------------------
const SHAPES = {
  type: 'object',
  properties: {
    objects: {
      type: 'array',
      items: {
        type: 'object',
        properties: { shape: { enum: ['circle', 'square', 'triangle', 'cross'] }, colour: { enum: ['red', 'green', 'blue', 'white'] }, position: { type: 'string', maxLength: 20 } },
        required: ['shape', 'colour', 'position'],
        additionalProperties: false,
      },
    },
    count: { type: 'integer' },
  },
  required: ['objects', 'count'],
  additionalProperties: false,
};
const shapesDoc = {
  objects: [
    { shape: 'cross', colour: 'white', position: 'top left' },
    { shape: 'circle', colour: 'white', position: 'top right' },
    { shape: 'triangle', colour: 'red', position: 'bottom left' },
    { shape: 'square', colour: 'blue', position: 'centre' },
  ],
  count: 4,
};
const RECEIPT = {
  type: 'object',
  properties: {
    merchant: { type: 'string', maxLength: 60 },
    date: { type: 'string', format: 'date' },
    currency: { enum: ['EUR', 'USD', 'GBP'] },
    items: {
      type: 'array',
      minItems: 1,
      items: { $ref: '#/$defs/item' },
    },
    total: { type: 'number' },
    note: { type: ['string', 'null'] },
  },
  required: ['merchant', 'date', 'currency', 'items', 'total', 'note'],
  additionalProperties: false,
  $defs: { item: { type: 'object', properties: { name: { type: 'string' }, quantity: { type: 'integer' }, price: { type: 'number' } }, required: ['name', 'quantity', 'price'], additionalProperties: false } },
};
const receiptDoc = {
  merchant: 'Bäckerei Müller & Söhne',
  date: '2024-03-17',
  currency: 'EUR',
  items: [
    { name: 'Brötchen', quantity: 6, price: 0.45 },
    { name: 'Croissant "au beurre"', quantity: 2, price: 1.6 },
    { name: 'Kaffee ☕ groß', quantity: 1, price: 3.2 },
  ],
  total: 9.1,
  note: null,
};
const freeDoc = {
  title: 'A scene with four shapes',
  description: 'A white cross at the top left, a white circle at the top right, a red triangle at the bottom left and a blue square in the centre. The background is black; nothing else is visible.\nSecond line, with "quotes", a tab\tand emoji 😀🎉.',
  tags: ['shapes', 'synthetic', 'test', '日本語のテキスト'],
  stats: { objects: 4, colours: 3, ratio: 0.75, exact: true, missing: null },
};
const DOCS = [
  ['shapes schema, indented', { type: 'json_schema', schema: SHAPES }, JSON.stringify(shapesDoc, null, 2)],
  ['receipt schema, compact', { type: 'json_schema', schema: RECEIPT }, JSON.stringify(receiptDoc)],
  ['json_object, prose and unicode', { type: 'json_object' }, JSON.stringify(freeDoc, null, 2)],
];

/** Milliseconds of CPU time of this process (the JS thread here: nothing else runs during a replay). */
function cpuMs() {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1000;
}

/** Wall and CPU time of each next() (and first()) over a tokenized document. */
function replay(index, format, ids) {
  const c = new jc.JsonTokenConstraint(index, jc.compileResponseFormat(format), STOPS);
  const wall = [];
  const cpu = [];
  const nodes = [];
  const time = (fn) => {
    const n0 = index.walkedNodes;
    const c0 = cpuMs();
    const t0 = performance.now();
    fn();
    wall.push(performance.now() - t0);
    cpu.push(cpuMs() - c0);
    nodes.push(index.walkedNodes - n0);
  };
  time(() => c.first());
  for (const id of ids) time(() => c.next(id));
  if (!c.complete) throw new Error('the document did not complete the grammar');
  return { wall, cpu, nodes };
}

async function main() {
  const results = { machine: {}, index: {}, masks: [], endToEnd: [] };
  const cpu = (() => {
    try {
      return execSync("lscpu | grep 'Model name' | sed 's/Model name:\\s*//'", { encoding: 'utf8' }).trim();
    } catch {
      return os.cpus()[0]?.model ?? '?';
    }
  })();
  results.machine = { cpu, cores: os.cpus().length, isa: cpuFeatures().join(' '), node: process.version, loadBefore: os.loadavg() };
  console.log(`machine: ${cpu}, ${os.cpus().length} cores; ISA: ${results.machine.isa}; node ${process.version}`);
  console.log(`load average before: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);

  const tokenizer = PlmTokenizer.fromDirectory(tokenizerDir);

  // --- A. the vocabulary index -------------------------------------------------------------------------------
  const index = only.has('index') ? await indexSection(tokenizer, results) : jc.VocabularyIndex.buildSync(tokenizer, VOCAB);
  if (only.has('masks')) masksSection(tokenizer, results);
  if (only.has('e2e')) await endToEndSection(tokenizer, index, results);
  results.machine.loadAfter = os.loadavg();
  console.log(`\nload average after: ${os.loadavg().map((x) => x.toFixed(2)).join(' ')}`);
  if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify(results, null, 2));
}

async function indexSection(tokenizer, results) {
  const builds = [];
  for (let i = 0; i < 5; i++) builds.push(jc.VocabularyIndex.buildSync(tokenizer, VOCAB).stats.buildMs);
  let maxGap = 0;
  let last = performance.now();
  const probe = setInterval(() => {
    const now = performance.now();
    maxGap = Math.max(maxGap, now - last);
    last = now;
  }, 1);
  const t0 = performance.now();
  const index = await jc.VocabularyIndex.build(tokenizer, VOCAB);
  const asyncWall = performance.now() - t0;
  clearInterval(probe);
  results.index = { stats: index.stats, buildSyncMs: quantiles(builds), asyncWallMs: asyncWall, asyncMaxEventLoopGapMs: maxGap };
  console.log(`\nindex (${index.stats.usableTokens} tokens, ${index.stats.trieNodes} trie nodes, ${index.stats.plainStringTokens} plain-string tokens, ${index.stats.restTrieNodes} rest-trie nodes)`);
  console.log(`  build in one go: median ${quantiles(builds).p50.toFixed(0)} ms (min ${Math.min(...builds).toFixed(0)}, 5 runs)`);
  console.log(`  build in slices: ${asyncWall.toFixed(0)} ms wall, longest event-loop gap ${maxGap.toFixed(1)} ms`);
  return index;
}

function masksSection(tokenizer, results) {
  // --- B. mask time per token ---------------------------------------------------------------------------------
  // One untimed pass first, so that V8 has compiled the code (a fresh process pays that once, on its first
  // structured requests).
  const jit = jc.VocabularyIndex.buildSync(tokenizer, VOCAB);
  for (const [, format, text] of DOCS) replay(jit, format, tokenizer.encode(text));

  // B1. Chosen states, mask computed from scratch (cache cleared): trie nodes walked (machine-independent) and the
  // best of 20 runs (the least disturbed by the other processes of a shared machine).
  const STATES = [
    ['json_object: before the document', { type: 'json_object' }, ''],
    ['json_object: a value (after ":")', { type: 'json_object' }, '{"a":'],
    ['json_object: inside a string', { type: 'json_object' }, '{"a":"hello'],
    ['json_object: after a backslash', { type: 'json_object' }, '{"a":"x\\'],
    ['json_object: in an array, indented', { type: 'json_object' }, '{"a":[1,\n  '],
    ['json_object: inside a number', { type: 'json_object' }, '{"a":-12.5'],
    ['schema: string with maxLength', { type: 'json_schema', schema: SHAPES }, '{"objects":[{"shape":"cross","colour":"red","position":"top'],
    ['schema: enum value', { type: 'json_schema', schema: SHAPES }, '{"objects":[{"shape":'],
    ['schema: next key', { type: 'json_schema', schema: SHAPES }, '{"objects":[{"shape":"cross",'],
    ['schema: date format', { type: 'json_schema', schema: RECEIPT }, '{"merchant":"x","date":"2024-0'],
  ];
  const grammarModule = require(path.join(dist, 'json_grammar.js'));
  console.log('\nmask of one state, computed from scratch (no cache)');
  console.log('  state                                  allowed  nodes walked  best us (20 runs)');
  for (const [name, format, text] of STATES) {
    const g = jc.compileResponseFormat(format);
    let configs = [grammarModule.initialFrame(g)];
    for (const b of Buffer.from(text)) {
      const out = [];
      for (const f of configs) grammarModule.step(f, b, out);
      configs = out;
    }
    if (configs.length !== 1) throw new Error(`state ${name}: ${configs.length} configurations`);
    let best = Infinity;
    let nodes = 0;
    let allowed = 0;
    for (let r = 0; r < 20; r++) {
      jit.masks.clear();
      const n0 = jit.walkedNodes;
      const t0 = performance.now();
      const m = jit.maskOf(g, configs[0]);
      best = Math.min(best, performance.now() - t0);
      nodes = jit.walkedNodes - n0;
      if (r === 0) for (let i = 0; i < m.length; i++) for (let x = m[i]; x; x >>= 1) allowed += x & 1;
    }
    results.states = results.states ?? [];
    results.states.push({ name, allowed, nodes, bestMs: best });
    console.log(`  ${name.padEnd(38)} ${String(allowed).padStart(7)} ${String(nodes).padStart(13)} ${us(best).padStart(18)}`);
  }

  // B2. Documents as the tokenizer writes them, replayed through a constraint: cold (a fresh index, empty mask
  // cache) and warm (the same document again: cache hits).
  console.log('\nmask time per token (next(): advance + mask), replaying tokenized documents');
  console.log('  document                         tokens | trie nodes walked: mean   max | cold wall us: p50  p90  mean   max | warm wall us: p50  mean');
  for (const [name, format, text] of DOCS) {
    const ids = tokenizer.encode(text);
    const cold = { wall: [], cpu: [], nodes: [] };
    const warm = { wall: [], cpu: [], nodes: [] };
    for (let r = 0; r < 5; r++) {
      const fresh = jc.VocabularyIndex.buildSync(tokenizer, VOCAB);
      global.gc?.(); // the build's garbage is not the masks' cost
      const a = replay(fresh, format, ids);
      const b = replay(fresh, format, ids);
      for (const k of ['wall', 'cpu', 'nodes']) {
        cold[k].push(...a[k]);
        warm[k].push(...b[k]);
      }
    }
    const n = quantiles(cold.nodes);
    const cw = quantiles(cold.wall);
    const ww = quantiles(warm.wall);
    results.masks.push({ name, tokens: ids.length, coldNodes: n, coldWallMs: cw, coldCpuMs: quantiles(cold.cpu), warmWallMs: ww, warmCpuMs: quantiles(warm.cpu) });
    console.log(`  ${name.padEnd(32)} ${String(ids.length).padStart(6)} | ${n.mean.toFixed(0).padStart(23)} ${String(n.max).padStart(5)} | ${us(cw.p50).padStart(16)} ${us(cw.p90).padStart(4)} ${us(cw.mean).padStart(5)} ${us(cw.max).padStart(5)} | ${us(ww.p50).padStart(16)} ${us(ww.mean).padStart(5)}`);
  }

}

async function endToEndSection(tokenizer, index, results) {
  // --- C. end to end: decode time per token, alternating variants --------------------------------------------
  // The same tokens in the variants that force a document (the indented shapes document): 'forced' allows only
  // the document's next token (the cost of waiting for a mask each step), 'forced + JSON masks' also computes
  // the JSON Schema constraint's mask for the same tokens (the cost of the masks themselves). 'free text' and
  // 'json_schema (model picks)' generate what the model wants (greedy). Round 1 computes the masks, later rounds
  // find them cached (the same schema again).
  const prompt = 'Describe the image.';
  const docIds = tokenizer.encode(JSON.stringify(shapesDoc, null, 2));
  const single = (id) => {
    const m = new Uint8Array(Math.ceil(VOCAB / 64) * 8);
    m[id >> 3] |= 1 << (id & 7);
    return m;
  };
  const forced = (withJson) => {
    let i = 0;
    const json = withJson ? new jc.JsonTokenConstraint(index, jc.compileResponseFormat({ type: 'json_schema', schema: SHAPES }), STOPS) : null;
    const maskFor = (k) => (k < docIds.length ? single(docIds[k]) : single(128009));
    return {
      first() {
        if (json) json.first();
        return maskFor(0);
      },
      next(id) {
        if (json && i < docIds.length) {
          const m = json.next(id);
          const want = i + 1 < docIds.length ? docIds[i + 1] : 128009;
          if (!m || !(m[want >> 3] & (1 << (want & 7)))) throw new Error(`the document left the grammar at ${i}: got ${id}, want ${want}, doc ${docIds[i]}`);
        }
        return maskFor(++i);
      },
    };
  };
  const variants = [
    ['free text', {}, () => undefined],
    ['pass-through masks (null)', {}, () => ({ first: () => null, next: () => null })],
    ['forced document', {}, () => forced(false)],
    ['forced + JSON masks', {}, () => forced(true)],
    ['json_schema (model picks)', { responseFormat: { type: 'json_schema', schema: SHAPES } }, () => undefined],
  ];
  for (const dir of models) {
    const model = await loadModel(dir, { backend: 'cpu', threads });
    const name = path.basename(dir);
    const maxTokens = Math.min(tokens, docIds.length + 1);
    await model.complete({ prompt, maxTokens: 4, responseFormat: { type: 'json_object' } }); // warm-up
    const per = new Map(variants.map(([v]) => [v, []]));
    for (let round = 0; round < rounds; round++) {
      for (const [label, extra, constraint] of variants) {
        const opts = { prompt, maxTokens, temperature: 0, ...extra };
        const r = await model.completeIn(opts, null, constraint());
        if (label.startsWith('forced') && r.tokenIds.slice(0, docIds.length).some((id, k) => id !== docIds[k])) throw new Error('not the forced document');
        per.get(label).push({ n: r.tokenIds.length, decodeMs: r.timings.decodeMs, finish: r.finishReason });
      }
    }
    console.log(`\n${name} (${model.backend}, ${threads} threads): decode ms per token, up to ${maxTokens} tokens, ${rounds} rounds alternating`);
    const msPer = (runs) => runs.reduce((a, r) => a + r.decodeMs, 0) / runs.reduce((a, r) => a + Math.max(1, r.n - 1), 0);
    const baseMs = msPer(per.get('free text'));
    for (const [label] of variants) {
      const runs = per.get(label);
      const ms = msPer(runs);
      results.endToEnd.push({ model: name, variant: label, msPerToken: ms, runs });
      const perRound = runs.map((r) => (r.decodeMs / Math.max(1, r.n - 1)).toFixed(2)).join(' ');
      console.log(`  ${label.padEnd(28)} ${ms.toFixed(3).padStart(9)} ms/token  (${(ms - baseMs >= 0 ? '+' : '') + (ms - baseMs).toFixed(3)} vs free)  rounds ${perRound}  tokens ${runs.map((r) => `${r.n}/${r.finish}`).join(' ')}`);
    }
    model.dispose();
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
