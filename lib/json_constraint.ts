/**
 * Structured output: token masks that keep a generation inside a JSON grammar (lib/json_grammar.ts).
 *
 * Per model, a {@link VocabularyIndex} (built once, cached) holds every usable token's bytes in a byte trie, and
 * precomputed token classes as bit sets. Per generation, a {@link JsonTokenConstraint} tracks the automaton's
 * configurations and answers, after each token, which tokens may come next:
 * - inside a string with no pending escape or UTF-8 byte, every token made only of plain string characters
 *   (no quote, backslash, control character; complete UTF-8) is allowed at once from a bit set (most of the
 *   vocabulary), and only the other tokens are walked: each keyed by what follows its plain prefix (a quote, a
 *   backslash, a partial UTF-8 sequence...), which a few thousand trie nodes cover;
 * - elsewhere the whole trie is walked with the automaton, which prunes a subtree at its first rejected byte, so
 *   restrictive states (keys, enums, numbers, punctuation) visit few nodes; where a walk enters a string and the
 *   subtree below holds only plain text, the subtree's tokens are marked as one range;
 * - masks are cached by configuration (an LRU per vocabulary): a schema's repeated states cost a lookup.
 * Special tokens are never allowed, except the stop tokens, which are allowed exactly when the document is
 * complete.
 */
import { PlmError } from './errors';
import {
  canEnd,
  compileJsonObject,
  compileJsonSchema,
  Frame,
  frameKey,
  initialFrame,
  isPlainString,
  K_STRING,
  ResponseGrammar,
  step,
} from './json_grammar';
import { TokenTrie, TokenTrieBuilder } from './token_trie';

/**
 * The `responseFormat` option: free text (default), any JSON object, or JSON that validates against a schema.
 * `name` and `strict` are accepted for OpenAI compatibility; the output always follows the schema.
 */
export type ResponseFormat =
  | { type: 'text' }
  | { type: 'json_object' }
  | { type: 'json_schema'; schema: object; name?: string; strict?: boolean };

/** What the vocabulary index needs from a tokenizer (lib/tokenizer.ts's PlmTokenizer has it). */
export interface VocabularySource {
  idToToken(id: number): string | undefined;
  tokenToId(token: string): number | undefined;
  isSpecial(id: number): boolean;
  decode(ids: number[], options?: { skipSpecialTokens?: boolean; cleanUpTokenizationSpaces?: boolean }): string;
}

function invalid(message: string): PlmError {
  return new PlmError('ERR_INVALID_ARGUMENT', message);
}

const grammarCache = new Map<string, ResponseGrammar>();
const GRAMMAR_CACHE_SIZE = 32;

/**
 * Validates a `responseFormat` option and compiles its grammar (cached by the schema's JSON text).
 * Returns null for free text (absent or `{ type: 'text' }`); throws `ERR_INVALID_ARGUMENT` naming the problem.
 *
 * @example
 * ```ts
 * const g = compileResponseFormat({ type: 'json_schema', schema: { type: 'object', properties: { a: { type: 'string' } } } });
 * ```
 */
export function compileResponseFormat(format: unknown): ResponseGrammar | null {
  if (format === undefined || format === null) return null;
  if (typeof format !== 'object' || Array.isArray(format)) {
    throw invalid(`responseFormat must be { type: 'text' | 'json_object' | 'json_schema', ... }, got ${JSON.stringify(format)}`);
  }
  const f = format as Record<string, unknown>;
  const allowed: Record<string, string[]> = { text: ['type'], json_object: ['type'], json_schema: ['type', 'schema', 'name', 'strict'] };
  const type = f.type;
  if (typeof type !== 'string' || !allowed[type]) {
    throw invalid(`responseFormat.type must be 'text', 'json_object' or 'json_schema', got ${JSON.stringify(type)}`);
  }
  for (const key of Object.keys(f)) {
    if (!allowed[type].includes(key)) {
      const hint = key === 'json_schema' ? ": pass OpenAI's json_schema.schema as responseFormat.schema" : '';
      throw invalid(`responseFormat.${key} is not an option of type '${type}'${hint}`);
    }
  }
  if (type === 'text') return null;
  if (f.name !== undefined && typeof f.name !== 'string') throw invalid('responseFormat.name must be a string');
  if (f.strict !== undefined && typeof f.strict !== 'boolean') throw invalid('responseFormat.strict must be a boolean');
  if (type === 'json_schema' && f.schema === undefined) {
    throw invalid("responseFormat.schema is required with type 'json_schema' (a JSON Schema object)");
  }
  const key = type === 'json_object' ? 'json_object' : 'schema:' + JSON.stringify(f.schema);
  let g = grammarCache.get(key);
  if (g) {
    grammarCache.delete(key);
    grammarCache.set(key, g);
    return g;
  }
  g = type === 'json_object' ? compileJsonObject() : compileJsonSchema(f.schema);
  grammarCache.set(key, g);
  if (grammarCache.size > GRAMMAR_CACHE_SIZE) grammarCache.delete(grammarCache.keys().next().value as string);
  return g;
}

