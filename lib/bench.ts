/**
 * CPU benchmark of a checkpoint with synthetic inputs: decode tok/s (KV cache), prefill tok/s, vision tower +
 * projector ms per tile, time to first token for an image prompt, peak RSS. Used by `plm bench` and by
 * benchmarks/run.js (and, through it, benchmarks/compare.js for the side-by-side with the peers).
 *
 * Inputs are deterministic and identical to benchmarks/torch_peer.py and benchmarks/llama_cpp_peer.js:
 * token ids `[bos, 1000 + (i * 7919) % 100000, ...]`, pixels `sin(i * 0.001)`; image tokens start at index 2.
 */
import * as os from 'os';
import * as path from 'path';
import { loadNative, NativeBackend, NativeCpuKernels, NativePrecision, NativeQuantize } from './native';

export type BenchFigure = 'decode' | 'prefill' | 'vision' | 'ttft';

export interface BenchOptions {
  /** Checkpoint directory. */
  model: string;
  /** Runs per figure; each figure is the median. Default 3. */
  runs?: number;
  /** Figures to measure. Default all four. */
  only?: BenchFigure[];
  /** 'cpu', 'cuda' or 'auto' (CUDA when usable). Default 'cpu' (`plm bench` passes its --backend, default 'auto'). */
  backend?: NativeBackend;
  /** Activation precision. Default 'bf16'. */
  precision?: NativePrecision;
  /** Weight-only quantization of the decoder at load. Default 'none'. */
  quantize?: NativeQuantize;
  /** Prompt lengths for prefill. Default [512]. */
  prefill?: number[];
  /** Tokens generated for decode (after a `decodePrompt`-token prompt). Default 32. */
  decodeTokens?: number;
  /** Prompt length before decode. Default 16. */
  decodePrompt?: number;
  /** Tiles of the image prompt(s) for TTFT. Default [5]. */
  ttftTiles?: number[];
  /** Text tokens around the image tokens in the TTFT prompt. Default 22. */
  ttftTextTokens?: number;
  /** CPU threads. Default 2. */
  threads?: number;
  /** Context to allocate. Default: enough for the largest prompt (at least 2048). */
  maxContext?: number;
  /** Progress lines (human-readable). */
  log?: (line: string) => void;
}

export interface BenchResults {
  model: string;
  machine: string;
  /** The CPU kernels that ran (ISA level after PLM_CPU_ISA, kernel per kind of work); null with an older addon. */
  cpuKernels: NativeCpuKernels | null;
  /** The backend that ran: 'cpu' or 'cuda'. */
  backend: string;
  threads: number;
  precision: NativePrecision;
  quantize: NativeQuantize;
  runs: number;
  loadMs: number;
  decodeTokPerS?: number;
  decodeRuns?: number[];
  visionMsPerTile?: number;
  visionRuns?: number[];
  maxRssMB: number;
  /** prefill{N}TokPerS, prefill{N}Runs, ttft{T}TilesMs, ttft{T}TilesVisionMs, ttft{T}TilesPrefillMs, ttft{T}Runs */
  [key: string]: unknown;
}

/** Median (upper median for even counts, as benchmarks/run.js always did). */
export function median(a: number[]): number {
  const s = [...a].sort((x, y) => x - y);
  return s[Math.floor(s.length / 2)];
}

/** The synthetic prompt: bos, then pseudo-random ids; `imageTokens` image placeholders from index 2. */
export function benchPromptIds(n: number, imageTokenId = 128002, imageTokens = 0): Int32Array {
  const ids = new Int32Array(n);
  ids[0] = 128000;
  for (let i = 1; i < n; ++i) ids[i] = 1000 + ((i * 7919) % 100000);
  for (let i = 0; i < imageTokens; ++i) ids[2 + i] = imageTokenId;
  return ids;
}

/** Synthetic normalized pixels, [tiles, 3, size, size]. */
export function benchPixels(tiles: number, size = 448): Float32Array {
  const px = new Float32Array(tiles * 3 * size * size);
  for (let i = 0; i < px.length; ++i) px[i] = Math.sin(i * 0.001);
  return px;
}

const fmtRuns = (a: number[], d: number) => a.map((v) => v.toFixed(d)).join(', ');

