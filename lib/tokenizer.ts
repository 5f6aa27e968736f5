/**
 * The checkpoint's tokenizer (Llama 3 byte-level BPE for PerceptionLM), loaded from
 * `tokenizer.json` + `tokenizer_config.json`, plus an incremental detokenizer for streaming.
 *
 * Byte-level BPE tokenizers (Llama 3's shape) run on our own merge loop (lib/bpe.ts: bounded cost on
 * long words, ids identical to Hugging Face's) and load off the JS thread ({@link PlmTokenizer.load}: a
 * worker parses tokenizer.json and builds flat tables, the maps are filled in short slices). Any other
 * tokenizer.json shape uses `@huggingface/tokenizers` as is, built on the calling thread.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Worker } from 'worker_threads';
import { Tokenizer } from '@huggingface/tokenizers';
import { BpeTables, ByteLevelBpe, buildTables, unsupportedReason } from './bpe';
import { PlmError } from './errors';

/** A token as written in tokenizer_config.json: a string or an AddedToken object. */
type TokenSpec = string | { content?: unknown } | null | undefined;

/** The subset of tokenizer_config.json we read (other keys are kept and passed through). */
export interface TokenizerConfigJson {
  bos_token?: TokenSpec;
  eos_token?: TokenSpec;
  pad_token?: TokenSpec;
  unk_token?: TokenSpec;
  clean_up_tokenization_spaces?: boolean;
  chat_template?: unknown;
  model_max_length?: number;
  [key: string]: unknown;
}

/** Ids of the special tokens PerceptionLM uses. `undefined` when the vocabulary lacks one. */
export interface SpecialTokenIds {
  /** `<|begin_of_text|>` (128000 for PLM). */
  bos: number | undefined;
  /** tokenizer_config's `eos_token` (`<|eot_id|>` 128009 for PLM). */
  eos: number | undefined;
  /** `<|end_of_text|>` (128001). */
  endOfText: number | undefined;
  /** `<|eot_id|>` (128009). */
  eot: number | undefined;
  /** `<|image|>` (128002). */
  image: number | undefined;
  /** `<|video|>` (128003). */
  video: number | undefined;
  pad: number | undefined;
}

/** Options of {@link PlmTokenizer.decode}. */
export interface DecodeOptions {
  /** Drop special tokens (BOS, EOT, image placeholders...). Default true. */
  skipSpecialTokens?: boolean;
  /**
   * Apply the transformers "clean up tokenization spaces" rules (`" ."` -> `"."` ...).
   * Default: tokenizer_config.json's `clean_up_tokenization_spaces` (true when absent), as
   * transformers does.
   */
  cleanUpTokenizationSpaces?: boolean;
}

function tokenContent(t: TokenSpec): string | undefined {
  if (typeof t === 'string') return t;
  if (t && typeof t === 'object' && typeof t.content === 'string') return t.content;
  return undefined;
}

function readJsonFile(file: string): unknown {
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new PlmError('ERR_FILE_NOT_FOUND', `${file} does not exist`, { cause: e });
    throw new PlmError('ERR_FILE_READ', `cannot read ${file}: ${(e as Error).message}`, { cause: e });
  }
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new PlmError('ERR_CORRUPT_FILE', `${file} is not valid JSON: ${(e as Error).message}`, { cause: e });
  }
}

/** What PlmTokenizer needs from an implementation. */
interface TokenizerCore {
  /** 'bpe': lib/bpe.ts; 'library': @huggingface/tokenizers. */
  readonly kind: 'bpe' | 'library';
  encode(text: string): number[];
  decode(ids: number[], skipSpecial: boolean, cleanUp: boolean): string;
  tokenToId(token: string): number | undefined;
  idToToken(id: number): string | undefined;
  readonly specialIds: ReadonlySet<number>;
}