/**
 * Checks a `responseFormat` option without running anything (a server can answer 400 before queueing the
 * request): throws `PlmError('ERR_INVALID_ARGUMENT')` naming the problem, e.g. an unsupported schema keyword.
 *
 * @example
 * ```ts
 * validateResponseFormat({ type: 'json_schema', schema: { type: 'string', pattern: '^a' } });
 * // throws: schema.pattern: the JSON Schema keyword 'pattern' is not supported by structured output: ...
 * ```
 */
export function validateResponseFormat(format: unknown): void {
  compileResponseFormat(format);
}

/**
 * GPT-2 / Llama 3 byte-level BPE writes each byte as one printable character: printable Latin-1 stands for
 * itself, the other bytes for U+0100 onwards in byte order. Returns [char code] -> byte (-1: not a byte).
 */
function byteLevelAlphabet(): Int16Array {
  const table = new Int16Array(512).fill(-1);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[printable ? b : 256 + extra++] = b;
  }
  return table;
}

/**
 * The length in bytes of the longest prefix of blob[s..e) made of complete plain string characters (no quote,
 * backslash or control character; valid UTF-8), and its length in characters (packed: bytes * 65536 + chars).
 */
function plainPrefix(blob: Uint8Array, s: number, e: number): number {
  let i = s;
  let chars = 0;
  while (i < e) {
    const x = blob[i];
    if (x < 0x20 || x === 0x22 || x === 0x5c) break;
    if (x < 0x80) {
      i++;
      chars++;
      continue;
    }
    let need: number;
    let lo = 0x80;
    let hi = 0xbf;
    if (x >= 0xc2 && x <= 0xdf) need = 1;
    else if (x >= 0xe0 && x <= 0xef) {
      need = 2;
      if (x === 0xe0) lo = 0xa0;
      if (x === 0xed) hi = 0x9f;
    } else if (x >= 0xf0 && x <= 0xf4) {
      need = 3;
      if (x === 0xf0) lo = 0x90;
      if (x === 0xf4) hi = 0x8f;
    } else break;
    if (i + need >= e) break;
    if (blob[i + 1] < lo || blob[i + 1] > hi) break;
    let ok = true;
    for (let k = 2; k <= need; k++) if (blob[i + k] < 0x80 || blob[i + k] > 0xbf) ok = false;
    if (!ok) break;
    i += need + 1;
    chars++;
  }
  return (i - s) * 65536 + chars;
}

const MASK_CACHE_SIZE = 256;

/** Build statistics of a {@link VocabularyIndex}. */
export interface VocabularyIndexStats {
  /** Tokens that can appear in a JSON document (special and unmappable ones excluded). */
  usableTokens: number;
  /** Tokens of plain string text (the bit set used inside strings). */
  plainStringTokens: number;
  trieNodes: number;
  restTrieNodes: number;
  buildMs: number;
  /** The longest stretch of the build between two yields (what one slice can block the event loop for at least). */
  longestStepMs: number;
}

/**
 * [trie.size] 1 where every token of a node's subtree continues, after the node, with plain string text only
 * (complete UTF-8 characters, no quote, backslash or control character): once a walk reaches such a node inside a
 * string, the whole subtree is allowed without stepping through it. Children have larger ids than their parent
 * (see TokenTrieBuilder), so one pass from the last node computes it bottom-up, along with "after n more
 * continuation bytes (80..BF), plain text".
 */
