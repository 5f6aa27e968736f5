/**
 * A byte trie over token strings, in flat typed arrays (first-child / next-sibling), for walking a vocabulary
 * against an automaton: a subtree is skipped as soon as the automaton rejects its prefix.
 */
export class TokenTrie {
  /** Nodes, root 0 included. */
  readonly size: number;
  /** [size] first child of each node, 0 when none (the root is nobody's child). */
  readonly first: Int32Array;
  /** [size] next sibling, 0 when none (siblings in no particular order). */
  readonly next: Int32Array;
  /** [size] the byte on the edge into each node (root: 0). */
  readonly byte: Uint8Array;
  /** [size] tokens whose key ends at a node: ids[tokenStart[node] .. tokenEnd[node]). */
  readonly tokenStart: Int32Array;
  readonly tokenEnd: Int32Array;
  /** [size] the tokens of a node's whole subtree (itself included): ids[tokenStart[node] .. subtreeEnd[node]). */
  readonly subtreeEnd: Int32Array;
  /** [keys] token ids in depth-first order of their nodes. */
  readonly ids: Int32Array;

  private constructor(
    size: number,
    first: Int32Array,
    next: Int32Array,
    byte: Uint8Array,
    tokenStart: Int32Array,
    tokenEnd: Int32Array,
    subtreeEnd: Int32Array,
    ids: Int32Array,
  ) {
    this.size = size;
    this.first = first;
    this.next = next;
    this.byte = byte;
    this.tokenStart = tokenStart;
    this.tokenEnd = tokenEnd;
    this.subtreeEnd = subtreeEnd;
    this.ids = ids;
  }

  /** @internal use {@link TokenTrieBuilder}. */
  static fromArrays(
    size: number,
    first: Int32Array,
    next: Int32Array,
    byte: Uint8Array,
    tokenStart: Int32Array,
    tokenEnd: Int32Array,
    subtreeEnd: Int32Array,
    ids: Int32Array,
  ): TokenTrie {
    return new TokenTrie(size, first, next, byte, tokenStart, tokenEnd, subtreeEnd, ids);
  }
}

/**
 * Builds a {@link TokenTrie} one key at a time (so that a caller can yield to the event loop between slices).
 * Children are found through one open-addressing hash table on (node, byte): no sorting, O(total bytes).
 * Siblings end up in no particular order; equal keys share a node.
 *
 * @example
 * ```ts
 * const blob = Uint8Array.of(0x61, 0x61, 0x62); // keys 'a' and 'ab'
 * const b = new TokenTrieBuilder(3, 2);
 * b.add(blob, 0, 1, 7);
 * b.add(blob, 1, 3, 9);
 * const trie = b.finish();
 * ```
 */
export class TokenTrieBuilder {
  private readonly first: Int32Array;
  private readonly next: Int32Array;
  private readonly byte: Uint8Array;
  private readonly endNode: Int32Array;
  private readonly keyIds: Int32Array;
  private readonly slotKey: Int32Array;
  private readonly slotNode: Int32Array;
  private readonly mask: number;
  private readonly shift: number;
  private size = 1;
  private keys = 0;

  /**
   * @param maxBytes the most bytes all keys will have together (lead bytes included).
   * @param maxKeys the most keys.
   */
  constructor(maxBytes: number, maxKeys: number) {
    // Zero means "none" everywhere, so that the arrays need no filling (fresh memory is zero).
    const cap = maxBytes + 1;
    this.first = new Int32Array(cap);
    this.next = new Int32Array(cap);
    this.byte = new Uint8Array(cap);
    this.endNode = new Int32Array(maxKeys);
    this.keyIds = new Int32Array(maxKeys);
    let bits = 10;
    while (1 << bits < 2 * cap) bits++;
    this.mask = (1 << bits) - 1;
    this.shift = 32 - bits;
    this.slotKey = new Int32Array(this.mask + 1); // node * 256 + byte + 1; 0: empty slot
    this.slotNode = new Int32Array(this.mask + 1);
  }

  /** Adds the key `lead` (when >= 0) + blob[s..e) for token `id` (an empty key is left out). */
  add(blob: Uint8Array, s: number, e: number, id: number, lead = -1): void {
    if (e <= s && lead < 0) return;
    const { first, next, byte, slotKey, slotNode, mask, shift } = this;
    let node = 0;
    for (let d = lead >= 0 ? s - 1 : s; d < e; d++) {
      const b = d < s ? lead : blob[d];
      const hk = node * 256 + b + 1;
      let h = Math.imul(hk, 0x9e3779b1) >>> shift; // Fibonacci hashing: the high bits
      for (;;) {
        const sk = slotKey[h];
        if (sk === hk) {
          node = slotNode[h];
          break;
        }
        if (sk === 0) {
          const child = this.size++;
          slotKey[h] = hk;
          slotNode[h] = child;
          byte[child] = b;
          next[child] = first[node];
          first[node] = child;
          node = child;
          break;
        }
        h = (h + 1) & mask;
      }
    }
    this.endNode[this.keys] = node;
    this.keyIds[this.keys++] = id;
  }

  /** The trie of every key added. */
  finish(): TokenTrie {
    const steps = this.finishSliced();
    for (;;) {
      const r = steps.next();
      if (r.done) return r.value;
    }
  }

  /** {@link finish} in steps (yields every few thousand nodes). */
  *finishSliced(): Generator<void, TokenTrie> {
    const size = this.size;
    const { first, next } = this;
    // Tokens per node (counting sort on the end node), then laid out in depth-first order so that a subtree's
    // tokens are one range.
    const ownStart = new Int32Array(size + 1);
    for (let k = 0; k < this.keys; k++) ownStart[this.endNode[k] + 1]++;
    for (let n = 0; n < size; n++) ownStart[n + 1] += ownStart[n];
    yield;
    const byNode = new Int32Array(this.keys);
    const fill = ownStart.slice(0, size);
    for (let k = 0; k < this.keys; k++) byNode[fill[this.endNode[k]]++] = this.keyIds[k];
    yield;
    const tokenStart = new Int32Array(size);
    const tokenEnd = new Int32Array(size);
    const subtreeEnd = new Int32Array(size);
    const ids = new Int32Array(this.keys);
    let w = 0;
    // Iterative depth-first walk: a node's own tokens when entered, its subtree end when left.
    const stack = new Int32Array(size);
    const entered = new Uint8Array(size);
    let top = 0;
    let steps = 0;
    stack[top++] = 0;
    while (top > 0) {
      if ((++steps & 16383) === 0) yield;
      const n = stack[top - 1];
      if (entered[n] === 0) {
        entered[n] = 1;
        tokenStart[n] = w;
        for (let i = ownStart[n]; i < ownStart[n + 1]; i++) ids[w++] = byNode[i];
        tokenEnd[n] = w;
        for (let c = first[n]; c > 0; c = next[c]) stack[top++] = c;
      } else {
        subtreeEnd[n] = w;
        top--;
      }
    }
    return TokenTrie.fromArrays(size, first.slice(0, size), next.slice(0, size), this.byte.slice(0, size), tokenStart, tokenEnd, subtreeEnd, ids);
  }
}
