#!/usr/bin/env node
// Side-by-side CPU benchmark (issue 4): ours and the peers, one after the other in the same session, on the
// same PLM-1B-shaped checkpoint and the same synthetic inputs; prints ONE table.
//   node benchmarks/compare.js [--runs 3] [--rounds 1] [--f32] [--skip torch,llama,int8,q4] [--prefill 512]
//                              [--ttft-tiles 5] [--out .bench/compare]
// --rounds N runs every child N times, in order in odd rounds and in reverse order in even rounds, and pools
// the runs of all rounds (median of runs x rounds values per figure): this VM's speed drifts by up to 2x
// over minutes, so one child after another can land in different states; interleaving shares the drift.
// Needs: .bench/plm-1b-random (benchmarks/make_random_checkpoint.py), reference/.venv (torch peer),
// node-llama-cpp@3.21.1 (npm install --no-save) and the GGUF exports (benchmarks/export_gguf.py --type f16|q8_0).
// Each child writes its JSON under --out; the table (markdown) goes to stdout and to OUT/table.md.
'use strict';
const path = require('path');
const fs = require('fs');
const os = require('os');
const { spawnSync, execSync } = require('child_process');

const { opt, flag } = require('./cli_args');
const root = path.resolve(__dirname, '..');
const runs = opt('runs', '3');
const rounds = Math.max(1, Number(opt('rounds', '1')));
const outDir = path.resolve(root, opt('out', '.bench/compare'));
const skip = (opt('skip', '') || '').split(',');
const withF32 = flag('f32');
const prefill = opt('prefill', '512');
const ttftTiles = opt('ttft-tiles', '5');
const P = prefill.split(',').map(Number);
const T = ttftTiles.split(',').map(Number);
const py = path.join(root, 'reference', '.venv', 'bin', 'python');
fs.mkdirSync(outDir, { recursive: true });

