/**
 * perception-lm: run Meta's PerceptionLM vision-language models locally from Node.js.
 *
 * @example
 * ```ts
 * import { loadModel } from 'perception-lm';
 * const model = await loadModel('/models/Perception-LM-1B'); // or 'facebook/Perception-LM-1B' after plm pull
 * for await (const { text } of model.generate({ prompt: 'Describe the image.', images: ['cat.jpg'] })) {
 *   process.stdout.write(text);
 * }
 * model.dispose();
 * ```
 */
import * as fs from 'fs';
import * as path from 'path';
import { native, packageRoot } from './native';
import type { NativeCpuKernels } from './native';
import { PlmError } from './errors';

export { loadModel, PerceptionLM, Chat } from './model';
export type {
  ChatInput,
  ChatOptions,
  ChatTurnOptions,
  CompleteResult,
  FinishReason,
  ForwardOptions,
  ForwardResult,
  GenerateChunk,
  GenerateOptions,
  GenerateProgress,
  GenerateTimings,
  LoadModelOptions,
  LoadProgress,
  Message,
  ModelStats,
  PerceptionLMConfig,
  TokenLogprob,
  VideoInput,
} from './model';
export { validateResponseFormat } from './json_constraint';
export type { ResponseFormat } from './json_constraint';
export { quantizeModel, defaultQuantizedPath, QUANTIZED_FILE_SUFFIX } from './quantize';
export type { QuantizeKind, QuantizeOptions, QuantizeProgress, QuantizeResult } from './quantize';
export { batch, listItems, readManifest, BatchOutput, IMAGE_EXTENSIONS, MEDIA_EXTENSIONS } from './batch';
export type { BatchItem, BatchModel, BatchModelInfo, BatchOptions, BatchOutputScan, BatchParams, BatchProgress, BatchRecord, BatchTimings, ListItemsOptions } from './batch';
export { PlmError, isPlmError } from './errors';
export { startServer, HttpError } from './server';
export type { ServerOptions, PlmServer, RequestDoneInfo, ModelSource } from './server';
export { pull, listFiles, defaultPullDir, HubError } from './hub';
export type { HubErrorCode, HubFile, PullOptions, PullProgress, PullResult } from './hub';
export {
  resolveModel,
  listModels,
  removeModel,
  isModelName,
  pulledModelsDir,
  pulledModelDir,
  hfHubCacheDir,
  hfCacheSnapshot,
  bundledModelDir,
  defaultModelDir,
} from './model_store';
export type { ModelStoreSource, ResolvedModel, StoredModel } from './model_store';
export {
  DEFAULT_MAX_TOKENS,
  DEFAULT_MAX_TOKENS_LIMIT,
  DEFAULT_NUM_FRAMES,
  DEFAULT_MAX_NUM_TILES,
  DEFAULT_BACKEND,
  DEFAULT_THREADS,
  DEFAULT_PRECISION,
  DEFAULT_MAX_CONTEXT,
} from './defaults';
export type { PlmErrorCode } from './errors';
export { decodeImage, preprocessImage } from './image';
export type { ImageInput, RawImage, DecodedImage, PreprocessImageOptions, PreprocessedImage } from './image';
export { loadVideoFrames } from './video';
export type { LoadVideoOptions, VideoFrames } from './video';
export { PlmTokenizer, StreamDecoder } from './tokenizer';
export { ChatTemplate, PLM_CHAT_TEMPLATE, PLM_DEFAULT_SYSTEM_PROMPT, DEFAULT_TEMPLATE_BUDGET } from './chat_template';
export type { ChatMessage, MessageContent, TextContent, ImageContent, VideoContent, RenderOptions, TemplateBudget } from './chat_template';
export type { BuiltPrompt, PlacedMedia } from './prompt';
export type { NativeTensorDump as TensorDump } from './native';

function readVersion(): string {
  try {
    const pkg = JSON.parse(fs.readFileSync(path.join(packageRoot(), 'package.json'), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : '0.0.0';
  } catch {
    return '0.0.0';
  }
}

/** The package version. */
export const version: string = readVersion();

/**
 * CPU features the native kernels detected and can use (e.g. `['avx2', 'fma', 'avx512f', 'amx-bf16']`).
 *
 * @example
 * ```ts
 * console.log(cpuFeatures().join(' '));
 * ```
 */
export function cpuFeatures(): string[] {
  return native.cpuFeatures();
}

/** The CPU kernels chosen on this machine: see {@link cpuKernels}. */
export type CpuKernels = NativeCpuKernels;

/**
 * The CPU kernels the dispatch chose on this machine: the ISA level (the CPU's best, or the cap set by the
 * environment variable `PLM_CPU_ISA`, e.g. `avx2`, read once when the addon loads), the CPU model, and the
 * kernel that runs each kind of work (many-row matmuls and attention in f32 and bf16 precision, the decode GEMV).
 *
 * @example
 * ```ts
 * const k = cpuKernels();
 * console.log(`${k.cpuModel}: ${k.isa}; bf16 matmuls on ${k.gemmBf16}`);
 * ```
 */
export function cpuKernels(): CpuKernels {
  if (!native.cpuKernels) throw new PlmError('ERR_BACKEND', 'this build of the native addon cannot report its CPU kernels: rebuild it (npm run build:native)');
  return native.cpuKernels();
}

/**
 * Whether CUDA can be used, and if not, why (no driver, no GPU, library missing, ...).
 *
 * @example
 * ```ts
 * console.log(cudaStatus()); // 'available: NVIDIA H100 (sm_90), driver 12.4' or 'unavailable: ...'
 * ```
 */
export function cudaStatus(): string {
  return native.cudaStatus();
}
