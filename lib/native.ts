/**
 * Loader and typed interface of the N-API addon (bindings/addon.cpp).
 *
 * The addon is found by lib/addon_loader.ts from the package root: `build/Release/perception_lm.node` when
 * built from source, else the platform package (`@perception-lm/<os>-<cpu>[-<libc>]`, an optional
 * dependency), else `prebuilds/<platform>-<arch>/` through node-gyp-build. The package root is found by
 * walking up from this file to the directory whose package.json is named `perception-lm`, so the
 * loader works from `lib/` (ts-jest), from `dist/lib/` (the published build) and from bundles that
 * keep the package directory. In Electron the addon must live outside the asar archive: list
 * `node_modules/perception-lm/**` and `node_modules/@perception-lm/**` in `asarUnpack`; the loader rewrites
 * `app.asar` to `app.asar.unpacked` when that directory exists. `PERCEPTION_LM_ROOT` overrides the
 * package root (for bundlers that move the code away from the package).
 *
 * The addon is loaded lazily, on the first use of {@link native}, so importing the package never
 * fails on a machine without the binary; the first call then throws `PlmError('ERR_NATIVE_NOT_FOUND')`.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PlmError } from './errors';
import { asarUnpacked, loadAddon } from './addon_loader';

/** Compute backend names accepted by the addon. */
export type NativeBackend = 'auto' | 'cpu' | 'cuda';

/** Cancel token shared between JS and a native job. */
export interface NativeCancel {
  cancel(): void;
}

/** Text-model part of the parsed config.json (plain JSON from native/core/config.h). */
export interface NativeTextConfig {
  hidden_size: number;
  intermediate_size: number;
  num_layers?: number;
  num_hidden_layers?: number;
  num_heads?: number;
  num_kv_heads?: number;
  head_dim?: number;
  vocab_size: number;
  max_position_embeddings: number;
  tie_word_embeddings?: boolean;
  [key: string]: unknown;
}

/** Vision-tower part of the parsed config. `present` is false for text-only checkpoints. */
export interface NativeVisionConfig {
  present: boolean;
  architecture?: string;
  image_size: number;
  patch_size: number;
  width?: number;
  depth?: number;
  [key: string]: unknown;
}

/** Generation defaults from generation_config.json (with config.json fallbacks). */
export interface NativeGenerationConfig {
  bos_token_id: number;
  eos_token_ids: number[];
  do_sample?: boolean;
  temperature?: number;
  top_p?: number;
  top_k?: number;
  max_new_tokens?: number;
  [key: string]: unknown;
}

/** The parsed model configuration as the addon returns it. */
export interface NativeModelConfig {
  text: NativeTextConfig;
  vision: NativeVisionConfig;
  image_token_id: number;
  video_token_id: number;
  tokens_per_tile: number;
  projector_pooling_ratio?: number;
  dtype?: string;
  generation: NativeGenerationConfig;
  [key: string]: unknown;
}

export interface NativeModelInfo {
  config: NativeModelConfig;
  backend: string;
  backendNote: string;
  weightBytes: number;
  /** How the decoder's matrices are held: 'none', or the weight-only quantization in use (CPU backend). Absent from older addons. */
  quantize?: NativeQuantize;
  /** The plm-quant file the quantized matrices are mapped from; null when quantized at load (or none). Absent from older addons. */
  quantizedFile?: string | null;
}

export interface NativeTensorDump {
  data: Float32Array;
  shape: number[];
}

export interface NativeForwardResult {
  logits: Float32Array;
  dumps?: Record<string, NativeTensorDump>;
}

export interface NativeGenerateOptions {
  maxTokens: number;
  temperature: number;
  topK: number;
  topP: number;
  minP: number;
  repetitionPenalty: number;
  seed: number;
  stopIds: number[];
  /** Keep the logits row each token was chosen from. */
  returnLogits?: boolean;
  /** >= 0: report each token's log-probability and this many alternatives (at most 20); -1 or absent: off. */
  topLogprobs?: number;
}

/** Log-probabilities of one generated token (natural log, the distribution it was drawn from). */
export interface NativeTokenLogprobs {
  logprob: number;
  /** The most likely tokens, best first, and their log-probabilities. */
  topIds: Int32Array;
  topLogprobs: Float32Array;
}

/** One image or video of a prompt: [tiles, 3, S, S] pixels. */
export interface NativeMedia {
  pixels: Float32Array;
  tiles: number;
}

/** A conversation whose KV cache stays between turns. */
export interface NativeSession {
  dispose(): void;
  cachedTokens(): number;
}