function bpeCore(bpe: ByteLevelBpe): TokenizerCore {
  const specialIds = new Set(bpe.added.filter((a) => a.special).map((a) => a.id));
  return {
    kind: 'bpe',
    encode: (text) => bpe.encode(text),
    decode: (ids, skip, cleanUp) => {
      const text = bpe.decode(ids, skip, specialIds);
      return cleanUp ? cleanUpTokenization(text) : text;
    },
    tokenToId: (t) => bpe.tokenToId(t),
    idToToken: (id) => bpe.tokenOf(id),
    specialIds,
  };
}

function libraryCore(tokenizerJson: object, tokenizerConfig: TokenizerConfigJson): TokenizerCore {
  let tok: Tokenizer;
  try {
    tok = new Tokenizer(tokenizerJson, tokenizerConfig);
  } catch (e) {
    throw new PlmError('ERR_CORRUPT_FILE', `cannot build the tokenizer from tokenizer.json: ${(e as Error).message}`, {
      cause: e,
    });
  }
  const specialIds = new Set<number>();
  for (const [tid, added] of tok.get_added_tokens_decoder()) if (added.special) specialIds.add(tid);
  return {
    kind: 'library',
    encode: (text) => tok.encode(text, { add_special_tokens: false }).ids,
    decode: (ids, skip, cleanUp) => tok.decode(ids, { skip_special_tokens: skip, clean_up_tokenization_spaces: cleanUp }),
    tokenToId: (t) => tok.token_to_id(t),
    idToToken: (id) => tok.id_to_token(id),
    specialIds,
  };
}

/** The core for a parsed tokenizer.json, on this thread. */
function coreFor(tokenizerJson: object, tokenizerConfig: TokenizerConfigJson): TokenizerCore {
  const tj = tokenizerJson as Record<string, unknown>;
  if (unsupportedReason(tj, tokenizerConfig) === undefined) {
    let tables: BpeTables | string;
    try {
      tables = buildTables(tj);
    } catch (e) {
      throw new PlmError('ERR_CORRUPT_FILE', `cannot build the tokenizer from tokenizer.json: ${(e as Error).message}`, { cause: e });
    }
    if (typeof tables !== 'string') return bpeCore(ByteLevelBpe.createSync(tables));
  }
  return libraryCore(tokenizerJson, tokenizerConfig);
}

/** Options of {@link PlmTokenizer.load}. */
export interface TokenizerLoadOptions {
  /** Rejects with ERR_CANCELLED. */
  signal?: AbortSignal;
  /** 0..1 over reading, parsing and building. */
  onProgress?: (fraction: number) => void;
}

/**
 * The worker of {@link PlmTokenizer.load}: reads and parses the JSON files and builds the flat tables
 * (the functions are lib/bpe.ts's own, inlined as source so that the worker runs from ts-jest too).
 */
function workerSource(): string {
  return `'use strict';
const { parentPort, workerData } = require('worker_threads');
const fs = require('fs');
const unsupportedReason = ${unsupportedReason.toString()};
const buildTables = ${buildTables.toString()};
function readJson(file, optional) {
  let text;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    if (optional && e.code === 'ENOENT') return {};
    throw Object.assign(new Error(e.code === 'ENOENT' ? file + ' does not exist' : 'cannot read ' + file + ': ' + e.message), { plmCode: e.code === 'ENOENT' ? 'ERR_FILE_NOT_FOUND' : 'ERR_FILE_READ' });
  }
  let v;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw Object.assign(new Error(file + ' is not valid JSON: ' + e.message), { plmCode: 'ERR_CORRUPT_FILE' });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw Object.assign(new Error(file + ' is not a JSON object'), { plmCode: 'ERR_CORRUPT_FILE' });
  return v;
}
try {
  const tj = readJson(workerData.tokenizerJson, false);
  parentPort.postMessage({ kind: 'progress', fraction: 0.4 });
  const tc = readJson(workerData.tokenizerConfig, true);
  const reason = unsupportedReason(tj, tc);
  const tables = reason === undefined ? buildTables(tj) : reason;
  if (typeof tables === 'string') {
    parentPort.postMessage({ kind: 'fallback', reason: tables, tj, tc });
  } else {
    // The vocabulary text travels as UTF-16 code units in a transferred buffer: copying a ~1M-character string
    // into the JS thread would take tens of milliseconds there.
    // (Only when it has no lone surrogate, which a UTF-16 decoder would replace; else as a string.)
    const text = tables.vocabBlob;
    let lone = false;
    const blob = new Uint16Array(text.length);
    for (let i = 0; i < blob.length; i++) {
      const c = text.charCodeAt(i);
      blob[i] = c;
      if (c >= 0xd800 && c < 0xe000) {
        const d = i + 1 < text.length ? text.charCodeAt(i + 1) : 0;
        if (c < 0xdc00 && d >= 0xdc00 && d < 0xe000) blob[++i] = d;
        else lone = true;
      }
    }
    if (!lone) tables.vocabBlob = '';
    parentPort.postMessage({ kind: 'tables', tables, blob: lone ? null : blob, tc }, [blob.buffer, tables.vocabOffsets.buffer, tables.vocabIds.buffer, tables.merges.buffer, tables.pairKeys.buffer, tables.pairRanks.buffer]);
  }
} catch (e) {
  parentPort.postMessage({ kind: 'error', code: e.plmCode || 'ERR_CORRUPT_FILE', message: e.message });
}
`;
}

