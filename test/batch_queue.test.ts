/**
 * The distributed path on a real redis-server: `plm batch --queue` enqueues (idempotently), three
 * `plm worker` processes run the jobs, one is killed with SIGKILL while it holds jobs, and
 * `plm batch --queue --collect` writes every item exactly once, with the same records as a run on one
 * machine; bad inputs end in the failed set with their typed error after the allowed attempts.
 */
import { ChildProcess, spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { Job, Queue } from 'bullmq';
import { batch, BatchModel, BatchRecord, defaultModelDir, loadModel, PerceptionLM, PlmError, readManifest } from '../lib';
import { enqueue, jobIdFor, queueStatus, runWorker, WorkerEvent } from '../lib/batch_queue';
import { byId, CLI, comparable, readRecords, ROOT, SCENES, SHAPES, trueCaption, writeManifest } from './helpers/batch_records';
import { RedisServer, startRedis } from './helpers/redis';

let scratch: string;
let redis: RedisServer;
const children: ChildProcess[] = [];

beforeAll(async () => {
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-batch-queue-'));
  if (!fs.existsSync(CLI)) spawnSync('npm', ['run', 'build:ts'], { cwd: ROOT, stdio: 'inherit' });
  redis = await startRedis(scratch);
});
afterAll(async () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await redis?.stop();
  fs.rmSync(scratch, { recursive: true, force: true });
});

interface Proc {
  child: ChildProcess;
  name: string;
  out: () => string;
  err: () => string;
  done: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

function plm(args: string[]): Proc {
  const child = spawn(process.execPath, [CLI, ...args], { cwd: scratch, stdio: ['ignore', 'pipe', 'pipe'] });
  children.push(child);
  let stdout = '';
  let stderr = '';
  child.stdout?.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (stderr += d.toString()));
  return {
    child,
    name: `${os.hostname()}:${child.pid}`,
    out: () => stdout,
    err: () => stderr,
    done: new Promise((resolve) => child.on('close', (code, signal) => resolve({ code, signal }))),
  };
}

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

test('three workers, one killed with SIGKILL mid-job: every item exactly once, failures typed in the failed set', async () => {
  const prompts = ['Describe the image.', 'How many objects are there?', 'What shape is the red object?'];
  const images = [...SCENES, SHAPES];
  const good = Array.from({ length: 48 }, (_, i) => ({ id: `g${i}`, image: images[i % 4], prompt: prompts[Math.floor(i / 4) % 3] }));
  fs.writeFileSync(path.join(scratch, 'corrupt.png'), Buffer.alloc(2048, 0x5a));
  const items = [...good.slice(0, 20), { id: 'missing', image: 'nowhere.png' }, ...good.slice(20, 30), { id: 'corrupt', image: 'corrupt.png' }, ...good.slice(30)];
  writeManifest(path.join(scratch, 'items.jsonl'), items);
  const common = ['items.jsonl', '-o', 'out.jsonl', '--queue', redis.url, '--queue-name', 'test', '--attempts', '2', '--backoff', '50', '--temperature', '0', '--max-tokens', '40'];

  // Enqueue twice: the second adds nothing (job ids come from the item ids).
  for (let i = 0; i < 2; i++) {
    const e = plm(['batch', ...common, '--json']);
    expect(await e.done).toEqual({ code: 0, signal: null });
    expect(JSON.parse(e.out())).toMatchObject({ total: items.length, enqueued: items.length, skipped: 0 });
  }
  expect((await queueStatus(redis.url, 'test')).counts).toMatchObject({ waiting: items.length, active: 0, completed: 0, failed: 0 });

  const workerArgs = ['worker', '--queue', redis.url, '--queue-name', 'test', '--concurrency', '1', '--prefetch', '1', '--lock-duration', '2000', '--stalled-interval', '500', '--progress-interval', '0'];
  const workers = [plm(workerArgs), plm(workerArgs), plm(workerArgs)];
  const collector = plm(['batch', ...common, '--collect', '--json', '--progress-interval', '0']);

  // Kill the first worker while it holds jobs (one generating, one prefetched). It is frozen (SIGSTOP) while
  // we look, so the jobs it holds when it dies are exactly the ones seen.
  const victim = workers[0];
  const queue = new Queue('test', { connection: { url: redis.url } });
  let held: Job[] = [];
  try {
    const deadline = Date.now() + 60_000;
    while (Date.now() < deadline) {
      const mine = (await queue.getJobs(['active'])).filter((j) => j?.processedBy === victim.name);
      if (mine.length > 0) {
        victim.child.kill('SIGSTOP');
        await sleep(100); // let a command it had already sent reach Redis
        held = (await queue.getJobs(['active'])).filter((j) => j?.processedBy === victim.name);
        if (held.length > 0) break;
        victim.child.kill('SIGCONT');
      }
      await sleep(10);
    }
    expect(held.length).toBeGreaterThan(0);
    victim.child.kill('SIGKILL');
    expect(await victim.done).toEqual({ code: null, signal: 'SIGKILL' });

    expect(await collector.done).toEqual({ code: 0, signal: null });
    expect(JSON.parse(collector.out())).toMatchObject({ total: items.length, done: items.length, failed: 2, skipped: 0 });
    expect(collector.err()).toMatch(/plm: batch \d+\/50/);

    // The failed set keeps the bad inputs with their typed errors, after both attempts.
    const failed = await queue.getJobs(['failed']);
    expect(failed.map((j) => j.data.item.id).sort()).toEqual(['corrupt', 'missing']);
    for (const j of failed) {
      expect(j.attemptsMade).toBe(2);
      expect(j.failedReason).toMatch(j.data.item.id === 'missing' ? /^ERR_FILE_NOT_FOUND: / : /^ERR_IMAGE_DECODE: /);
    }
    expect(await queue.getJob(jobIdFor('missing'))).toBeDefined();
  } finally {
    await queue.close();
  }
  const status = await queueStatus(redis.url, 'test');
  expect(status.counts).toMatchObject({ waiting: 0, active: 0, delayed: 0, completed: 0, failed: 2 });
  expect(status.workers.length).toBe(2);

  for (const w of workers.slice(1)) w.child.kill('SIGTERM');
  for (const w of workers.slice(1)) expect(await w.done).toEqual({ code: 0, signal: null });

  // Every item exactly once, and the same records as one machine makes.
  const got = byId(readRecords(path.join(scratch, 'out.jsonl')));
  expect([...got.keys()].sort()).toEqual(items.map((i) => i.id).sort());
  expect(got.get('missing')?.error?.code).toBe('ERR_FILE_NOT_FOUND');
  expect(got.get('corrupt')?.error?.code).toBe('ERR_IMAGE_DECODE');
  // What the victim held when it died was taken up again by the live workers once its locks expired.
  for (const j of held) expect([workers[1].name, workers[2].name]).toContain(got.get(j.data.item.id as string)?.worker);
  const model = await loadModel(defaultModelDir(), { backend: 'cpu' });
  try {
    const local: BatchRecord[] = [];
    const goodItems = (await readManifest(path.join(scratch, 'items.jsonl'))).filter((i) => i.id.startsWith('g'));
    for await (const r of batch(model, goodItems, { temperature: 0, maxTokens: 40 })) local.push(r);
    for (const r of local) expect(comparable(got.get(r.id) as BatchRecord)).toEqual(comparable(r));
    for (const r of local) if (r.prompt === 'Describe the image.' && r.image !== SHAPES) expect(r.text).toBe(trueCaption(r.image as string));
  } finally {
    model.dispose();
  }
}, 600_000); // ~10 s on an idle 2-core machine; generous for a loaded one

