#!/usr/bin/env node
// Three `plm worker` processes on this machine against one redis-server, one of them killed with SIGKILL
// twice while it holds jobs (restarted after the first kill, as a supervisor would): throughput, and the
// items lost or duplicated in the collected output (both must be 0). Each kill waits until the victim holds
// a job (one generating, one prefetched) and freezes it (SIGSTOP) while it looks, so the kill lands mid-job
// and the jobs it held are known.
//
//   node benchmarks/batch_queue_soak.js [--items 900] [--workers 3] [--kills 2] [--model DIR]
//        [--concurrency 1] [--prefetch 1] [--lock-duration 5000] [--stalled-interval 1000]
//        [--max-tokens 48] [--baseline] [--json OUT]
//
// Items: the bundled samples with five prompts, cycled. --baseline also times one `plm batch` on this
// machine (no queue) over the same items. Needs redis-server on PATH and the built CLI (npm run build:ts).
'use strict';
const { spawn, spawnSync } = require('child_process');
const fs = require('fs');
const net = require('net');
const os = require('os');
const path = require('path');
const { opt, flag } = require('./cli_args');

const root = path.resolve(__dirname, '..');
const cli = path.join(root, 'dist', 'lib', 'cli.js');
const N = Number(opt('items', 900));
const nWorkers = Number(opt('workers', 3));
const nKills = Number(opt('kills', 2));
const model = opt('model', null);
const workerOpts = [
  '--concurrency', opt('concurrency', '1'),
  '--prefetch', opt('prefetch', '1'),
  '--lock-duration', opt('lock-duration', '5000'),
  '--stalled-interval', opt('stalled-interval', '1000'),
  '--progress-interval', '3600',
  ...(model ? ['--model', path.resolve(model)] : []),
];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function startRedis(dir) {
  const port = await freePort();
  const child = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--dir', dir, '--save', '', '--appendonly', 'no', '--loglevel', 'warning'], { stdio: 'ignore' });
  const { Queue } = require('bullmq');
  const q = new Queue('probe', { connection: { url: `redis://127.0.0.1:${port}/0` } });
  await q.waitUntilReady();
  await q.close();
  return { url: `redis://127.0.0.1:${port}/0`, child };
}

function plm(args, cwd) {
  const child = spawn(process.execPath, [cli, ...args], { cwd, stdio: ['ignore', 'pipe', 'pipe'] });
  const p = { child, name: `${os.hostname()}:${child.pid}`, stdout: '', stderr: '' };
  child.stdout.on('data', (d) => (p.stdout += d));
  child.stderr.on('data', (d) => (p.stderr += d));
  p.done = new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal })));
  return p;
}

function lines(file) {
  return fs.existsSync(file) ? fs.readFileSync(file, 'utf8').split('\n').filter(Boolean) : [];
}

