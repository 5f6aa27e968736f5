#!/usr/bin/env node
/**
 * `plm`: the command-line interface of perception-lm.
 *
 *   plm generate [--model DIR] "prompt"
 *   plm describe <image|video> [--prompt TEXT]
 *   plm info [--model DIR] [--json]
 *   plm chat [--model DIR]
 *   plm pull <owner/name> [--revision main] [--dir DIR]
 *   plm list [--json]
 *   plm rm <owner/name>
 *   plm serve [--port 8080] [--host 127.0.0.1] [--model DIR]... [--parallel N] [--api-key KEY] (plm serve --help)
 *   plm bench [--model DIR] [--backend auto|cpu|cuda] [--precision auto|bf16|f32] [--quantize none|int8|q4] [--json]
 *   plm quantize --model DIR --kind int8|q4 [--out FILE] [--json]
 *
 * --model takes a folder or a hub repo id (owner/name: a plm pull copy or the Hugging Face cache); without it
 * the bundled toy model runs, and a one-line notice on stderr says that it only knows coloured shapes.
 * Argument errors (commander's and ours) print `plm: ERR_INVALID_ARGUMENT: ...` and exit with status 2; other
 * errors print `plm: ERR_CODE: ...` and exit with status 1.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { isPlmError, PlmError } from './errors';
import { GenerateProgress, loadModel, LoadProgress, PerceptionLM } from './model';
import { createProgress } from './progress_bar';
import { native, packageRoot } from './native';
import { keepAlive, runChat, samplingOptions, SamplingFlags } from './cli_chat';
import { humanBytes, runList, runPull, runRm, PullCliOpts } from './cli_models';
import { defaultModelDir, resolveModel } from './model_store';
import {
  BACKENDS,
  DEFAULT_BACKEND,
  DEFAULT_MAX_TOKENS,
  DEFAULT_MAX_TOKENS_LIMIT,
  DEFAULT_NUM_FRAMES,
  DEFAULT_MAX_NUM_TILES,
  DEFAULT_PRECISION,
  PRECISIONS,
  QUANTIZE_KINDS,
} from './defaults';
import { runServeCommand, ServeCliOptions } from './server_cli';
import { BenchFigure, runBench } from './bench';
import { defaultQuantizedPath, quantizeModel, QuantizeKind, QuantizeResult } from './quantize';
import { isVideoPath, VIDEO_EXTENSIONS } from './video';
import { registerBatchCommands } from './cli_batch';

export { VIDEO_EXTENSIONS, isVideoPath };

/** What --model means when it is not given, for the help texts. */
const DEFAULT_MODEL_HELP = 'the bundled toy model, which only knows coloured shapes';

/** The one line every run of the bundled toy model prints on stderr (also with -q: it says what the answers are worth). */
export const TOY_MODEL_NOTICE =
  'plm: note: no --model given: running the bundled toy model (models/plm-tiny), which only knows coloured shapes; ' +
  'for real images pass --model facebook/Perception-LM-1B (after plm pull facebook/Perception-LM-1B) or a checkpoint folder';

/**
 * The checkpoint folder of a --model value (a folder, or owner/name from the plm pull store or the Hugging Face
 * cache), or of the default model; prints the toy-model notice or the random-weights notice on stderr.
 */
