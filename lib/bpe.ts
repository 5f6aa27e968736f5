/**
 * Byte-level BPE encoding for the tokenizer.json shape of Llama 3 / PerceptionLM (a BPE model, no
 * normalizer, a Split + ByteLevel pre-tokenizer, a ByteLevel decoder), with a merge loop whose cost is
 * O(n log n) in the length of a word and small in constant: ids in typed arrays, the candidate merges in a
 * binary heap of `rank * 2^31 + position` numbers. `@huggingface/tokenizers`' BPE (one object per symbol,
 * JSON.stringify per pair lookup) took ~16 s for one 1 MB word (`'a'.repeat(1 << 20)`).
 *
 * The merge order is the one of Hugging Face tokenizers (lowest rank first, leftmost first among equal
 * ranks, `ignore_merges` as in its BPE model), so ids are identical: test/fixtures/tokenizer proves it
 * (reference/tokenizer_fixtures.py, normal and adversarial text).
 *
 * The tables come as flat arrays ({@link BpeTables}) that a worker thread can build from tokenizer.json
 * and transfer, so loading never blocks the JS thread for long (see tokenizer.ts).
 */
import { ByteLevelDecoder, SequencePreTokenizer } from '@huggingface/tokenizers';

/** A special / added token of tokenizer.json's `added_tokens`. */
export interface AddedTokenSpec {
  id: number;
  content: string;
  special: boolean;
}

/** Flat tables of a byte-level BPE tokenizer, built from tokenizer.json (transferable between threads). */
export interface BpeTables {
  /** Every vocabulary token concatenated; token i is `vocabBlob.slice(vocabOffsets[i], vocabOffsets[i + 1])`. */
  vocabBlob: string;
  /** [nVocab + 1] */
  vocabOffsets: Uint32Array;
  /** [nVocab] the id of each token in the blob. */
  vocabIds: Int32Array;
  /** [nMerges * 3] (left id, right id, merged id) in rank order. */
  merges: Int32Array;
  /** [cap * 2] open-addressing table of (left id, right id); -1 = empty slot. cap is a power of two. */
  pairKeys: Int32Array;
  /** [cap] the rank of the pair in the same slot (the last merge of a pair wins, as in Hugging Face's). */
  pairRanks: Int32Array;
  added: AddedTokenSpec[];
  preTokenizer: object;
  decoder: object;
  ignoreMerges: boolean;
}

/** Why a tokenizer.json cannot use {@link ByteLevelBpe} (undefined: it can). Mirrors what tables() accepts. */
export function unsupportedReason(tj: Record<string, unknown>, tc: Record<string, unknown>): string | undefined {
  const model = tj.model as Record<string, unknown> | undefined;
  if (!model || model.type !== 'BPE') return 'model is not BPE';
  if (model.byte_fallback || model.continuing_subword_prefix || model.end_of_word_suffix || model.dropout) {
    return 'BPE options (byte_fallback, prefixes, suffixes, dropout)';
  }
  if (tj.normalizer !== null && tj.normalizer !== undefined) return 'a normalizer';
  const pre = tj.pre_tokenizer as { type?: string; pretokenizers?: Array<{ type?: string }> } | null;
  const preTypes = pre ? (pre.type === 'Sequence' ? (pre.pretokenizers ?? []).map((p) => p.type) : [pre.type]) : [];
  if (!preTypes.includes('ByteLevel') || preTypes.some((t) => t !== 'ByteLevel' && t !== 'Split')) return 'pre-tokenizer';
  if ((tj.decoder as { type?: string } | null)?.type !== 'ByteLevel') return 'decoder';
  const added = (tj.added_tokens ?? []) as Array<Record<string, unknown>>;
  if (added.some((t) => t.lstrip || t.rstrip || t.single_word)) return 'added tokens with lstrip/rstrip/single_word';
  if (tc.remove_space || tc.do_lowercase_and_remove_accent) return 'tokenizer_config options';
  if (Array.isArray(tc.additional_special_tokens) && tc.additional_special_tokens.length > 0) return 'additional_special_tokens';
  return undefined;
}

