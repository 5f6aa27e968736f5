/**
 * The checkpoint's tokenizer (Llama 3 byte-level BPE for PerceptionLM), loaded from
 * `tokenizer.json` + `tokenizer_config.json` with `@huggingface/tokenizers`, plus an incremental
 * detokenizer for streaming.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Tokenizer } from '@huggingface/tokenizers';
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
  private readonly tok: Tokenizer;
  private readonly specialIdSet: Set<number>;

  /**
   * @param tokenizerJson the parsed tokenizer.json.
   * @param tokenizerConfig the parsed tokenizer_config.json (may be `{}`).
   */
  constructor(tokenizerJson: object, tokenizerConfig: TokenizerConfigJson = {}) {
    this.config = tokenizerConfig;
    try {
      this.tok = new Tokenizer(tokenizerJson, tokenizerConfig);
    } catch (e) {
      throw new PlmError('ERR_CORRUPT_FILE', `cannot build the tokenizer from tokenizer.json: ${(e as Error).message}`, {
        cause: e,
      });
    }
    this.bosToken = tokenContent(tokenizerConfig.bos_token);
    this.eosToken = tokenContent(tokenizerConfig.eos_token);
    this.cleanUpTokenizationSpaces = tokenizerConfig.clean_up_tokenization_spaces ?? true;
    const id = (t: string | undefined): number | undefined => (t === undefined ? undefined : this.tok.token_to_id(t));
    this.special = {
      bos: id(this.bosToken ?? '<|begin_of_text|>'),
      eos: id(this.eosToken ?? '<|eot_id|>'),
      endOfText: id('<|end_of_text|>'),
      eot: id('<|eot_id|>'),
      image: id('<|image|>'),
      video: id('<|video|>'),
      pad: id(tokenContent(tokenizerConfig.pad_token)),
    };
    this.specialIdSet = new Set<number>();
    for (const [tid, added] of this.tok.get_added_tokens_decoder()) {
      if (added.special) this.specialIdSet.add(tid);
    }
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
    return this.tok.encode(text, { add_special_tokens: false }).ids;
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
    return this.tok.decode(arr, {
      skip_special_tokens: options.skipSpecialTokens ?? true,
      clean_up_tokenization_spaces: options.cleanUpTokenizationSpaces ?? this.cleanUpTokenizationSpaces,
    });
  }

  /** The id of a token string (e.g. `'<|eot_id|>'`), or undefined. */
  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  /** The token string of an id, or undefined. */
  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
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
