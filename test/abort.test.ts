/**
 * One abort behaviour for complete() and generate(), whenever the signal fires (README "Use it"):
 * aborting is not an error. complete() resolves with finishReason 'cancelled' and the text so far;
 * generate() yields nothing once abort() has returned and its loop ends without throwing. That holds for a
 * signal aborted before the call, during preprocessing, while the request waits for a sequence slot, and
 * during decoding; also for chats and structured output.
 */
import * as path from 'path';
import { CompleteResult, GenerateChunk, loadModel, PerceptionLM } from '../lib';

const ROOT = path.join(__dirname, '..');
const RANDOM = path.join(ROOT, 'models', 'plm-tiny-random'); // random weights: it rarely emits the stop token
const IMAGE = path.join(ROOT, 'samples', 'scene1.png');
const LONG = { inputIds: [128000, 9906, 11, 1917], maxTokens: 2000, temperature: 0 };

let model: PerceptionLM;
beforeAll(async () => {
  model = await loadModel(RANDOM, { backend: 'cpu', threads: 1, sequences: 1 });
});
afterAll(() => model.dispose());

function aborted(): AbortSignal {
  const ac = new AbortController();
  ac.abort();
  return ac.signal;
}

/** Runs generate() to its end; returns the chunks and whether it threw. */
async function drain(it: AsyncIterable<GenerateChunk>, onChunk?: (c: GenerateChunk, i: number) => void): Promise<{ chunks: GenerateChunk[]; error?: unknown }> {
  const chunks: GenerateChunk[] = [];
  try {
    for await (const c of it) {
      chunks.push(c);
      onChunk?.(c, chunks.length);
    }
    return { chunks };
  } catch (error) {
    return { chunks, error };
  }
}

function expectCancelled(r: CompleteResult): void {
  expect(r.finishReason).toBe('cancelled');
  expect(typeof r.text).toBe('string');
  expect(Array.isArray(r.tokenIds)).toBe(true);
}

describe('a signal aborted before the call', () => {
  test('complete() resolves cancelled with nothing generated', async () => {
    const r = await model.complete({ ...LONG, signal: aborted() });
    expectCancelled(r);
    expect(r.tokenIds).toEqual([]);
    expect(r.text).toBe('');
  });

  test('generate() yields nothing and ends without an error', async () => {
    const { chunks, error } = await drain(model.generate({ ...LONG, signal: aborted() }));
    expect(error).toBeUndefined();
    expect(chunks).toEqual([]);
  });

  test('the same for a prompt with an image and for structured output', async () => {
    const image = await model.complete({ prompt: 'Describe the image.', images: [IMAGE], signal: aborted() });
    expectCancelled(image);
    expect(image.tokenIds).toEqual([]);
    const json = await model.complete({ prompt: 'JSON please', responseFormat: { type: 'json_object' }, signal: aborted() });
    expectCancelled(json);
    const { chunks, error } = await drain(model.generate({ prompt: 'JSON please', responseFormat: { type: 'json_object' }, signal: aborted() }));
    expect(error).toBeUndefined();
    expect(chunks).toEqual([]);
  });
});