const load = () => os.loadavg().map((v) => v.toFixed(2)).join(', ');
const log = [];
function step(name, cmd, argv, round) {
  const json = path.join(outDir, rounds > 1 ? `${name}_r${round}.json` : `${name}.json`);
  const full = [...argv, '--json', json];
  const line = `${cmd === process.execPath ? 'node' : path.relative(root, cmd)} ${full.map((a) => path.isAbsolute(a) ? path.relative(root, a) : a).join(' ')}`;
  process.stderr.write(`\n== ${name} (load ${load()}): ${line}\n`);
  const t = Date.now();
  const r = spawnSync(cmd, full, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
  log.push({ name, command: line, status: r.status, seconds: (Date.now() - t) / 1000, loadAfter: load() });
  if (r.status !== 0 || !fs.existsSync(json)) { process.stderr.write(`   ${name} failed (status ${r.status})\n`); return null; }
  return JSON.parse(fs.readFileSync(json, 'utf8'));
}

const node = process.execPath;
const loadBefore = load();
const R = {};
const ggufF16 = path.join(root, '.bench', 'plm-1b-random-decoder-f16.gguf');
const ggufQ8 = path.join(root, '.bench', 'plm-1b-random-decoder-q8_0.gguf');
const sizes = ['--prefill', prefill, '--ttft-tiles', ttftTiles];
// [result key, child name, command, argv]
const children = [['ours', 'ours_bf16', node, ['benchmarks/run.js', '--precision', 'bf16', '--runs', runs, ...sizes]]];
if (!skip.includes('int8')) children.push(['oursInt8', 'ours_int8', node, ['benchmarks/run.js', '--precision', 'bf16', '--quantize', 'int8', '--runs', runs, '--only', 'decode,prefill', '--prefill', prefill]]);
if (!skip.includes('q4')) children.push(['oursQ4', 'ours_q4', node, ['benchmarks/run.js', '--precision', 'bf16', '--quantize', 'q4', '--runs', runs, '--only', 'decode']]);
if (!skip.includes('torch')) children.push(['torch', 'torch_bf16', py, ['benchmarks/torch_peer.py', '--dtype', 'bf16', '--runs', runs, ...sizes]]);
if (!skip.includes('llama')) {
  if (fs.existsSync(ggufF16)) children.push(['llamaF16', 'llama_cpp_f16', node, ['benchmarks/llama_cpp_peer.js', '--gguf', ggufF16, '--runs', runs, '--prefill', prefill, '--greedy', '0']]);
  if (fs.existsSync(ggufQ8)) children.push(['llamaQ8', 'llama_cpp_q8_0', node, ['benchmarks/llama_cpp_peer.js', '--gguf', ggufQ8, '--runs', runs, '--prefill', prefill, '--greedy', '0']]);
}
if (withF32) {
  children.push(['oursF32', 'ours_f32', node, ['benchmarks/run.js', '--precision', 'f32', '--runs', runs, ...sizes]]);
  if (!skip.includes('torch')) children.push(['torchF32', 'torch_fp32', py, ['benchmarks/torch_peer.py', '--dtype', 'fp32', '--runs', runs, ...sizes]]);
}
const perRound = {};  // result key -> [result of round 1, 2, ...]
for (let r = 1; r <= rounds; r++) {
  for (const [key, name, cmd, argv] of r % 2 ? children : [...children].reverse())
    (perRound[key] = perRound[key] || [])[r - 1] = step(name, cmd, argv, r);
}

// Pools the rounds of one child: each figure becomes the median of all its runs (the "...Runs" arrays);
// peak RSS the largest; anything else from the first round that ran.
const median = (v) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
function pool(results) {
  const ok = results.filter(Boolean);
  if (!ok.length) return null;
  const out = { ...ok[0], rounds: ok.length };
  const figureOf = (runsKey) => {
    if (runsKey === 'decodeRuns') return 'decodeTokPerS';
    if (runsKey === 'visionRuns') return 'visionMsPerTile';
    let m = /^prefill(\d+)Runs$/.exec(runsKey);
    if (m) return `prefill${m[1]}TokPerS`;
    m = /^ttft(\d+)Runs$/.exec(runsKey);
    return m ? `ttft${m[1]}TilesMs` : null;
  };
  for (const k of Object.keys(out)) {
    const fig = figureOf(k);
    if (!fig || !Array.isArray(out[k])) continue;
    out[k] = ok.flatMap((r) => r[k] || []);
    out[fig] = median(out[k]);
  }
  if (ok.some((r) => r.maxRssMB != null)) out.maxRssMB = Math.max(...ok.map((r) => r.maxRssMB || 0));
  return out;
}
for (const key of Object.keys(perRound)) R[key] = pool(perRound[key]);

// rows: [figure, ours result, key, peer name, peer result, key, higherIsBetter]
const rows = [
  ['decode, tok/s (bf16 vs F16)', R.ours, 'decodeTokPerS', 'llama.cpp F16', R.llamaF16, 'decodeTokPerS', true],
  ['decode, tok/s (bf16)', R.ours, 'decodeTokPerS', 'torch bf16', R.torch, 'decodeTokPerS', true],
  ['decode, tok/s (int8 vs Q8_0)', R.oursInt8, 'decodeTokPerS', 'llama.cpp Q8_0', R.llamaQ8, 'decodeTokPerS', true],
  ['decode, tok/s (q4 vs our bf16)', R.oursQ4, 'decodeTokPerS', 'ours bf16', R.ours, 'decodeTokPerS', true],
];
for (const n of P) {
  rows.push(
    [`prefill ${n}, tok/s (bf16)`, R.ours, `prefill${n}TokPerS`, 'torch bf16', R.torch, `prefill${n}TokPerS`, true],
    [`prefill ${n}, tok/s (bf16 vs F16)`, R.ours, `prefill${n}TokPerS`, 'llama.cpp F16', R.llamaF16, `prefill${n}TokPerS`, true],
    [`prefill ${n}, tok/s (int8 vs Q8_0)`, R.oursInt8, `prefill${n}TokPerS`, 'llama.cpp Q8_0', R.llamaQ8, `prefill${n}TokPerS`, true],
  );
}
rows.push(['vision + projector, ms per 448 tile (bf16)', R.ours, 'visionMsPerTile', 'torch bf16', R.torch, 'visionMsPerTile', false]);
for (const t of T) rows.push([`TTFT, ${t}-tile image (${t * 256 + 22} tokens), ms (bf16)`, R.ours, `ttft${t}TilesMs`, 'torch bf16', R.torch, `ttft${t}TilesMs`, false]);
rows.push(
  ['peak RSS of the bench process, MB (bf16)', R.ours, 'maxRssMB', 'torch bf16', R.torch, 'maxRssMB', false],
  ['peak RSS, MB (int8 vs Q8_0, decode+prefill only)', R.oursInt8, 'maxRssMB', 'llama.cpp Q8_0', R.llamaQ8, 'maxRssMB', false],
  ['peak RSS, MB (bf16 vs F16, decode+prefill vs all four)', R.ours, 'maxRssMB', 'llama.cpp F16', R.llamaF16, 'maxRssMB', false],
);
if (withF32) {
  rows.push(['decode, tok/s (f32 path)', R.oursF32, 'decodeTokPerS', 'torch fp32', R.torchF32, 'decodeTokPerS', true]);
  for (const n of P) rows.push([`prefill ${n}, tok/s (f32)`, R.oursF32, `prefill${n}TokPerS`, 'torch fp32', R.torchF32, `prefill${n}TokPerS`, true]);
  rows.push(['vision + projector, ms per tile (f32)', R.oursF32, 'visionMsPerTile', 'torch fp32', R.torchF32, 'visionMsPerTile', false]);
  for (const t of T) rows.push([`TTFT, ${t}-tile image, ms (f32)`, R.oursF32, `ttft${t}TilesMs`, 'torch fp32', R.torchF32, `ttft${t}TilesMs`, false]);
}
const fmt = (v) => (v == null ? '—' : v >= 100 ? v.toFixed(0) : v.toFixed(2));
const lines = ['| figure | ours | peer | peer value | ours vs peer (>1 = ours better) |', '| --- | --- | --- | --- | --- |'];
for (const [fig, o, ok, pn, p, pk, hib] of rows) {
  const a = o ? o[ok] : null;
  const b = p ? p[pk] : null;
  const ratio = a != null && b != null ? (hib ? a / b : b / a) : null;
  lines.push(`| ${fig} | ${fmt(a)} | ${pn} | ${fmt(b)} | ${ratio == null ? '—' : ratio.toFixed(2) + 'x'} |`);
}
// With several rounds: ours vs torch bf16 within each round, to show how far the pooled ratio drifts.
if (rounds > 1 && perRound.ours && perRound.torch) {
  const figs = [['decode', 'decodeTokPerS', true], ...P.map((n) => [`prefill ${n}`, `prefill${n}TokPerS`, true]),
    ['vision', 'visionMsPerTile', false], ...T.map((t) => [`TTFT ${t} tiles`, `ttft${t}TilesMs`, false])];
  lines.push('', 'Ours vs torch bf16 per round: ' + figs.map(([label, k, hib]) => `${label} ` + perRound.ours.map((o, i) => {
    const t = perRound.torch[i];
    if (!o || !t || o[k] == null || t[k] == null) return '—';
    return (hib ? o[k] / t[k] : t[k] / o[k]).toFixed(2) + 'x';
  }).join(' / ')).join('; ') + '.');
}
let cpu = os.cpus()[0].model;
try { cpu = execSync("lscpu | sed -n 's/^Model name:[ ]*//p'", { encoding: 'utf8' }).trim() || cpu; } catch { /* ignore */ }
// The ISA each side ran: ours from the addon's dispatch report (PLM_CPU_ISA caps it), torch's ATen capability.
const k = R.ours && R.ours.cpuKernels;
const isaLine = [
  k ? `ours: ISA ${k.isa}${k.isaRequest ? ` (PLM_CPU_ISA=${k.isaRequest})` : ''}, matmul bf16 ${k.gemmBf16}, attention bf16 ${k.attentionBf16}, decode ${k.decode}` : 'ours: ISA not reported (older addon)',
  R.torch && R.torch.cpuCapability ? `torch: ATen CPU capability ${R.torch.cpuCapability}` : null,
].filter(Boolean).join('; ');
const header = [
  `Machine: ${cpu}, ${os.cpus().length} logical CPUs, ${(os.totalmem() / 2 ** 30).toFixed(0)} GiB; threads 2 everywhere.`,
  `ISA: ${isaLine}.`,
  `Date: ${new Date().toISOString()}; load average before: ${loadBefore}; after: ${load()}.`,
  rounds > 1
    ? `Medians of ${runs} runs x ${rounds} rounds per figure (children in order in odd rounds, reversed in even ones).`
    : `Medians of ${runs} runs per figure.`,
];
const table = [...header, '', ...lines, '', 'Commands (in this order):', ...log.map((l) => `- \`${l.command}\` (${l.seconds.toFixed(0)} s, status ${l.status}, load after ${l.loadAfter})`)].join('\n');
fs.writeFileSync(path.join(outDir, 'table.md'), table + '\n');
fs.writeFileSync(path.join(outDir, 'all.json'), JSON.stringify({ results: R, perRound, log, loadBefore, loadAfter: load() }, null, 2));
console.log('\n' + table);