async function main() {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-soak-'));
  const redis = await startRedis(dir);
  const { Queue } = require('bullmq');
  const queue = new Queue('soak', { connection: { url: redis.url } });
  const procs = [];
  try {
    const samples = ['scene1.png', 'scene2.png', 'scene3.png', 'shapes.png'].map((f) => path.join(root, 'samples', f));
    const prompts = ['Describe the image.', 'How many objects are there?', 'What color is the star?', 'Where is the white cross?', 'What shape is the red object?'];
    const items = Array.from({ length: N }, (_, i) => ({ id: `s${i}`, image: samples[i % 4], prompt: prompts[Math.floor(i / 4) % 5] }));
    fs.writeFileSync(path.join(dir, 'items.jsonl'), items.map((x) => JSON.stringify(x)).join('\n') + '\n');
    const common = ['items.jsonl', '-o', 'out.jsonl', '--queue', redis.url, '--queue-name', 'soak', '--temperature', '0', '--max-tokens', opt('max-tokens', '48')];
    const loadBefore = os.loadavg();
    let baseline = null;
    if (flag('baseline')) {
      const t0 = Date.now();
      const b = spawnSync(process.execPath, [cli, 'batch', 'items.jsonl', '-o', 'local.jsonl', '--temperature', '0', '--max-tokens', opt('max-tokens', '48'), '--json', '-q', ...(model ? ['--model', path.resolve(model)] : [])], { cwd: dir, encoding: 'utf8' });
      if (b.status !== 0) throw new Error(b.stderr);
      baseline = { s: (Date.now() - t0) / 1000, perHour: Math.round((N * 3_600_000) / (Date.now() - t0)) };
    }
    const enq = plm(['batch', ...common, '-q'], dir);
    if ((await enq.done).code !== 0) throw new Error(enq.stderr);

    const t0 = Date.now();
    const workers = [];
    for (let i = 0; i < nWorkers; i++) workers.push(plm(['worker', '--queue', redis.url, '--queue-name', 'soak', ...workerOpts], dir));
    procs.push(...workers);
    const collector = plm(['batch', ...common, '--collect', '--json', '-q'], dir);
    procs.push(collector);
    const out = path.join(dir, 'out.jsonl');
    const kills = [];
    for (let k = 0; k < nKills; k++) {
      const at = Math.round((N * (k + 1)) / (nKills + 1.5));
      while (lines(out).length < at && collector.child.exitCode === null) await sleep(50);
      const victim = workers[0];
      let held = [];
      const deadline = Date.now() + 180_000; // a restarted worker first loads the model (slow on a busy machine)
      while (Date.now() < deadline && collector.child.exitCode === null) {
        const mine = (await queue.getJobs(['active'])).filter((j) => j && j.processedBy === victim.name);
        if (mine.length > 0) {
          // Frozen while we look, so the jobs it holds when it dies are exactly the ones seen.
          victim.child.kill('SIGSTOP');
          await sleep(100);
          held = (await queue.getJobs(['active'])).filter((j) => j && j.processedBy === victim.name).map((j) => j.data.item.id);
          if (held.length > 0) break;
          victim.child.kill('SIGCONT');
        }
        await sleep(5);
      }
      victim.child.kill('SIGKILL');
      await victim.done;
      kills.push({ atRecords: lines(out).length, worker: victim.name, heldJobs: held, tSec: (Date.now() - t0) / 1000 });
      if (k < nKills - 1) {
        workers[0] = plm(['worker', '--queue', redis.url, '--queue-name', 'soak', ...workerOpts], dir); // the machine's supervisor restarts it
        procs.push(workers[0]);
      }
    }
    const c = await collector.done;
    const elapsed = (Date.now() - t0) / 1000;
    if (c.code !== 0) throw new Error(`collector: ${collector.stderr}`);
    const recs = lines(out).map((l) => JSON.parse(l));
    const count = new Map();
    for (const r of recs) count.set(r.id, (count.get(r.id) || 0) + 1);
    const lost = items.filter((i) => !count.has(i.id)).length;
    const duplicated = [...count.values()].filter((n) => n > 1).length;
    const byWorker = {};
    for (const r of recs) byWorker[r.worker || 'none'] = (byWorker[r.worker || 'none'] || 0) + 1;
    const recoveredElsewhere = kills.map((k) => k.heldJobs.filter((id) => recs.find((r) => r.id === id && r.worker !== k.worker)).length);
    let sameAsLocal = null;
    if (baseline) {
      const local = new Map(lines(path.join(dir, 'local.jsonl')).map((l) => JSON.parse(l)).map((r) => [r.id, r.text]));
      sameAsLocal = `${recs.filter((r) => local.get(r.id) === r.text).length}/${recs.length}`;
    }
    for (const w of workers.slice(1)) w.child.kill('SIGTERM');
    await Promise.all(workers.slice(1).map((w) => w.done));
    const result = {
      items: N,
      workers: nWorkers,
      workerOptions: workerOpts.join(' '),
      seconds: +elapsed.toFixed(1),
      itemsPerHour: Math.round((N * 3600) / elapsed),
      lost,
      duplicated,
      errors: recs.filter((r) => r.error).length,
      kills,
      heldJobsRecoveredByOthers: recoveredElsewhere,
      recordsByWorker: byWorker,
      baselineOneProcess: baseline,
      textsSameAsOneProcess: sameAsLocal,
      collector: JSON.parse(collector.stdout),
      workerLogs: procs.filter((p) => p !== collector).map((p) => ({ name: p.name, stderr: p.stderr.trim().split('\n').slice(-4) })),
      loadavg: { before: loadBefore.map((x) => +x.toFixed(2)), after: os.loadavg().map((x) => +x.toFixed(2)) },
      date: new Date().toISOString(),
    };
    console.log(JSON.stringify(result, null, 2));
    const outJson = opt('json', null);
    if (outJson) fs.writeFileSync(outJson, JSON.stringify(result, null, 2));
  } finally {
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
    await queue.close().catch(() => undefined);
    redis.child.kill('SIGTERM');
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