function* plainSubtreesSliced(trie: TokenTrie): Generator<void, Uint8Array> {
  const { size, first, next, byte, tokenStart, tokenEnd } = trie;
  const plain = new Uint8Array(size);
  const cont = [plain, new Uint8Array(size), new Uint8Array(size), new Uint8Array(size)]; // cont[n]: n bytes first
  const allChildren = (n: number, lo: number, hi: number, then: Uint8Array): number => {
    if (tokenEnd[n] > tokenStart[n] || first[n] === 0) return 0; // a token ends inside the character
    for (let c = first[n]; c > 0; c = next[c]) if (byte[c] < lo || byte[c] > hi || !then[c]) return 0;
    return 1;
  };
  for (let n = size - 1; n >= 0; n--) {
    if ((n & 8191) === 0) yield;
    for (let k = 1; k <= 3; k++) cont[k][n] = allChildren(n, 0x80, 0xbf, cont[k - 1]);
    let ok = 1;
    for (let c = first[n]; c > 0 && ok; c = next[c]) {
      const x = byte[c];
      if (x < 0x80) ok = x >= 0x20 && x !== 0x22 && x !== 0x5c && plain[c] ? 1 : 0;
      else if (x >= 0xc2 && x <= 0xdf) ok = cont[1][c];
      else if (x === 0xe0) ok = allChildren(c, 0xa0, 0xbf, cont[1]);
      else if (x === 0xed) ok = allChildren(c, 0x80, 0x9f, cont[1]);
      else if (x >= 0xe1 && x <= 0xef) ok = cont[2][c];
      else if (x === 0xf0) ok = allChildren(c, 0x90, 0xbf, cont[2]);
      else if (x === 0xf4) ok = allChildren(c, 0x80, 0x8f, cont[2]);
      else if (x >= 0xf1 && x <= 0xf3) ok = cont[3][c];
      else ok = 0;
    }
    plain[n] = ok;
  }
  return plain;
}

/** {@link plainSubtreesSliced} in one go. */
function plainSubtrees(trie: TokenTrie): Uint8Array {
  const steps = plainSubtreesSliced(trie);
  for (;;) {
    const r = steps.next();
    if (r.done) return r.value;
  }
}

/** What {@link buildIndexParts} computes. */
interface IndexParts {
  vocabSize: number;
  maskBytes: number;
  blob: Uint8Array;
  tokenStart: Int32Array;
  tokenEnd: Int32Array;
  trie: TokenTrie;
  triePlain: Uint8Array;
  plainString: Uint8Array;
  plainChars: Uint16Array;
  maxPlainChars: number;
  restTrie: TokenTrie;
  restTriePlain: Uint8Array;
  restIds: Int32Array;
  restStart: Int32Array;
  restPrefixChars: Uint8Array;
  usable: number;
}

/**
 * Computes a vocabulary index, yielding every few hundred tokens so that a driver can give the event loop a
 * turn ({@link VocabularyIndex.build}) or run it through ({@link VocabularyIndex.buildSync}).
 */