/**
 * Flat tables from a parsed tokenizer.json (the work of a load: ~0.3 s for Llama 3's 128k tokens and 280k
 * merges). Returns a reason string when a merge names tokens missing from the vocabulary.
 */
export function buildTables(tj: Record<string, unknown>): BpeTables | string {
  const model = tj.model as { vocab: Record<string, number>; merges: Array<string | [string, string]>; ignore_merges?: boolean };
  const keys = Object.keys(model.vocab);
  const vocabIds = new Int32Array(keys.length);
  const vocabOffsets = new Uint32Array(keys.length + 1);
  const vocab = new Map<string, number>();
  let off = 0;
  for (let i = 0; i < keys.length; i++) {
    vocabIds[i] = model.vocab[keys[i]];
    vocab.set(keys[i], vocabIds[i]);
    vocabOffsets[i] = off;
    off += keys[i].length;
  }
  vocabOffsets[keys.length] = off;
  const merges = new Int32Array(model.merges.length * 3);
  for (let r = 0; r < model.merges.length; r++) {
    const m = model.merges[r];
    let a: string;
    let b: string;
    if (Array.isArray(m)) [a, b] = m;
    else {
      const sp = m.indexOf(' ');
      a = m.slice(0, sp);
      b = m.slice(sp + 1);
    }
    const ia = vocab.get(a);
    const ib = vocab.get(b);
    const im = vocab.get(a + b);
    if (ia === undefined || ib === undefined || im === undefined) return `merge ${r} names a token missing from the vocabulary`;
    merges[r * 3] = ia;
    merges[r * 3 + 1] = ib;
    merges[r * 3 + 2] = im;
  }
  // Pair -> rank: linear probing, hash as in ByteLevelBpe.rank (this function runs in a worker as source text,
  // so it cannot share a helper).
  let cap = 16;
  while (cap < model.merges.length * 2) cap *= 2;
  const mask = cap - 1;
  const pairKeys = new Int32Array(cap * 2).fill(-1);
  const pairRanks = new Int32Array(cap);
  for (let r = 0; r < model.merges.length; r++) {
    const a = merges[r * 3];
    const b = merges[r * 3 + 1];
    let h = (Math.imul(a, 0x9e3779b1) ^ Math.imul(b, 0x85ebca77)) & mask;
    while (pairKeys[2 * h] !== -1 && !(pairKeys[2 * h] === a && pairKeys[2 * h + 1] === b)) h = (h + 1) & mask;
    pairKeys[2 * h] = a;
    pairKeys[2 * h + 1] = b;
    pairRanks[h] = r;
  }
  const added = ((tj.added_tokens ?? []) as Array<{ id: number; content: string; special?: boolean }>).map((t) => ({
    id: t.id,
    content: t.content,
    special: Boolean(t.special),
  }));
  return {
    vocabBlob: keys.join(''),
    vocabOffsets,
    vocabIds,
    merges,
    pairKeys,
    pairRanks,
    added,
    preTokenizer: tj.pre_tokenizer as object,
    decoder: tj.decoder as object,
    ignoreMerges: Boolean(model.ignore_merges),
  };
}

/** Heap keys are rank * 2^31 + position (exact below 2^53 for ranks < 2^22). */
const POS = 2147483648;

/** Splits text on added tokens: the longest added token at the leftmost position, as the library does. */
class AddedSplitter {
  private readonly trie = new Map<string, unknown>();
  private static readonly END = '\u0000end';

  constructor(contents: string[]) {
    for (const w of contents) {
      let node = this.trie;
      for (let i = 0; i < w.length; i++) {
        // UTF-16 units, as split() walks the text.
        let nx = node.get(w[i]) as Map<string, unknown> | undefined;
        if (!nx) node.set(w[i], (nx = new Map()));
        node = nx;
      }
      node.set(AddedSplitter.END, w);
    }
  }

