/**
 * `plm batch` and `plm worker`: many images or videos through one model, resumable, on one machine or on
 * any number of machines through a BullMQ queue on Redis (docs/batch.md).
 *
 *   plm batch INPUT... -o out.jsonl [--prompt TEXT] [--concurrency N] [--json]
 *   plm batch INPUT... -o out.jsonl --queue redis://HOST:PORT/DB [--collect]
 *   plm batch --queue redis://HOST:PORT/DB --status [--json]
 *   plm worker --queue redis://HOST:PORT/DB [--model DIR] [--concurrency N]
 */
import { Command, InvalidArgumentError } from 'commander';
import type { SingleBar } from 'cli-progress';
import { batch, BatchOutput, BatchProgress, listItems, MEDIA_EXTENSIONS, modelInfo, RunSettings } from './batch';
import {
  DEFAULT_ATTEMPTS,
  DEFAULT_BACKOFF_MS,
  DEFAULT_LOCK_DURATION_MS,
  DEFAULT_MAX_STALLED,
  DEFAULT_QUEUE_NAME,
  DEFAULT_STALLED_INTERVAL_MS,
} from './batch_defaults';
import type { WorkerEvent } from './batch_queue';
import { PlmError } from './errors';
import type { PerceptionLM } from './model';

/** Model and sampling options as `cli.ts` parses them for every command that loads a model. */
export interface ModelCliOpts {
  model?: string;
  backend?: 'auto' | 'cpu' | 'cuda';
  threads?: number;
  precision?: 'auto' | 'f32' | 'bf16';
  maxContext?: number;
  quantize?: 'none' | 'int8' | 'q4';
  quantizedFile?: string | false;
  maxTokens: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  json?: boolean;
  quiet?: boolean;
}

/** The pieces of `cli.ts` the batch commands share (passed in, so that this file does not import cli.ts). */
export interface BatchCliHelpers {
  addModelOptions(cmd: Command): Command;
  addSamplingOptions(cmd: Command): Command;
  openModel(opts: ModelCliOpts): Promise<PerceptionLM>;
  intArg(name: string, min: number): (v: string) => number;
  floatArg(name: string, min: number): (v: string) => number;
}

interface BatchCliOpts extends ModelCliOpts {
  output?: string;
  prompt?: string;
  maxTiles?: number;
  frames?: number;
  concurrency?: number;
  prefetch: number;
  ext?: string;
  progressInterval: number;
  queue?: string;
  queueName: string;
  collect?: boolean;
  attempts: number;
  backoff: number;
  status?: boolean;
}

interface WorkerCliOpts extends ModelCliOpts {
  queue: string;
  queueName: string;
  concurrency?: number;
  prefetch: number;
  lockDuration: number;
  stalledInterval: number;
  maxStalled: number;
  metricsPort?: number;
  metricsHost: string;
  progressInterval: number;
}

/** The BullMQ side, loaded only by the commands that use a queue (bullmq and ioredis take a while to import). */
function loadQueue(): Promise<typeof import('./batch_queue')> {
  return import('./batch_queue');
}