/** Runs the benchmark (see {@link BenchOptions}); resolves with the medians and per-run values. */
export async function runBench(options: BenchOptions): Promise<BenchResults> {
  const native = loadNative();
  const log = options.log ?? (() => {});
  const runs = options.runs ?? 3;
  const only = options.only ?? ['decode', 'prefill', 'vision', 'ttft'];
  const precision = options.precision ?? 'bf16';
  const quantize = options.quantize ?? 'none';
  const prefillLens = options.prefill ?? [512];
  const decodeTokens = options.decodeTokens ?? 32;
  const decodePrompt = options.decodePrompt ?? 16;
  const ttftTiles = options.ttftTiles ?? [5];
  const ttftText = options.ttftTextTokens ?? 22;
  const threads = options.threads ?? 2;
  const modelDir = path.resolve(options.model);

  const t0 = Date.now();
  // The tile geometry is only known after load; allocate for the 1B-class 256 tokens per tile at most.
  const need = Math.max(2048, decodePrompt + decodeTokens + 8, ...prefillLens.map((n) => n + 8), ...ttftTiles.map((t) => t * 256 + ttftText + 8));
  const model = await native.loadModel(modelDir, { backend: options.backend ?? 'cpu', threads, maxContext: options.maxContext ?? need, precision, quantize }, () => {});
  try {
    const cfg = model.info().config;
    const tile = cfg.vision?.image_size ?? 448;
    const perTile = cfg.tokens_per_tile ?? 256;
    const img = cfg.image_token_id ?? 128002;
    const results: BenchResults = {
      model: modelDir,
      machine: os.cpus()[0]?.model ?? 'unknown',
      cpuKernels: native.cpuKernels ? native.cpuKernels() : null,
      backend: model.info().backend,
      threads,
      precision,
      quantize,
      runs,
      loadMs: Date.now() - t0,
      maxRssMB: 0,
    };
    // Every measured request starts cold: no prefix or image features reused from an earlier run.
    const gen = async (ids: Int32Array, px: Float32Array | null, tiles: number, maxTokens: number) => {
      await model.clearCache();
      return model.generate(
        ids,
        px ? [{ pixels: px, tiles }] : null,
        { maxTokens, temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1, seed: 0, stopIds: [-1] },
        () => {},
        native.createCancelToken(),
        null,
        null,
      );
    };

    const k = results.cpuKernels;
    if (k) log(`cpu: ${k.cpuModel || results.machine}; isa ${k.isa}${k.isaRequest ? ` (PLM_CPU_ISA=${k.isaRequest})` : ''}; matmul ${precision === 'f32' ? k.gemmF32 : k.gemmBf16}`);
    if (only.includes('decode')) {
      const tps: number[] = [];
      for (let r = 0; r < runs; ++r) {
        const g = await gen(benchPromptIds(decodePrompt, img), null, 0, decodeTokens);
        tps.push((g.tokens.length - 1) / (g.decodeMs / 1000));
      }
      results.decodeTokPerS = median(tps);
      results.decodeRuns = tps;
      log(`decode: ${median(tps).toFixed(2)} tok/s (runs: ${fmtRuns(tps, 2)})`);
    }
    if (only.includes('prefill')) {
      for (const n of prefillLens) {
        const tps: number[] = [];
        for (let r = 0; r < runs; ++r) {
          const g = await gen(benchPromptIds(n, img), null, 0, 1);
          tps.push(n / (g.prefillMs / 1000));
        }
        results[`prefill${n}TokPerS`] = median(tps);
        results[`prefill${n}Runs`] = tps;
        log(`prefill ${n}: ${median(tps).toFixed(1)} tok/s (runs: ${fmtRuns(tps, 1)})`);
      }
    }
    if (only.includes('vision') && cfg.vision?.present !== false) {
      const px = benchPixels(1, tile);
      await model.encodeImages(px, 1, null); // warm-up
      const ms: number[] = [];
      for (let r = 0; r < runs; ++r) {
        const t = process.hrtime.bigint();
        await model.encodeImages(px, 1, null);
        ms.push(Number(process.hrtime.bigint() - t) / 1e6);
      }
      results.visionMsPerTile = median(ms);
      results.visionRuns = ms;
      log(`vision+projector: ${median(ms).toFixed(0)} ms/tile (runs: ${fmtRuns(ms, 0)})`);
    }
    if (only.includes('ttft') && cfg.vision?.present !== false) {
      for (const tiles of ttftTiles) {
        const n = tiles * perTile + ttftText;
        const ids = benchPromptIds(n, img, tiles * perTile);
        const px = benchPixels(tiles, tile);
        const ms: number[] = [];
        const vis: number[] = [];
        const pre: number[] = [];
        for (let r = 0; r < runs; ++r) {
          const g = await gen(ids, px, tiles, 1);
          ms.push(g.visionMs + g.prefillMs);
          vis.push(g.visionMs);
          pre.push(g.prefillMs);
        }
        results[`ttft${tiles}TilesMs`] = median(ms);
        results[`ttft${tiles}TilesVisionMs`] = median(vis);
        results[`ttft${tiles}TilesPrefillMs`] = median(pre);
        results[`ttft${tiles}Runs`] = ms;
        log(`TTFT ${tiles} tiles (${n} tokens): ${median(ms).toFixed(0)} ms (vision ${median(vis).toFixed(0)}, prefill ${median(pre).toFixed(0)})`);
      }
    }
    results.maxRssMB = process.resourceUsage().maxRSS / 1024;
    log(`peak RSS: ${results.maxRssMB.toFixed(0)} MB`);
    return results;
  } finally {
    model.dispose();
  }
}