  split(text: string): string[] {
    const out: string[] = [];
    let start = 0;
    let i = 0;
    const n = text.length;
    while (i < n) {
      let node: Map<string, unknown> | undefined = this.trie;
      let match: string | null = null;
      for (let j = i; j < n && (node = node.get(text[j]) as Map<string, unknown> | undefined); j++) {
        const end = node.get(AddedSplitter.END) as string | undefined;
        if (end !== undefined) match = end;
      }
      if (match) {
        if (i > start) out.push(text.slice(start, i));
        out.push(match);
        i += match.length;
        start = i;
      } else i++;
    }
    if (start < n) out.push(text.slice(start));
    return out;
  }
}

/** Words longer than this (byte-level characters) run in chunks of CHUNK (see ByteLevelBpe.bpeChunked). */
const LONG_WORD = 512;
const CHUNK = 128;
/** Boundary positions tried (one character apart) before two chunks are joined. */
const SHIFTS = 6;

/** A run's merges in order: rank, and the first and last token after each (first0/last0: before any). */
interface Timeline {
  ranks: number[];
  firsts: number[];
  lasts: number[];
  first0: number;
  last0: number;
}

/** The BPE of word[start, end) with its timeline. */
interface ChunkRun extends Timeline {
  ids: number[];
  start: number;
  end: number;
}

/** GPT-2's byte -> printable character table (the ByteLevel pre-tokenizer's alphabet). */
const BYTE_CHARS: readonly string[] = (() => {
  const keep = (b: number): boolean => (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
  const out: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) out.push(String.fromCharCode(keep(b) ? b : 256 + extra++));
  return out;
})();

/** UTF-8 bytes of `s` (lone surrogates as U+FFFD, like TextEncoder) written in the byte-level alphabet. */
function byteLevel(s: string): string {
  const B = BYTE_CHARS;
  let out = '';
  for (let i = 0; i < s.length; i++) {
    let c = s.charCodeAt(i);
    if (c < 0x80) {
      out += B[c];
    } else if (c < 0x800) {
      out += B[0xc0 | (c >> 6)] + B[0x80 | (c & 63)];
    } else {
      if (c >= 0xd800 && c < 0xe000) {
        const d = i + 1 < s.length ? s.charCodeAt(i + 1) : 0;
        if (c < 0xdc00 && d >= 0xdc00 && d < 0xe000) {
          const cp = 0x10000 + ((c - 0xd800) << 10) + (d - 0xdc00);
          out += B[0xf0 | (cp >> 18)] + B[0x80 | ((cp >> 12) & 63)] + B[0x80 | ((cp >> 6) & 63)] + B[0x80 | (cp & 63)];
          i++;
          continue;
        }
        c = 0xfffd;
      }
      out += B[0xe0 | (c >> 12)] + B[0x80 | ((c >> 6) & 63)] + B[0x80 | (c & 63)];
    }
  }
  return out;
}

/** Which of the 16 vocabulary maps holds `token` (non-empty). */
function shardOf(token: string): number {
  return (token.charCodeAt(token.length - 1) + token.length) & 15;
}

type PreTokenizerLike = { pre_tokenize(text: string | string[], options?: object): string[] };
type DecoderLike = ((tokens: string[]) => string) & { added_tokens?: unknown };

/**
 * The compiled regex of a `Sequence[Split(Regex, Isolated, invert false), ByteLevel(no prefix space, no regex)]`
 * pre-tokenizer (Llama 3's), taken from the library's own Split so the pattern translation is the same; null
 * for any other shape.
 */
function fastSplitRegex(config: object, built: PreTokenizerLike): RegExp | null {
  const c = config as { type?: string; pretokenizers?: Array<Record<string, unknown>> };
  if (c.type !== 'Sequence' || c.pretokenizers?.length !== 2) return null;
  const [split, bl] = c.pretokenizers;
  const pattern = split.pattern as { Regex?: unknown } | undefined;
  if (split.type !== 'Split' || split.invert !== false || String(split.behavior).toLowerCase() !== 'isolated' || typeof pattern?.Regex !== 'string') {
    return null;
  }
  if (bl.type !== 'ByteLevel' || bl.add_prefix_space || bl.use_regex !== false) return null;
  const re = (built as unknown as { tokenizers?: Array<{ pattern?: unknown }> }).tokenizers?.[0]?.pattern;
  return re instanceof RegExp && re.global ? re : null;
}