/** '1h 02m', '5m 04s', '12s'. */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '?';
  const s = Math.round(ms / 1000);
  if (s >= 3600) return `${Math.floor(s / 3600)}h ${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  if (s >= 60) return `${Math.floor(s / 60)}m ${String(s % 60).padStart(2, '0')}s`;
  return `${s}s`;
}

function formatRate(perHour: number): string {
  return perHour >= 100 ? `${Math.round(perHour).toLocaleString('en-US')}/h` : `${perHour.toFixed(1)}/h`;
}

/** Progress of a batch on stderr: a bar with rate and ETA on a TTY, else one plain line every `intervalS` seconds. */
interface BatchReporter {
  update(p: BatchProgress): void;
  stop(): void;
}

function createBatchReporter(enabled: boolean, intervalS: number, stream: NodeJS.WriteStream = process.stderr): BatchReporter {
  if (!enabled) return { update: () => undefined, stop: () => undefined };
  const describe = (p: BatchProgress): string => {
    const total = p.total !== undefined ? p.total - p.skipped : undefined;
    const count = total !== undefined ? `${p.done}/${total}` : `${p.done}`;
    const extra = [p.failed > 0 ? `${p.failed} errors` : '', p.skipped > 0 ? `${p.skipped} already done` : ''].filter(Boolean).join(', ');
    return `${count}${extra ? ` (${extra})` : ''}, ${formatRate(p.itemsPerHour)}${p.etaMs !== undefined ? `, ETA ${formatDuration(p.etaMs)}` : ''}`;
  };
  if (!stream.isTTY) {
    let last = -Infinity;
    let latest: BatchProgress | undefined;
    let printed: BatchProgress | undefined;
    return {
      update(p) {
        latest = p;
        const now = performance.now();
        if (now - last >= intervalS * 1000 && p.done > 0) {
          last = now;
          printed = p;
          stream.write(`plm: batch ${describe(p)}\n`);
        }
      },
      stop() {
        if (latest && latest !== printed && latest.done > 0) stream.write(`plm: batch ${describe(latest)}\n`);
      },
    };
  }
  // eslint-disable-next-line @typescript-eslint/no-var-requires
  const { SingleBar: Bar, Presets } = require('cli-progress') as typeof import('cli-progress');
  let bar: SingleBar | undefined;
  return {
    update(p) {
      const total = p.total !== undefined ? Math.max(1, p.total - p.skipped) : Math.max(1, p.done);
      const payload = {
        rate: formatRate(p.itemsPerHour),
        eta: p.etaMs !== undefined ? formatDuration(p.etaMs) : '?',
        errors: p.failed > 0 ? ` | ${p.failed} errors` : '',
      };
      if (!bar) {
        bar = new Bar({ stream, format: 'batch [{bar}] {value}/{total} | {rate} | ETA {eta}{errors}', hideCursor: true, clearOnComplete: false, etaBuffer: 50 }, Presets.shades_classic);
        bar.start(total, p.done, payload);
      }
      bar.setTotal(total);
      bar.update(p.done, payload);
    },
    stop() {
      bar?.stop();
      bar = undefined;
    },
  };
}

function extensionsArg(v: string): string[] {
  const list = v
    .split(',')
    .map((s) => s.trim().toLowerCase())
    .filter(Boolean)
    .map((s) => (s.startsWith('.') ? s : `.${s}`));
  if (list.length === 0) throw new InvalidArgumentError('--ext needs at least one extension, e.g. jpg,png');
  return list;
}

function settingsOf(opts: BatchCliOpts): RunSettings {
  const s: RunSettings = {};
  if (opts.prompt !== undefined) s.prompt = opts.prompt;
  if (opts.maxTokens !== undefined) s.maxTokens = opts.maxTokens;
  if (opts.maxTiles !== undefined) s.maxTiles = opts.maxTiles;
  if (opts.frames !== undefined) s.frames = opts.frames;
  if (opts.temperature !== undefined) s.temperature = opts.temperature;
  if (opts.topP !== undefined) s.topP = opts.topP;
  if (opts.topK !== undefined) s.topK = opts.topK;
  if (opts.seed !== undefined) s.seed = opts.seed;
  return s;
}

/** First SIGINT/SIGTERM: `soft` aborts; a second: `hard` aborts. */
function twoStageSignals(onFirst?: () => void): { soft: AbortController; hard: AbortController; dispose: () => void } {
  const soft = new AbortController();
  const hard = new AbortController();
  const handler = (): void => {
    if (!soft.signal.aborted) {
      soft.abort();
      onFirst?.();
    } else hard.abort();
  };
  process.on('SIGINT', handler);
  process.on('SIGTERM', handler);
  return {
    soft,
    hard,
    dispose: () => {
      process.off('SIGINT', handler);
      process.off('SIGTERM', handler);
    },
  };
}

async function runBatchCmd(inputs: string[], opts: BatchCliOpts, h: BatchCliHelpers): Promise<void> {
  const say = (line: string): void => {
    if (!opts.quiet) process.stderr.write(`plm: ${line}\n`);
  };
  if (opts.status) {
    if (!opts.queue) throw new PlmError('ERR_INVALID_ARGUMENT', '--status needs --queue redis://HOST:PORT/DB');
    const { queueStatus } = await loadQueue();
    const st = await queueStatus(opts.queue, opts.queueName);
    if (opts.json) process.stdout.write(JSON.stringify(st) + '\n');
    else {
      const c = st.counts;
      process.stdout.write(
        `queue ${st.queue}: ${c.waiting ?? 0} waiting, ${c.active ?? 0} active, ${c.delayed ?? 0} delayed (retries), ${c.completed ?? 0} completed (not collected yet), ${c.failed ?? 0} failed\n` +
          `workers (${st.workers.length}): ${st.workers.join(', ') || 'none'}\n`,
      );
    }
    return;
  }
  if (inputs.length === 0) throw new PlmError('ERR_INVALID_ARGUMENT', 'give inputs: folders, quoted globs, .jsonl manifests or media files, e.g. plm batch photos/ -o captions.jsonl');
  if (!opts.output) throw new PlmError('ERR_INVALID_ARGUMENT', 'give the output file with -o FILE.jsonl (running the same command again resumes it)');
  if (opts.collect && !opts.queue) throw new PlmError('ERR_INVALID_ARGUMENT', '--collect goes with --queue redis://HOST:PORT/DB');
  const items = await listItems(inputs, opts.ext ? { extensions: extensionsArg(opts.ext) } : {});
  if (items.length === 0) throw new PlmError('ERR_FILE_NOT_FOUND', `no media files in ${inputs.join(' ')} (extensions: ${(opts.ext ? extensionsArg(opts.ext) : MEDIA_EXTENSIONS).join(' ')})`);
  const settings = settingsOf(opts);
  const out = await BatchOutput.open(opts.output);
  const started = performance.now();
  const signals = twoStageSignals(() => say('stopping: running items are cancelled (run the same command again to resume)'));
  const reporter = createBatchReporter(!opts.quiet, opts.progressInterval);
  try {
    if (out.scan.truncatedBytes > 0) say(`cut a torn last line (${out.scan.truncatedBytes} bytes) off ${out.file}; its item runs again`);
    if (out.scan.badLines > 0) say(`${out.scan.badLines} lines of ${out.file} are not records; their items run again`);
    const skipped = items.filter((i) => out.has(i.id)).length;
    if (opts.queue) {
      const { collect, enqueue } = await loadQueue();
      const todo = items.filter((i) => !out.has(i.id));
      const { submitted } = await enqueue(opts.queue, todo, { queueName: opts.queueName, settings, attempts: opts.attempts, backoffMs: opts.backoff });
      say(`enqueued ${submitted} items on ${opts.queueName} (${skipped} already in ${out.file}; items already queued are not added twice)`);
      if (!opts.collect) {
        if (opts.json) process.stdout.write(JSON.stringify({ output: out.file, queue: opts.queueName, total: items.length, enqueued: submitted, skipped }) + '\n');
        return;
      }
      const ids = new Set(todo.map((i) => i.id));
      const r = await collect(opts.queue, ids, out, {
        queueName: opts.queueName,
        signal: signals.soft.signal,
        onProgress: (p) => {
          const elapsedMs = performance.now() - started;
          const perMs = p.written / Math.max(1, elapsedMs);
          reporter.update({
            total: items.length,
            done: p.written,
            failed: p.failed,
            skipped,
            inFlight: 0,
            elapsedMs,
            itemsPerHour: perMs * 3_600_000,
            ...(perMs > 0 ? { etaMs: (p.total - p.written) / perMs } : {}),
          });
        },
      });
      reporter.stop();
      summarize(opts, { output: out.file, queue: opts.queueName, total: items.length, done: r.written, failed: r.failed, skipped, elapsedMs: performance.now() - started });
      return;
    }
    const model = await h.openModel(opts);
    const loadMs = performance.now() - started;
    try {
      const stats = { done: 0, failed: 0 };
      for await (const r of batch(model, items, {
        ...settings,
        output: out,
        concurrency: opts.concurrency,
        prefetch: opts.prefetch,
        signal: signals.soft.signal,
        onProgress: (p) => reporter.update(p),
      })) {
        stats.done++;
        if (r.error) stats.failed++;
      }
      reporter.stop();
      summarize(opts, {
        output: out.file,
        total: items.length,
        done: stats.done,
        failed: stats.failed,
        skipped,
        elapsedMs: performance.now() - started,
        loadMs,
        model: modelInfo(model),
      });
    } finally {
      model.dispose();
    }
  } finally {
    reporter.stop();
    signals.dispose();
    out.close();
  }
}

function summarize(
  opts: BatchCliOpts,
  s: { output: string; total: number; done: number; failed: number; skipped: number; elapsedMs: number; loadMs?: number; queue?: string; model?: ReturnType<typeof modelInfo> },
): void {
  const perHour = s.done > 0 ? (s.done * 3_600_000) / s.elapsedMs : 0;
  if (opts.json) {
    process.stdout.write(JSON.stringify({ ...s, itemsPerHour: perHour }) + '\n');
    return;
  }
  if (!opts.quiet) {
    process.stderr.write(
      `plm: batch done: ${s.done} records written (${s.failed} errors), ${s.skipped} already done, in ${formatDuration(s.elapsedMs)} (${formatRate(perHour)}) -> ${s.output}\n`,
    );
  }
}

async function runWorkerCmd(opts: WorkerCliOpts, h: BatchCliHelpers): Promise<void> {
  const say = (line: string): void => {
    if (!opts.quiet) process.stderr.write(`plm worker: ${line}\n`);
  };
  const { runWorker } = await loadQueue();
  const model = await h.openModel(opts);
  const signals = twoStageSignals(() => say('stopping: finishing the running jobs (press Ctrl-C again to put them back in the queue now)'));
  const counts = { completed: 0, failed: 0, retried: 0 };
  const started = performance.now();
  let lastLine = performance.now();
  const line = (): string => {
    const perHour = (counts.completed * 3_600_000) / Math.max(1, performance.now() - started);
    return `${counts.completed} done, ${counts.failed} failed, ${counts.retried} retried, ${formatRate(perHour)}`;
  };
  try {
    const stats = await runWorker(opts.queue, model, {
      queueName: opts.queueName,
      concurrency: opts.concurrency,
      prefetch: opts.prefetch,
      lockDurationMs: opts.lockDuration,
      stalledIntervalMs: opts.stalledInterval,
      maxStalledCount: opts.maxStalled,
      metricsPort: opts.metricsPort,
      metricsHost: opts.metricsHost,
      signal: signals.soft.signal,
      cancelSignal: signals.hard.signal,
      onEvent: (ev: WorkerEvent) => {
        if (ev.kind === 'ready') say(`${ev.name} processing ${opts.queueName} on ${opts.queue}${ev.metricsPort !== undefined ? `, metrics on port ${ev.metricsPort}` : ''}`);
        else if (ev.kind === 'completed') counts.completed++;
        else if (ev.kind === 'failed') {
          if (ev.final) counts.failed++;
          else counts.retried++;
          say(`${ev.id}: ${ev.error.code}: ${ev.error.message}${ev.final ? ` (failed after ${ev.attemptsMade} attempts)` : ' (will retry)'}`);
        } else say(`redis: ${ev.message}`);
        if (performance.now() - lastLine >= opts.progressInterval * 1000 && (ev.kind === 'completed' || ev.kind === 'failed')) {
          lastLine = performance.now();
          say(line());
        }
      },
    });
    say(`stopped after ${formatDuration(stats.elapsedMs)}: ${line()}`);
  } finally {
    signals.dispose();
    model.dispose();
  }
}

/**
 * Adds `batch` and `worker` to the program.
 *
 * @example
 * ```ts
 * registerBatchCommands(program, { addModelOptions, addSamplingOptions, openModel, intArg, floatArg });
 * ```
 */
export function registerBatchCommands(program: Command, h: BatchCliHelpers): void {
  const b = program
    .command('batch')
    .description('caption or question many images/videos into a resumable JSONL file, on this machine or through a Redis queue (docs/batch.md)');
  h.addSamplingOptions(h.addModelOptions(b))
    .argument('[inputs...]', 'folders (recursive), quoted globs ("photos/**/*.jpg"), .jsonl manifests ({"id","image"|"video","prompt"?,"maxTokens"?} per line) or media files')
    .option('-o, --output <file>', 'JSONL output, one record per item; run the same command again to resume (done ids are skipped)')
    .option('-p, --prompt <text>', 'prompt for items without their own (default "Describe the image." / "Describe the video.")')
    .option('--max-tiles <n>', 'maximum 448px tiles per image, thumbnail excluded (default: the checkpoint, 36 for PLM)', h.intArg('--max-tiles', 1))
    .option('--frames <n>', 'frames sampled from a video (default 32)', h.intArg('--frames', 1))
    .option('--concurrency <n>', "items generated at once (default: the model's sequences, else 4)", h.intArg('--concurrency', 1))
    .option('--prefetch <n>', 'items decoded and preprocessed ahead of the running ones', h.intArg('--prefetch', 0), 2)
    .option('--ext <list>', `extensions taken from folders, comma-separated (default ${MEDIA_EXTENSIONS.map((e) => e.slice(1)).join(',')})`)
    .option('--json', 'print a JSON summary on stdout at the end')
    .option('--progress-interval <s>', 'seconds between progress lines when stderr is not a terminal', h.floatArg('--progress-interval', 0), 10)
    .option('--queue <url>', 'enqueue the items on BullMQ at redis://HOST:PORT/DB instead of running them here (workers: plm worker)')
    .option('--queue-name <name>', 'BullMQ queue name', DEFAULT_QUEUE_NAME)
    .option('--collect', 'with --queue: wait for the workers and write their records to --output as they arrive')
    .option('--attempts <n>', 'with --queue: tries per item before it stays in the failed set', h.intArg('--attempts', 1), DEFAULT_ATTEMPTS)
    .option('--backoff <ms>', 'with --queue: first retry delay (doubles each time)', h.intArg('--backoff', 0), DEFAULT_BACKOFF_MS)
    .option('--status', 'with --queue: print the job counts and the connected workers, then exit')
    .addHelpText(
      'after',
      `
