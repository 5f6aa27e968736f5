/**
 * The public model API: {@link loadModel} and {@link PerceptionLM}.
 */
import * as fs from 'fs';
import * as path from 'path';
import { ChatMessage, ChatTemplate } from './chat_template';
import { PlmError, wrapNativeError } from './errors';
import { ImageInput, preprocessImage } from './image';
import { compileResponseFormat, jsonConstraintFor, ResponseFormat } from './json_constraint';
import {
  native,
  NativeBackend,
  NativeCancel,
  NativeModel,
  NativeGenerateOptions,
  NativeLoadOptions,
  NativeModelConfig,
  NativePrecision,
  NativeQuantize,
  NativeSession,
  NativeStats,
  NativeTensorDump,
  NativeTokenLogprobs,
  NativeTokenMaskQueue,
} from './native';
import { batch as runBatch, BatchItem, BatchOptions, BatchRecord } from './batch';
import { buildPrompt, BuiltPrompt, MediaProcessors, ProcessedImage, ProcessedVideo, PromptModelInfo } from './prompt';
import { PlmTokenizer } from './tokenizer';
import { loadVideoFrames } from './video';
import { resolveModel } from './model_store';
import {
  BACKENDS,
  DEFAULT_BACKEND,
  DEFAULT_MAX_CONTEXT,
  DEFAULT_MAX_NUM_TILES,
  DEFAULT_MAX_TOKENS,
  DEFAULT_NUM_FRAMES,
  DEFAULT_PRECISION,
  DEFAULT_THREADS,
  PRECISIONS,
  QUANTIZE_KINDS,
} from './defaults';

/** A video: a file path (decoded with ffmpeg) or an array of frames. */
export type VideoInput = string | ImageInput[];

/** A chat message whose media parts take {@link ImageInput} / {@link VideoInput}. */
export type Message = ChatMessage<ImageInput, VideoInput>;

/** The parsed checkpoint configuration (config.json + generation_config.json). */
export type PerceptionLMConfig = NativeModelConfig;

/** Progress of {@link loadModel}. */
export interface LoadProgress {
  /** 0..1 */
  fraction: number;
  /** e.g. 'tokenizer', 'config', 'weights', 'backend'. */
  stage: string;
}

/** Options of {@link loadModel}. */
export interface LoadModelOptions {
  /** 'auto' (CUDA when usable, else CPU), 'cpu' or 'cuda' (fails with ERR_BACKEND without a GPU). Default 'auto'. */
  backend?: NativeBackend;
  /** CPU threads; 0 = number of physical cores. Default 0. */
  threads?: number;
  /**
   * Activation precision on the CPU: 'f32' computes exactly like transformers in float32; 'bf16' uses
   * the CPU's bf16 matrix units (AVX512-BF16, AMX) where present, faster at a small accuracy cost;
   * 'auto' picks the fastest. Default 'auto'.
   */
  precision?: NativePrecision;
  /**
   * Weight-only quantization of the decoder's matrices, converted at load on the CPU backend: 'int8'
   * (one scale per output row) or 'q4' (4-bit, groups of 32). Decode reads fewer bytes per token and is
   * faster at a measured accuracy cost (README, "Quantization"). Default: the env var PLM_QUANTIZE when set,
   * else 'none' (an explicit value always wins).
   */
  quantize?: NativeQuantize;
  /**
   * Where the quantized matrices come from (CPU backend):
   * - absent (default): with `quantize` 'int8' or 'q4', the plm-quant file `<dir>/model.<kind>.plmq.safetensors`
   *   that {@link quantizeModel} / `plm quantize` wrote, when it exists (mapped with no conversion, bit-identical
   *   to converting at load); otherwise the matrices are converted at load.
   * - a path: that plm-quant file; `quantize` may be omitted (the file's kind is used) or must match it.
   * - `false`: always convert at load, ignoring any file.
   *
   * A file that is damaged (`ERR_CORRUPT_FILE`, `ERR_FILE_READ`), of another format version
   * (`ERR_UNSUPPORTED_VERSION`) or made from another checkpoint (`ERR_STALE_FILE`) fails the load instead of being
   * skipped: re-run `plm quantize`, or delete the file. See docs/quantized-format.md.
   */
  quantizedFile?: string | false;
  /**
   * KV-cache capacity in tokens (prompt + generated); 0 = the model's max_position_embeddings
   * (11520 for PLM). Smaller values save memory. Default 0.
   */
  maxContext?: number;
  /**
   * Sequences that generate at once: concurrent `generate()` / `complete()` calls and chats beyond this wait
   * their turn. Default: 4 on the CPU (or as many as `kvCacheBytes` holds at `maxContext`); the CUDA backend
   * runs one at a time for now.
   */
  sequences?: number;
  /**
   * Memory for the KV cache of all sequences, in bytes (PLM-1B: 64 KiB per token). Default
   * `maxContext x sequences` tokens' worth; it is reserved as address space and only touched as used.
   * Finished requests leave their blocks cached for prefix reuse until the space is needed.
   */
  kvCacheBytes?: number;
  /** Aborting rejects with ERR_CANCELLED (the model is freed once the native load finishes). */
  signal?: AbortSignal;
  onProgress?: (progress: LoadProgress) => void;
}

/** Input of {@link PerceptionLM.forward}. */
export interface ForwardOptions {
  /** [T] token ids with placeholders already expanded. */
  inputIds: ArrayLike<number>;
  /** [numTiles, 3, S, S] pixels for the placeholders, in order. */
  pixelValues?: Float32Array | null;
  /** Tiles in pixelValues (derived from its length when omitted). */
  numTiles?: number;
  /** 'all' (T rows, default) or 'last' (1 row). */
  logitsRows?: 'last' | 'all';
  /** Also return named intermediates (hidden.layers.i, vision.blocks.i, ...). Default false. */
  dump?: boolean;
  signal?: AbortSignal;
}

/** Output of {@link PerceptionLM.forward}. */
export interface ForwardResult {
  /** [rows, vocab] row-major float32. */
  logits: Float32Array;
  rows: number;
  vocabSize: number;
  dumps?: Record<string, NativeTensorDump>;
}

/** Progress of a generation. */
export interface GenerateProgress {
  stage: 'preprocess' | 'prefill' | 'decode';
  /** 0..1 within the stage (decode: tokens / maxTokens). */
  fraction: number;
}