type WorkerReply =
  | { kind: 'progress'; fraction: number }
  | { kind: 'tables'; tables: BpeTables; blob: Uint16Array | null; tc: TokenizerConfigJson }
  | { kind: 'fallback'; reason: string; tj: object; tc: TokenizerConfigJson }
  | { kind: 'error'; code: 'ERR_FILE_NOT_FOUND' | 'ERR_FILE_READ' | 'ERR_CORRUPT_FILE'; message: string };

function cancelled(): PlmError {
  return new PlmError('ERR_CANCELLED', 'loading the tokenizer was cancelled');
}

/** Runs the worker to its final reply. */
function runWorker(tokenizerJson: string, tokenizerConfig: string, options: TokenizerLoadOptions): Promise<Exclude<WorkerReply, { kind: 'progress' }>> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(workerSource(), { eval: true, workerData: { tokenizerJson, tokenizerConfig } });
    let settled = false;
    const onAbort = (): void => {
      finish();
      void worker.terminate();
      reject(cancelled());
    };
    const finish = (): void => {
      settled = true;
      options.signal?.removeEventListener('abort', onAbort);
    };
    options.signal?.addEventListener('abort', onAbort, { once: true });
    worker.on('message', (m: WorkerReply) => {
      if (settled) return;
      if (m.kind === 'progress') {
        options.onProgress?.(m.fraction * 0.6);
        return;
      }
      finish();
      void worker.terminate();
      resolve(m);
    });
    worker.on('error', (e) => {
      if (settled) return;
      finish();
      reject(new PlmError('ERR_INTERNAL', `the tokenizer worker failed: ${e.message}`, { cause: e }));
    });
    worker.on('exit', (code) => {
      if (settled) return;
      finish();
      reject(new PlmError('ERR_INTERNAL', `the tokenizer worker exited with code ${code}`));
    });
  });
}

/**
 * A loaded tokenizer. Encoding never adds special tokens on its own: the chat template writes the
 * BOS token literally, exactly like transformers' `apply_chat_template(tokenize=True)`.
 *
 * @example
 * ```ts
 * const tok = PlmTokenizer.fromDirectory('/models/Perception-LM-1B');
 * const ids = tok.encode('Hello world');      // [9906, 1917]
 * tok.decode(ids);                            // 'Hello world'
 * ```
 */
export class PlmTokenizer {
  /** The parsed tokenizer_config.json (empty object when the checkpoint has none). */
  readonly config: TokenizerConfigJson;
  /** The special-token ids found in the vocabulary. */
  readonly special: SpecialTokenIds;
  /** The BOS token string (`<|begin_of_text|>`), or undefined. */
  readonly bosToken: string | undefined;
  /** The EOS token string from tokenizer_config (`<|eot_id|>` for PLM), or undefined. */
  readonly eosToken: string | undefined;
  /** Default of {@link DecodeOptions.cleanUpTokenizationSpaces}. */
  readonly cleanUpTokenizationSpaces: boolean;
  private readonly tok: TokenizerCore;
  private readonly specialIdSet: ReadonlySet<number>;