function* buildIndexParts(source: VocabularySource, vocabSize: number): Generator<void, IndexParts> {
  const maskBytes = Math.ceil(vocabSize / 64) * 8;
  const alphabet = byteLevelAlphabet();
  for (let code = 0; code < alphabet.length; code++) {
    if (alphabet[code] < 0) continue;
    if (tokenIdOf(source, String.fromCharCode(code), vocabSize) === undefined) {
      throw new PlmError('ERR_UNSUPPORTED_MODEL', 'structured output needs a byte-level BPE tokenizer (Llama 3 style): this vocabulary lacks the single-byte tokens');
    }
  }
  // Token strings -> bytes, in one blob.
  const texts: Array<string | undefined> = new Array<string | undefined>(vocabSize);
  let total = 0;
  for (let id = 0; id < vocabSize; id++) {
    if ((id & 1023) === 1023) yield;
    if (source.isSpecial(id)) continue;
    const tok = source.idToToken(id);
    if (tok !== undefined) {
      texts[id] = tok;
      total += tok.length;
    }
  }
  const blob = new Uint8Array(total);
  const tokenStart = new Int32Array(vocabSize + 1);
  const tokenEnd = new Int32Array(vocabSize);
  let w = 0;
  let usable = 0;
  for (let id = 0; id < vocabSize; id++) {
    if ((id & 1023) === 1023) yield;
    tokenStart[id] = w;
    const tok = texts[id];
    if (tok === undefined) {
      tokenEnd[id] = w;
      continue;
    }
    let ok = true;
    for (let i = 0; i < tok.length; i++) {
      const code = tok.charCodeAt(i);
      const b = code < alphabet.length ? alphabet[code] : -1;
      if (b < 0) {
        ok = false; // an added token written as text: never generated inside JSON
        break;
      }
      blob[w + i] = b;
    }
    if (ok && tok.length > 0) {
      w += tok.length;
      usable++;
    }
    tokenEnd[id] = w;
  }
  tokenStart[vocabSize] = w;
  yield* checkAgainstDecoder(source, blob, tokenStart, tokenEnd, vocabSize);
  // Classes: plain string text, and the rest keyed after its plain prefix; the trie of all usable tokens.
  const plainString = new Uint8Array(maskBytes);
  const plainChars = new Uint16Array(vocabSize);
  const restIds: number[] = [];
  const restStart: number[] = [];
  const restPrefixChars: number[] = [];
  let maxPlainChars = 0;
  const all = new TokenTrieBuilder(w, usable);
  for (let id = 0; id < vocabSize; id++) {
    if ((id & 255) === 255) yield;
    const s = tokenStart[id];
    const e = tokenEnd[id];
    if (e === s) continue;
    all.add(blob, s, e, id);
    const p = plainPrefix(blob, s, e);
    const bytes = p >>> 16;
    const chars = p & 0xffff;
    if (s + bytes === e) {
      plainString[id >> 3] |= 1 << (id & 7);
      plainChars[id] = chars;
      if (chars > maxPlainChars) maxPlainChars = chars;
    } else {
      restIds.push(id);
      restStart.push(s + bytes);
      restPrefixChars.push(Math.min(255, chars));
    }
  }
  const trie = yield* all.finishSliced();
  const triePlain = yield* plainSubtreesSliced(trie);
  let restBytes = 0;
  for (let i = 0; i < restIds.length; i++) restBytes += tokenEnd[restIds[i]] - restStart[i];
  const rest = new TokenTrieBuilder(restBytes, restIds.length);
  for (let i = 0; i < restIds.length; i++) rest.add(blob, restStart[i], tokenEnd[restIds[i]], restIds[i]);
  const restTrie = yield* rest.finishSliced();
  return {
    vocabSize, maskBytes, blob, tokenStart, tokenEnd, trie, triePlain, plainString, plainChars, maxPlainChars,
    restTrie,
    restTriePlain: plainSubtrees(restTrie),
    restIds: Int32Array.from(restIds),
    restStart: Int32Array.from(restStart),
    restPrefixChars: Uint8Array.from(restPrefixChars),
    usable,
  };
}

/** The byte mapping must agree with the tokenizer's own decoding: checked on a spread of tokens. */
function* checkAgainstDecoder(source: VocabularySource, blob: Uint8Array, start: Int32Array, end: Int32Array, vocabSize: number): Generator<void> {
  const decoder = new TextDecoder('utf-8', { fatal: true });
  const stride = Math.max(1, Math.floor(vocabSize / 499));
  for (let id = 0; id < vocabSize; id += stride) {
    if (end[id] === start[id]) continue;
    let text: string;
    try {
      text = decoder.decode(blob.subarray(start[id], end[id]));
    } catch {
      continue; // a partial UTF-8 sequence: the tokenizer would print U+FFFD
    }
    const decoded = source.decode([id], { skipSpecialTokens: false, cleanUpTokenizationSpaces: false });
    if (decoded !== text) {
      throw new PlmError(
        'ERR_UNSUPPORTED_MODEL',
        `structured output needs a byte-level BPE tokenizer (Llama 3 style): token ${id} decodes to ${JSON.stringify(decoded)}, not ${JSON.stringify(text)}`,
      );
    }
    if ((id & 15) === 0) yield;
  }
}

/** Longest stretch of index building between two turns of the event loop. */
const BUILD_SLICE_MS = 8;