/** Options of {@link PerceptionLM.generate} and {@link PerceptionLM.complete}. Exactly one of messages, prompt, inputIds. */
export interface GenerateOptions {
  /** Chat messages; media parts without payload take `images` / `videos` in order. */
  messages?: Message[];
  /** A single user turn (images, then videos, then this text), rendered with the chat template. */
  prompt?: string;
  /** Raw token ids (one placeholder per image/video, or already expanded). */
  inputIds?: ArrayLike<number>;
  /**
   * With `inputIds` whose placeholders are already expanded: the [numTiles, 3, S, S] pixels they
   * stand for (as `preprocessImage` / `loadVideoFrames` return them), instead of `images`/`videos`. An array
   * gives one entry per image or video, in placeholder order, so each is cached and reused on its own.
   */
  pixelValues?: Float32Array | Float32Array[];
  /** Tiles in `pixelValues` (derived from its length when omitted). */
  numTiles?: number;
  /** Also return the logits row each generated token was chosen from (validation). Default false. */
  returnLogits?: boolean;
  images?: ImageInput[];
  videos?: VideoInput[];
  /** System prompt with `prompt` (default: PLM's default system prompt). */
  system?: string;
  /** Maximum new tokens. Default 256. */
  maxTokens?: number;
  /** 0 = greedy. Default: generation_config's temperature when do_sample, else 0. */
  temperature?: number;
  /** Nucleus sampling. Default generation_config top_p, else 1 (off). */
  topP?: number;
  /** Top-k sampling, 0 = off. Default generation_config top_k, else 0. */
  topK?: number;
  /** Min-p sampling, 0 = off. Default 0. */
  minP?: number;
  /** >1 penalizes repeated tokens. Default 1 (off). */
  repetitionPenalty?: number;
  /** Sampler seed. Default: random (greedy decoding ignores it). */
  seed?: number;
  /** Stop strings: generation stops as soon as the text contains one; it is trimmed from the output. */
  stop?: string[];
  /** Extra stop token ids besides generation_config's eos_token_id. */
  stopTokenIds?: number[];
  /**
   * Cancels, before or during the call (preprocessing, waiting for a slot, decoding): aborting is never an error.
   * complete() resolves with finishReason 'cancelled' and the text so far; generate() yields nothing once
   * `abort()` has returned and ends its iteration. (Errors that are not aborts, e.g. ERR_DISPOSED, still reject.)
   */
  signal?: AbortSignal;
  onProgress?: (progress: GenerateProgress) => void;
  /** Tiles per image, thumbnail excluded. Default preprocessor_config.json max_num_tiles, else 36. */
  maxNumTiles?: number;
  /** Tile side in pixels. Default: the vision tower's image_size (448). */
  tileSize?: number;
  /** Frames sampled per video. Default 32. */
  numFrames?: number;
  /**
   * Report each generated token's log-probability and this many most likely alternatives (0..20) on the
   * chunks (`logprob`) and in `CompleteResult.logprobs`. Natural log, under the distribution the token was
   * drawn from (after repetition penalty and temperature; greedy: the model's). Default: off.
   */
  topLogprobs?: number;
  /**
   * Structured output: constrains decoding so that the text is JSON. Default `{ type: 'text' }` (free text).
   * - `{ type: 'json_object' }`: any JSON object;
   * - `{ type: 'json_schema', schema }`: JSON that validates against `schema`, the subset of JSON Schema that
   *   OpenAI's structured outputs support (README, "Structured output"): objects get exactly their declared
   *   properties in declaration order (required ones always), and an unsupported keyword is an
   *   `ERR_INVALID_ARGUMENT` naming it. `name` and `strict` are accepted for OpenAI compatibility.
   *
   * The text always parses and validates when `finishReason` is 'stop'; with 'length' (`maxTokens` ran out) or
   * 'cancelled' it is the unfinished start of a document. Cannot be combined with `stop` strings. The first
   * request on a model builds an index of the vocabulary (0.4-0.9 s for Llama 3 on the 2-core test VM, in
   * slices that leave the event loop free).
   *
   * @example
   * ```ts
   * const r = await model.complete({
   *   prompt: 'List the shapes in the image.', images: ['scene.png'],
   *   responseFormat: { type: 'json_schema', schema: {
   *     type: 'object', required: ['shapes'],
   *     properties: { shapes: { type: 'array', items: { enum: ['circle', 'square', 'triangle'] } } },
   *   } },
   * });
   * const { shapes } = JSON.parse(r.text);
   * ```
   */
  responseFormat?: ResponseFormat;
}

/** The log-probability of a generated token and of the most likely alternatives. */
export interface TokenLogprob {
  tokenId: number;
  logprob: number;
  /** Most likely first; `topLogprobs` entries. */
  top: Array<{ tokenId: number; logprob: number }>;
}

/** One streamed piece of a generation. */
export interface GenerateChunk {
  /** New text ('' while a multi-byte character is incomplete or text is held back for stop strings). */
  text: string;
  /** The token that produced it; -1 for the final flush chunk. */
  tokenId: number;
  /** With `topLogprobs`: the token's log-probability and the alternatives (absent on the flush chunk). */
  logprob?: TokenLogprob;
}

export type FinishReason = 'stop' | 'length' | 'cancelled';

export interface GenerateTimings {
  /** Prompt length in tokens, image/video features included. */
  promptTokens: number;
  /** Prompt tokens whose keys and values were reused from the cache (an earlier turn or request). */
  cachedTokens: number;
  /** Waiting for a free sequence slot or KV cache space. */
  queueMs: number;
  /** Vision tower + projector (this request's own work; 0 when the image features were cached). */
  visionMs: number;
  /** Prompt prefill (this request's own work, interleaved with other requests' decode steps). */
  prefillMs: number;
  /** From the call to the first generated token (preprocessing, queueing, vision and prefill). */
  timeToFirstTokenMs: number;
  /** All decode steps after the first token. */
  decodeMs: number;
  /** (generated tokens - 1) / decode seconds. */
  decodeTokensPerSecond: number;
  /** Wall clock of the whole call: preprocessing, queueing and generation. */
  totalMs: number;
}

/** Result of {@link PerceptionLM.complete}. */
export interface CompleteResult {
  text: string;
  /** Generated ids (may end with the stop token). */
  tokenIds: number[];
  finishReason: FinishReason;
  timings: GenerateTimings;
  /** [tokenIds.length, vocab] row-major, only with `returnLogits`. */
  logits?: Float32Array;
  /** One per generated token, only with `topLogprobs`. */
  logprobs?: TokenLogprob[];
}

/** Engine counters: {@link PerceptionLM.stats}. */
export interface ModelStats {
  /** Sequences generating now. */
  activeSequences: number;
  /** Requests waiting for a sequence slot or KV cache space. */
  waitingSequences: number;
  /** The `sequences` limit. */
  maxSequences: number;
  /** KV cache bytes held by running sequences and open chats. */
  kvCacheBytesUsed: number;
  /** KV cache bytes of finished requests' prefixes kept for reuse (given up as soon as space is needed). */
  kvCacheBytesCached: number;
  /** The KV cache budget. */
  kvCacheBytesBudget: number;
  /** Prompt tokens since load, and of those the ones served from the cache. */
  promptTokens: number;
  cachedPromptTokens: number;
  /** Image features kept for reuse (bytes), cache hits and images encoded since load. */
  imageCacheBytes: number;
  imageCacheHits: number;
  imagesEncoded: number;
  /** Requests since load that waited for KV cache space before they started (each counted once). */
  requestsDeferred: number;
}

/** Options of {@link PerceptionLM.createChat}: a system prompt and defaults for every turn. */
export type ChatOptions = Omit<GenerateOptions, 'messages' | 'prompt' | 'inputIds' | 'pixelValues' | 'numTiles' | 'images' | 'videos' | 'signal' | 'onProgress'>;

/** One user turn of a chat: text, or text with images / videos (or explicit content parts). */
export type ChatInput = string | { text?: string; images?: ImageInput[]; videos?: VideoInput[]; content?: Message['content'] };

/** Per-turn options of {@link Chat.send} / {@link Chat.stream} (they override the chat's defaults). */
export type ChatTurnOptions = Omit<ChatOptions, 'system'> & { signal?: AbortSignal; onProgress?: (progress: GenerateProgress) => void };

function cancelledError(): PlmError {
  return new PlmError('ERR_CANCELLED', 'the operation was aborted (AbortSignal)');
}

