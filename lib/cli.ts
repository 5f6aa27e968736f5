#!/usr/bin/env node
/**
 * `plm`: the command-line interface of perception-lm.
 *
 *   plm generate [--model DIR] "prompt"
 *   plm describe <image|video> [--prompt TEXT]
 *   plm info [--model DIR] [--json]
 *   plm chat [--model DIR]
 *   plm pull <owner/name> [--revision main] [--dir DIR]
 *   plm serve [--port 8080] [--host 127.0.0.1] [--model DIR]... [--parallel N] [--api-key KEY] (plm serve --help)
 *   plm bench [--model DIR] [--precision auto|bf16|f32] [--quantize none|int8|q4] [--json]
 *   plm quantize --model DIR --kind int8|q4 [--out FILE] [--json]
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { isPlmError, PlmError } from './errors';
import { GenerateProgress, loadModel, LoadProgress, PerceptionLM } from './model';
import { createProgress } from './progress_bar';
import { native, packageRoot } from './native';
import { keepAlive, runChat, runPull } from './cli_shipping';
import { runServeCommand, ServeCliOptions } from './server_cli';
import { BenchFigure, runBench } from './bench';
import { defaultQuantizedPath, quantizeModel, QuantizeKind, QuantizeResult } from './quantize';
import { isVideoPath, VIDEO_EXTENSIONS } from './video';
import { registerBatchCommands } from './cli_batch';

export { VIDEO_EXTENSIONS, isVideoPath };

function defaultModelDir(): string {
  const trained = path.join(packageRoot(), 'models', 'plm-tiny');
  return fs.existsSync(path.join(trained, 'config.json')) ? trained : path.join(packageRoot(), 'models', 'plm-tiny-random');
}

/** True when the model directory carries a marker saying its weights are random. */
export function isRandomModel(dir: string): boolean {
  if (fs.existsSync(path.join(dir, 'BUNDLED_RANDOM'))) return true;
  const marker = path.join(dir, 'perception_lm_bundled.json');
  if (fs.existsSync(marker)) {
    try {
      const v = JSON.parse(fs.readFileSync(marker, 'utf8')) as { random?: unknown };
      if (v.random === true) return true;
    } catch {
      /* ignore */
    }
  }
  return false;
}