/**
 * A byte-level BPE tokenizer over {@link BpeTables}.
 *
 * @example
 * ```ts
 * const bpe = await ByteLevelBpe.create(tables);
 * bpe.encode('Hello world'); // [9906, 1917]
 * ```
 */
export class ByteLevelBpe {
  /**
   * token -> id, in 16 maps chosen by {@link shardOf}: a JS Map rehashes all its entries when it grows, and one
   * map of 128k entries would do that in a single slice of tens of milliseconds.
   */
  private readonly vocabShards: Array<Map<string, number>> = Array.from({ length: 16 }, () => new Map());
  private idToToken: string[] = [];
  private readonly pairKeys: Int32Array;
  private readonly pairRanks: Int32Array;
  private readonly pairMask: number;
  private readonly merges: Int32Array;
  /** byte-level character code -> id (-1: not in the vocabulary) */
  private readonly charIds = new Int32Array(65536).fill(-1);
  // Scratch of the merge loop, grown as needed.
  private ids = new Int32Array(256);
  private next = new Int32Array(256);
  private prev = new Int32Array(256);
  private heap = new Float64Array(512);
  private hsize = 0;
  private readonly addedByContent = new Map<string, AddedTokenSpec>();
  private splitter!: AddedSplitter;
  private preTokenizer!: PreTokenizerLike;
  private decoder!: DecoderLike;
  private readonly cache = new Map<string, number[]>();
  private readonly chunkCache = new Map<string, ChunkRun>();
  /** Llama 3's pre-tokenizer shape (Split Isolated by a regex, then ByteLevel without regex): its regex. */
  private splitRegex: RegExp | null = null;
  readonly added: AddedTokenSpec[];
  private readonly ignoreMerges: boolean;

  private constructor(private readonly t: BpeTables) {
    this.added = t.added;
    this.ignoreMerges = t.ignoreMerges;
    this.pairKeys = t.pairKeys;
    this.pairRanks = t.pairRanks;
    this.pairMask = t.pairRanks.length - 1;
    this.merges = t.merges;
  }

  /** The rank of merging (a, b), or -1. */
  private rank(a: number, b: number): number {
    const keys = this.pairKeys;
    let h = (Math.imul(a, 0x9e3779b1) ^ Math.imul(b, 0x85ebca77)) & this.pairMask;
    for (;;) {
      const ka = keys[2 * h];
      if (ka === -1) return -1;
      if (ka === a && keys[2 * h + 1] === b) return this.pairRanks[h];
      h = (h + 1) & this.pairMask;
    }
  }

  /** Builds the lookup maps synchronously (~0.1-0.2 s for Llama 3). */
  static createSync(t: BpeTables): ByteLevelBpe {
    const b = new ByteLevelBpe(t);
    for (const step of b.steps()) step();
    return b;
  }

  /**
   * Builds the lookup maps in slices of a few milliseconds, yielding to the event loop between them.
   * `onProgress` gets 0..1.
   */
  static async create(t: BpeTables, onProgress?: (fraction: number) => void, signal?: AbortSignal): Promise<ByteLevelBpe> {
    const b = new ByteLevelBpe(t);
    const steps = b.steps();
    for (let i = 0; i < steps.length; i++) {
      if (signal?.aborted) throw new Error('aborted');
      steps[i]();
      onProgress?.((i + 1) / steps.length);
      await new Promise<void>((r) => setImmediate(r));
    }
    return b;
  }