  /**
   * Builds the tokenizer on the calling thread (~0.5 s for Llama 3's; {@link PlmTokenizer.load} does it off
   * the JS thread).
   *
   * @param tokenizerJson the parsed tokenizer.json.
   * @param tokenizerConfig the parsed tokenizer_config.json (may be `{}`).
   */
  constructor(tokenizerJson: object, tokenizerConfig: TokenizerConfigJson = {}, core?: TokenizerCore) {
    this.config = tokenizerConfig;
    this.tok = core ?? coreFor(tokenizerJson, tokenizerConfig);
    this.bosToken = tokenContent(tokenizerConfig.bos_token);
    this.eosToken = tokenContent(tokenizerConfig.eos_token);
    this.cleanUpTokenizationSpaces = tokenizerConfig.clean_up_tokenization_spaces ?? true;
    const id = (t: string | undefined): number | undefined => (t === undefined ? undefined : this.tok.tokenToId(t));
    this.special = {
      bos: id(this.bosToken ?? '<|begin_of_text|>'),
      eos: id(this.eosToken ?? '<|eot_id|>'),
      endOfText: id('<|end_of_text|>'),
      eot: id('<|eot_id|>'),
      image: id('<|image|>'),
      video: id('<|video|>'),
      pad: id(tokenContent(tokenizerConfig.pad_token)),
    };
    this.specialIdSet = this.tok.specialIds;
  }

  /** Which encoder runs: 'bpe' (lib/bpe.ts, byte-level BPE) or 'library' (@huggingface/tokenizers). */
  get implementation(): 'bpe' | 'library' {
    return this.tok.kind;
  }

  /**
   * Loads `tokenizer.json` and `tokenizer_config.json` from a checkpoint directory without blocking the JS
   * thread: a worker thread reads, parses and builds the tables; the lookup maps are then filled in slices
   * of a few milliseconds. (A tokenizer.json of another shape than byte-level BPE falls back to
   * `@huggingface/tokenizers`, built on this thread.)
   *
   * @param dir checkpoint directory.
   * @param options `signal` (ERR_CANCELLED), `onProgress(fraction)`.
   * @throws PlmError ERR_FILE_NOT_FOUND (no tokenizer.json), ERR_FILE_READ, ERR_CORRUPT_FILE, ERR_CANCELLED.
   * @example
   * ```ts
   * const tok = await PlmTokenizer.load('./models/plm-tiny', { onProgress: (f) => console.log(f) });
   * ```
   */
  static async load(dir: string, options: TokenizerLoadOptions = {}): Promise<PlmTokenizer> {
    if (options.signal?.aborted) throw cancelled();
    const reply = await runWorker(path.join(dir, 'tokenizer.json'), path.join(dir, 'tokenizer_config.json'), options);
    if (reply.kind === 'error') {
      const hint = reply.code === 'ERR_FILE_NOT_FOUND' ? ': the model directory must hold the Hugging Face tokenizer.json of the checkpoint' : '';
      throw new PlmError(reply.code, reply.message + hint);
    }
    if (reply.kind === 'fallback') {
      options.onProgress?.(1);
      return new PlmTokenizer(reply.tj, reply.tc);
    }
    let bpe: ByteLevelBpe;
    try {
      // UTF-16 code units back to the string (~2 ms for Llama 3's 0.8M units).
      if (reply.blob) reply.tables.vocabBlob = new TextDecoder('utf-16le').decode(reply.blob);
      await new Promise<void>((r) => setImmediate(r));
      bpe = await ByteLevelBpe.create(reply.tables, (f) => options.onProgress?.(0.6 + 0.4 * f), options.signal);
    } catch (e) {
      if (options.signal?.aborted) throw cancelled();
      throw new PlmError('ERR_CORRUPT_FILE', `cannot build the tokenizer from tokenizer.json: ${(e as Error).message}`, { cause: e });
    }
    return new PlmTokenizer({}, reply.tc, bpeCore(bpe));
  }