/**
 * A model's vocabulary prepared for constrained decoding: token bytes, a trie over them and token classes.
 * Get it with {@link vocabularyIndexFor} (built once per tokenizer and vocabulary size, off the critical path of
 * the event loop: in slices of at most about 8 ms).
 */
export class VocabularyIndex {
  /** Bits in a mask (the model's vocabulary size). */
  readonly vocabSize: number;
  /** Bytes of a mask (a multiple of 8). */
  readonly maskBytes: number;
  /** Every usable token's bytes back to back: token t is blob[tokenStart[t] .. tokenEnd[t]) (empty: unusable). */
  readonly blob: Uint8Array;
  /** [vocabSize + 1] */
  readonly tokenStart: Int32Array;
  /** [vocabSize] equal to tokenStart for special tokens and ids without a token. */
  readonly tokenEnd: Int32Array;
  readonly trie: TokenTrie;
  /** [maskBytes] tokens made only of plain string characters (complete UTF-8, no '"', '\\', control characters). */
  readonly plainString: Uint8Array;
  /** [vocabSize] characters of each plain-string token. */
  readonly plainChars: Uint16Array;
  /** The most characters of a plain-string token. */
  readonly maxPlainChars: number;
  /** The other usable tokens, keyed by the bytes after their plain prefix. */
  readonly restTrie: TokenTrie;
  readonly stats: VocabularyIndexStats;
  /** Per trie, its nodes whose subtree is plain string text (see plainSubtrees). */
  private readonly plainBelow = new Map<TokenTrie, Uint8Array>();
  /** Trie nodes visited by mask computations so far (a machine-independent measure of their work). */
  walkedNodes = 0;
  /** Masks computed (cache misses) and served from the cache so far. */
  masksComputed = 0;
  masksCached = 0;
  private restByPrefixTrie: TokenTrie | null = null;
  /** The other tokens: ids, where their rest begins, and their plain prefix in characters. */
  private readonly restIds: Int32Array;
  private readonly restStart: Int32Array;
  private readonly restPrefixChars: Uint8Array;
  private readonly plainUpTo = new Map<number, Uint8Array>();
  private plainByChars: { offsets: Int32Array; ids: Int32Array } | null = null;
  private readonly masks = new Map<string, Uint8Array>();
  private readonly grammarIds = new WeakMap<ResponseGrammar, number>();
  private nextGrammarId = 0;
  private readonly scratch: Frame[][] = [];

  private constructor(parts: IndexParts, buildMs: number, longestStepMs: number) {
    this.vocabSize = parts.vocabSize;
    this.maskBytes = parts.maskBytes;
    this.blob = parts.blob;
    this.tokenStart = parts.tokenStart;
    this.tokenEnd = parts.tokenEnd;
    this.trie = parts.trie;
    this.plainString = parts.plainString;
    this.plainChars = parts.plainChars;
    this.maxPlainChars = parts.maxPlainChars;
    this.restTrie = parts.restTrie;
    this.plainBelow.set(parts.trie, parts.triePlain);
    this.plainBelow.set(parts.restTrie, parts.restTriePlain);
    this.restIds = parts.restIds;
    this.restStart = parts.restStart;
    this.restPrefixChars = parts.restPrefixChars;
    this.stats = {
      usableTokens: parts.usable,
      plainStringTokens: parts.usable - parts.restIds.length,
      trieNodes: parts.trie.size,
      restTrieNodes: parts.restTrie.size,
      buildMs,
      longestStepMs,
    };
  }

  /**
   * Builds the index on the calling thread in slices of about 8 ms, giving the event loop a turn in between.
   *
   * @param source the tokenizer.
   * @param vocabSize the model's vocabulary size (mask bits).
   * @example
   * ```ts
   * const index = await VocabularyIndex.build(model.tokenizer!, model.config.text.vocab_size);
   * ```
   */
  static async build(source: VocabularySource, vocabSize: number): Promise<VocabularyIndex> {
    const t0 = performance.now();
    const steps = buildIndexParts(source, vocabSize);
    let slice = performance.now();
    let longest = 0;
    for (;;) {
      const s0 = performance.now();
      const r = steps.next();
      const now = performance.now();
      longest = Math.max(longest, now - s0);
      if (r.done) return new VocabularyIndex(r.value, now - t0, longest);
      if (now - slice > BUILD_SLICE_MS) {
        await new Promise<void>((resolve) => setImmediate(resolve));
        slice = performance.now();
      }
    }
  }