/** Token masks for constrained decoding: push(step, bits) before the engine draws token `step`. */
export interface NativeTokenMaskQueue {
  /** bits: vocab bits (bit t of byte t >> 3) of the allowed tokens; null: no constraint at that step. */
  push(step: number, bits: Uint8Array | null): void;
  /** No more masks: later steps are unconstrained. */
  close(): void;
}

/** Counters of the engine's scheduler and caches. */
export interface NativeStats {
  activeSequences: number;
  waitingSequences: number;
  maxSequences: number;
  kvBlocksInUse: number;
  kvBlocksCached: number;
  kvBlocksCapacity: number;
  kvBlockBytes: number;
  kvBytesResident: number;
  promptTokens: number;
  cachedPromptTokens: number;
  mediaCacheBytes: number;
  mediaCacheHits: number;
  mediaEncoded: number;
  requestsDeferred: number;
}

export type NativeFinishReason = 'stop' | 'length' | 'cancelled';

export interface NativeGenerateResult {
  tokens: Int32Array;
  finishReason: NativeFinishReason;
  promptTokens: number;
  /** Prompt positions reused from the KV cache (not computed). */
  cachedTokens: number;
  queueMs: number;
  visionMs: number;
  prefillMs: number;
  /** From submission to the first token. */
  firstTokenMs: number;
  decodeMs: number;
  /** [tokens, vocab] with returnLogits. */
  logits?: Float32Array;
  /** One per token with topLogprobs >= 0. */
  logprobs?: NativeTokenLogprobs[];
}

/** A loaded model held by the addon. */
export interface NativeModel {
  info(): NativeModelInfo;
  forward(
    ids: Int32Array,
    pixels: Float32Array | null,
    tiles: number,
    logitsRows: number,
    dump: boolean,
    cancel: NativeCancel | null,
  ): Promise<NativeForwardResult>;
  encodeImages(pixels: Float32Array, tiles: number, cancel: NativeCancel | null): Promise<Float32Array>;
  /** Queues a generation; concurrent calls run together (batched). */
  generate(
    ids: Int32Array,
    media: NativeMedia[] | null,
    opts: NativeGenerateOptions,
    onToken: (id: number, logprobs?: NativeTokenLogprobs) => void,
    cancel: NativeCancel,
    session: NativeSession | null,
    masks: NativeTokenMaskQueue | null,
  ): Promise<NativeGenerateResult>;
  createSession(): NativeSession;
  stats(): NativeStats;
  /** Drops cached KV blocks and image features not in use. */
  clearCache(): Promise<void>;
  dispose(): void;
}

/** 'f32': exact float32 activations; 'bf16': bf16 activations on CPUs with AVX512-BF16/AMX; 'auto': the fastest. */
export type NativePrecision = 'auto' | 'f32' | 'bf16';

/** Weight-only quantization of the decoder matrices, converted at load (CPU backend). */
export type NativeQuantize = 'none' | 'int8' | 'q4';

export interface NativeLoadOptions {
  backend: NativeBackend;
  threads: number;
  maxContext: number;
  precision?: NativePrecision;
  quantize?: NativeQuantize;
  /** A plm-quant file to map; false: always quantize at load; absent: <dir>/model.<kind>.plmq.safetensors when present. */
  quantizedFile?: string | false;
  /** Sequences generating at once; 0: the backend's default. */
  sequences?: number;
  /** KV cache budget in bytes; 0: maxContext x sequences. */
  kvCacheBytes?: number;
  /** Prompt positions per prefill step; 0: 256. */
  prefillChunk?: number;
}

/** Options of the addon's quantizeModel. */
export interface NativeQuantizeOptions {
  kind: 'int8' | 'q4';
  /** Absolute output path; '' or absent: <dir>/model.<kind>.plmq.safetensors. */
  out?: string;
  threads: number;
}

/** What the addon's quantizeModel wrote. */
export interface NativeQuantizeResult {
  path: string;
  kind: 'int8' | 'q4';
  /** Matrices written quantized. */
  quantized: number;
  /** Matrices the kind cannot hold (q4: input dimension not a multiple of 32), left in the checkpoint. */
  kept: number;
  fileBytes: number;
  /** Checkpoint bytes of the matrices that were quantized. */
  sourceBytes: number;
}

export interface NativePreprocessedImage {
  pixelValues: Float32Array;
  numTiles: number;
  grid: [number, number];
}

