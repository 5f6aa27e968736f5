/**
 * Many sequences on one model (issue 18): batch invariance, prefix reuse, chats, cancellation, the KV cache
 * budget. Real native engine on committed checkpoints, CPU.
 *
 * What is asserted bitwise (Buffer equality of the float32 logits, no tolerance):
 *   - batch invariance: a sequence's logits (every generated step) are the same alone or batched with 1, 2, 7, 10
 *     or 15 others, in any position of the batch, at precision 'f32' and 'bf16', and the same greedy/seeded tokens;
 *   - prefix reuse at precision 'f32': a prompt whose prefix came from the cache (an earlier request, an earlier
 *     chat turn including its generated tokens, or after evictions under a small budget) gives the logits of a
 *     cold run. The decoder computes every row at f32 by the operations the decode GEMV uses, whatever chunk or
 *     batch it is in (cpu::Precision::kF32RowInvariant), so this holds exactly.
 * At 'bf16' reused context is within 1e-3 of a cold run (relative to the largest logit), same greedy tokens.
 */
import * as path from 'path';
import { loadModel, PerceptionLM, preprocessImage } from '../lib';
import type { CompleteResult, GenerateOptions } from '../lib';

const ROOT = path.join(__dirname, '..');
const TINY = path.join(ROOT, 'models', 'plm-tiny');
const TINY_RANDOM = path.join(ROOT, 'models', 'plm-tiny-random');
const TEXT = path.join(__dirname, 'fixtures', 'text');
const MODELS: Array<[string, string]> = [
  ['plm-tiny (bf16, images)', TINY],
  ['plm-tiny-random (bf16, head_dim 8)', TINY_RANDOM],
  ['tied_llama3_gqa4_hd64_bf16_v5_sharded', path.join(TEXT, 'tied_llama3_gqa4_hd64_bf16_v5_sharded')],
  ['untied_mha_hd24_theta1e4_f32_v4 (f32 weights)', path.join(TEXT, 'untied_mha_hd24_theta1e4_f32_v4')],
];

function sameBits(a: Float32Array | undefined, b: Float32Array | undefined): boolean {
  if (!a || !b || a.length !== b.length) return false;
  return Buffer.from(a.buffer, a.byteOffset, a.byteLength).equals(Buffer.from(b.buffer, b.byteOffset, b.byteLength));
}

function relDiff(a: Float32Array, b: Float32Array): number {
  let d = 0;
  let m = 1;
  for (let i = 0; i < a.length; i++) {
    d = Math.max(d, Math.abs(a[i] - b[i]));
    m = Math.max(m, Math.abs(b[i]));
  }
  return d / m;
}

/** A seeded pseudo-random prompt of n ids in [1, vocab), avoiding the media placeholders. */
function randomIds(n: number, vocab: number, seed: number, avoid: number[]): number[] {
  let s = seed >>> 0;
  const out: number[] = [];
  while (out.length < n) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const id = 1 + (s % (vocab - 1));
    if (!avoid.includes(id)) out.push(id);
  }
  return out;
}

interface Prompt {
  inputIds: number[];
  pixelValues?: Float32Array;
  numTiles?: number;
}

async function promptsFor(model: PerceptionLM, count: number, seed: number): Promise<Prompt[]> {
  const c = model.config;
  const avoid = [c.image_token_id, c.video_token_id];
  const lengths = [7, 33, 64, 90, 300, 31, 129, 520];
  const out: Prompt[] = [];
  for (let i = 0; i < count; i++) out.push({ inputIds: randomIds(lengths[i % lengths.length], c.text.vocab_size, seed + i, avoid) });
  if (c.vision.present) {
    // Two prompts with images (1 and 2 tiles), placeholders in the middle.
    for (const [k, [file, tiles]] of ([['scene3.png', 1], ['scene1.png', 2]] as const).entries()) {
      const img = await preprocessImage(path.join(ROOT, 'samples', file), { tileSize: c.vision.image_size, maxNumTiles: tiles });
      const pre = randomIds(5 + 20 * k, c.text.vocab_size, seed + 100 + k, avoid);
      const post = randomIds(9, c.text.vocab_size, seed + 200 + k, avoid);
      const ids = [...pre, ...Array(img.numTiles * c.tokens_per_tile).fill(c.image_token_id), ...post];
      out[(k * 3) % count] = { inputIds: ids, pixelValues: img.pixelValues, numTiles: img.numTiles };
    }
  }
  return out;
}

const GEN: GenerateOptions = { maxTokens: 5, temperature: 0, returnLogits: true, stopTokenIds: [] };

