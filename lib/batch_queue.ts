/**
 * `plm batch` across machines on BullMQ and Redis: {@link enqueue} puts one job per item on a queue
 * (job id derived from the item id, so enqueueing twice adds nothing), {@link runWorker} processes jobs
 * with a loaded model (the same {@link ItemRunner} as the one-machine run), and {@link collect} appends
 * the finished jobs' records to a resumable JSONL output, each id once.
 *
 * Delivery: a worker that dies mid-job (kill -9) stops renewing its job locks; after `lockDuration` a
 * live worker's stalled-job check puts those jobs back in the wait list (BullMQ's stalled-job
 * recovery, up to `maxStalledCount` times per job). An item that fails (bad input) is retried up to
 * `attempts` times and then stays in the queue's failed set with its typed error; the collector writes
 * an error record for it. The collector writes a record only for ids the output does not have yet,
 * before it removes the completed job, so a collector killed at any point loses and duplicates nothing.
 */
import * as crypto from 'crypto';
import * as http from 'http';
import * as os from 'os';
import { Job, Queue, UnrecoverableError, WaitingError, Worker } from 'bullmq';
import { isPlmErrorCode, PlmError, PlmErrorCode } from './errors';
import { DEFAULT_ATTEMPTS, DEFAULT_BACKOFF_MS, DEFAULT_LOCK_DURATION_MS, DEFAULT_MAX_STALLED, DEFAULT_QUEUE_NAME, DEFAULT_STALLED_INTERVAL_MS } from './batch_defaults';
import { BatchItem, BatchModel, BatchOutput, BatchParams, BatchRecord, checkItem, defaultConcurrency, DEFAULT_PREFETCH, ItemRunner, pickParams, RunSettings } from './batch';

export { DEFAULT_ATTEMPTS, DEFAULT_BACKOFF_MS, DEFAULT_LOCK_DURATION_MS, DEFAULT_MAX_STALLED, DEFAULT_QUEUE_NAME, DEFAULT_STALLED_INTERVAL_MS };

/** What a job carries: the item (absolute media paths, as every worker must see them) and the run's settings. */
export interface QueueJobData {
  item: BatchItem;
  settings: RunSettings;
}

/** BullMQ connection options for a `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS) URL. */
export function connectionFor(url: string): { url: string; maxRetriesPerRequest: null } {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new PlmError('ERR_INVALID_ARGUMENT', `--queue ${url} is not a URL; use redis://HOST:PORT/DB, e.g. redis://127.0.0.1:6379/0`);
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') {
    throw new PlmError('ERR_INVALID_ARGUMENT', `--queue ${url}: the scheme must be redis:// (or rediss:// for TLS)`);
  }
  const db = u.pathname.replace(/^\//, '');
  if (db !== '' && !/^\d+$/.test(db)) throw new PlmError('ERR_INVALID_ARGUMENT', `--queue ${url}: the path must be a database number, e.g. /0`);
  return { url, maxRetriesPerRequest: null };
}

/**
 * The BullMQ job id of an item id: `plm-` and 40 hex digits of its SHA-256 (BullMQ ids may not be integers
 * or contain ':'; any item id maps to a valid one, the same on every machine).
 */
export function jobIdFor(id: string): string {
  return `plm-${crypto.createHash('sha256').update(id, 'utf8').digest('hex').slice(0, 40)}`;
}

function abortable(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve();
    const t = setTimeout(done, ms);
    function done(): void {
      clearTimeout(t);
      signal?.removeEventListener('abort', done);
      resolve();
    }
    signal?.addEventListener('abort', done);
  });
}

/** Options of {@link enqueue}. */
export interface EnqueueOptions {
  /** Queue name. Default 'plm-batch'. */
  queueName?: string;
  /** The run's prompt and generation settings, stored with each job. */
  settings?: RunSettings;
  /** Tries per item. Default 3. */
  attempts?: number;
  /** First retry delay in ms (exponential). Default 2000. */
  backoffMs?: number;
  /** Called after each chunk of jobs with the number added so far. */
  onProgress?: (submitted: number) => void;
}

/**
 * Adds one job per item to the queue at `url`, job id {@link jobIdFor}(item id): an item that already has a
 * job (waiting, running, done or failed) is not added again.
 *
 * @returns how many items were submitted.
 * @example
 * ```ts
 * await enqueue('redis://127.0.0.1:6379/0', await listItems(['photos/']), { settings: { maxTokens: 64 } });
 * ```
 */