  /** The build as a list of short slices. */
  private steps(): Array<() => void> {
    const t = this.t;
    const steps: Array<() => void> = [];
    const nv = t.vocabIds.length;
    let maxId = -1;
    for (let i = 0; i < nv; i++) maxId = Math.max(maxId, t.vocabIds[i]);
    for (const a of t.added) maxId = Math.max(maxId, a.id);
    this.idToToken = new Array<string>(maxId + 1);
    const VS = 4096;
    for (let s = 0; s < nv; s += VS) {
      steps.push(() => {
        for (let i = s; i < Math.min(nv, s + VS); i++) {
          const tok = t.vocabBlob.slice(t.vocabOffsets[i], t.vocabOffsets[i + 1]);
          const id = t.vocabIds[i];
          this.vocabShards[shardOf(tok)].set(tok, id);
          this.idToToken[id] = tok;
          if (tok.length === 1) this.charIds[tok.charCodeAt(0)] = id;
        }
      });
    }
    // The rest in separate slices too: under load each one alone can take tens of milliseconds.
    steps.push(() => {
      for (const a of t.added) {
        this.addedByContent.set(a.content, a);
        this.idToToken[a.id] = a.content;
      }
      this.splitter = new AddedSplitter(t.added.map((a) => a.content));
    });
    steps.push(() => {
      const pre = t.preTokenizer as { type?: string };
      const seq = pre.type === 'Sequence' ? pre : { pretokenizers: [pre] };
      this.preTokenizer = new SequencePreTokenizer(seq as never) as unknown as PreTokenizerLike;
      this.splitRegex = fastSplitRegex(t.preTokenizer, this.preTokenizer);
    });
    steps.push(() => {
      this.decoder = new ByteLevelDecoder(t.decoder as never) as unknown as DecoderLike;
      this.decoder.added_tokens = t.added.map((a) => ({ content: a.content }));
    });
    return steps;
  }

  /** Token ids of `text` (no special tokens added; added tokens written in the text become their ids). */
  encode(text: string): number[] {
    const out: number[] = [];
    let sectionIndex = 0;
    for (const section of this.splitter.split(text)) {
      const added = this.addedByContent.get(section);
      if (added) {
        out.push(added.id);
      } else if (section.length > 0 && this.splitRegex) {
        // The library's regex_split + ByteLevel, without the intermediate arrays.
        let prev = 0;
        for (const m of section.matchAll(this.splitRegex)) {
          const idx = m.index;
          if (prev < idx) this.encodeWord(byteLevel(section.slice(prev, idx)), out);
          if (m[0].length > 0) this.encodeWord(byteLevel(m[0]), out);
          prev = idx + m[0].length;
        }
        if (prev < section.length) this.encodeWord(byteLevel(section.slice(prev)), out);
      } else if (section.length > 0) {
        for (const word of this.preTokenizer.pre_tokenize(section, { section_index: sectionIndex })) this.encodeWord(word, out);
      }
      sectionIndex++;
    }
    return out;
  }

  private encodeWord(word: string, out: number[]): void {
    if (word.length === 0) return;
    if (word.length === 1) {
      // One byte-level character: its id, the only possible result.
      const id = this.charIds[word.charCodeAt(0)];
      if (id >= 0) out.push(id);
      return;
    }
    if (this.ignoreMerges) {
      const id = this.vocabShards[shardOf(word)].get(word);
      if (id !== undefined) {
        out.push(id);
        return;
      }
    }
    const cacheable = word.length < 256;
    if (cacheable) {
      const hit = this.cache.get(word);
      if (hit) {
        for (const id of hit) out.push(id);
        return;
      }
    }
    const ids = word.length > LONG_WORD ? this.bpeChunked(word) : this.bpe(word, 0, word.length, null);
    if (cacheable) {
      if (this.cache.size >= 10000) this.cache.clear();
      this.cache.set(word, ids);
    }
    for (const id of ids) out.push(id);
  }