Records: {"id","image"|"video","prompt","text","finishReason","promptTokens","completionTokens","numTiles","params","model","timings"}
or, for an item that failed, {"id",...,"error":{"code","message"}}. Failures never stop the run.

Examples:
  plm batch photos/ -o captions.jsonl --model ~/models/Perception-LM-1B --max-tiles 4 --max-tokens 128
  plm batch "shots/**/*.{jpg,png}" -o captions.jsonl --prompt "List the objects." --json
  plm batch questions.jsonl -o answers.jsonl --temperature 0
  plm batch photos/ -o captions.jsonl --queue redis://10.0.0.5:6379/0 --collect   (run plm worker on other machines)
  plm batch --queue redis://10.0.0.5:6379/0 --status`,
    )
    .action(async (inputs: string[], opts: BatchCliOpts) => runBatchCmd(inputs, opts, h));

  const w = program.command('worker').description('process plm batch jobs from a BullMQ queue on Redis with a loaded model (run it on any number of machines)');
  h.addModelOptions(w)
    .requiredOption('--queue <url>', 'redis://HOST:PORT/DB of the queue')
    .option('--queue-name <name>', 'BullMQ queue name', DEFAULT_QUEUE_NAME)
    .option('--concurrency <n>', "items generated at once (default: the model's sequences, else 4)", h.intArg('--concurrency', 1))
    .option('--prefetch <n>', 'jobs taken ahead and preprocessed while others generate', h.intArg('--prefetch', 0), 2)
    .option('--lock-duration <ms>', "job lock lifetime; a dead worker's jobs are taken up again after it", h.intArg('--lock-duration', 100), DEFAULT_LOCK_DURATION_MS)
    .option('--stalled-interval <ms>', 'how often to look for jobs of dead workers', h.intArg('--stalled-interval', 100), DEFAULT_STALLED_INTERVAL_MS)
    .option('--max-stalled <n>', 'recoveries from dead workers per job before it fails', h.intArg('--max-stalled', 0), DEFAULT_MAX_STALLED)
    .option('--metrics-port <n>', 'serve GET /metrics (Prometheus) and GET /health on this port (0 = any free port)', h.intArg('--metrics-port', 0))
    .option('--metrics-host <host>', 'address of the metrics server', '127.0.0.1')
    .option('--progress-interval <s>', 'seconds between progress lines', h.floatArg('--progress-interval', 0), 60)
    .option('-q, --quiet', 'no progress or notices on stderr')
    .addHelpText(
      'after',
      `
Sampling settings (prompt, max tokens, tiles, temperature) come with the jobs (plm batch --queue). Media paths
in the jobs are absolute: mount the same storage at the same path on every machine. SIGTERM / Ctrl-C finish
the running jobs and exit; a second one puts them back in the queue at once.

Examples:
  plm worker --queue redis://10.0.0.5:6379/0 --model ~/models/Perception-LM-1B --quantize int8
  plm worker --queue redis://redis:6379/0 --model /models/plm-1b --concurrency 8 --metrics-port 9464 --metrics-host 0.0.0.0`,
    )
    .action(async (opts: WorkerCliOpts) => runWorkerCmd(opts, h));
}