function intArg(name: string, min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be an integer >= ${min}`);
    return n;
  };
}

function floatArg(name: string, min: number) {
  return (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n < min) throw new InvalidArgumentError(`${name} must be a number >= ${min}`);
    return n;
  };
}

interface CommonOpts {
  model?: string;
  backend?: 'auto' | 'cpu' | 'cuda';
  threads?: number;
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

function addModelOptions(cmd: Command): Command {
  return cmd
    .option('-m, --model <dir>', 'model directory (default: the bundled random-weight tiny model)')
    .addOption(new Option('--backend <name>', 'compute backend').choices(['auto', 'cpu', 'cuda']).default('auto'))
    .option('--threads <n>', 'CPU threads (0 = physical cores)', intArg('--threads', 0))
    .addOption(new Option('--quantize <kind>', 'weight-only quantization of the decoder (CPU): mapped from DIR/model.<kind>.plmq.safetensors when `plm quantize` wrote it, else converted at load').choices(['none', 'int8', 'q4']))
    .option('--quantized-file <file>', 'a plm-quant file written by `plm quantize --out` (its kind is used)')
    .option('--no-quantized-file', 'convert at load even when DIR holds a quantized file');
}

function addSamplingOptions(cmd: Command): Command {
  return cmd
    .option('-n, --max-tokens <n>', 'maximum new tokens', intArg('--max-tokens', 1), 256)
    .option('-t, --temperature <t>', '0 = greedy (default: the model generation_config)', floatArg('--temperature', 0))
    .option('--top-p <p>', 'nucleus sampling', floatArg('--top-p', 0))
    .option('--top-k <k>', 'top-k sampling (0 = off)', intArg('--top-k', 0))
    .option('--seed <n>', 'sampler seed', intArg('--seed', 0))
    .option('-q, --quiet', 'no progress or notices on stderr');
}

async function openModel(opts: CommonOpts & { sequences?: number }): Promise<PerceptionLM> {
  const dir = path.resolve(opts.model ?? defaultModelDir());
  if (!opts.quiet && isRandomModel(dir)) {
    process.stderr.write(`plm: note: ${dir} has random weights (a test model): its answers are noise. Use --model <dir> with a real PerceptionLM checkpoint.\n`);
  }
  const progress = createProgress(!opts.quiet);
  try {
    return await loadModel(dir, {
      backend: opts.backend,
      threads: opts.threads,
      quantize: opts.quantize,
      ...(opts.quantizedFile !== undefined ? { quantizedFile: opts.quantizedFile } : {}),
      ...(opts.sequences !== undefined ? { sequences: opts.sequences } : {}),
      onProgress: (p: LoadProgress) => progress.update(`loading ${p.stage}`, p.fraction),
    });
  } finally {
    progress.stop();
  }
}

function stopOnSigint(): AbortController {
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  return ac;
}

async function runGenerate(promptParts: string[], opts: CommonOpts & { system?: string }): Promise<void> {
  const prompt = promptParts.join(' ');
  if (prompt.trim().length === 0) throw new PlmError('ERR_INVALID_ARGUMENT', 'give a prompt, e.g. plm generate "Write a haiku"');
  const model = await openModel(opts);
  try {
    const ac = stopOnSigint();
    const common = {
      prompt,
      system: opts.system,
      maxTokens: opts.maxTokens,
      temperature: opts.temperature,
      topP: opts.topP,
      topK: opts.topK,
      seed: opts.seed,
      signal: ac.signal,
    };
    if (opts.json) {
      process.stdout.write(JSON.stringify(await model.complete(common)) + '\n');
      return;
    }
    for await (const chunk of model.generate(common)) process.stdout.write(chunk.text);
    process.stdout.write('\n');
  } finally {
    model.dispose();
  }
}

async function runDescribe(
  media: string,
  opts: CommonOpts & { prompt?: string; maxTiles?: number; frames?: number },
): Promise<void> {
  const file = path.resolve(media);
  if (!fs.existsSync(file)) throw new PlmError('ERR_FILE_NOT_FOUND', `${file} does not exist`);
  const video = isVideoPath(file);
  const prompt = opts.prompt ?? (video ? 'Describe the video.' : 'Describe the image.');
  const model = await openModel(opts);
  try {
    const ac = stopOnSigint();
    const progress = createProgress(!opts.quiet && !opts.json);
    const common = {
      prompt,
      ...(video ? { videos: [file] } : { images: [file] }),
      maxTokens: opts.maxTokens,
      temperature: opts.temperature,
      topP: opts.topP,
      topK: opts.topK,
      seed: opts.seed,
      maxNumTiles: opts.maxTiles,
      numFrames: opts.frames,
      signal: ac.signal,
      onProgress: (p: GenerateProgress) => {
        if (p.stage === 'decode') progress.stop();
        else progress.update(p.stage === 'preprocess' ? `reading the ${video ? 'video' : 'image'}` : 'encoding', p.fraction);
      },
    };
    try {
      if (opts.json) {
        const r = await model.complete(common);
        process.stdout.write(JSON.stringify({ file, kind: video ? 'video' : 'image', prompt, ...r }) + '\n');
        return;
      }
      for await (const chunk of model.generate(common)) process.stdout.write(chunk.text);
      process.stdout.write('\n');
    } finally {
      progress.stop();
    }
  } finally {
    model.dispose();
  }
}

function formatBytes(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(2)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  return `${(n / 1024).toFixed(1)} KiB`;
}

type InfoOpts = Pick<CommonOpts, 'model' | 'json' | 'backend' | 'threads' | 'quantize' | 'quantizedFile'>;

async function runInfo(opts: InfoOpts): Promise<void> {
  const dir = path.resolve(opts.model ?? defaultModelDir());
  const cpu = native.cpuFeatures();
  const kernels = native.cpuKernels ? native.cpuKernels() : null;
  const cuda = native.cudaStatus();
  const model = await loadModel(dir, {
    backend: opts.backend,
    threads: opts.threads,
    quantize: opts.quantize,
    ...(opts.quantizedFile !== undefined ? { quantizedFile: opts.quantizedFile } : {}),
  });
  try {
    const c = model.config;
    const random = isRandomModel(dir);
    if (opts.json) {
      process.stdout.write(
        JSON.stringify({
          model: dir,
          randomWeights: random,
          config: c,
          dtype: c.dtype ?? null,
          weightBytes: model.weightBytes,
          backend: model.backend,
          backendNote: model.backendNote,
          quantization: model.quantization,
          maxContext: model.maxContext,
          chatTemplate: model.chatTemplate.origin,
          cpuFeatures: cpu,
          cpuKernels: kernels,
          cudaStatus: cuda,
        }) + '\n',
      );
      return;
    }
    const t = c.text;
    const v = c.vision;
    const lines = [
      `model        ${dir}${random ? '  (random weights: answers are noise)' : ''}`,
      `text         hidden ${t.hidden_size}, layers ${String(t.num_hidden_layers ?? t.num_layers ?? '?')}, ` +
        `heads ${String(t.num_heads ?? t.num_attention_heads ?? '?')}/${String(t.num_kv_heads ?? t.num_key_value_heads ?? '?')} kv, ` +
        `vocab ${t.vocab_size}, context ${t.max_position_embeddings}`,
      v?.present
        ? `vision       ${String(v.architecture ?? 'PE')}: ${v.image_size}px tiles, patch ${v.patch_size}, ` +
          `width ${String(v.width ?? '?')}, depth ${String(v.depth ?? '?')}, ${c.tokens_per_tile} tokens per tile`
        : 'vision       none (text only)',
      `dtype        ${c.dtype ?? 'unknown'}`,
      `weights      ${formatBytes(model.weightBytes)}`,
      `backend      ${model.backend}${model.backendNote ? ` (${model.backendNote})` : ''}`,
      `quantize     ${model.quantization.kind}${
        model.quantization.kind === 'none' ? '' : model.quantization.file ? ` (mapped from ${model.quantization.file})` : ' (converted at load)'
      }`,
      `template     ${model.chatTemplate.origin}`,
      `cpu          ${kernels?.cpuModel ? `${kernels.cpuModel}: ` : ''}${cpu.join(' ') || 'baseline'}`,
      ...(kernels
        ? [
            `isa          ${kernels.isa}${kernels.isaRequest ? ` (PLM_CPU_ISA=${kernels.isaRequest}${kernels.isaNote ? `: ${kernels.isaNote}` : ''})` : ''}` +
              `; this CPU has ${kernels.isaLevels.join(', ')}`,
            `kernels      matmul f32 ${kernels.gemmF32}, bf16 ${kernels.gemmBf16}`,
            `             attention f32 ${kernels.attentionF32}, bf16 ${kernels.attentionBf16}`,
            `             decode ${kernels.decode}, int8/q4 ${kernels.decodeQuantized}`,
          ]
        : []),
      `cuda         ${cuda}`,
    ];
    process.stdout.write(lines.join('\n') + '\n');
  } finally {
    model.dispose();
  }
}

interface BenchCliOpts {
  model?: string;
  precision: 'auto' | 'f32' | 'bf16';
  quantize?: 'none' | 'int8' | 'q4';
  threads?: number;
  runs: number;
  only: string;
  prefill: string;
  decodeTokens: number;
  ttftTiles: string;
  json?: boolean;
}

function listArg(name: string, min: number) {
  return (v: string): string => {
    for (const x of v.split(',')) {
      const n = Number(x);
      if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`${name} must be a comma-separated list of integers >= ${min}`);
    }
    return v;
  };
}

const BENCH_FIGURES: readonly BenchFigure[] = ['decode', 'prefill', 'vision', 'ttft'];

async function runBenchCmd(opts: BenchCliOpts): Promise<void> {
  const dir = path.resolve(opts.model ?? defaultModelDir());
  if (!fs.existsSync(path.join(dir, 'config.json'))) throw new PlmError('ERR_FILE_NOT_FOUND', `no checkpoint (config.json) in ${dir}`);
  const only = opts.only.split(',').map((s) => s.trim()).filter(Boolean);
  for (const f of only) {
    if (!BENCH_FIGURES.includes(f as BenchFigure)) throw new PlmError('ERR_INVALID_ARGUMENT', `--only: unknown figure "${f}" (choose from ${BENCH_FIGURES.join(', ')})`);
  }
  const results = await runBench({
    model: dir,
    precision: opts.precision,
    quantize: opts.quantize,
    threads: opts.threads ?? 2,
    runs: opts.runs,
    only: only as BenchFigure[],
    prefill: opts.prefill.split(',').map(Number),
    decodeTokens: opts.decodeTokens,
    ttftTiles: opts.ttftTiles.split(',').map(Number),
    log: opts.json ? undefined : (line) => process.stdout.write(line + '\n'),
  });
  if (opts.json) process.stdout.write(JSON.stringify(results) + '\n');
}

interface QuantizeCliOpts {
  model: string;
  kind: QuantizeKind;
  out?: string;
  threads?: number;
  json?: boolean;
  quiet?: boolean;
}

async function runQuantize(opts: QuantizeCliOpts): Promise<void> {
  const dir = path.resolve(opts.model);
  const ac = stopOnSigint();
  const progress = createProgress(!opts.quiet && !opts.json);
  let r: QuantizeResult;
  try {
    r = await quantizeModel(dir, {
      kind: opts.kind,
      out: opts.out,
      threads: opts.threads ?? 0,
      signal: ac.signal,
      onProgress: (p) => progress.update(`quantizing to ${opts.kind}`, p.fraction),
    });
  } finally {
    progress.stop();
  }
  if (opts.json) {
    process.stdout.write(JSON.stringify({ model: dir, ...r }) + '\n');
    return;
  }
  const kept = r.kept > 0 ? `, ${r.kept} left unquantized (input dimension not a multiple of 32)` : '';
  const load = r.path === defaultQuantizedPath(dir, r.kind) ? `--quantize ${r.kind}` : `--quantized-file ${r.path}`;
  process.stdout.write(
    `wrote ${r.path}: ${formatBytes(r.fileBytes)} (${r.quantized} matrices as ${r.kind} from ${formatBytes(r.sourceBytes)}${kept}) in ${r.seconds.toFixed(1)} s\n` +
      `use it with: plm describe IMAGE --model ${dir} ${load}\n`,
  );
}

function fail(e: unknown): never {
  if (isPlmError(e)) process.stderr.write(`plm: ${e.code}: ${e.message}\n`);
  else if (e instanceof Error) process.stderr.write(`plm: ERR_INTERNAL: ${e.message}\n`);
  else process.stderr.write(`plm: ERR_INTERNAL: ${String(e)}\n`);
  process.exit(1);
}

/** Builds the commander program (exported for tests). */
export function buildProgram(): Command {
  const program = new Command();
  program
    .name('plm')
    .description('Run Meta PerceptionLM vision-language models locally (image, video or text in, text out).')
    .version(readVersion())
    .showHelpAfterError()
    .addHelpText(
      'after',
      `
Examples:
  plm describe photo.jpg
  plm describe chart.png --prompt "What is the highest bar?" --model ~/models/Perception-LM-1B
  plm describe clip.mp4 --frames 16 --json
  plm generate --model ~/models/Perception-LM-1B "Write a haiku about cats"
  plm info --json
  plm chat
  plm pull facebook/Perception-LM-1B
  plm serve --port 8080
  plm bench --model ./models/plm-1b --quantize int8
  plm quantize --model ./models/plm-1b --kind int8`,
    );

  const gen = program.command('generate').description('generate text from a text prompt, streamed to stdout');
  addSamplingOptions(addModelOptions(gen))
    .argument('<prompt...>', 'the prompt (a user turn, rendered with the chat template)')
    .option('--system <text>', 'system prompt (default: the PerceptionLM system prompt)')
    .option('--json', 'print one JSON object with text, finishReason and timings instead of streaming')
    .addHelpText(
      'after',
      `
Examples:
  plm generate "What is the capital of France?"
  plm generate --model ~/models/Perception-LM-1B --max-tokens 64 --temperature 0.7 --seed 1 "Tell me a story"`,
    )
    .action(async (prompt: string[], opts: CommonOpts & { system?: string }) => runGenerate(prompt, opts));

  const describe = program.command('describe').description('describe an image or a video, streamed to stdout');
  addSamplingOptions(addModelOptions(describe))
    .argument('<file>', `image (png, jpg, webp, gif, ...) or video (${VIDEO_EXTENSIONS.join(' ')}, needs ffmpeg)`)
    .option('-p, --prompt <text>', 'question about the media (default "Describe the image." / "Describe the video.")')
    .option('--max-tiles <n>', 'maximum 448px tiles per image, thumbnail excluded (default 36)', intArg('--max-tiles', 1))
    .option('--frames <n>', 'frames sampled from a video (default 32)', intArg('--frames', 1))
    .option('--json', 'print one JSON object with text, finishReason and timings instead of streaming')
    .addHelpText(
      'after',
      `
Examples:
  plm describe cat.jpg
  plm describe chart.png --prompt "Describe the bar plot in the image." --max-tiles 4 --max-tokens 64
  plm describe clip.mp4 --frames 8 --json`,
    )
    .action(async (file: string, opts: CommonOpts & { prompt?: string; maxTiles?: number; frames?: number }) => runDescribe(file, opts));

  const info = program.command('info').description('print the model architecture, sizes, dtype, backend, CPU features and GPU status');
  addModelOptions(info)
    .option('--json', 'print one JSON object')
    .addHelpText(
      'after',
      `
Examples:
  plm info
  plm info --model ~/models/Perception-LM-1B --backend cpu
  plm info --json`,
    )
    .action(async (opts: InfoOpts) => runInfo(opts));

  registerShippingCommands(program);
  registerBatchCommands(program, { addModelOptions, addSamplingOptions, openModel, intArg, floatArg });
  return program;
}

function registerShippingCommands(program: Command): void {
  const chat = program.command('chat').description('interactive chat with history; /image PATH attaches an image, Ctrl-C stops an answer, /exit quits');
  addSamplingOptions(addModelOptions(chat))
    .option('--system <text>', 'system prompt (default: the PerceptionLM system prompt)')
    .option('--max-tiles <n>', 'maximum tiles per image, thumbnail excluded', intArg('--max-tiles', 1))
    .addHelpText(
      'after',
      `
Commands inside the chat:
  /image PATH   attach an image to the next message
  /clear        forget the history
  /exit         quit (or Ctrl-D, or Ctrl-C twice)
  Ctrl-C        stop the current answer

Examples:
  plm chat
  plm chat --model ~/models/Perception-LM-1B --temperature 0.7`,
    )
    .action(async (opts: CommonOpts & { system?: string; maxTiles?: number }) => runChat(opts, () => openModel(opts)));

  program
    .command('pull')
    .description('download a checkpoint from the Hugging Face hub (resumable, sha256-verified; HF_TOKEN, HF_ENDPOINT)')
    .argument('<repo>', 'hub repo id, e.g. facebook/Perception-LM-1B')
    .option('-r, --revision <rev>', 'branch, tag or commit', 'main')
    .option('-d, --dir <dir>', 'target directory (default: $PLM_MODELS_DIR or ~/.cache/perception-lm/models, then owner--name)')
    .option('--json', 'print one JSON object with the directory and files at the end')
    .addHelpText(
      'after',
      `
Environment:
  HF_TOKEN      token for gated/private repos (accept the model license on huggingface.co first)
  HF_ENDPOINT   hub URL (default https://huggingface.co)

Examples:
  HF_TOKEN=hf_xxx plm pull facebook/Perception-LM-1B
  plm pull facebook/Perception-LM-1B --revision main --dir ./models/plm-1b
  plm describe cat.jpg --model ./models/plm-1b`,
    )
    .action(async (repo: string, opts: { revision: string; dir?: string; json?: boolean }) => runPull(repo, opts));

  const serve = program.command('serve').description('OpenAI-compatible HTTP server (POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics)');
  addModelOptions(serve);
  {
    // --model repeats here: several models, each loaded on first use.
    const modelOpt = serve.options.find((opt) => opt.long === '--model');
    modelOpt?.argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), v]);
    if (modelOpt) modelOpt.description = 'model directory; repeat for several models (each loaded on first use) (default: the bundled tiny model)';
  }
  const collect = (v: string, prev: string[] | undefined): string[] => [...(prev ?? []), v];
  const secondsArg = (name: string) => (v: string): number => {
    const n = Number(v);
    if (!Number.isFinite(n) || n <= 0) throw new InvalidArgumentError(`${name} must be a number of seconds > 0`);
    return n;
  };
  serve
    .option('--models-dir <dir>', 'serve every checkpoint folder (with config.json) in DIR, each loaded on first use')
    .option('--alias <name>', 'model id in the API instead of the folder name (repeatable: one per --model, in order)', collect)
    .option('--port <n>', 'port (0 = any free port)', intArg('--port', 0), 8080)
    .option('--host <host>', 'address to listen on', '127.0.0.1')
    .option('--parallel <n>', "requests generating at once per model (default: the model's sequences, what fits its KV budget; 1 on an engine without them)", intArg('--parallel', 1))
    .option('--max-queue <n>', 'requests waiting per model behind the running ones (429 beyond)', intArg('--max-queue', 0), 16)
    .option('--max-tokens-limit <n>', 'largest max_tokens a request may ask for', intArg('--max-tokens-limit', 1), 4096)
    .option('--max-body <bytes>', 'largest request body in bytes (413 beyond)', intArg('--max-body', 1024), 32 * 1024 * 1024)
    .option('--max-image-pixels <n>', 'largest image (width x height; 400 beyond)', intArg('--max-image-pixels', 1), 50_000_000)
    .option('--max-tiles <n>', "most 448px tiles per image for image_url.detail high/auto, thumbnail excluded (default: the checkpoint's max_num_tiles); detail low = 1", intArg('--max-tiles', 1))
    .option('--allow-remote-images', 'fetch http(s) image_url URLs from global addresses only (10 MB, 5 s, 3 redirects; default: data: URLs only)')
    .option('--cors <origin>', 'send CORS headers to this browser origin (repeatable; * = any; default: no CORS headers)', collect)
    .option('--api-key <key>', 'require Authorization: Bearer KEY on every route but /health (default: $PLM_API_KEY; prefer the variable, arguments show in ps)')
    .option('--allow-host <name>', 'accept this Host header besides localhost names and the bound address (repeatable; * = any)', collect)
    .option('--headers-timeout <s>', 'seconds to receive the request headers', secondsArg('--headers-timeout'), 10)
    .option('--request-timeout <s>', 'seconds to receive the whole request (not the answer)', secondsArg('--request-timeout'), 60)
    .option('--max-connections <n>', 'open connections at most (more are closed)', intArg('--max-connections', 1), 256)
    .option('--idle-timeout <s>', 'unload a model after this many seconds without requests, 0 = never (default: 300 with several models, 0 with one)', floatArg('--idle-timeout', 0))
    .option('--max-loaded <n>', 'models loaded at once; the least recently used idle one makes room', intArg('--max-loaded', 1), 3)
    .option('-q, --quiet', 'no access log')
    .addHelpText(
      'after',
      `
Environment:
  PLM_API_KEY   the API key (as --api-key)

Examples:
  plm serve --model ~/models/Perception-LM-1B --port 8080
  plm serve --model ./plm-1b --alias plm-1b --parallel 4 --max-tiles 16
  plm serve --models-dir ~/models --idle-timeout 600          (each model loads on first use)
  PLM_API_KEY=secret plm serve --host 0.0.0.0 --allow-host plm.lan --cors https://app.example
  curl http://127.0.0.1:8080/v1/chat/completions -H 'content-type: application/json' \\
    -d '{"messages":[{"role":"user","content":"Hello"}],"max_tokens":32}'`,
    )
    .action(async (opts: CommonOpts & Omit<ServeCliOptions, 'model'> & { model?: string[] }) =>
      runServeCommand(
        opts,
        // --parallel N: the engine generates N sequences at once (its default otherwise).
        (model) => openModel({ ...opts, model, ...(opts.parallel !== undefined ? { sequences: opts.parallel } : {}) }),
        () => path.basename(defaultModelDir()),
      ),
    );
  const bench = program
    .command('bench')
    .description('CPU benchmark with synthetic inputs: decode and prefill tok/s, vision ms per tile, time to first token, peak RSS')
    .option('-m, --model <dir>', 'model directory (default: the bundled random-weight tiny model)')
    .addOption(new Option('--precision <p>', "activation precision ('auto': bf16 where the CPU has AVX512-BF16/AMX, else f32)").choices(['auto', 'f32', 'bf16']).default('auto'))
    .addOption(new Option('--quantize <kind>', 'weight-only quantization of the decoder at load').choices(['none', 'int8', 'q4']))
    .option('--threads <n>', 'CPU threads', intArg('--threads', 1), 2)
    .option('--runs <n>', 'runs per figure (the median is reported)', intArg('--runs', 1), 3)
    .option('--only <list>', 'figures to measure: decode,prefill,vision,ttft', 'decode,prefill,vision,ttft')
    .option('--prefill <list>', 'prompt lengths for prefill, comma-separated', listArg('--prefill', 2), '512')
    .option('--decode-tokens <n>', 'tokens generated for decode (after a 16-token prompt)', intArg('--decode-tokens', 2), 32)
    .option('--ttft-tiles <list>', 'tiles of the image prompt for time to first token', listArg('--ttft-tiles', 1), '5')
    .option('--json', 'print one JSON object (medians and per-run values) instead of lines');
  bench
    .addHelpText(
      'after',
      `
Examples:
  plm bench --model ~/models/Perception-LM-1B
  plm bench --model ~/models/Perception-LM-1B --quantize int8 --only decode,prefill --json
  plm bench --model ~/models/Perception-LM-1B --precision f32 --prefill 512,4096 --ttft-tiles 1,5
  plm bench --runs 1 --prefill 64 --decode-tokens 8 --ttft-tiles 1 --json   (bundled tiny model, seconds)

Side by side with llama.cpp and transformers: node benchmarks/compare.js (in the source repository).`,
    )
    .action(async (opts: BenchCliOpts) => runBenchCmd(opts));

  program
    .command('quantize')
    .description('convert the decoder to weight-only int8 or 4-bit once and write a plm-quant file that later loads map with no conversion')
    .requiredOption('-m, --model <dir>', 'checkpoint directory')
    .addOption(new Option('--kind <kind>', 'int8: one scale per output row; q4: 4-bit, groups of 32').choices(['int8', 'q4']).makeOptionMandatory())
    .option('-o, --out <file>', 'output file (default DIR/model.<kind>.plmq.safetensors, which --quantize <kind> picks up by itself)')
    .option('--threads <n>', 'CPU threads (0 = physical cores)', intArg('--threads', 0))
    .option('--json', 'print one JSON object with the path, sizes and counts')
    .option('-q, --quiet', 'no progress on stderr')
    .addHelpText(
      'after',
      `
The file holds the quantized matrices and scales exactly as the engine uses them (format: docs/quantized-format.md
in the source repository) and records the checkpoint it was made from; loading it with another checkpoint fails
with ERR_STALE_FILE. The vision tower, norms and embeddings keep coming from the checkpoint.

Examples:
  plm quantize --model ~/models/Perception-LM-1B --kind int8
  plm describe cat.jpg --model ~/models/Perception-LM-1B --quantize int8     (maps the file written above)
  plm quantize --model ./plm-1b --kind q4 --out /fast-disk/plm-1b.q4.plmq.safetensors
  plm chat --model ./plm-1b --quantized-file /fast-disk/plm-1b.q4.plmq.safetensors`,
    )
    .action(async (opts: QuantizeCliOpts) => runQuantize(opts));
}

function readVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : '0.0.0';
  } catch {
    return '0.0.0';
  }
}

if (require.main === module) {
  buildProgram()
    .parseAsync(process.argv)
    .then(
      () => {
        if (!keepAlive()) process.exit(0);
      },
      (e: unknown) => fail(e),
    );
}