  /**
   * A long word in chunks, exactly. Hugging Face's BPE over the whole word equals the concatenation of its
   * chunks' BPE when no merge ever crosses a chunk boundary; {@link crosses} decides that for two adjacent chunks
   * from their own runs (the merges of the left and right chunk interleave in rank order, and the pair across
   * the boundary, last token of the left and first of the right at each moment, would have to become the
   * smallest rank). A boundary that could be crossed is dropped and the two chunks run as one. Chunks repeat in
   * adversarial text (one character repeated) and are cached, so a 1 MiB word costs about as much as text.
   * When moving or dropping boundaries has re-run more than the word's length, the rest runs as one chunk (the
   * plain O(n log n) loop), so the chunking costs at most about twice that loop.
   */
  private bpeChunked(word: string): number[] {
    const n = word.length;
    const stack: ChunkRun[] = [];
    let rerun = 0;
    let s = 0;
    while (s < n) {
      if (rerun > n) {
        // Boundaries keep being crossed: the rest as one run, checked against the chunks before it like any other.
        let cur = this.chunkRun(word, s, n);
        while (stack.length > 0 && this.crosses(stack[stack.length - 1], cur)) {
          cur = this.chunkRun(word, stack.pop()!.start, n);
        }
        stack.push(cur);
        break;
      }
      const e = n - s < CHUNK + CHUNK / 2 ? n : s + CHUNK;
      let cur = this.chunkRun(word, s, e);
      if (stack.length > 0 && this.crosses(stack[stack.length - 1], cur)) {
        // Move the boundary a few characters right: the top chunk grows, so its own left boundary is checked again.
        const top = stack[stack.length - 1];
        const below = stack.length > 1 ? stack[stack.length - 2] : null;
        for (let d = 1; d <= SHIFTS && s + d < e - 1; d++) {
          const left = this.chunkRun(word, top.start, s + d);
          const right = this.chunkRun(word, s + d, e);
          rerun += e - top.start;
          if ((below === null || !this.crosses(below, left)) && !this.crosses(left, right)) {
            stack[stack.length - 1] = left;
            cur = right;
            break;
          }
        }
      }
      while (stack.length > 0 && this.crosses(stack[stack.length - 1], cur)) {
        const left = stack.pop()!;
        rerun += cur.end - left.start;
        cur = this.chunkRun(word, left.start, cur.end);
      }
      stack.push(cur);
      s = e;
    }
    const out: number[] = [];
    for (const c of stack) for (const id of c.ids) out.push(id);
    return out;
  }

  /** The BPE of word[s, e) with its timeline; identical chunks (repeated text) come from a cache. */
  private chunkRun(word: string, s: number, e: number): ChunkRun {
    const key = e - s <= CHUNK * 2 ? word.slice(s, e) : null;
    const hit = key !== null ? this.chunkCache.get(key) : undefined;
    if (hit) return { ...hit, start: s, end: e };
    const tl: Timeline = { ranks: [], firsts: [], lasts: [], first0: -1, last0: -1 };
    const ids = this.bpe(word, s, e, tl);
    const run: ChunkRun = { ids, start: s, end: e, ...tl };
    if (key !== null) {
      if (this.chunkCache.size >= 4096) this.chunkCache.clear();
      this.chunkCache.set(key, run);
    }
    return run;
  }

  /**
   * Whether a merge could cross the boundary between adjacent chunks L and R: replays both runs in the
   * order the whole-word run would interleave them (smaller rank first, L before R on a tie: L's pairs lie to
   * the left) and checks at each state whether the pair across the boundary has a rank that would be taken
   * first (before L's next merge, and before or with R's next, since it lies left of R's pairs).
   */
  private crosses(L: ChunkRun, R: ChunkRun): boolean {
    let i = 0;
    let j = 0;
    const nl = L.ranks.length;
    const nr = R.ranks.length;
    for (;;) {
      const x = i === 0 ? L.last0 : L.lasts[i - 1];
      const y = j === 0 ? R.first0 : R.firsts[j - 1];
      const rs = x < 0 || y < 0 ? -1 : this.rank(x, y);
      const rl = i < nl ? L.ranks[i] : Infinity;
      const rr = j < nr ? R.ranks[j] : Infinity;
      if (rs >= 0 && rs < rl && rs <= rr) return true;
      if (i >= nl && j >= nr) return false;
      if (rl <= rr) i++;
      else j++;
    }
  }

