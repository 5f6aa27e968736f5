/**
 * Sampling behaviour through the public API on the bundled model: seeds reproduce, the filters act as
 * documented, stop strings end and trim the text, and eos ids stop generation.
 */
import * as path from 'path';
import { loadModel, PerceptionLM } from '../lib';

const TINY = path.join(__dirname, '..', 'models', 'plm-tiny-random');
const PROMPT = [128000, 128006, 882, 128007, 271, 9906, 11, 1917, 0, 128009, 128006, 78191, 128007, 271];

let model: PerceptionLM;
beforeAll(async () => {
  model = await loadModel(TINY, { backend: 'cpu', maxContext: 1024 });
});
afterAll(() => model.dispose());

const run = (opts: Record<string, unknown>) =>
  model.complete({ inputIds: PROMPT, maxTokens: 24, stopTokenIds: [], ...opts });

test('the same seed reproduces a sampled generation, another seed does not', async () => {
  const a = await run({ temperature: 1.5, seed: 7 });
  const b = await run({ temperature: 1.5, seed: 7 });
  const c = await run({ temperature: 1.5, seed: 8 });
  expect(a.tokenIds).toHaveLength(24);
  expect(b.tokenIds).toEqual(a.tokenIds);
  expect(c.tokenIds).not.toEqual(a.tokenIds);
});

test('temperature 0 is greedy, and so is top-k 1 at any temperature', async () => {
  const greedy = await run({ temperature: 0 });
  const topk1 = await run({ temperature: 2, topK: 1, seed: 3 });
  expect(topk1.tokenIds).toEqual(greedy.tokenIds);
});

test('a tiny top-p or a min-p of 1 keeps only the most likely token', async () => {
  const greedy = await run({ temperature: 0 });
  expect((await run({ temperature: 1, topP: 1e-6, seed: 5 })).tokenIds).toEqual(greedy.tokenIds);
  expect((await run({ temperature: 1, minP: 1, seed: 5 })).tokenIds).toEqual(greedy.tokenIds);
});

test('a repetition penalty changes a greedy continuation that repeats itself', async () => {
  const plain = await run({ temperature: 0, maxTokens: 48 });
  const penalized = await run({ temperature: 0, maxTokens: 48, repetitionPenalty: 5 });
  expect(new Set(plain.tokenIds).size).toBeLessThan(plain.tokenIds.length); // it repeats
  expect(penalized.tokenIds).not.toEqual(plain.tokenIds);
  expect(new Set(penalized.tokenIds).size).toBeGreaterThan(new Set(plain.tokenIds).size);
});

test('an eos id stops generation and is reported as the stop', async () => {
  const greedy = await run({ temperature: 0 });
  const stopAt = greedy.tokenIds[5];
  const r = await run({ temperature: 0, stopTokenIds: [stopAt] });
  expect(r.finishReason).toBe('stop');
  expect(r.tokenIds).toEqual(greedy.tokenIds.slice(0, greedy.tokenIds.indexOf(stopAt) + 1));
});

test('a stop string ends generation and is trimmed from the text', async () => {
  const greedy = await run({ temperature: 0, maxTokens: 32 });
  expect(greedy.finishReason).toBe('length');
  const cut = Math.floor(greedy.text.length / 2);
  const stop = greedy.text.slice(cut, cut + 3);
  const r = await run({ temperature: 0, maxTokens: 32, stop: [stop] });
  expect(r.finishReason).toBe('stop');
  expect(r.text).toBe(greedy.text.slice(0, greedy.text.indexOf(stop)));
});

test('streamed chunks add up to the completed text', async () => {
  const full = await run({ temperature: 0 });
  let text = '';
  let tokens = 0;
  for await (const chunk of model.generate({ inputIds: PROMPT, maxTokens: 24, temperature: 0, stopTokenIds: [] })) {
    text += chunk.text;
    if (chunk.tokenId >= 0) tokens++;
  }
  expect(text).toBe(full.text);
  expect(tokens).toBe(24);
});

test('too many images for the context is a typed error', async () => {
  const small = await loadModel(TINY, { backend: 'cpu', maxContext: 256 });
  const image = path.join(__dirname, '..', 'samples', 'shapes.png');
  await expect(small.complete({ prompt: 'Compare them.', images: [image, image, image, image], maxTokens: 8 })).rejects.toMatchObject({
    code: 'ERR_CONTEXT_OVERFLOW',
  });
  small.dispose();
});
