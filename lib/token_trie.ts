/**
 * A byte trie over token strings, in flat typed arrays (first-child / next-sibling), for walking a vocabulary
 * against an automaton: a subtree is skipped as soon as the automaton rejects its prefix.
 */
export class TokenTrie {
  /** Nodes, root 0 included. */
  readonly size: number;
  /** [size] first child of each node, -1 when none. */
  readonly first: Int32Array;
  /** [size] next sibling, -1 when none (siblings in no particular order). */
  readonly next: Int32Array;
  /** [size] the byte on the edge into each node (root: 0). */
  readonly byte: Uint8Array;
  /** [size] tokens whose key ends at a node: ids[tokenStart[node] .. tokenEnd[node]). */
  readonly tokenStart: Int32Array;
  readonly tokenEnd: Int32Array;
  /** [keys] token ids in key order. */
  readonly ids: Int32Array;

  private constructor(size: number, first: Int32Array, next: Int32Array, byte: Uint8Array, tokenStart: Int32Array, tokenEnd: Int32Array, ids: Int32Array) {
    this.size = size;
    this.first = first;
    this.next = next;
    this.byte = byte;
    this.tokenStart = tokenStart;
    this.tokenEnd = tokenEnd;
    this.ids = ids;
  }

  /** @internal use {@link TokenTrieBuilder}. */
  static fromArrays(size: number, first: Int32Array, next: Int32Array, byte: Uint8Array, tokenStart: Int32Array, tokenEnd: Int32Array, ids: Int32Array): TokenTrie {
    return new TokenTrie(size, first, next, byte, tokenStart, tokenEnd, ids);
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
    const cap = maxBytes + 1;
    this.first = new Int32Array(cap).fill(-1);
    this.next = new Int32Array(cap).fill(-1);
    this.byte = new Uint8Array(cap);
    this.endNode = new Int32Array(maxKeys);
    this.keyIds = new Int32Array(maxKeys);
    let bits = 10;
    while (1 << bits < 2 * cap) bits++;
    this.mask = (1 << bits) - 1;
    this.shift = 32 - bits;
    this.slotKey = new Int32Array(this.mask + 1).fill(-1); // node * 256 + byte
    this.slotNode = new Int32Array(this.mask + 1);
  }

  /** Adds the key `lead` (when >= 0) + blob[s..e) for token `id` (an empty key is left out). */
  add(blob: Uint8Array, s: number, e: number, id: number, lead = -1): void {
    if (e <= s && lead < 0) return;
    const { first, next, byte, slotKey, slotNode, mask, shift } = this;
    let node = 0;
    for (let d = lead >= 0 ? s - 1 : s; d < e; d++) {
      const b = d < s ? lead : blob[d];
      const hk = node * 256 + b;
      let h = Math.imul(hk, 0x9e3779b1) >>> shift; // Fibonacci hashing: the high bits
      for (;;) {
        const sk = slotKey[h];
        if (sk === hk) {
          node = slotNode[h];
          break;
        }
        if (sk < 0) {
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
    const size = this.size;
    // Tokens grouped by node: counting sort on the end node.
    const counts = new Int32Array(size + 1);
    for (let k = 0; k < this.keys; k++) counts[this.endNode[k] + 1]++;
    for (let n = 0; n < size; n++) counts[n + 1] += counts[n];
    const tokenStart = counts.slice(0, size);
    const tokenEnd = tokenStart.slice();
    const ids = new Int32Array(this.keys);
    for (let k = 0; k < this.keys; k++) ids[tokenEnd[this.endNode[k]]++] = this.keyIds[k];
    return TokenTrie.fromArrays(size, this.first.slice(0, size), this.next.slice(0, size), this.byte.slice(0, size), tokenStart, tokenEnd, ids);
  }
}