async function alone(model: PerceptionLM, prompts: Prompt[], opts: GenerateOptions = GEN): Promise<CompleteResult[]> {
  const out: CompleteResult[] = [];
  for (const p of prompts) {
    await model.clearCache();
    out.push(await model.complete({ ...opts, ...p }));
  }
  return out;
}

async function together(model: PerceptionLM, prompts: Prompt[], opts: GenerateOptions = GEN): Promise<CompleteResult[]> {
  await model.clearCache();
  return Promise.all(prompts.map((p) => model.complete({ ...opts, ...p })));
}

function expectSame(a: CompleteResult[], b: CompleteResult[]): void {
  expect(b.map((r) => r.tokenIds)).toEqual(a.map((r) => r.tokenIds));
  a.forEach((r, i) => expect(sameBits(r.logits, b[i].logits)).toBe(true));
}

describe.each(MODELS)('%s', (_name, dir) => {
  for (const precision of ['f32', 'bf16'] as const) {
    test(`batch invariance at ${precision}: 1, 2, 3, 8, 11 and 16 sequences of different lengths and positions`, async () => {
      // 16: one decode matmul call on AMX at bf16 (16 rows per call there), two of 8 elsewhere; 11: a part group.
      const model = await loadModel(dir, { backend: 'cpu', precision, sequences: 16 });
      try {
        const prompts = await promptsFor(model, 16, 11);
        const ref = await alone(model, prompts);
        expect(ref.every((r) => r.tokenIds.length >= 1 && r.logits!.length === r.tokenIds.length * model.config.text.vocab_size)).toBe(true);
        const all = [...prompts.keys()];
        for (const pick of [[0, 1], [4, 2, 7], all.slice(0, 8), all.slice(0, 8).reverse(), [15, 3, 9, 12, 0, 6, 11, 1, 14, 8, 5], all.reverse()]) {
          const got = await together(model, pick.map((i) => prompts[i]));
          expectSame(pick.map((i) => ref[i]), got);
        }
        // Seeded sampling draws the same tokens alone and batched.
        const sampling: GenerateOptions = { ...GEN, temperature: 0.9, topK: 40, seed: 7 };
        const sRef = await alone(model, prompts.slice(0, 3), sampling);
        expectSame(sRef, await together(model, prompts.slice(0, 3), sampling));
      } finally {
        model.dispose();
      }
    });
  }

  test('prefix reuse gives the cold logits: bitwise at f32, within 1e-3 at bf16', async () => {
    for (const precision of ['f32', 'bf16'] as const) {
      const model = await loadModel(dir, { backend: 'cpu', precision });
      try {
        const [base] = await promptsFor(model, 8, 23);
        const extra = randomIds(70, model.config.text.vocab_size, 5, [model.config.image_token_id, model.config.video_token_id]);
        const longer: Prompt = { ...base, inputIds: [...base.inputIds, ...extra] };
        await model.clearCache();
        const cold = await model.complete({ ...GEN, ...longer });
        expect(cold.timings.cachedTokens).toBe(0);
        await model.clearCache();
        await model.complete({ ...GEN, ...base });
        const warm = await model.complete({ ...GEN, ...longer });
        expect(warm.timings.cachedTokens).toBeGreaterThanOrEqual(Math.floor(base.inputIds.length / 32) * 32);
        expect(warm.tokenIds).toEqual(cold.tokenIds);
        if (precision === 'f32') expect(sameBits(warm.logits, cold.logits)).toBe(true);
        else expect(relDiff(warm.logits as Float32Array, cold.logits as Float32Array)).toBeLessThan(1e-3);
      } finally {
        model.dispose();
      }
    }
  });
});

describe('decode groups', () => {
  // The decoder sends decode rows to the matmuls in groups (80 rows on AMX at bf16, 8 elsewhere): 90 sequences
  // at once cross a group boundary on every path, and each must still equal its run alone.
  const dir = path.join(TEXT, 'tied_llama3_gqa4_hd64_bf16_v5_sharded');
  for (const precision of ['f32', 'bf16'] as const) {
    test(`90 sequences at ${precision}: every sequence's logits equal its run alone`, async () => {
      const model = await loadModel(dir, { backend: 'cpu', precision, sequences: 90, maxContext: 1024 });
      try {
        const prompts = await promptsFor(model, 90, 31);
        const opts: GenerateOptions = { ...GEN, maxTokens: 3 };
        expectSame(await alone(model, prompts, opts), await together(model, prompts, opts));
      } finally {
        model.dispose();
      }
    });
  }
});