/** Everything bindings/addon.cpp exports. */
/** What the CPU dispatch chose (bindings/cpu_info_binding.h); strings are "" where not applicable. */
export interface NativeCpuKernels {
  /** The ISA level the kernels are chosen for: the CPU's best, or `PLM_CPU_ISA`'s cap. */
  isa: string;
  /** Every level this CPU has, best first (the values `PLM_CPU_ISA` can usefully take). */
  isaLevels: string[];
  isaRequest: string;
  isaNote: string;
  cpuModel: string;
  gemmF32: string;
  gemmBf16: string;
  attentionF32: string;
  attentionBf16: string;
  decode: string;
  decodeQuantized: string;
}

export interface NativeAddon {
  loadModel(
    dir: string,
    opts: NativeLoadOptions,
    onProgress: (fraction: number, stage: string) => void,
  ): Promise<NativeModel>;
  quantizeModel(
    dir: string,
    opts: NativeQuantizeOptions,
    onProgress: ((fraction: number, stage: string) => void) | null,
    cancel: NativeCancel | null,
  ): Promise<NativeQuantizeResult>;
  createCancelToken(): NativeCancel;
  createTokenMaskQueue(): NativeTokenMaskQueue;
  cpuFeatures(): string[];
  /** Optional (older addons lack it): the CPU kernels chosen on this machine. */
  cpuKernels?(): NativeCpuKernels;
  cudaStatus(): string;
  preprocessImage(
    rgb: Uint8Array,
    width: number,
    height: number,
    tileSize: number,
    maxNumTiles: number,
  ): Promise<NativePreprocessedImage>;
  /** Optional: frames [F, H, W, 3] back to back -> [F, 3, S, S] (bindings/image_processor_binding.h). */
  preprocessFrames?(
    rgb: Uint8Array,
    width: number,
    height: number,
    numFrames: number,
    tileSize: number,
  ): Promise<{ pixelValues: Float32Array; numFrames: number }>;
}

const PACKAGE_NAME = 'perception-lm';
let cachedRoot: string | undefined;

function readPackageName(dir: string): string | undefined {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { name?: unknown };
    return typeof pkg.name === 'string' ? pkg.name : undefined;
  } catch {
    return undefined;
  }
}

/**
 * The directory of the perception-lm package (holding package.json, dist/, models/, and build/ or prebuilds/ when present).
 *
 * @example
 * ```ts
 * const bundled = path.join(packageRoot(), 'models', 'plm-tiny');
 * ```
 */
export function packageRoot(): string {
  if (cachedRoot !== undefined) return cachedRoot;
  const env = process.env.PERCEPTION_LM_ROOT;
  if (env && env.length > 0) {
    cachedRoot = path.resolve(env);
    return cachedRoot;
  }
  let dir = path.resolve(__dirname);
  for (;;) {
    if (readPackageName(dir) === PACKAGE_NAME) {
      cachedRoot = asarUnpacked(dir);
      return cachedRoot;
    }
    const parent = path.dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  // Bundled without the package layout: the conventional layouts relative to this file.
  cachedRoot = asarUnpacked(path.resolve(__dirname, path.basename(path.dirname(__dirname)) === 'dist' ? '../..' : '..'));
  return cachedRoot;
}

let loaded: NativeAddon | undefined;
let loadError: PlmError | undefined;

/** Loads (once) and returns the addon; throws PlmError('ERR_NATIVE_NOT_FOUND') when it cannot be loaded. */
export function loadNative(): NativeAddon {
  if (loaded) return loaded;
  if (loadError) throw loadError;
  try {
    loaded = loadAddon<NativeAddon>(packageRoot()).addon;
    return loaded;
  } catch (e) {
    // loadAddon's PlmError already lists what was tried and how to fix it.
    loadError = e instanceof PlmError ? e : new PlmError('ERR_NATIVE_NOT_FOUND', `could not load the perception-lm native addon: ${String(e)}`, { cause: e });
    throw loadError;
  }
}

/** True when the addon can be loaded (loads it). */
export function nativeAvailable(): boolean {
  try {
    loadNative();
    return true;
  } catch {
    return false;
  }
}

/**
 * The addon, loaded lazily on first property access (see {@link loadNative}).
 *
 * @example
 * ```ts
 * console.log(native.cpuFeatures());
 * ```
 */
export const native: NativeAddon = new Proxy({} as NativeAddon, {
  get(_target, prop) {
    const addon = loadNative() as unknown as Record<PropertyKey, unknown>;
    return addon[prop];
  },
  has(_target, prop) {
    return prop in (loadNative() as object);
  },
});