  /**
   * Loads `tokenizer.json` and (when present) `tokenizer_config.json` from a checkpoint directory.
   * Throws `PlmError('ERR_FILE_NOT_FOUND')` without tokenizer.json, `ERR_CORRUPT_FILE` on bad JSON.
   *
   * @example
   * ```ts
   * const tok = PlmTokenizer.fromDirectory('./models/plm-tiny-random');
   * ```
   */
  static fromDirectory(dir: string): PlmTokenizer {
    const tjPath = path.join(dir, 'tokenizer.json');
    if (!fs.existsSync(tjPath)) {
      throw new PlmError(
        'ERR_FILE_NOT_FOUND',
        `${tjPath} does not exist: the model directory must hold the Hugging Face tokenizer.json of the checkpoint`,
      );
    }
    const tj = readJsonFile(tjPath);
    if (typeof tj !== 'object' || tj === null) throw new PlmError('ERR_CORRUPT_FILE', `${tjPath} is not a JSON object`);
    const tcPath = path.join(dir, 'tokenizer_config.json');
    let tc: TokenizerConfigJson = {};
    if (fs.existsSync(tcPath)) {
      const parsed = readJsonFile(tcPath);
      if (typeof parsed !== 'object' || parsed === null) {
        throw new PlmError('ERR_CORRUPT_FILE', `${tcPath} is not a JSON object`);
      }
      tc = parsed as TokenizerConfigJson;
    }
    return new PlmTokenizer(tj, tc);
  }

  /**
   * Text to ids. No BOS is added (`add_special_tokens: false`); special tokens written in the text
   * (`<|image|>`, `<|eot_id|>`, ...) become their ids.
   *
   * @example
   * ```ts
   * tok.encode('<|begin_of_text|>Hi'); // [128000, 13347]
   * ```
   */
  encode(text: string): number[] {
    if (text.length === 0) return [];
    return this.tok.encode(text);
  }

  /**
   * Ids to text.
   *
   * @param ids token ids (any iterable of integers).
   * @param options `skipSpecialTokens` (default true), `cleanUpTokenizationSpaces` (default from
   *   tokenizer_config.json).
   * @example
   * ```ts
   * tok.decode([9906, 1917]); // 'Hello world'
   * ```
   */
  decode(ids: ArrayLike<number> | Iterable<number>, options: DecodeOptions = {}): string {
    const arr = Array.from(ids as Iterable<number>);
    if (arr.length === 0) return '';
    return this.tok.decode(arr, options.skipSpecialTokens ?? true, options.cleanUpTokenizationSpaces ?? this.cleanUpTokenizationSpaces);
  }

  /** The id of a token string (e.g. `'<|eot_id|>'`), or undefined. */
  tokenToId(token: string): number | undefined {
    return this.tok.tokenToId(token);
  }

  /** The token string of an id, or undefined. */
  idToToken(id: number): string | undefined {
    return this.tok.idToToken(id);
  }

  /** True when `id` is a special added token (BOS, EOT, image placeholder, reserved...). */
  isSpecial(id: number): boolean {
    return this.specialIdSet.has(id);
  }

  /**
   * A fresh incremental detokenizer with this tokenizer's decode settings.
   *
   * @example
   * ```ts
   * const stream = tok.createStreamDecoder();
   * for (const id of ids) process.stdout.write(stream.push(id));
   * process.stdout.write(stream.flush());
   * ```
   */
  createStreamDecoder(options: DecodeOptions = {}): StreamDecoder {
    return new StreamDecoder(this, options);
  }
}

/**
 * transformers' `clean_up_tokenization` (the same replacements `@huggingface/tokenizers` applies when
 * `clean_up_tokenization_spaces` is on).
 */