  /** Builds the index in one go (benchmarks, tests). */
  static buildSync(source: VocabularySource, vocabSize: number): VocabularyIndex {
    const t0 = performance.now();
    const steps = buildIndexParts(source, vocabSize);
    let longest = 0;
    for (;;) {
      const s0 = performance.now();
      const r = steps.next();
      const now = performance.now();
      longest = Math.max(longest, now - s0);
      if (r.done) return new VocabularyIndex(r.value, now - t0, longest);
    }
  }

  /** The bytes of token `id` (empty for special tokens and ids without a token). */
  bytesOf(id: number): Uint8Array {
    return id >= 0 && id < this.vocabSize ? this.blob.subarray(this.tokenStart[id], this.tokenEnd[id]) : new Uint8Array(0);
  }

  /** Plain-string tokens of at most `chars` characters (from the tokens of each length: the smaller side). */
  private plainStringUpTo(chars: number): Uint8Array {
    if (chars >= this.maxPlainChars) return this.plainString;
    let bits = this.plainUpTo.get(chars);
    if (!bits) {
      if (!this.plainByChars) {
        // Plain-string token ids grouped by length in characters: byLength[offsets[n] .. offsets[n + 1]).
        const offsets = new Int32Array(this.maxPlainChars + 2);
        for (let id = 0; id < this.vocabSize; id++) if (this.plainString[id >> 3] & (1 << (id & 7))) offsets[this.plainChars[id] + 1]++;
        for (let n = 0; n <= this.maxPlainChars; n++) offsets[n + 1] += offsets[n];
        const fill = offsets.slice();
        const ids = new Int32Array(offsets[this.maxPlainChars + 1]);
        for (let id = 0; id < this.vocabSize; id++) if (this.plainString[id >> 3] & (1 << (id & 7))) ids[fill[this.plainChars[id]]++] = id;
        this.plainByChars = { offsets, ids };
      }
      const { offsets, ids } = this.plainByChars;
      const fits = offsets[chars + 1];
      if (fits <= ids.length - fits) {
        bits = new Uint8Array(this.maskBytes);
        for (let i = 0; i < fits; i++) bits[ids[i] >> 3] |= 1 << (ids[i] & 7);
      } else {
        bits = this.plainString.slice();
        for (let i = fits; i < ids.length; i++) bits[ids[i] >> 3] &= ~(1 << (ids[i] & 7));
      }
      this.plainUpTo.set(chars, bits);
    }
    return bits;
  }

  /** The non-plain tokens keyed by [plain prefix characters, rest bytes...] (for strings with length limits). */
  private restByPrefix(): TokenTrie {
    if (!this.restByPrefixTrie) {
      let bytes = 0;
      for (let i = 0; i < this.restIds.length; i++) bytes += this.tokenEnd[this.restIds[i]] - this.restStart[i] + 1;
      const b = new TokenTrieBuilder(bytes, this.restIds.length);
      for (let i = 0; i < this.restIds.length; i++) {
        b.add(this.blob, this.restStart[i], this.tokenEnd[this.restIds[i]], this.restIds[i], this.restPrefixChars[i]);
      }
      this.restByPrefixTrie = b.finish();
      this.plainBelow.set(this.restByPrefixTrie, plainSubtrees(this.restByPrefixTrie));
    }
    return this.restByPrefixTrie;
  }

  /** A small id per grammar object, for mask cache keys (a recompiled grammar gets a new one). */
  private grammarId(g: ResponseGrammar): number {
    let id = this.grammarIds.get(g);
    if (id === undefined) {
      id = this.nextGrammarId++;
      this.grammarIds.set(g, id);
    }
    return id;
  }