describe('a signal aborted during the call', () => {
  test('generate(): abort() inside the loop; no chunk after it returns, the loop ends quietly', async () => {
    const ac = new AbortController();
    let afterAbort = 0;
    let abortedAt = 0;
    const { chunks, error } = await drain(model.generate({ ...LONG, signal: ac.signal }), (_c, i) => {
      if (abortedAt > 0) afterAbort++;
      if (i === 3) {
        ac.abort();
        abortedAt = i;
      }
    });
    expect(error).toBeUndefined();
    expect(abortedAt).toBe(3);
    expect(afterAbort).toBe(0);
    expect(chunks).toHaveLength(3);
  });

  test('generate(): abort() from a timer while the consumer waits; nothing is yielded after it returns', async () => {
    const ac = new AbortController();
    let abortReturned = false;
    let afterAbort = 0;
    const seen = new Promise<void>((resolve) => {
      void drain(model.generate({ ...LONG, signal: ac.signal }), (_c, i) => {
        if (abortReturned) afterAbort++;
        if (i === 2) resolve();
      }).then((r) => {
        expect(r.error).toBeUndefined();
        done(r.chunks.length);
      });
    });
    let done: (n: number) => void = () => undefined;
    const finished = new Promise<number>((r) => (done = r));
    await seen;
    await new Promise((r) => setTimeout(r, 5)); // tokens keep arriving meanwhile
    ac.abort();
    abortReturned = true;
    const total = await finished;
    expect(afterAbort).toBe(0);
    expect(total).toBeLessThan(LONG.maxTokens);
  });

  test('complete(): resolves cancelled with the tokens so far', async () => {
    const ac = new AbortController();
    let decoded = 0;
    const r = await model.complete({
      ...LONG,
      signal: ac.signal,
      onProgress: (p) => {
        if (p.stage === 'decode' && ++decoded === 4) ac.abort();
      },
    });
    expectCancelled(r);
    expect(r.tokenIds.length).toBeGreaterThanOrEqual(4);
    expect(r.tokenIds.length).toBeLessThan(LONG.maxTokens);
  });

  test('complete() and generate(): aborted while the image is preprocessed', async () => {
    const ac = new AbortController();
    const opts = { prompt: 'Describe the image.', images: [IMAGE], maxTokens: 50, onProgress: (p: { stage: string }) => p.stage === 'preprocess' && ac.abort() };
    const r = await model.complete({ ...opts, signal: ac.signal });
    expectCancelled(r);
    expect(r.tokenIds).toEqual([]);
    const ac2 = new AbortController();
    const g = await drain(model.generate({ ...opts, onProgress: (p) => p.stage === 'preprocess' && ac2.abort(), signal: ac2.signal }));
    expect(g.error).toBeUndefined();
    expect(g.chunks).toEqual([]);
  });

  test('complete() and generate(): aborted while waiting for a sequence slot (sequences: 1)', async () => {
    const holder = new AbortController();
    let started!: () => void;
    const running = new Promise<void>((r) => (started = r));
    const first = model.complete({ ...LONG, signal: holder.signal, onProgress: (p) => p.stage === 'decode' && started() });
    await running;
    expect(model.stats().activeSequences).toBe(1);
    const waitingC = new AbortController();
    const waiting = model.complete({ ...LONG, signal: waitingC.signal });
    const waitingG = new AbortController();
    const streamed = drain(model.generate({ ...LONG, signal: waitingG.signal }));
    await new Promise((r) => setTimeout(r, 20));
    waitingC.abort();
    waitingG.abort();
    const w = await waiting;
    expectCancelled(w);
    expect(w.tokenIds).toEqual([]);
    const s = await streamed;
    expect(s.error).toBeUndefined();
    expect(s.chunks).toEqual([]);
    holder.abort();
    expectCancelled(await first);
  });

  test('chats: send() resolves cancelled and stream() ends quietly', async () => {
    const chat = model.createChat({ maxTokens: 2000, temperature: 0 });
    try {
      const ac = new AbortController();
      let n = 0;
      const r = await chat.send('hello', { signal: ac.signal, onProgress: (p) => p.stage === 'decode' && ++n === 3 && ac.abort() });
      expectCancelled(r);
      const ac2 = new AbortController();
      const s = await drain(chat.stream('more', { signal: ac2.signal }), (_c, i) => i === 2 && ac2.abort());
      expect(s.error).toBeUndefined();
      expect(s.chunks).toHaveLength(2);
      const pre = await chat.send('again', { signal: aborted() });
      expectCancelled(pre);
      expect(pre.tokenIds).toEqual([]);
    } finally {
      chat.dispose();
    }
  });
});

test('errors that are not aborts still reject (a disposed model), so a cancelled result always means an abort', async () => {
  const m = await loadModel(RANDOM, { backend: 'cpu', threads: 1 });
  m.dispose();
  await expect(m.complete({ ...LONG, signal: aborted() })).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
});