  /** The merge loop over word[s, e) (byte-level characters, one UTF-16 unit each); `tl` records its timeline. */
  private bpe(word: string, s: number, e: number, tl: Timeline | null): number[] {
    const n = e - s;
    if (n <= 0) return [];
    if (this.ids.length < n) {
      const cap = Math.max(n, this.ids.length * 2);
      this.ids = new Int32Array(cap);
      this.next = new Int32Array(cap);
      this.prev = new Int32Array(cap);
    }
    const ids = this.ids;
    const next = this.next;
    const prev = this.prev;
    for (let i = 0; i < n; i++) {
      ids[i] = this.charIds[word.charCodeAt(s + i)];
      next[i] = i + 1 < n ? i + 1 : -1;
      prev[i] = i - 1;
    }
    let tail = n - 1;
    if (tl) {
      tl.first0 = ids[0];
      tl.last0 = ids[tail];
    }
    this.hsize = 0;
    for (let i = 0; i + 1 < n; i++) this.pushPair(i);
    while (this.hsize > 0) {
      const key = this.popMin();
      const r = Math.floor(key / POS);
      const p = key - r * POS;
      const q = next[p];
      // Stale entries: the left symbol merged away, or the pair at p is no longer this merge.
      if (ids[p] < 0 || q < 0 || ids[q] < 0 || this.rank(ids[p], ids[q]) !== r) continue;
      ids[p] = this.merges[r * 3 + 2];
      ids[q] = -2;
      const after = next[q];
      next[p] = after;
      if (after >= 0) prev[after] = p;
      else tail = p;
      if (tl) {
        tl.ranks.push(r);
        tl.firsts.push(ids[0]);
        tl.lasts.push(ids[tail]);
      }
      if (prev[p] >= 0) this.pushPair(prev[p]);
      this.pushPair(p);
    }
    const out: number[] = [];
    for (let i = 0; i >= 0; i = next[i]) if (ids[i] >= 0) out.push(ids[i]);
    return out;
  }

  /** Queues the merge of the pair starting at position p, if there is one (binary min-heap of rank * 2^31 + p). */
  private pushPair(p: number): void {
    const ids = this.ids;
    const q = this.next[p];
    if (q < 0 || ids[p] < 0 || ids[q] < 0) return;
    const r = this.rank(ids[p], ids[q]);
    if (r < 0) return;
    let heap = this.heap;
    if (this.hsize === heap.length) {
      const h = new Float64Array(heap.length * 2);
      h.set(heap);
      heap = this.heap = h;
    }
    let i = this.hsize++;
    const key = r * POS + p;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (heap[parent] <= key) break;
      heap[i] = heap[parent];
      i = parent;
    }
    heap[i] = key;
  }

  private popMin(): number {
    const heap = this.heap;
    const top = heap[0];
    const size = --this.hsize;
    const last = heap[size];
    let i = 0;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= size) break;
      const c = l + 1 < size && heap[l + 1] < heap[l] ? l + 1 : l;
      if (heap[c] >= last) break;
      heap[i] = heap[c];
      i = c;
    }
    heap[i] = last;
    return top;
  }

  /** Decodes like `@huggingface/tokenizers`' `Tokenizer.decode` (ByteLevel decoder, added tokens verbatim). */
  decode(ids: number[], skipSpecial: boolean, specialIds: ReadonlySet<number>): string {
    const tokens: string[] = [];
    for (const id of ids) {
      if (skipSpecial && specialIds.has(id)) continue;
      const t = this.idToToken[id];
      if (t !== undefined) tokens.push(t);
    }
    return tokens.length === 0 ? '' : this.decoder(tokens);
  }

  tokenToId(token: string): number | undefined {
    return this.addedByContent.get(token)?.id ?? (token.length > 0 ? this.vocabShards[shardOf(token)].get(token) : undefined);
  }

  tokenOf(id: number): string | undefined {
    return this.idToToken[id];
  }
}