  /**
   * The tokens allowed after configuration f (stop tokens not included): cached, do not modify the result.
   */
  maskOf(g: ResponseGrammar, f: Frame): Uint8Array {
    const key = this.grammarId(g) + '|' + frameKey(f);
    const hit = this.masks.get(key);
    if (hit) {
      this.masks.delete(key);
      this.masks.set(key, hit);
      this.masksCached++;
      return hit;
    }
    this.masksComputed++;
    const bits = new Uint8Array(this.maskBytes);
    if (isPlainString(f)) this.stringMask(f, bits);
    else this.walk(this.trie, 0, [f], 0, bits);
    this.masks.set(key, bits);
    if (this.masks.size > MASK_CACHE_SIZE) this.masks.delete(this.masks.keys().next().value as string);
    return bits;
  }

  /** Inside a string: plain tokens from the bit set, the others by walking what follows their plain prefix. */
  private stringMask(f: Frame, bits: Uint8Array): void {
    const n = f.n;
    if (!n.tracksLength) {
      orInto(bits, this.plainString);
      this.walk(this.restTrie, 0, [f], 0, bits);
      return;
    }
    orInto(bits, this.plainStringUpTo(n.maxLength - f.b));
    const trie = this.restByPrefix();
    const states: Frame[] = [f];
    for (let c = trie.first[0]; c > 0; c = trie.next[c]) {
      const p = trie.byte[c];
      if (f.b + p > n.maxLength) continue;
      states[0] = p === 0 ? f : new Frame(K_STRING, n, 0, f.b + p, 0, null, f.p);
      this.walk(trie, c, states, 0, bits);
    }
  }

  /**
   * Marks the tokens below `node` whose bytes the configurations accept. Where a single configuration is inside
   * a string without length limits and the subtree below holds only plain text, the subtree's tokens are marked
   * as one range without stepping through it.
   */
  private walk(trie: TokenTrie, node: number, states: Frame[], depth: number, bits: Uint8Array): void {
    let out = this.scratch[depth];
    if (!out) out = this.scratch[depth] = [];
    const { first, next, byte, tokenStart, tokenEnd, subtreeEnd, ids } = trie;
    const plainBelow = this.plainBelow.get(trie) as Uint8Array;
    for (let c = first[node]; c > 0; c = next[c]) {
      this.walkedNodes++;
      out.length = 0;
      const x = byte[c];
      for (let i = 0; i < states.length; i++) step(states[i], x, out);
      if (out.length === 0) continue;
      const whole = plainBelow[c] === 1 && out.length === 1 && isPlainString(out[0]) && !out[0].n.tracksLength;
      const end = whole ? subtreeEnd[c] : tokenEnd[c];
      for (let t = tokenStart[c]; t < end; t++) {
        const id = ids[t];
        bits[id >> 3] |= 1 << (id & 7);
      }
      if (!whole && first[c] > 0) this.walk(trie, c, out, depth + 1, bits);
    }
    out.length = 0;
  }
}

function orInto(dst: Uint8Array, src: Uint8Array): void {
  const d = new Uint32Array(dst.buffer, dst.byteOffset, dst.byteLength >> 2);
  const s = new Uint32Array(src.buffer, src.byteOffset, src.byteLength >> 2);
  for (let i = 0; i < d.length; i++) d[i] |= s[i];
}

function tokenIdOf(source: VocabularySource, token: string, vocabSize: number): number | undefined {
  const id = source.tokenToId(token);
  return id !== undefined && id < vocabSize ? id : undefined;
}

const indexCache = new WeakMap<object, Map<number, Promise<VocabularyIndex>>>();

/**
 * The vocabulary index of a tokenizer for a model of `vocabSize` tokens: built on first use (in event-loop
 * slices, see {@link VocabularyIndex.build}) and cached with the tokenizer.
 *
 * @example
 * ```ts
 * const index = await vocabularyIndexFor(model.tokenizer!, model.config.text.vocab_size);
 * console.log(index.stats.buildMs);
 * ```
 */
export function vocabularyIndexFor(source: VocabularySource, vocabSize: number): Promise<VocabularyIndex> {
  let byVocab = indexCache.get(source);
  if (!byVocab) {
    byVocab = new Map();
    indexCache.set(source, byVocab);
  }
  let index = byVocab.get(vocabSize);
  if (!index) {
    index = VocabularyIndex.build(source, vocabSize);
    byVocab.set(vocabSize, index);
    index.catch(() => byVocab?.delete(vocabSize)); // a failed build is retried by the next request
  }
  return index;
}