export async function enqueue(url: string, items: readonly BatchItem[], options: EnqueueOptions = {}): Promise<{ submitted: number }> {
  const queue = new Queue<QueueJobData>(options.queueName ?? DEFAULT_QUEUE_NAME, { connection: connectionFor(url) });
  const attempts = options.attempts ?? DEFAULT_ATTEMPTS;
  const backoffMs = options.backoffMs ?? DEFAULT_BACKOFF_MS;
  const settings: RunSettings = { ...pickParams(options.settings ?? {}), ...(options.settings?.prompt !== undefined ? { prompt: options.settings.prompt } : {}) };
  try {
    let submitted = 0;
    for (let i = 0; i < items.length; i += 500) {
      const chunk = items.slice(i, i + 500);
      await queue.addBulk(
        chunk.map((item) => ({
          name: 'describe',
          data: { item, settings },
          opts: { jobId: jobIdFor(item.id), attempts, backoff: { type: 'exponential', delay: backoffMs }, removeOnComplete: false, removeOnFail: false },
        })),
      );
      submitted += chunk.length;
      options.onProgress?.(submitted);
    }
    return { submitted };
  } catch (e) {
    throw queueError(e, url);
  } finally {
    await queue.close().catch(() => undefined);
  }
}

/** A Redis failure as a PlmError. */
function queueError(e: unknown, url: string): PlmError {
  if (e instanceof PlmError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  return new PlmError('ERR_NETWORK', `the queue at ${url} failed: ${msg}; check that redis-server runs there and the URL is right`, { cause: e });
}

/** The typed error a failed job carries: workers fail jobs with "ERR_CODE: message". */
export function parseFailure(reason: string | undefined): { code: PlmErrorCode; message: string } {
  const m = /^(ERR_[A-Z0-9_]+): ([\s\S]*)$/.exec(reason ?? '');
  if (m && isPlmErrorCode(m[1])) return { code: m[1], message: m[2] };
  if (/stalled more than allowable limit/.test(reason ?? '')) {
    return {
      code: 'ERR_INTERNAL',
      message: `the workers running this item kept dying (${String(reason)}); run it alone with plm describe to see why`,
    };
  }
  return { code: 'ERR_INTERNAL', message: reason && reason.length > 0 ? reason : 'the job failed without a reason' };
}

/** The record of a finished job: the worker's record when it completed, an error record when it failed. */
function recordOf(job: Job<QueueJobData>, state: 'completed' | 'failed'): BatchRecord {
  const item = job.data.item;
  const settings = job.data.settings ?? {};
  const video = item.video !== undefined;
  const base = {
    id: item.id,
    ...(video ? { video: item.video } : { image: item.image }),
    prompt: item.prompt ?? settings.prompt ?? (video ? 'Describe the video.' : 'Describe the image.'),
  };
  const params: BatchParams = pickParams({ ...settings, ...(item.maxTokens !== undefined ? { maxTokens: item.maxTokens } : {}) });
  const rv = job.returnvalue as unknown;
  if (state === 'completed') {
    if (typeof rv === 'object' && rv !== null && (rv as BatchRecord).id === item.id) return rv as BatchRecord;
    return { ...base, error: { code: 'ERR_INTERNAL', message: `the job completed without a record (${JSON.stringify(rv)})` }, params };
  }
  return {
    ...base,
    error: parseFailure(job.failedReason),
    params,
    ...(item.meta !== undefined ? { meta: item.meta } : {}),
    ...(job.processedBy ? { worker: job.processedBy } : {}),
  };
}

/** Progress of {@link collect}. */
export interface CollectProgress {
  /** Items this run waits for (those the output did not have at the start). */
  total: number;
  /** Records written so far. */
  written: number;
  /** Of those, error records. */
  failed: number;
}

/** Options of {@link collect}. */
export interface CollectOptions {
  queueName?: string;
  /** Pause between polls when nothing new finished, ms. Default 500. */
  pollMs?: number;
  signal?: AbortSignal;
  onProgress?: (p: CollectProgress) => void;
  /** Called with each record written. */
  onRecord?: (r: BatchRecord) => void;
}

/**
 * Writes the records of finished jobs for `ids` to `out` until every id has a record: a completed job's
 * record is appended (unless the output already has that id) and then the job is removed from Redis; a job
 * in the failed set (attempts used up) gets an error record and stays in the failed set for inspection.
 * Jobs of other ids are left alone.
 *
 * @returns the counts when every id has a record; rejects with ERR_CANCELLED on abort (what was written stays).
 * @example
 * ```ts
 * const out = await BatchOutput.open('captions.jsonl');
 * await collect('redis://127.0.0.1:6379/0', new Set(items.map((i) => i.id)), out);
 * out.close();
 * ```
 */
export async function collect(url: string, ids: ReadonlySet<string>, out: BatchOutput, options: CollectOptions = {}): Promise<CollectProgress> {
  const queue = new Queue<QueueJobData>(options.queueName ?? DEFAULT_QUEUE_NAME, { connection: connectionFor(url) });
  const pollMs = options.pollMs ?? 500;
  let waiting = 0;
  for (const id of ids) if (!out.has(id)) waiting++;
  const progress: CollectProgress = { total: waiting, written: 0, failed: 0 };
  const PAGE = 500;
  let lastFailedCount = -1;
  const take = async (state: 'completed' | 'failed'): Promise<number> => {
    let got = 0;
    let start = 0;
    for (;;) {
      const jobs = (await queue.getJobs([state], start, start + PAGE - 1, true)) as Job<QueueJobData>[];
      let kept = 0;
      for (const job of jobs) {
        const id = job?.data?.item?.id;
        if (typeof id !== 'string' || !ids.has(id)) {
          kept++;
          continue;
        }
        if (!out.has(id)) {
          const rec = recordOf(job, state);
          out.append(rec);
          progress.written++;
          if (rec.error) progress.failed++;
          waiting--;
          got++;
          options.onRecord?.(rec);
        }
        if (state === 'completed') await job.remove().catch(() => kept++);
        else kept++;
      }
      if (jobs.length < PAGE) return got;
      start += kept;
    }
  };
  try {
    options.onProgress?.({ ...progress });
    while (waiting > 0) {
      if (options.signal?.aborted) throw new PlmError('ERR_CANCELLED', 'collecting was aborted; run the same command again to go on');
      const counts = await queue.getJobCounts('completed', 'failed');
      let got = 0;
      if ((counts.completed ?? 0) > 0) got += await take('completed');
      if ((counts.failed ?? 0) !== lastFailedCount) {
        lastFailedCount = counts.failed ?? 0;
        got += await take('failed');
      }
      if (got > 0) options.onProgress?.({ ...progress });
      else if (waiting > 0) await abortable(pollMs, options.signal);
    }
    return progress;
  } catch (e) {
    throw queueError(e, url);
  } finally {
    await queue.close().catch(() => undefined);
  }
}

/** Job counts and connected workers of a queue. */
export interface QueueStatus {
  queue: string;
  counts: Record<string, number>;
  workers: string[];
}

/**
 * Job counts per state (`waiting`, `active`, `delayed`, `completed`, `failed`, ...) and the names of the
 * connected workers.
 *
 * @example
 * ```ts
 * const { counts, workers } = await queueStatus('redis://127.0.0.1:6379/0');
 * ```
 */
export async function queueStatus(url: string, queueName: string = DEFAULT_QUEUE_NAME): Promise<QueueStatus> {
  const queue = new Queue(queueName, { connection: connectionFor(url) });
  try {
    const counts = await queue.getJobCounts('waiting', 'active', 'delayed', 'prioritized', 'completed', 'failed');
    const workers = (await queue.getWorkers()).map((w) => w.name || w.addr || 'unnamed');
    return { queue: queueName, counts, workers };
  } catch (e) {
    throw queueError(e, url);
  } finally {
    await queue.close().catch(() => undefined);
  }
}

/** Options of {@link runWorker}. */
export interface RunWorkerOptions {
  queueName?: string;
  /** Items generated at once. Default: the model's `sequences`, else 4. */
  concurrency?: number;
  /** Jobs taken ahead and preprocessed while others generate. Default 2. */
  prefetch?: number;
  /** How long a job's lock lives without renewal (renewed every half of it), ms. Default 30000. */
  lockDurationMs?: number;
  /** How often this worker looks for jobs of dead workers, ms. Default 30000. */
  stalledIntervalMs?: number;
  /** Recoveries from dead workers per job before it fails. Default 2. */
  maxStalledCount?: number;
  /** Worker name stored on each job it processes (BullMQ `processedBy`). Default `host:pid`. */
  name?: string;
  /** Stops the worker: it takes no new jobs and resolves once the running ones have finished. */
  signal?: AbortSignal;
  /** Stops the worker now: running jobs are cancelled and go back to the wait list (no attempt used). */
  cancelSignal?: AbortSignal;
  /** Serve `GET /metrics` (Prometheus text: queue counts and this worker's counters) and `GET /health` on this port. */
  metricsPort?: number;
  /** Address for the metrics server. Default 127.0.0.1. */
  metricsHost?: string;
  /** Called when a job finishes (its record, or the error it failed with) or the worker logs something. */
  onEvent?: (ev: WorkerEvent) => void;
}

/** What a worker reports. */
export type WorkerEvent =
  | { kind: 'ready'; name: string; metricsPort?: number }
  | { kind: 'completed'; id: string; record: BatchRecord }
  | { kind: 'failed'; id: string; error: { code: PlmErrorCode; message: string }; attemptsMade: number; final: boolean }
  | { kind: 'error'; message: string };

/** Counters of a worker. */
export interface WorkerStats {
  completed: number;
  failed: number;
  elapsedMs: number;
}

/**
 * Processes jobs of the queue at `url` with `model` until `signal` aborts (then it takes no new jobs, lets
 * the running ones finish and resolves) or `cancelSignal` aborts (running jobs go back to the wait list).
 * A job whose item fails throws `ERR_CODE: message` (BullMQ retries it up to its `attempts`); an engine
 * failure ({@link FATAL_CODES}) puts the running jobs back in the wait list, stops the worker and rejects.
 *
 * @example
 * ```ts
 * const ac = new AbortController();
 * process.once('SIGTERM', () => ac.abort());
 * await runWorker('redis://redis:6379/0', await loadModel('/models/Perception-LM-1B'), { signal: ac.signal });
 * ```
 */
export async function runWorker(url: string, model: BatchModel, options: RunWorkerOptions = {}): Promise<WorkerStats> {
  const queueName = options.queueName ?? DEFAULT_QUEUE_NAME;
  const concurrency = options.concurrency ?? defaultConcurrency(model);
  const prefetch = options.prefetch ?? DEFAULT_PREFETCH;
  const name = options.name ?? `${os.hostname()}:${process.pid}`;
  const runner = new ItemRunner(model, { concurrency, worker: name });
  const started = performance.now();
  const stats: WorkerStats = { completed: 0, failed: 0, elapsedMs: 0 };
  let fatal: PlmError | undefined;
  const stop = new AbortController();
  const cancel = new AbortController();
  const emit = (ev: WorkerEvent): void => options.onEvent?.(ev);

  const worker = new Worker<QueueJobData, BatchRecord>(
    queueName,
    async (job, token, jobSignal) => {
      let item: BatchItem;
      try {
        item = checkItem(job.data?.item, `job ${String(job.id)}`, '/');
      } catch (e) {
        throw new UnrecoverableError(`${(e as PlmError).code}: ${(e as PlmError).message}`);
      }
      const signal = jobSignal ? AbortSignal.any([cancel.signal, jobSignal]) : cancel.signal;
      let rec: BatchRecord;
      try {
        rec = await runner.run(item, job.data.settings ?? {}, signal);
      } catch (e) {
        const err = e as PlmError;
        if (err.code !== 'ERR_CANCELLED' && !fatal) {
          fatal = err;
          stop.abort();
          cancel.abort();
        }
        // Not the item's fault: back to the wait list without using up an attempt.
        await job.moveToWait(token).catch(() => undefined);
        throw new WaitingError();
      }
      if (rec.error) throw new Error(`${rec.error.code}: ${rec.error.message}`);
      return rec;
    },
    {
      connection: connectionFor(url),
      concurrency: concurrency + prefetch,
      lockDuration: options.lockDurationMs ?? DEFAULT_LOCK_DURATION_MS,
      stalledInterval: options.stalledIntervalMs ?? DEFAULT_STALLED_INTERVAL_MS,
      maxStalledCount: options.maxStalledCount ?? DEFAULT_MAX_STALLED,
      name,
      autorun: false,
    },
  );
  worker.on('completed', (job, rec) => {
    stats.completed++;
    emit({ kind: 'completed', id: job.data.item.id, record: rec });
  });
  worker.on('failed', (job, err) => {
    if (!job) return;
    const attempts = job.opts.attempts ?? 1;
    const final = err instanceof UnrecoverableError || job.attemptsMade >= attempts || job.finishedOn !== undefined;
    if (final) stats.failed++;
    emit({ kind: 'failed', id: job.data?.item?.id ?? String(job.id), error: parseFailure(err.message), attemptsMade: job.attemptsMade, final });
  });
  worker.on('error', (err) => emit({ kind: 'error', message: err.message }));

  let server: http.Server | undefined;
  let metricsQueue: Queue | undefined;
  const onAbort = (): void => stop.abort();
  const onCancel = (): void => {
    stop.abort();
    cancel.abort();
  };
  options.signal?.addEventListener('abort', onAbort);
  options.cancelSignal?.addEventListener('abort', onCancel);
  if (options.signal?.aborted) onAbort();
  if (options.cancelSignal?.aborted) onCancel();
  try {
    if (options.metricsPort !== undefined) {
      metricsQueue = new Queue(queueName, { connection: connectionFor(url) });
      server = await serveMetrics(options.metricsPort, options.metricsHost ?? '127.0.0.1', metricsQueue, name, stats, started, () => worker.isRunning());
    }
    await worker.waitUntilReady();
    const address = server?.address();
    emit({ kind: 'ready', name, ...(address && typeof address === 'object' ? { metricsPort: address.port } : {}) });
    const running = worker.run();
    if (!stop.signal.aborted) await new Promise<void>((r) => stop.signal.addEventListener('abort', () => r(), { once: true }));
    await worker.close();
    await running.catch(() => undefined);
  } catch (e) {
    await worker.close(true).catch(() => undefined);
    throw queueError(e, url);
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
    options.cancelSignal?.removeEventListener('abort', onCancel);
    server?.close();
    await metricsQueue?.close().catch(() => undefined);
  }
  stats.elapsedMs = performance.now() - started;
  if (fatal) throw fatal;
  return stats;
}

/** GET /metrics (Prometheus: BullMQ's queue gauges plus this worker's counters) and GET /health. */
async function serveMetrics(
  port: number,
  host: string,
  queue: Queue,
  name: string,
  stats: WorkerStats,
  started: number,
  running: () => boolean,
): Promise<http.Server> {
  const server = http.createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/health') {
      const ok = running();
      res.writeHead(ok ? 200 : 503, { 'content-type': 'text/plain' }).end(ok ? 'ok\n' : 'stopped\n');
      return;
    }
    if (req.method === 'GET' && req.url === '/metrics') {
      queue
        .exportPrometheusMetrics()
        .then((text) => {
          const label = `{worker="${name.replace(/["\\\n]/g, '_')}"}`;
          const own = [
            '# HELP plm_worker_jobs_completed_total Jobs this worker completed.',
            '# TYPE plm_worker_jobs_completed_total counter',
            `plm_worker_jobs_completed_total${label} ${stats.completed}`,
            '# HELP plm_worker_jobs_failed_total Jobs this worker failed for good (attempts used up).',
            '# TYPE plm_worker_jobs_failed_total counter',
            `plm_worker_jobs_failed_total${label} ${stats.failed}`,
            '# HELP plm_worker_uptime_seconds Seconds since the worker started.',
            '# TYPE plm_worker_uptime_seconds gauge',
            `plm_worker_uptime_seconds${label} ${((performance.now() - started) / 1000).toFixed(1)}`,
          ].join('\n');
          res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4' }).end(`${text.trimEnd()}\n${own}\n`);
        })
        .catch((e: unknown) => res.writeHead(503, { 'content-type': 'text/plain' }).end(`redis: ${(e as Error).message}\n`));
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' }).end('GET /metrics or /health\n');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e) => reject(new PlmError('ERR_INVALID_ARGUMENT', `--metrics-port ${port}: ${e.message}`, { cause: e })));
    server.listen(port, host, () => resolve());
  });
  return server;
}