function resolveCliModel(model: string | undefined, quiet?: boolean): string {
  const dir = model === undefined ? defaultModelDir() : resolveModel(model).dir;
  const random = isRandomModel(dir);
  if (model === undefined && !random) process.stderr.write(TOY_MODEL_NOTICE + '\n');
  else if (random && !quiet) {
    process.stderr.write(`plm: note: ${dir} has random weights (a test model): its answers are noise. Use --model <dir> with a real PerceptionLM checkpoint.\n`);
  }
  return dir;
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

interface CommonOpts extends SamplingFlags {
  model?: string;
  backend?: 'auto' | 'cpu' | 'cuda';
  threads?: number;
  precision?: 'auto' | 'f32' | 'bf16';
  maxContext?: number;
  quantize?: 'none' | 'int8' | 'q4';
  quantizedFile?: string | false;
  json?: boolean;
  quiet?: boolean;
}

/** --threads, --precision and --max-context: the same flags, parsers and defaults on every command that loads a model. */
function addEngineOptions(cmd: Command): Command {
  return cmd
    .addOption(new Option('--backend <name>', 'compute backend (auto: CUDA when usable, else the CPU)').choices([...BACKENDS]).default(DEFAULT_BACKEND))
    .option('--threads <n>', 'CPU threads (default 0 = physical cores)', intArg('--threads', 0))
    .addOption(new Option('--precision <p>', "CPU activation precision ('auto': bf16 where the CPU has AVX512-BF16/AMX/NEON-BF16, else f32)").choices([...PRECISIONS]).default(DEFAULT_PRECISION))
    .option('--max-context <n>', "KV cache capacity in tokens, prompt + answer (default 0 = the model's max_position_embeddings)", intArg('--max-context', 0));
}

function addModelOptions(cmd: Command): Command {
  return addEngineOptions(cmd.option('-m, --model <dir|owner/name>', `checkpoint folder, or a hub repo id downloaded by plm pull or in the Hugging Face cache (default: ${DEFAULT_MODEL_HELP})`))
    .addOption(new Option('--quantize <kind>', 'weight-only quantization of the decoder (CPU): mapped from DIR/model.<kind>.plmq.safetensors when `plm quantize` wrote it, else converted at load (default: $PLM_QUANTIZE, else none)').choices([...QUANTIZE_KINDS]))
    .option('--quantized-file <file>', 'a plm-quant file written by `plm quantize --out` (its kind is used)')
    .option('--no-quantized-file', 'convert at load even when DIR holds a quantized file');
}

function addSamplingOptions(cmd: Command): Command {
  return cmd
    .option('-n, --max-tokens <n>', 'maximum new tokens', intArg('--max-tokens', 1), DEFAULT_MAX_TOKENS)
    .option('-t, --temperature <t>', '0 = greedy (default: the model generation_config)', floatArg('--temperature', 0))
    .option('--top-p <p>', 'nucleus sampling', floatArg('--top-p', 0))
    .option('--top-k <k>', 'top-k sampling (0 = off)', intArg('--top-k', 0))
    .option('--seed <n>', 'sampler seed', intArg('--seed', 0))
    .option('-q, --quiet', 'no progress or notices on stderr (but the one line saying the bundled toy model runs)');
}

/** The load options of the model flags (the same for every command). */
function loadOptionsOf(opts: Pick<CommonOpts, 'backend' | 'threads' | 'precision' | 'maxContext' | 'quantize' | 'quantizedFile'>) {
  return {
    backend: opts.backend,
    threads: opts.threads,
    precision: opts.precision,
    maxContext: opts.maxContext,
    quantize: opts.quantize,
    ...(opts.quantizedFile !== undefined ? { quantizedFile: opts.quantizedFile } : {}),
  };
}

async function openModel(opts: CommonOpts & { sequences?: number }): Promise<PerceptionLM> {
  const dir = resolveCliModel(opts.model, opts.quiet);
  const progress = createProgress(!opts.quiet);
  try {
    return await loadModel(dir, {
      ...loadOptionsOf(opts),
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
      ...samplingOptions(opts),
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
      ...samplingOptions(opts),
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

type InfoOpts = Pick<CommonOpts, 'model' | 'json' | 'backend' | 'threads' | 'precision' | 'maxContext' | 'quantize' | 'quantizedFile'>;

async function runInfo(opts: InfoOpts): Promise<void> {
  const dir = resolveCliModel(opts.model);
  const toy = opts.model === undefined && !isRandomModel(dir);
  const cpu = native.cpuFeatures();
  const kernels = native.cpuKernels ? native.cpuKernels() : null;
  const cuda = native.cudaStatus();
  const model = await loadModel(dir, loadOptionsOf(opts));
  try {
    const c = model.config;
    const random = isRandomModel(dir);
    if (opts.json) {
      process.stdout.write(
        JSON.stringify({
          model: dir,
          randomWeights: random,
          toyModel: toy,
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
      `model        ${dir}${random ? '  (random weights: answers are noise)' : toy ? '  (the bundled toy model: it only knows coloured shapes)' : ''}`,
      `text         hidden ${t.hidden_size}, layers ${String(t.num_hidden_layers ?? t.num_layers ?? '?')}, ` +
        `heads ${String(t.num_heads ?? t.num_attention_heads ?? '?')}/${String(t.num_kv_heads ?? t.num_key_value_heads ?? '?')} kv, ` +
        `vocab ${t.vocab_size}, context ${t.max_position_embeddings}`,
      v?.present
        ? `vision       ${String(v.architecture ?? 'PE')}: ${v.image_size}px tiles, patch ${v.patch_size}, ` +
          `width ${String(v.width ?? '?')}, depth ${String(v.depth ?? '?')}, ${c.tokens_per_tile} tokens per tile`
        : 'vision       none (text only)',
      `dtype        ${c.dtype ?? 'unknown'}`,
      `weights      ${humanBytes(model.weightBytes)}`,
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
  backend: 'auto' | 'cpu' | 'cuda';
  precision: 'auto' | 'f32' | 'bf16';
  quantize?: 'none' | 'int8' | 'q4';
  threads?: number;
  maxContext?: number;
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
  const dir = resolveCliModel(opts.model);
  if (!fs.existsSync(path.join(dir, 'config.json'))) throw new PlmError('ERR_FILE_NOT_FOUND', `no checkpoint (config.json) in ${dir}`);
  const only = opts.only.split(',').map((s) => s.trim()).filter(Boolean);
  for (const f of only) {
    if (!BENCH_FIGURES.includes(f as BenchFigure)) throw new PlmError('ERR_INVALID_ARGUMENT', `--only: unknown figure "${f}" (choose from ${BENCH_FIGURES.join(', ')})`);
  }
  const results = await runBench({
    model: dir,
    backend: opts.backend,
    precision: opts.precision,
    quantize: opts.quantize,
    threads: opts.threads ?? 0,
    ...(opts.maxContext ? { maxContext: opts.maxContext } : {}),
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
  const resolved = resolveModel(opts.model);
  const dir = resolved.dir;
  if (resolved.source === 'hf-cache' && opts.out === undefined) {
    throw new PlmError(
      'ERR_INVALID_ARGUMENT',
      `${opts.model} is in the Hugging Face cache, which Python and transformers.js share: plm does not write there. ` +
        `Give the file with --out FILE, then load it with --quantized-file FILE (or plm pull ${opts.model} for a copy of our own)`,
    );
  }
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
    `wrote ${r.path}: ${humanBytes(r.fileBytes)} (${r.quantized} matrices as ${r.kind} from ${humanBytes(r.sourceBytes)}${kept}) in ${r.seconds.toFixed(1)} s\n` +
      `use it with: plm describe IMAGE --model ${dir} ${load}\n`,
  );
}

/** Exit status of an argument error (a bad flag, value or combination; commander's or ours). */
export const EXIT_USAGE = 2;

function fail(e: unknown): never {
  if (isPlmError(e)) process.stderr.write(`plm: ${e.code}: ${e.message}\n`);
  else if (e instanceof Error) process.stderr.write(`plm: ERR_INTERNAL: ${e.message}\n`);
  else process.stderr.write(`plm: ERR_INTERNAL: ${String(e)}\n`);
  process.exit(isPlmError(e) && e.code === 'ERR_INVALID_ARGUMENT' ? EXIT_USAGE : 1);
}

/** Builds the commander program (exported for tests). */
export function buildProgram(): Command {
  const program = new Command();
  program
    .name('plm')
    .description('Run Meta PerceptionLM vision-language models locally (image, video or text in, text out).')
    .version(readVersion())
    // Commander's own argument errors in our format ("plm: ERR_INVALID_ARGUMENT: ...", status 2, like the errors
    // the commands raise); subcommands inherit both settings.
    .configureOutput({
      outputError: (str, write) => write(str.startsWith('error: ') ? `plm: ERR_INVALID_ARGUMENT: ${str.slice('error: '.length)}` : str),
    })
    .exitOverride((err) => {
      process.exit(err.exitCode === 0 ? 0 : EXIT_USAGE);
    })
    .showHelpAfterError('(add --help for the options and examples)')
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
  plm describe photo.jpg --model facebook/Perception-LM-1B
  plm list
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
    .option('--max-tiles <n>', `maximum 448px tiles per image, thumbnail excluded (default: the checkpoint's, else ${DEFAULT_MAX_NUM_TILES})`, intArg('--max-tiles', 1))
    .option('--frames <n>', `frames sampled from a video (default ${DEFAULT_NUM_FRAMES})`, intArg('--frames', 1))
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

  registerModelAndServiceCommands(program);
  registerBatchCommands(program, { addModelOptions, addSamplingOptions, openModel, intArg, floatArg });
  return program;
}

function registerModelAndServiceCommands(program: Command): void {
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
    .option('-d, --dir <dir>', 'target directory (default: $PLM_MODELS_DIR or ~/.cache/perception-lm/models, then owner--name, where --model owner/name finds it)')
    .option('--json', 'print one JSON object with the directory and files at the end')
    .option('--progress-interval <s>', 'seconds between progress lines when stdout is not a terminal', floatArg('--progress-interval', 0), 10)
    .addHelpText(
      'after',
      `
Environment:
  HF_TOKEN      token for gated/private repos (accept the model license on huggingface.co first)
  HF_ENDPOINT   hub URL (default https://huggingface.co)

Examples:
  HF_TOKEN=hf_xxx plm pull facebook/Perception-LM-1B
  plm describe cat.jpg --model facebook/Perception-LM-1B
  plm pull facebook/Perception-LM-1B --revision main --dir ./models/plm-1b
  plm describe cat.jpg --model ./models/plm-1b`,
    )
    .action(async (repo: string, opts: PullCliOpts) => runPull(repo, opts));

  program
    .command('list')
    .description('list downloaded models: plm pull copies ($PLM_MODELS_DIR) and the Hugging Face cache (HF_HUB_CACHE), with size, folder and quantized files')
    .option('--json', 'print one JSON object')
    .addHelpText(
      'after',
      `
Any NAME listed works as --model NAME (a plm pull copy wins over the Hugging Face cache; a folder of that
path wins over both).

Examples:
  plm list
  plm list --json`,
    )
    .action((opts: { json?: boolean }) => runList(opts));

  program
    .command('rm')
    .description('delete a model plm pull downloaded (the Hugging Face cache is shared with Python and transformers.js: plm refuses to touch it)')
    .argument('<name>', 'owner/name, as plm list shows it')
    .option('--json', 'print one JSON object with the folder and bytes removed')
    .addHelpText(
      'after',
      `
Examples:
  plm rm facebook/Perception-LM-1B
  hf cache delete        (for models in the Hugging Face cache; older versions: huggingface-cli delete-cache)`,
    )
    .action((name: string, opts: { json?: boolean }) => runRm(name, opts));

  const serve = program.command('serve').description('OpenAI-compatible HTTP server (POST /v1/chat/completions, GET /v1/models, GET /health, GET /metrics)');
  addModelOptions(serve);
  {
    // --model repeats here: several models, each loaded on first use.
    const modelOpt = serve.options.find((opt) => opt.long === '--model');
    modelOpt?.argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), v]);
    if (modelOpt) modelOpt.description = `checkpoint folder or owner/name; repeat for several models (each loaded on first use) (default: ${DEFAULT_MODEL_HELP})`;
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
    .option('-n, --max-tokens <n>', `max_tokens of a request that gives none (default: ${DEFAULT_MAX_TOKENS}), or the limit when that is lower`, intArg('--max-tokens', 1))
    .option('--max-tokens-limit <n>', 'largest max_tokens a request may ask for', intArg('--max-tokens-limit', 1), DEFAULT_MAX_TOKENS_LIMIT)
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
    .description('benchmark with synthetic inputs: decode and prefill tok/s, vision ms per tile, time to first token, peak RSS')
    .option('-m, --model <dir|owner/name>', `checkpoint folder or hub repo id (default: ${DEFAULT_MODEL_HELP})`);
  addEngineOptions(bench);
  {
    // Same flag as elsewhere; only its default differs: bench allocates what its prompts need.
    const ctx = bench.options.find((o) => o.long === '--max-context');
    if (ctx) ctx.description = 'KV cache capacity in tokens (default: what the largest benchmark prompt needs, at least 2048)';
  }
  bench
    .addOption(new Option('--quantize <kind>', 'weight-only quantization of the decoder at load').choices([...QUANTIZE_KINDS]))
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