/**
 * The constraint of one generation: `first()` / `next(token)` give the mask of the next token (bit t of byte
 * t >> 3). After the document is complete only the stop tokens are allowed.
 *
 * @example
 * ```ts
 * const c = new JsonTokenConstraint(index, compileResponseFormat({ type: 'json_object' })!, [128009]);
 * let mask = c.first();
 * ```
 */
export class JsonTokenConstraint {
  private configs: Frame[];
  private finished = false;
  private readonly stopSet: Set<number>;
  /** Stop ids that are also text tokens: masked out until the document is complete. */
  private readonly textStops: number[];

  constructor(
    private readonly index: VocabularyIndex,
    private readonly grammar: ResponseGrammar,
    stopIds: readonly number[],
  ) {
    const stops = [...new Set(stopIds)].filter((id) => Number.isInteger(id) && id >= 0 && id < index.vocabSize);
    if (stops.length === 0) {
      throw new PlmError('ERR_INVALID_ARGUMENT', 'structured output needs a stop token (generation_config eos_token_id, or stopTokenIds) to end the document');
    }
    this.stopSet = new Set(stops);
    this.textStops = stops.filter((id) => index.bytesOf(id).length > 0);
    this.configs = [initialFrame(grammar)];
  }

  /** True once the document is complete (only stop tokens may follow), or a stop token was taken. */
  get complete(): boolean {
    return this.finished || this.configs.some(canEnd);
  }

  /** The mask of the first token. */
  first(): Uint8Array {
    return this.mask();
  }

  /** Takes token `tokenId` and returns the mask of the next one (null after a stop token: no more steps). */
  next(tokenId: number): Uint8Array | null {
    if (this.finished) return null;
    if (this.stopSet.has(tokenId) && this.configs.some(canEnd)) {
      this.finished = true;
      return null;
    }
    const bytes = this.index.bytesOf(tokenId);
    let configs = this.configs;
    if (bytes.length > 0 && !this.stopSet.has(tokenId)) {
      for (let i = 0; i < bytes.length && configs.length > 0; i++) {
        const out: Frame[] = [];
        for (const f of configs) step(f, bytes[i], out);
        configs = out;
      }
    } else configs = [];
    if (configs.length === 0) throw new PlmError('ERR_INTERNAL', `the JSON constraint did not allow token ${tokenId} here, but it was generated`);
    this.configs = configs.length > 1 ? dedupe(configs) : configs;
    return this.mask();
  }

  private mask(): Uint8Array {
    const configs = this.configs;
    let bits = this.index.maskOf(this.grammar, configs[0]);
    if (configs.length > 1) {
      bits = bits.slice();
      for (let i = 1; i < configs.length; i++) orInto(bits, this.index.maskOf(this.grammar, configs[i]));
    }
    const end = configs.some(canEnd);
    if (end || this.textStops.length > 0) {
      if (configs.length === 1) bits = bits.slice();
      for (const id of end ? this.stopSet : this.textStops) {
        if (end) bits[id >> 3] |= 1 << (id & 7);
        else bits[id >> 3] &= ~(1 << (id & 7));
      }
    }
    return bits;
  }
}

function dedupe(configs: Frame[]): Frame[] {
  const seen = new Set<string>();
  const out: Frame[] = [];
  for (const f of configs) {
    const k = frameKey(f);
    if (!seen.has(k)) {
      seen.add(k);
      out.push(f);
    }
  }
  return out;
}

/**
 * The constraint of a compiled `responseFormat` for a model: checks that the model has a tokenizer and that no
 * stop string could cut the document, then waits for the vocabulary index.
 */
export async function jsonConstraintFor(
  tokenizer: VocabularySource | null,
  vocabSize: number,
  grammar: ResponseGrammar,
  stopIds: readonly number[],
  stopStrings: readonly string[],
): Promise<JsonTokenConstraint> {
  if (!tokenizer) throw invalid("responseFormat needs the checkpoint's tokenizer.json (it constrains the text token by token)");
  if (stopStrings.length > 0) {
    throw invalid('stop strings cannot be combined with responseFormat: they could cut the JSON document short (it ends by itself)');
  }
  return new JsonTokenConstraint(await vocabularyIndexFor(tokenizer, vocabSize), grammar, stopIds);
}