function readJsonIfExists(file: string): Record<string, unknown> | undefined {
  if (!fs.existsSync(file)) return undefined;
  try {
    const v = JSON.parse(fs.readFileSync(file, 'utf8')) as unknown;
    return typeof v === 'object' && v !== null ? (v as Record<string, unknown>) : undefined;
  } catch (e) {
    throw new PlmError('ERR_CORRUPT_FILE', `${file} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

/** Tracks stop strings over the streamed text, holding back what could be the start of one. */
class StopMatcher {
  private text = '';
  private released = 0;
  private readonly maxLen: number;
  constructor(private readonly stops: readonly string[]) {
    this.maxLen = stops.reduce((m, s) => Math.max(m, s.length), 0);
  }
  /** Returns the releasable text and whether a stop string was found. */
  push(delta: string): { text: string; stopped: boolean } {
    this.text += delta;
    if (this.stops.length === 0) return { text: this.releaseTo(this.text.length), stopped: false };
    const from = Math.max(0, this.released - this.maxLen + 1);
    let hit = -1;
    for (const s of this.stops) {
      const i = this.text.indexOf(s, from);
      if (i >= 0 && (hit < 0 || i < hit)) hit = i;
    }
    if (hit >= 0) return { text: this.releaseTo(Math.max(hit, this.released)), stopped: true };
    let hold = 0;
    for (const s of this.stops) {
      for (let k = Math.min(s.length - 1, this.text.length); k > hold; k--) {
        if (this.text.endsWith(s.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    return { text: this.releaseTo(this.text.length - hold), stopped: false };
  }
  finish(): string {
    return this.releaseTo(this.text.length);
  }
  private releaseTo(end: number): string {
    if (end <= this.released) return '';
    const out = this.text.slice(this.released, end);
    this.released = end;
    return out;
  }
}

type StreamEvent =
  | { kind: 'chunk'; chunk: GenerateChunk }
  | { kind: 'done'; result: CompleteResult }
  | { kind: 'error'; error: PlmError };

function toTokenLogprob(tokenId: number, lp: NativeTokenLogprobs): TokenLogprob {
  const top: TokenLogprob['top'] = [];
  for (let i = 0; i < lp.topIds.length; i++) top.push({ tokenId: lp.topIds[i], logprob: lp.topLogprobs[i] });
  return { tokenId, logprob: lp.logprob, top };
}

/**
 * A source of per-token masks for constrained decoding (structured output): `first()` gives the mask of the
 * first token, `next(tokenId)` the mask after a token was chosen (null: unconstrained from then on).
 * @internal
 */
export interface TokenConstraint {
  first(): Uint8Array | null;
  next(tokenId: number): Uint8Array | null;
}

/**
 * A loaded PerceptionLM checkpoint. Create with {@link loadModel}.
 *
 * Concurrent `generate()` / `complete()` calls run together: the engine batches their decode steps and
 * interleaves their prompts (up to the `sequences` load option; more wait in call order). A prompt that starts
 * like an earlier one (same text, same images) reuses that one's computed context. `createChat()` keeps a
 * conversation's context between turns. `forward()` and `encodeImages()` run alone, between steps.
 */
export class PerceptionLM {
  /** The parsed config (text, vision, token ids, tokens_per_tile, generation defaults). */
  readonly config: PerceptionLMConfig;
  /** The backend in use: 'cpu' or 'cuda'. */
  readonly backend: string;
  /** Why this backend was chosen (e.g. why CUDA was not used). */
  readonly backendNote: string;
  /** Bytes of weights held. */
  readonly weightBytes: number;
  /**
   * The weight-only quantization in use: `kind` ('none', 'int8' or 'q4') and `file`, the plm-quant file the
   * matrices are mapped from (null when they were converted at load, or not quantized).
   */
  readonly quantization: { kind: NativeQuantize; file: string | null };
  /** The checkpoint directory. */
  readonly dir: string;
  /** The tokenizer, or null when the checkpoint has no tokenizer.json (then only `inputIds` inputs work). */
  readonly tokenizer: PlmTokenizer | null;
  /** The chat template (the built-in PLM one when the checkpoint has none). */
  readonly chatTemplate: ChatTemplate;
  /** Capability flag: `GenerateOptions.responseFormat` (structured output) is supported. */
  readonly supportsResponseFormat = true as const;
  private readonly promptInfo: PromptModelInfo;
  private readonly running = new Set<NativeCancel>();
  private disposed = false;
  private readonly media: MediaProcessors<ImageInput, VideoInput> = {
    image: (input, opts) => preprocessImage(input, opts),
    video: (input, opts) => loadVideoFrames(input, opts),
  };

  /** @internal use {@link loadModel}. */
  constructor(
    private readonly handle: NativeModel,
    dir: string,
    tokenizer: PlmTokenizer | null,
    chatTemplate: ChatTemplate,
    maxContext: number,
  ) {
    const info = handle.info();
    this.config = info.config;
    this.backend = info.backend;
    this.backendNote = info.backendNote;
    this.weightBytes = info.weightBytes;
    this.quantization = { kind: info.quantize ?? 'none', file: info.quantizedFile ?? null };
    this.dir = dir;
    this.tokenizer = tokenizer;
    this.chatTemplate = chatTemplate;
    const pre = readJsonIfExists(path.join(dir, 'preprocessor_config.json')) ?? {};
    const maxPos = this.config.text.max_position_embeddings;
    const bos = this.config.generation?.bos_token_id;
    this.promptInfo = {
      imageTokenId: this.config.image_token_id,
      videoTokenId: this.config.video_token_id,
      tokensPerTile: this.config.tokens_per_tile,
      maxContext: maxContext > 0 && maxContext < maxPos ? maxContext : maxPos,
      bosTokenId: typeof bos === 'number' && bos >= 0 ? bos : undefined,
      visionPresent: Boolean(this.config.vision?.present),
      tileSize: this.config.vision?.image_size || (typeof pre.tile_size === 'number' ? pre.tile_size : 448),
      maxNumTiles: typeof pre.max_num_tiles === 'number' ? pre.max_num_tiles : DEFAULT_MAX_NUM_TILES,
      numFrames: DEFAULT_NUM_FRAMES,
    };
  }

  /** Context limit in tokens (prompt + generated). */
  get maxContext(): number {
    return this.promptInfo.maxContext;
  }

  /**
   * Frees the weights and the KV cache. Running generations are cancelled; later calls reject with
   * `ERR_DISPOSED`. Safe to call twice.
   *
   * @example
   * ```ts
   * const model = await loadModel(dir);
   * try { console.log((await model.complete({ prompt: 'Hi' })).text); } finally { model.dispose(); }
   * ```
   */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    for (const c of this.running) c.cancel();
    this.handle.dispose();
  }

  private checkDisposed(): void {
    if (this.disposed) throw new PlmError('ERR_DISPOSED', 'this model was disposed; load it again with loadModel()');
  }

  /**
   * Runs the full model on a prompt and returns its logits (no sampling, no KV cache kept).
   *
   * @param options `inputIds` (expanded), `pixelValues`/`numTiles` for the placeholders,
   *   `logitsRows` 'all' (default) or 'last', `dump` (default false) for named intermediates.
   * @returns `{ logits: Float32Array [rows x vocab], rows, vocabSize, dumps? }`.
   * @example
   * ```ts
   * const { logits, vocabSize } = await model.forward({ inputIds: [128000, 9906], logitsRows: 'last' });
   * const top = logits.indexOf(Math.max(...logits));
   * ```
   */
  async forward(options: ForwardOptions): Promise<ForwardResult> {
    this.checkDisposed();
    if (options.signal?.aborted) throw cancelledError();
    const ids = Int32Array.from(options.inputIds);
    if (ids.length === 0) throw new PlmError('ERR_INVALID_ARGUMENT', 'inputIds is empty');
    const pixels = options.pixelValues ?? null;
    const numTiles = this.tilesOf(pixels, options.numTiles);
    const rows = (options.logitsRows ?? 'all') === 'all' ? ids.length : 1;
    const cancel = native.createCancelToken();
    const onAbort = (): void => cancel.cancel();
    options.signal?.addEventListener('abort', onAbort);
    this.running.add(cancel);
    try {
      const r = await this.handle.forward(ids, pixels, numTiles, rows, options.dump ?? false, cancel);
      const vocabSize = r.logits.length / rows;
      return { logits: r.logits, rows, vocabSize, ...(r.dumps ? { dumps: r.dumps } : {}) };
    } catch (e) {
      throw wrapNativeError(e);
    } finally {
      this.running.delete(cancel);
      options.signal?.removeEventListener('abort', onAbort);
    }
  }

  /**
   * Runs the vision tower and projector on preprocessed tiles.
   *
   * @param pixelValues [numTiles, 3, S, S] (from `preprocessImage` / `loadVideoFrames`).
   * @param numTiles tiles in pixelValues (default: derived from its length).
   * @returns [numTiles * tokens_per_tile, hidden_size] features, row-major.
   * @example
   * ```ts
   * const { pixelValues, numTiles } = await preprocessImage('cat.jpg', { maxNumTiles: 4 });
   * const features = await model.encodeImages(pixelValues, numTiles);
   * ```
   */
  async encodeImages(pixelValues: Float32Array, numTiles?: number): Promise<Float32Array> {
    this.checkDisposed();
    if (!this.promptInfo.visionPresent) {
      throw new PlmError('ERR_INVALID_ARGUMENT', 'this checkpoint has no vision tower');
    }
    const tiles = this.tilesOf(pixelValues, numTiles);
    const cancel = native.createCancelToken();
    this.running.add(cancel);
    try {
      return await this.handle.encodeImages(pixelValues, tiles, cancel);
    } catch (e) {
      throw wrapNativeError(e);
    } finally {
      this.running.delete(cancel);
    }
  }

  /**
   * Builds the model input exactly as {@link generate} would (template, tokenization, media
   * preprocessing, placeholder expansion, context check) without running the model.
   *
   * @example
   * ```ts
   * const { inputIds, numTiles } = await model.buildInput({ prompt: 'Describe the image.', images: ['cat.jpg'] });
   * ```
   */
  async buildInput(options: GenerateOptions): Promise<BuiltPrompt> {
    this.checkDisposed();
    if (options.pixelValues !== undefined) {
      if (options.inputIds === undefined || options.images?.length || options.videos?.length) {
        throw new PlmError('ERR_INVALID_ARGUMENT', 'pixelValues goes with expanded inputIds, not with messages, prompt, images or videos');
      }
      const inputIds = Int32Array.from(options.inputIds);
      const parts = Array.isArray(options.pixelValues) ? options.pixelValues : [options.pixelValues];
      if (parts.length === 0) throw new PlmError('ERR_INVALID_ARGUMENT', 'pixelValues is an empty array');
      const mediaPixels = parts.map((p, i) => {
        // (instanceof fails for arrays made in another realm: the addon's, a worker's, a test sandbox's.)
        if (Object.prototype.toString.call(p) !== '[object Float32Array]') {
          throw new PlmError('ERR_INVALID_ARGUMENT', `pixelValues[${i}] must be a Float32Array`);
        }
        return { pixels: p, tiles: this.tilesOf(p, parts.length === 1 ? options.numTiles : undefined) };
      });
      const numTiles = mediaPixels.reduce((n, m) => n + m.tiles, 0);
      if (parts.length > 1 && options.numTiles !== undefined && options.numTiles !== numTiles) {
        throw new PlmError('ERR_INVALID_ARGUMENT', `numTiles is ${options.numTiles} but the pixelValues arrays hold ${numTiles} tiles`);
      }
      const rows = numTiles * this.config.tokens_per_tile;
      let placeholders = 0;
      for (const id of inputIds) if (id === this.config.image_token_id || id === this.config.video_token_id) placeholders++;
      if (placeholders !== rows) {
        throw new PlmError('ERR_INVALID_ARGUMENT', `inputIds has ${placeholders} placeholders but ${numTiles} tiles need ${rows} (${this.config.tokens_per_tile} per tile)`);
      }
      if (inputIds.length + (options.maxTokens ?? DEFAULT_MAX_TOKENS) > this.maxContext) {
        throw new PlmError('ERR_CONTEXT_OVERFLOW', `the prompt has ${inputIds.length} tokens; with maxTokens it exceeds the context of ${this.maxContext}`);
      }
      let pixelValues = parts[0];
      if (parts.length > 1) {
        pixelValues = new Float32Array(parts.reduce((n, p) => n + p.length, 0));
        let off = 0;
        for (const p of parts) {
          pixelValues.set(p, off);
          off += p.length;
        }
      }
      return { inputIds, pixelValues, numTiles, media: [], mediaPixels };
    }
    if ((options.messages !== undefined || options.prompt !== undefined) && !this.tokenizer) {
      throw new PlmError(
        'ERR_FILE_NOT_FOUND',
        `${path.join(this.dir, 'tokenizer.json')} does not exist: without a tokenizer only inputIds can be used`,
      );
    }
    const tokenizer = this.tokenizer ?? (null as unknown as PlmTokenizer);
    let done = 0;
    const nMedia = (options.images?.length ?? 0) + (options.videos?.length ?? 0);
    // A chat's earlier media come from its cache (preprocessed once, with the tiling of the turn that sent them).
    const cache = chatMediaCache.get(options);
    let imageIndex = 0;
    let videoIndex = 0;
    const media: MediaProcessors<ImageInput, VideoInput> = {
      image: async (i, o) => {
        const k = imageIndex++;
        const r = cache?.images[k] ?? (await this.media.image(i, o));
        if (cache && k >= cache.images.length) cache.pendingImages.push(r);
        options.onProgress?.({ stage: 'preprocess', fraction: ++done / Math.max(1, nMedia) });
        return r;
      },
      video: async (v, o) => {
        const k = videoIndex++;
        const r = cache?.videos[k] ?? (await this.media.video(v, o));
        if (cache && k >= cache.videos.length) cache.pendingVideos.push(r);
        options.onProgress?.({ stage: 'preprocess', fraction: ++done / Math.max(1, nMedia) });
        return r;
      },
    };
    try {
      return await buildPrompt(tokenizer, this.chatTemplate, this.promptInfo, media, {
        messages: options.messages,
        prompt: options.prompt,
        inputIds: options.inputIds,
        images: options.images,
        videos: options.videos,
        system: options.system,
        maxTokens: options.maxTokens ?? DEFAULT_MAX_TOKENS,
        maxNumTiles: options.maxNumTiles,
        tileSize: options.tileSize,
        numFrames: options.numFrames,
        signal: options.signal,
      });
    } catch (e) {
      throw wrapNativeError(e);
    }
  }

  /**
   * Streams a generation as `{ text, tokenId }` chunks.
   *
   * - Runs alongside other calls on this model (batched; see the class notes).
   * - Aborting `signal` (before or during the call) stops it: no chunk is yielded after `abort()` returns and
   *   the loop ends normally (no error). Breaking out of the loop cancels the generation too.
   * - With `stop` strings, text that may begin a stop string is held back; on a match the iteration
   *   ends and the stop string is not emitted.
   *
   * Defaults: maxTokens 256; temperature from generation_config (0 = greedy when do_sample is false);
   * topP 1, topK 0, minP 0, repetitionPenalty 1; stop on generation_config eos_token_id.
   *
   * @example
   * ```ts
   * for await (const { text } of model.generate({ prompt: 'Describe the image.', images: ['cat.jpg'] })) {
   *   process.stdout.write(text);
   * }
   * ```
   */
  generate(options: GenerateOptions): AsyncIterable<GenerateChunk> {
    const events = (): AsyncGenerator<StreamEvent> => this.stream(options, true);
    return {
      async *[Symbol.asyncIterator](): AsyncGenerator<GenerateChunk> {
        for await (const ev of events()) {
          if (ev.kind === 'chunk') yield ev.chunk;
        }
      },
    };
  }

  /**
   * Generates a whole answer.
   *
   * Runs alongside other calls on this model (batched). Aborting `signal` (before or during the call) is not
   * an error: the promise resolves with the text so far and `finishReason: 'cancelled'`. Stop strings end with
   * `finishReason: 'stop'` and are trimmed from `text`. Other defaults as {@link generate}.
   *
   * @returns `{ text, tokenIds, finishReason, timings }`.
   * @example
   * ```ts
   * const r = await model.complete({
   *   messages: [{ role: 'user', content: [{ type: 'image', image: 'chart.png' }, { type: 'text', text: 'Describe the bar plot.' }] }],
   *   maxTokens: 64,
   * });
   * console.log(r.text, r.finishReason, r.timings.decodeTokensPerSecond);
   * ```
   */
  async complete(options: GenerateOptions): Promise<CompleteResult> {
    return this.completeIn(options, null);
  }

  /** @internal complete() in a chat session (null: none). */
  async completeIn(options: GenerateOptions, session: NativeSession | null, constraint?: TokenConstraint): Promise<CompleteResult> {
    let result: CompleteResult | undefined;
    for await (const ev of this.stream(options, false, session, constraint)) {
      if (ev.kind === 'done') result = ev.result;
    }
    if (!result) throw new PlmError('ERR_INTERNAL', 'generation ended without a result');
    return result;
  }

  /** @internal generate() in a chat session; the last event is 'done'. */
  streamIn(options: GenerateOptions, session: NativeSession | null, constraint?: TokenConstraint): AsyncGenerator<StreamEvent> {
    return this.stream(options, true, session, constraint, true);
  }

  /**
   * Starts a conversation that keeps its context between turns: each `send()` reuses the keys and values the
   * model already computed for the earlier turns (and their images), so the time to the first token of a
   * follow-up question depends on the question, not on the conversation's length.
   *
   * @param options `system` prompt (default: the checkpoint template's default), and defaults for every turn
   *   (`maxTokens`, sampling options, `maxNumTiles`, ...).
   * @example
   * ```ts
   * const chat = model.createChat({ system: 'You are a concise assistant.' });
   * await chat.send({ text: 'What is in this image?', images: ['photo.jpg'] });
   * const { text } = await chat.send('And what colour is it?');
   * chat.dispose();
   * ```
   */
  createChat(options: ChatOptions = {}): Chat {
    this.checkDisposed();
    return new Chat(this, options);
  }

  /** @internal a native session for a chat. */
  openSession(): NativeSession {
    this.checkDisposed();
    try {
      return this.handle.createSession();
    } catch (e) {
      throw wrapNativeError(e);
    }
  }

  /**
   * Runs many images or videos through the model, several at once (the engine batches them), yielding one
   * record per item as it finishes: the text, token counts and timings, or a typed error for an item that
   * failed (a missing file, a corrupt image, a prompt too long for the context) while the others go on.
   * Options and records: {@link batch} and docs/batch.md.
   *
   * @example
   * ```ts
   * for await (const r of model.batch(['a.jpg', 'b.jpg', { id: 'c', image: 'c.png', prompt: 'Read the sign.' }])) {
   *   console.log(r.id, r.error ? r.error.code : r.text);
   * }
   * ```
   */
  batch(items: Iterable<BatchItem | string> | AsyncIterable<BatchItem | string>, options?: BatchOptions): AsyncIterable<BatchRecord> {
    return runBatch(this, items, options);
  }

  /**
   * Engine counters: running and waiting sequences, KV cache use, prompt tokens served from the cache, the
   * image feature cache.
   *
   * @example
   * ```ts
   * const s = model.stats();
   * console.log(`${s.activeSequences} running, KV ${(s.kvCacheBytesUsed / 2 ** 20).toFixed(0)} MiB`);
   * ```
   */
  stats(): ModelStats {
    this.checkDisposed();
    const n: NativeStats = this.handle.stats();
    return {
      activeSequences: n.activeSequences,
      waitingSequences: n.waitingSequences,
      maxSequences: n.maxSequences,
      kvCacheBytesUsed: n.kvBlocksInUse * n.kvBlockBytes,
      kvCacheBytesCached: n.kvBlocksCached * n.kvBlockBytes,
      kvCacheBytesBudget: n.kvBlocksCapacity * n.kvBlockBytes,
      promptTokens: n.promptTokens,
      cachedPromptTokens: n.cachedPromptTokens,
      imageCacheBytes: n.mediaCacheBytes,
      imageCacheHits: n.mediaCacheHits,
      imagesEncoded: n.mediaEncoded,
      requestsDeferred: n.requestsDeferred,
    };
  }

  /**
   * Forgets cached prompt prefixes and image features that no running request or open chat uses (for
   * example, to measure cold-start times, or to drop content from memory).
   *
   * @example
   * ```ts
   * await model.clearCache();
   * ```
   */
  async clearCache(): Promise<void> {
    this.checkDisposed();
    try {
      await this.handle.clearCache();
    } catch (e) {
      throw wrapNativeError(e);
    }
  }

  private tilesOf(pixels: Float32Array | null, numTiles: number | undefined): number {
    if (!pixels) {
      if (numTiles) throw new PlmError('ERR_INVALID_ARGUMENT', 'numTiles given without pixelValues');
      return 0;
    }
    const s = this.promptInfo.tileSize;
    const per = 3 * s * s;
    const derived = pixels.length / per;
    if (!Number.isInteger(derived) || derived < 1) {
      throw new PlmError('ERR_INVALID_ARGUMENT', `pixelValues has ${pixels.length} values: not a whole number of 3x${s}x${s} tiles`);
    }
    if (numTiles !== undefined && numTiles !== derived) {
      throw new PlmError('ERR_INVALID_ARGUMENT', `numTiles is ${numTiles} but pixelValues holds ${derived} tiles of 3x${s}x${s}`);
    }
    return derived;
  }

  private resolveSampling(options: GenerateOptions): Required<NativeGenerateOptions> {
    const g = this.config.generation ?? { bos_token_id: -1, eos_token_ids: [] };
    const maxTokens = options.maxTokens ?? DEFAULT_MAX_TOKENS;
    const temperature = options.temperature ?? (g.do_sample ? (g.temperature ?? 1) : 0);
    const topP = options.topP ?? (g.do_sample && typeof g.top_p === 'number' ? g.top_p : 1);
    const topK = options.topK ?? (g.do_sample && typeof g.top_k === 'number' ? g.top_k : 0);
    const minP = options.minP ?? 0;
    const repetitionPenalty = options.repetitionPenalty ?? 1;
    const seed = options.seed ?? Math.floor(Math.random() * 0x7fffffff);
    const bad = (name: string, v: number): never => {
      throw new PlmError('ERR_INVALID_ARGUMENT', `${name} is out of range: ${v}`);
    };
    if (!Number.isInteger(maxTokens) || maxTokens < 1) bad('maxTokens (a positive integer)', maxTokens);
    if (!(temperature >= 0) || !Number.isFinite(temperature)) bad('temperature (>= 0)', temperature);
    if (!(topP > 0 && topP <= 1)) bad('topP (0 < topP <= 1)', topP);
    if (!Number.isInteger(topK) || topK < 0) bad('topK (an integer >= 0)', topK);
    if (!(minP >= 0 && minP <= 1)) bad('minP (0..1)', minP);
    if (!(repetitionPenalty > 0) || !Number.isFinite(repetitionPenalty)) bad('repetitionPenalty (> 0)', repetitionPenalty);
    if (!Number.isInteger(seed) || seed < 0) bad('seed (an integer >= 0)', seed);
    const stopIds = new Set<number>(g.eos_token_ids ?? []);
    if (stopIds.size === 0 && this.tokenizer) {
      for (const id of [this.tokenizer.special.eos, this.tokenizer.special.eot, this.tokenizer.special.endOfText]) {
        if (id !== undefined) stopIds.add(id);
      }
    }
    for (const id of options.stopTokenIds ?? []) {
      if (!Number.isInteger(id) || id < 0) bad('stopTokenIds entry', id);
      stopIds.add(id);
    }
    const topLogprobs = options.topLogprobs ?? -1;
    if (options.topLogprobs !== undefined && (!Number.isInteger(topLogprobs) || topLogprobs < 0 || topLogprobs > 20)) {
      bad('topLogprobs (an integer 0..20)', topLogprobs);
    }
    return {
      maxTokens, temperature, topK, topP, minP, repetitionPenalty, seed, stopIds: [...stopIds],
      returnLogits: options.returnLogits === true, topLogprobs,
    };
  }

  /**
   * The generation behind generate(), complete() and chats: yields chunks (when `chunks`) and one final 'done'
   * event (always with `withDone`, else only when not streaming chunks). Errors other than cancellation are
   * thrown; an abort ends it with finishReason 'cancelled', and no chunk is yielded once the signal is aborted.
   */
  private async *stream(
    options: GenerateOptions,
    chunks: boolean,
    session: NativeSession | null = null,
    constraint?: TokenConstraint,
    withDone = false,
  ): AsyncGenerator<StreamEvent> {
    const started = performance.now();
    this.checkDisposed();
    const signal = options.signal;
    const emitDone = !chunks || withDone;
    const cancelledResult = (text = '', tokenIds: number[] = []): CompleteResult => ({
      text,
      tokenIds,
      finishReason: 'cancelled',
      timings: {
        promptTokens: 0, cachedTokens: 0, queueMs: 0, visionMs: 0, prefillMs: 0, timeToFirstTokenMs: 0, decodeMs: 0,
        decodeTokensPerSecond: 0, totalMs: performance.now() - started,
      },
    });
    if (signal?.aborted) {
      if (emitDone) yield { kind: 'done', result: cancelledResult() };
      return;
    }
    const sampling = this.resolveSampling(options);
    const stops = (options.stop ?? []).filter((s) => typeof s === 'string' && s.length > 0);
    const grammar = compileResponseFormat(options.responseFormat);
    if (grammar && !constraint) constraint = await jsonConstraintFor(this.tokenizer, this.config.text.vocab_size, grammar, sampling.stopIds, stops);

    let built: BuiltPrompt;
    try {
      built = await this.buildInput(options);
    } catch (e) {
      if (e instanceof PlmError && e.code === 'ERR_CANCELLED' && signal?.aborted) {
        if (emitDone) yield { kind: 'done', result: cancelledResult() };
        return;
      }
      throw e;
    }
    this.checkDisposed();
    if (signal?.aborted) {
      if (emitDone) yield { kind: 'done', result: cancelledResult() };
      return;
    }

    let cancel: NativeCancel;
    let masks: NativeTokenMaskQueue | null = null;
    try {
      cancel = native.createCancelToken();
      if (constraint) masks = native.createTokenMaskQueue();
    } catch (e) {
      throw wrapNativeError(e);
    }
    const events: StreamEvent[] = [];
    let wake: (() => void) | undefined;
    const push = (ev: StreamEvent): void => {
      events.push(ev);
      wake?.();
      wake = undefined;
    };
    // Structured output is decoded byte for byte (no clean-up of spaces before punctuation inside strings).
    const decoder = this.tokenizer?.createStreamDecoder(grammar ? { cleanUpTokenizationSpaces: false } : {});
    const matcher = new StopMatcher(stops);
    let stoppedByString = false;
    let textOut = '';
    let generated = 0;
    let firstTokenAt = 0;
    const onAbort = (): void => {
      cancel.cancel();
      masks?.close();
      wake?.();
      wake = undefined;
    };
    let job: Promise<void> | undefined;

    try {
      signal?.addEventListener('abort', onAbort);
      this.running.add(cancel);
      options.onProgress?.({ stage: 'prefill', fraction: 0 });
      const stopIdSet = new Set(sampling.stopIds);
      let constraintFailed: unknown;
      if (constraint && masks) masks.push(0, constraint.first());
      const onToken = (id: number, lp?: NativeTokenLogprobs): void => {
        if (constraint && masks) {
          try {
            masks.push(generated + 1, constraint.next(id));
          } catch (e) {
            constraintFailed = e;
            cancel.cancel();
            masks.close();
          }
        }
        if (stoppedByString) return;
        if (generated === 0) firstTokenAt = performance.now();
        generated++;
        options.onProgress?.({ stage: 'decode', fraction: Math.min(1, generated / sampling.maxTokens) });
        if (stopIdSet.has(id)) return;
        const delta = decoder ? decoder.push(id) : '';
        const { text, stopped } = matcher.push(delta);
        textOut += text;
        if (chunks) push({ kind: 'chunk', chunk: { text, tokenId: id, ...(lp ? { logprob: toTokenLogprob(id, lp) } : {}) } });
        if (stopped) {
          stoppedByString = true;
          cancel.cancel();
        }
      };
      const media = built.mediaPixels.length > 0 ? built.mediaPixels : null;
      job = this.handle.generate(built.inputIds, media, sampling, onToken, cancel, session, masks).then(
        (r) => {
          if (constraintFailed) {
            push({ kind: 'error', error: wrapNativeError(constraintFailed) });
            return;
          }
          if (!stoppedByString) {
            const tail = matcher.push(decoder ? decoder.flush() : '');
            let rest = tail.text;
            if (tail.stopped) stoppedByString = true;
            else rest += matcher.finish();
            textOut += rest;
            if (chunks && rest.length > 0) push({ kind: 'chunk', chunk: { text: rest, tokenId: -1 } });
          }
          const n = r.tokens.length;
          const tokenIds = Array.from(r.tokens);
          push({
            kind: 'done',
            result: {
              text: textOut,
              tokenIds,
              finishReason: stoppedByString ? 'stop' : r.finishReason,
              ...(r.logits ? { logits: r.logits } : {}),
              ...(r.logprobs ? { logprobs: r.logprobs.map((lp, i) => toTokenLogprob(tokenIds[i], lp)) } : {}),
              timings: {
                promptTokens: r.promptTokens,
                cachedTokens: r.cachedTokens,
                queueMs: r.queueMs,
                visionMs: r.visionMs,
                prefillMs: r.prefillMs,
                timeToFirstTokenMs: firstTokenAt > 0 ? firstTokenAt - started : 0,
                decodeMs: r.decodeMs,
                decodeTokensPerSecond: n > 1 && r.decodeMs > 0 ? ((n - 1) * 1000) / r.decodeMs : 0,
                totalMs: performance.now() - started,
              },
            },
          });
        },
        (e: unknown) => {
          const err = wrapNativeError(constraintFailed ?? e);
          if (err.code === 'ERR_CANCELLED' && (stoppedByString || signal?.aborted)) {
            push({ kind: 'done', result: { ...cancelledResult(textOut), finishReason: stoppedByString ? 'stop' : 'cancelled' } });
          } else push({ kind: 'error', error: err });
        },
      );

      for (;;) {
        while (events.length > 0) {
          const ev = events.shift() as StreamEvent;
          if (ev.kind === 'error') throw ev.error;
          if (ev.kind === 'chunk') {
            if (chunks && !signal?.aborted) yield ev;
            continue;
          }
          if (emitDone) yield ev;
          return;
        }
        await new Promise<void>((r) => (wake = r));
      }
    } finally {
      // Early exit (break, error): stop the native generation and wait for it to end.
      cancel.cancel();
      masks?.close();
      if (job) await job.catch(() => undefined);
      this.running.delete(cancel);
      signal?.removeEventListener('abort', onAbort);
    }
  }
}

/**
 * The preprocessed media of a chat's earlier turns, in the order they appear in its messages: a later turn
 * reuses them (the same pixels and tiling as when they were sent, without decoding the files again), so the
 * conversation's prefix renders to the same tokens and its cached context is reused. `pending*` collect the
 * media of the turn being built; they join the cache when the turn succeeds.
 */
interface ChatMediaCache {
  images: ProcessedImage[];
  videos: ProcessedVideo[];
  pendingImages: ProcessedImage[];
  pendingVideos: ProcessedVideo[];
}
/** Requests built by {@link Chat} carry their chat's media cache here (keyed by the request object). */
const chatMediaCache = new WeakMap<GenerateOptions, ChatMediaCache>();

/**
 * A conversation with a model that keeps its context between turns. Create with
 * {@link PerceptionLM.createChat}. Each turn renders the whole conversation with the chat template; the engine
 * reuses every position it already computed (the longest common prefix) and computes only the rest, so a
 * follow-up question about an image costs about as much as the question itself. One turn at a time.
 */
export class Chat {
  private messages: Message[] = [];
  private media: ChatMediaCache = { images: [], videos: [], pendingImages: [], pendingVideos: [] };
  private session: NativeSession | null = null;
  private busy = false;
  private disposed = false;

  /** @internal use {@link PerceptionLM.createChat}. */
  constructor(
    private readonly model: PerceptionLM,
    private readonly options: ChatOptions,
  ) {
    this.resetMessages();
  }

  /** The conversation so far: the system message (when given), then user and assistant turns. */
  get history(): readonly Message[] {
    return this.messages;
  }

  /** Positions of this conversation held in the model's KV cache. */
  get cachedTokens(): number {
    return this.session ? this.session.cachedTokens() : 0;
  }

  /**
   * Sends a user turn and returns the whole answer, which joins the history. Aborting keeps the partial
   * answer in the history (finishReason 'cancelled').
   *
   * @param input the user's text, or `{ text, images, videos }`.
   * @param options per-turn overrides (maxTokens, temperature, signal, ...).
   * @example
   * ```ts
   * const chat = model.createChat();
   * console.log((await chat.send({ text: 'Describe this.', images: ['a.png'] })).text);
   * console.log((await chat.send('What is at the top left?')).text);
   * ```
   */
  async send(input: ChatInput, options: ChatTurnOptions = {}): Promise<CompleteResult> {
    const { request, user } = this.begin(input, options);
    try {
      const r = await this.model.completeIn(request, this.session);
      this.messages.push(user, { role: 'assistant', content: r.text });
      this.commitMedia();
      return r;
    } finally {
      this.busy = false;
    }
  }

  /**
   * Sends a user turn and streams the answer; the whole answer joins the history when the stream ends (also
   * when it is aborted or the loop breaks early: then the part that was streamed).
   *
   * @example
   * ```ts
   * for await (const { text } of chat.stream('And the colour?')) process.stdout.write(text);
   * ```
   */
  stream(input: ChatInput, options: ChatTurnOptions = {}): AsyncIterable<GenerateChunk> {
    const self = this;
    return {
      async *[Symbol.asyncIterator](): AsyncGenerator<GenerateChunk> {
        const { request, user } = self.begin(input, options);
        let text = '';
        let failed = false;
        try {
          for await (const ev of self.model.streamIn(request, self.session)) {
            if (ev.kind === 'chunk') {
              text += ev.chunk.text;
              yield ev.chunk;
            } else if (ev.kind === 'done') {
              text = ev.result.text;
            }
          }
        } catch (e) {
          failed = true;  // a failed turn (bad input, disposed model) does not join the history
          throw e;
        } finally {
          if (!failed) {
            self.messages.push(user, { role: 'assistant', content: text });
            self.commitMedia();
          }
          self.busy = false;
        }
      },
    };
  }

  /** Forgets the conversation (keeps the system prompt) and releases its cached context. */
  reset(): void {
    if (this.busy) throw new PlmError('ERR_INVALID_ARGUMENT', 'the chat is answering: wait for the answer (or abort it) before reset()');
    this.session?.dispose();
    this.session = null;
    this.resetMessages();
  }

  /** Releases the conversation's cached context; later calls reject with ERR_DISPOSED. Safe to call twice. */
  dispose(): void {
    this.disposed = true;
    this.session?.dispose();
    this.session = null;
  }

  private resetMessages(): void {
    this.messages = this.options.system !== undefined ? [{ role: 'system', content: this.options.system }] : [];
    this.media = { images: [], videos: [], pendingImages: [], pendingVideos: [] };
  }

  private commitMedia(): void {
    this.media.images.push(...this.media.pendingImages);
    this.media.videos.push(...this.media.pendingVideos);
    this.media.pendingImages = [];
    this.media.pendingVideos = [];
  }

  private begin(input: ChatInput, options: ChatTurnOptions): { request: GenerateOptions; user: Message } {
    if (this.disposed) throw new PlmError('ERR_DISPOSED', 'this chat was disposed; create a new one with model.createChat()');
    if (this.busy) throw new PlmError('ERR_INVALID_ARGUMENT', 'the chat is still answering the previous turn: await it first');
    let user: Message;
    if (typeof input === 'string') {
      user = { role: 'user', content: input };
    } else if (input && typeof input === 'object') {
      const parts: Exclude<Message['content'], string> = [];
      if (input.content !== undefined) {
        if (typeof input.content === 'string') parts.push({ type: 'text', text: input.content });
        else parts.push(...input.content);
      }
      for (const image of input.images ?? []) parts.push({ type: 'image', image });
      for (const video of input.videos ?? []) parts.push({ type: 'video', video });
      if (input.text !== undefined) parts.push({ type: 'text', text: input.text });
      if (parts.length === 0) throw new PlmError('ERR_INVALID_ARGUMENT', 'a chat turn needs text, images, videos or content');
      user = { role: 'user', content: parts };
    } else {
      throw new PlmError('ERR_INVALID_ARGUMENT', 'a chat turn is a string or { text, images, videos }');
    }
    if (!this.session) this.session = this.model.openSession();
    this.busy = true;
    const { system: _system, ...defaults } = this.options;
    void _system;
    const request: GenerateOptions = { ...defaults, ...options, messages: [...this.messages, user] };
    this.media.pendingImages = [];
    this.media.pendingVideos = [];
    chatMediaCache.set(request, this.media);
    return { request, user };
  }
}

/**
 * Loads a PerceptionLM checkpoint in the Hugging Face layout (config.json, generation_config.json,
 * *.safetensors, tokenizer.json, tokenizer_config.json, chat template, preprocessor_config.json).
 *
 * @param dir checkpoint directory, or a hub repo id `owner/name` that `plm pull` downloaded
 *   (`$PLM_MODELS_DIR/owner--name`) or that Python / transformers.js put in the Hugging Face cache
 *   (`$HF_HUB_CACHE`, `$HF_HOME/hub`, `~/.cache/huggingface/hub`); a path that exists as a directory always wins
 *   (see {@link resolveModel}).
 * @param options `backend` ('auto'), `threads` (0 = physical cores), `maxContext` (0 = the model's
 *   max_position_embeddings), `precision` ('auto'), `quantize` ('none'), `quantizedFile` (default: the
 *   `quantizeModel` file of that kind in `dir` when present), `signal`, `onProgress({ fraction, stage })`.
 * @returns the loaded {@link PerceptionLM}; call `dispose()` when done.
 * @throws PlmError ERR_FILE_NOT_FOUND (also for a name not downloaded: the message says `plm pull owner/name`), ERR_CORRUPT_FILE, ERR_UNSUPPORTED_MODEL, ERR_SHAPE_MISMATCH,
 *   ERR_UNSUPPORTED_DTYPE, ERR_BACKEND, ERR_OUT_OF_MEMORY, ERR_CANCELLED, ERR_NATIVE_NOT_FOUND; with a
 *   quantized file also ERR_FILE_READ (truncated), ERR_UNSUPPORTED_VERSION and ERR_STALE_FILE.
 * @example
 * ```ts
 * import { loadModel } from 'perception-lm';
 * const model = await loadModel('/models/Perception-LM-1B', { onProgress: (p) => console.log(p.stage, p.fraction) });
 * const same = await loadModel('facebook/Perception-LM-1B'); // after `plm pull facebook/Perception-LM-1B`, or from the HF cache
 * const { text } = await model.complete({ prompt: 'Describe the image.', images: ['cat.jpg'] });
 * model.dispose();
 * // int8 decoder weights, mapped from the file `quantizeModel(dir, { kind: 'int8' })` wrote (or converted at load):
 * const fast = await loadModel('/models/Perception-LM-1B', { backend: 'cpu', quantize: 'int8' });
 * console.log(fast.quantization); // { kind: 'int8', file: '/models/Perception-LM-1B/model.int8.plmq.safetensors' }
 * ```
 */
export async function loadModel(dir: string, options: LoadModelOptions = {}): Promise<PerceptionLM> {
  if (typeof dir !== 'string' || dir.length === 0) throw new PlmError('ERR_INVALID_ARGUMENT', 'dir must be a non-empty path or a hub repo id (owner/name)');
  if (options.signal?.aborted) throw cancelledError();
  // A folder, else owner/name in the plm pull store or the Hugging Face cache (ERR_FILE_NOT_FOUND naming `plm pull`).
  const abs = resolveModel(dir).dir;
  const backend = options.backend ?? DEFAULT_BACKEND;
  if (!(BACKENDS as readonly string[]).includes(backend)) throw new PlmError('ERR_INVALID_ARGUMENT', `backend must be 'auto', 'cpu' or 'cuda', got ${String(backend)}`);
  const precision = options.precision ?? DEFAULT_PRECISION;
  if (!(PRECISIONS as readonly string[]).includes(precision)) throw new PlmError('ERR_INVALID_ARGUMENT', `precision must be 'auto', 'f32' or 'bf16', got ${String(precision)}`);
  if (options.quantize !== undefined && !(QUANTIZE_KINDS as readonly string[]).includes(options.quantize)) {
    throw new PlmError('ERR_INVALID_ARGUMENT', `quantize must be 'none', 'int8' or 'q4', got ${String(options.quantize)}`);
  }
  const threads = options.threads ?? DEFAULT_THREADS;
  const maxContext = options.maxContext ?? DEFAULT_MAX_CONTEXT;
  if (!Number.isInteger(threads) || threads < 0) throw new PlmError('ERR_INVALID_ARGUMENT', `threads must be an integer >= 0, got ${threads}`);
  if (!Number.isInteger(maxContext) || maxContext < 0) throw new PlmError('ERR_INVALID_ARGUMENT', `maxContext must be an integer >= 0, got ${maxContext}`);
  const sequences = options.sequences ?? 0;
  if (!Number.isInteger(sequences) || sequences < 0 || sequences > 256) {
    throw new PlmError('ERR_INVALID_ARGUMENT', `sequences must be an integer from 1 to 256 (0 = default), got ${sequences}`);
  }
  const kvCacheBytes = options.kvCacheBytes ?? 0;
  if (!Number.isSafeInteger(kvCacheBytes) || kvCacheBytes < 0) {
    throw new PlmError('ERR_INVALID_ARGUMENT', `kvCacheBytes must be a whole number of bytes >= 0 (0 = default), got ${kvCacheBytes}`);
  }
  const qf = options.quantizedFile;
  if (qf !== undefined && qf !== false && (typeof qf !== 'string' || qf.length === 0)) {
    throw new PlmError('ERR_INVALID_ARGUMENT', `quantizedFile must be a path or false, got ${String(qf)}`);
  }
  const quantizedFile = typeof qf === 'string' ? path.resolve(qf) : qf;

  // Tokenizer and template first: their errors are clearer before a long weight load. The tokenizer is built
  // off the JS thread (PlmTokenizer.load: a worker, then short slices) and reported as stage 'tokenizer'.
  const tokenizer = fs.existsSync(path.join(abs, 'tokenizer.json'))
    ? await PlmTokenizer.load(abs, { signal: options.signal, onProgress: (fraction) => options.onProgress?.({ fraction, stage: 'tokenizer' }) })
    : null;
  const template = ChatTemplate.fromDirectory(abs, tokenizer?.config ?? {});

  let handle: NativeModel;
  try {
    const nativeOptions: NativeLoadOptions = {
      backend, threads, maxContext, precision, sequences, kvCacheBytes,
      // Unset: the engine applies PLM_QUANTIZE (else none); an explicit 'none' is never overridden.
      ...(options.quantize !== undefined ? { quantize: options.quantize } : {}),
    };
    if (quantizedFile !== undefined) nativeOptions.quantizedFile = quantizedFile;
    handle = await native.loadModel(abs, nativeOptions, (fraction, stage) => {
      options.onProgress?.({ fraction, stage });
    });
  } catch (e) {
    throw wrapNativeError(e);
  }
  if (options.signal?.aborted) {
    handle.dispose();
    throw cancelledError();
  }
  try {
    return new PerceptionLM(handle, abs, tokenizer, template, maxContext);
  } catch (e) {
    handle.dispose();
    throw wrapNativeError(e);
  }
}