describe('plm-tiny: chats, cancellation and the KV budget', () => {
  let model: PerceptionLM;
  beforeAll(async () => {
    model = await loadModel(TINY, { backend: 'cpu', precision: 'f32', sequences: 4 });
  });
  afterAll(() => model?.dispose());

  test('a chat reuses its earlier turns (image and generated tokens included) and matches a cold run', async () => {
    await model.clearCache();
    const chat = model.createChat({ maxTokens: 24, temperature: 0 });
    const first = await chat.send({ text: 'Describe the image.', images: [path.join(ROOT, 'samples', 'scene3.png')] });
    expect(first.text.length).toBeGreaterThan(0);
    expect(chat.history.map((m) => m.role)).toEqual(['user', 'assistant']);
    const second = await chat.send('What is at the top left?', { returnLogits: true });
    // Everything but the new turn came from the cache.
    expect(second.timings.cachedTokens).toBeGreaterThan(first.timings.promptTokens);
    expect(second.timings.promptTokens - second.timings.cachedTokens).toBeLessThan(40);
    expect(second.timings.visionMs).toBe(0);
    const messages = chat.history.slice(0, 3);
    expect(chat.cachedTokens).toBeGreaterThan(0);
    chat.reset();  // releases the chat's blocks, so the next run computes everything
    expect(chat.history).toEqual([]);
    expect(chat.cachedTokens).toBe(0);
    await model.clearCache();
    const cold = await model.complete({ messages, maxTokens: 24, temperature: 0, returnLogits: true });
    expect(cold.timings.cachedTokens).toBe(0);
    expect(second.tokenIds).toEqual(cold.tokenIds);
    expect(sameBits(second.logits, cold.logits)).toBe(true);
    chat.dispose();
    await expect(chat.send('hi')).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
  });

  test("a chat keeps an image's tiling from the turn that sent it (a later turn with other options reuses the cache)", async () => {
    await model.clearCache();
    const image = path.join(ROOT, 'samples', 'scene3.png');
    // The premise: this image tiles differently with the checkpoint's default than with one tile.
    const oneTile = await model.buildInput({ prompt: 'Describe the image.', images: [image], maxNumTiles: 1 });
    const byDefault = await model.buildInput({ prompt: 'Describe the image.', images: [image] });
    expect(byDefault.numTiles).toBeGreaterThan(oneTile.numTiles);

    const chat = model.createChat({ maxTokens: 16, temperature: 0 });
    const first = await chat.send({ text: 'Describe the image.', images: [image] }, { maxNumTiles: 1 });
    const second = await chat.send('What is at the top left?', { returnLogits: true });
    expect(second.timings.cachedTokens).toBeGreaterThan(first.timings.promptTokens);
    expect(second.timings.promptTokens - second.timings.cachedTokens).toBeLessThan(40);
    expect(second.timings.visionMs).toBe(0);
    const messages = chat.history.slice(0, 3);
    chat.dispose();
    await model.clearCache();
    const cold = await model.complete({ messages, maxNumTiles: 1, maxTokens: 16, temperature: 0, returnLogits: true });
    expect(second.tokenIds).toEqual(cold.tokenIds);
    expect(sameBits(second.logits, cold.logits)).toBe(true);
  });

  test('the same image in a new request is not encoded again', async () => {
    await model.clearCache();
    const image = path.join(ROOT, 'samples', 'scene2.png');
    const a = await model.complete({ prompt: 'Describe the image.', images: [image], maxTokens: 4 });
    const before = model.stats();
    const b = await model.complete({ prompt: 'How many objects are there?', images: [image], maxTokens: 4 });
    const after = model.stats();
    expect(a.timings.visionMs).toBeGreaterThan(0);
    expect(b.timings.visionMs).toBe(0);
    expect(after.imagesEncoded).toBe(before.imagesEncoded);
  });

  test('cancelling one sequence mid-decode leaves the others unchanged and frees its blocks', async () => {
    const prompts = (await promptsFor(model, 3, 41)).map((p) => ({ ...p }));
    const opts: GenerateOptions = { ...GEN, maxTokens: 12 };
    const ref = await alone(model, prompts, opts);
    await model.clearCache();
    const ac = new AbortController();
    let seen = 0;
    const victim = (async () => {
      const chunks: number[] = [];
      for await (const c of model.generate({ ...opts, ...prompts[1], signal: ac.signal })) {
        chunks.push(c.tokenId);
        if (++seen === 3) ac.abort();
      }
      return chunks;
    })();
    const [r0, v, r2] = await Promise.all([model.complete({ ...opts, ...prompts[0] }), victim, model.complete({ ...opts, ...prompts[2] })]);
    expect(v.length).toBe(3);
    expectSame([ref[0], ref[2]], [r0, r2]);
    const s = model.stats();
    expect(s.activeSequences).toBe(0);
    expect(s.kvCacheBytesUsed).toBe(0);  // nothing held: only unused, cached prefixes remain
    expect(s.kvCacheBytesCached).toBeGreaterThan(0);
  });

  test('the KV blocks of 8 sequences stay within 10% of their positions, and return when they end', async () => {
    const m = await loadModel(TINY, { backend: 'cpu', precision: 'f32', sequences: 8 });
    try {
      const prompts = await promptsFor(m, 8, 77);
      const t = m.config.text;
      const perToken = t.num_hidden_layers! * 2 * (t.num_key_value_heads as number) * (t.head_dim as number) * 4;
      let peak = 0;
      let positions = 0;
      const maxTokens = 40;
      await Promise.all(
        prompts.map(async (p) => {
          let n = 0;
          for await (const _c of m.generate({ ...p, maxTokens, temperature: 0, stopTokenIds: [] })) {
            if (++n === 20) peak = Math.max(peak, m.stats().kvCacheBytesUsed);
          }
        }),
      );
      positions = prompts.reduce((a, p) => a + p.inputIds.length + maxTokens, 0);
      expect(peak).toBeGreaterThan(0);
      expect(peak).toBeLessThanOrEqual(1.1 * positions * perToken + 8 * 32 * perToken);
      const s = m.stats();
      expect(s.kvCacheBytesUsed).toBe(0);
      expect(s.kvCacheBytesCached).toBeGreaterThan(0);
      await m.clearCache();
      expect(m.stats().kvCacheBytesCached).toBe(0);
    } finally {
      m.dispose();
    }
  });

  test('under a small budget requests wait, the cache evicts, and every output equals its cold run', async () => {
    const t = model.config.text;
    const perToken = t.num_hidden_layers! * 2 * (t.num_key_value_heads as number) * (t.head_dim as number) * 4;
    const small = await loadModel(TINY, { backend: 'cpu', precision: 'f32', sequences: 8, kvCacheBytes: 1300 * perToken });
    try {
      const prompts = await promptsFor(small, 8, 99);
      const opts: GenerateOptions = { ...GEN, maxTokens: 6 };
      const ref = await alone(model, prompts, opts);
      const got = await Promise.all(prompts.map((p) => small.complete({ ...opts, ...p })));
      expectSame(ref, got);
      // Some had to wait for blocks (counted by the engine: a 5 ms poll of waitingSequences missed it once).
      expect(small.stats().requestsDeferred).toBeGreaterThan(0);
      // Again with the cache full of the first round's prefixes: reuse where it survived, eviction elsewhere.
      expectSame(ref, await Promise.all(prompts.map((p) => small.complete({ ...opts, ...p }))));
      await expect(small.complete({ inputIds: randomIds(1400, t.vocab_size, 3, [model.config.image_token_id, model.config.video_token_id]), maxTokens: 4 }))
        .rejects.toMatchObject({ code: 'ERR_CONTEXT_OVERFLOW' });
    } finally {
      small.dispose();
    }
  });

  test('topLogprobs: the chosen token and the alternatives, as log-softmax of the returned logits', async () => {
    const [p] = await promptsFor(model, 1, 5);
    const chunks: Array<{ tokenId: number; logprob?: { logprob: number; top: Array<{ tokenId: number; logprob: number }> } }> = [];
    for await (const c of model.generate({ ...p, maxTokens: 4, temperature: 0, topLogprobs: 3, stopTokenIds: [] })) chunks.push(c);
    const r = await model.complete({ ...p, maxTokens: 4, temperature: 0, topLogprobs: 3, returnLogits: true, stopTokenIds: [] });
    expect(r.logprobs).toHaveLength(4);
    const V = model.config.text.vocab_size;
    r.logprobs!.forEach((lp, i) => {
      const row = r.logits!.subarray(i * V, (i + 1) * V);
      let mx = -Infinity;
      for (const v of row) mx = Math.max(mx, v);
      let sum = 0;
      for (const v of row) sum += Math.exp(v - mx);
      const lse = mx + Math.log(sum);
      expect(lp.tokenId).toBe(r.tokenIds[i]);
      expect(lp.top).toHaveLength(3);
      expect(lp.top[0].tokenId).toBe(r.tokenIds[i]);  // greedy: the best one
      expect(lp.logprob).toBeCloseTo(row[r.tokenIds[i]] - lse, 4);
      lp.top.forEach((t) => expect(t.logprob).toBeCloseTo(row[t.tokenId] - lse, 4));
      expect(lp.top[1].logprob).toBeLessThanOrEqual(lp.top[0].logprob);
    });
    expect(chunks.filter((c) => c.tokenId >= 0).map((c) => c.logprob?.logprob)).toEqual(r.logprobs!.map((l) => l.logprob));
  });
});