/**
 * A model whose generations run until they are cancelled, for the worker's stop paths (the bundled model
 * finishes an item in ~50 ms, too fast to catch mid-job on purpose); `fail` makes them fail instead.
 */
function stalledModel(fail?: PlmError): BatchModel & { started: number } {
  const m = {
    started: 0,
    dir: '/models/stub',
    backend: 'cpu',
    quantization: { kind: 'none' as const, file: null },
    config: { dtype: 'bfloat16' } as PerceptionLM['config'],
    tokenizer: {} as PerceptionLM['tokenizer'],
    buildInput: async () => ({ inputIds: Int32Array.of(1, 2, 3), pixelValues: null, numTiles: 0, media: [] }),
    complete: (o: { signal?: AbortSignal }) => {
      m.started++;
      if (fail) return Promise.reject(fail);
      return new Promise((resolve) =>
        o.signal?.addEventListener('abort', () =>
          resolve({ text: '', tokenIds: [], finishReason: 'cancelled', timings: { promptTokens: 3, visionMs: 0, prefillMs: 0, decodeMs: 0, decodeTokensPerSecond: 0, totalMs: 0 } }),
        ),
      );
    },
  };
  return m as unknown as BatchModel & { started: number };
}

test('a worker stopped hard, or hit by an engine failure, puts its running jobs back without using an attempt; /metrics and /health', async () => {
  const items = ['a', 'b', 'c'].map((id) => ({ id, image: SCENES[0] }));
  const queue = new Queue('stop', { connection: { url: redis.url } });
  try {
    await enqueue(redis.url, items, { queueName: 'stop', attempts: 2 });
    const model = stalledModel();
    const hard = new AbortController();
    const events: WorkerEvent[] = [];
    let port = 0;
    const run = runWorker(redis.url, model, {
      queueName: 'stop',
      concurrency: 1,
      prefetch: 1,
      cancelSignal: hard.signal,
      metricsPort: 0,
      onEvent: (ev) => {
        events.push(ev);
        if (ev.kind === 'ready') port = ev.metricsPort ?? 0;
      },
    });
    while (model.started === 0 || (await queue.getJobCounts('active')).active < 2) await sleep(10);
    expect(port).toBeGreaterThan(0);
    const health = await fetch(`http://127.0.0.1:${port}/health`);
    expect(health.status).toBe(200);
    const metrics = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    expect(metrics).toMatch(/bullmq_job_count\{queue="stop", state="active"\} 2/);
    expect(metrics).toMatch(/bullmq_job_count\{queue="stop", state="waiting"\} 1/);
    expect(metrics).toMatch(/plm_worker_jobs_completed_total\{worker="[^"]+"\} 0/);
    hard.abort();
    expect(await run).toMatchObject({ completed: 0, failed: 0 });
    expect(await queue.getJobCounts('waiting', 'active', 'failed', 'completed')).toEqual({ waiting: 3, active: 0, failed: 0, completed: 0 });
    for (const j of await queue.getJobs(['waiting'])) expect(j.attemptsMade).toBe(0);

    // An engine failure: the worker stops with it and the job goes back too.
    const broken = stalledModel(new PlmError('ERR_OUT_OF_MEMORY', 'out of memory (test)'));
    await expect(runWorker(redis.url, broken, { queueName: 'stop', concurrency: 1, prefetch: 0 })).rejects.toMatchObject({ code: 'ERR_OUT_OF_MEMORY' });
    expect(broken.started).toBe(1);
    expect(await queue.getJobCounts('waiting', 'active', 'failed', 'completed')).toEqual({ waiting: 3, active: 0, failed: 0, completed: 0 });
    for (const j of await queue.getJobs(['waiting'])) expect(j.attemptsMade).toBe(0);
    expect(events.filter((e) => e.kind === 'failed')).toEqual([]);
  } finally {
    await queue.obliterate({ force: true });
    await queue.close();
  }
});