export function cleanUpTokenization(text: string): string {
  return text
    .replace(/ \./g, '.')
    .replace(/ \?/g, '?')
    .replace(/ !/g, '!')
    .replace(/ ,/g, ',')
    .replace(/ ' /g, "'")
    .replace(/ n't/g, "n't")
    .replace(/ 'm/g, "'m")
    .replace(/ 's/g, "'s")
    .replace(/ 've/g, "'ve")
    .replace(/ 're/g, "'re");
}

/** Clean-up patterns are at most 4 characters long: text further back than this can no longer change. */
const CLEANUP_HOLDBACK = 4;

/**
 * Incremental detokenizer (the prefix-offset scheme of vLLM / HF `TextStreamer`): each
 * {@link push} returns the new text that the latest token completed, or `''` while a UTF-8
 * character is still incomplete (an emoji split over several byte tokens never yields U+FFFD).
 * The concatenation of every delta plus {@link flush} equals {@link text}, and equals
 * `tokenizer.decode(allIds)`. Cost per token is O(window) without space clean-up; with
 * `cleanUpTokenizationSpaces` on, the clean-up runs over the whole text per token (O(n)) and the last
 * 4 characters are held back until they can no longer change (or until {@link flush}).
 */
export class StreamDecoder {
  private readonly ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;
  /** Decoded text without clean-up. */
  private raw = '';
  private emitted = '';
  private readonly rawOpts: DecodeOptions;
  private readonly cleanUp: boolean;

  constructor(
    private readonly tokenizer: PlmTokenizer,
    options: DecodeOptions = {},
  ) {
    this.cleanUp = options.cleanUpTokenizationSpaces ?? tokenizer.cleanUpTokenizationSpaces;
    this.rawOpts = { skipSpecialTokens: options.skipSpecialTokens ?? true, cleanUpTokenizationSpaces: false };
  }

  /** All ids pushed so far. */
  get tokenIds(): readonly number[] {
    return this.ids;
  }

  /** All text emitted so far (deltas concatenated). */
  get text(): string {
    return this.emitted;
  }

  /**
   * Adds one token and returns the text it completes ('' when nothing printable is complete yet).
   */
  push(id: number): string {
    this.ids.push(id);
    const prefixText = this.decodeRange(this.prefixOffset, this.readOffset);
    const newText = this.decodeRange(this.prefixOffset, this.ids.length);
    if (newText.length > prefixText.length && !newText.endsWith('\uFFFD')) {
      // Byte-level decoding of a window: the text of earlier tokens never changes.
      this.raw += newText.startsWith(prefixText)
        ? newText.slice(prefixText.length)
        : this.tokenizer.decode(this.ids, this.rawOpts).slice(this.raw.length);
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      return this.emit(false);
    }
    return '';
  }

  /** Adds several tokens; returns the concatenated deltas. */
  pushMany(ids: Iterable<number>): string {
    let out = '';
    for (const id of ids) out += this.push(id);
    return out;
  }

  /**
   * Emits whatever is still held back (an incomplete UTF-8 sequence at the very end, which then
   * appears as U+FFFD like in a plain decode, or the clean-up hold-back). Call once at the end.
   */
  flush(): string {
    if (this.readOffset < this.ids.length) {
      const prefixText = this.decodeRange(this.prefixOffset, this.readOffset);
      const newText = this.decodeRange(this.prefixOffset, this.ids.length);
      this.raw += newText.startsWith(prefixText)
        ? newText.slice(prefixText.length)
        : this.tokenizer.decode(this.ids, this.rawOpts).slice(this.raw.length);
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
    }
    return this.emit(true);
  }

  private emit(final: boolean): string {
    let target = this.cleanUp ? cleanUpTokenization(this.raw) : this.raw;
    if (this.cleanUp && !final) target = target.slice(0, Math.max(0, target.length - CLEANUP_HOLDBACK));
    if (target.length <= this.emitted.length || !target.startsWith(this.emitted)) return '';
    const delta = target.slice(this.emitted.length);
    this.emitted = target;
    return delta;
  }

  private decodeRange(start: number, end: number): string {
    if (end <= start) return '';
    return this.tokenizer.decode(this.ids.slice(start, end), this.rawOpts);
  }
}
