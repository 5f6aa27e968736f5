/** PerceptionLM API over a mocked addon (no native build needed). */
import * as path from 'path';
import type { NativeGenerateOptions, NativeModel } from '../lib/native';

const ROOT = path.resolve(__dirname, '..');
const DIR = path.join(ROOT, 'models', 'plm-tiny-random');

import { PlmTokenizer } from '../lib/tokenizer';
// "Hello, world. STOP here" in Llama 3 ids, then <|eot_id|>.
const SCRIPT = [...PlmTokenizer.fromDirectory(DIR).encode('Hello, world. STOP here'), 128009];
let lastOpts: NativeGenerateOptions | undefined;
let active = 0;
let maxActive = 0;
let disposed = 0;

function fakeModel(): NativeModel {
  return {
    info: () => ({
      config: {
        text: { hidden_size: 16, intermediate_size: 32, vocab_size: 128256, max_position_embeddings: 11520 },
        vision: { present: true, image_size: 112, patch_size: 14 },
        image_token_id: 128002,
        video_token_id: 128003,
        tokens_per_tile: 16,
        generation: { bos_token_id: 128000, eos_token_ids: [128001, 128009] },
      },
      backend: 'cpu',
      backendNote: 'mock',
      weightBytes: 1234,
    }),
    forward: async (ids, _px, _tiles, rows) => ({ logits: new Float32Array(rows * 128256).fill(ids.length) }),
    encodeImages: async () => new Float32Array(16),
    generate: (ids, _media, opts, onToken, cancel) => {
      lastOpts = opts;
      active++;
      maxActive = Math.max(maxActive, active);
      let cancelled = false;
      const orig = cancel.cancel.bind(cancel);
      (cancel as { cancel: () => void }).cancel = () => {
        cancelled = true;
        orig();
      };
      return new Promise((resolve, reject) => {
        const out: number[] = [];
        const step = (i: number): void => {
          if (cancelled) {
            active--;
            const e = new Error('cancelled') as Error & { code: string };
            e.code = 'ERR_CANCELLED';
            reject(e);
            return;
          }
          if (i >= SCRIPT.length || out.length >= opts.maxTokens) {
            active--;
            const stop = out.length > 0 && opts.stopIds.includes(out[out.length - 1]);
            resolve({
              tokens: Int32Array.from(out), finishReason: stop ? 'stop' : 'length', promptTokens: ids.length,
              cachedTokens: 0, queueMs: 0, visionMs: 0, prefillMs: 1, firstTokenMs: 2, decodeMs: 10,
            });
            return;
          }
          out.push(SCRIPT[i]);
          onToken(SCRIPT[i]);
          setTimeout(() => step(i + 1), 2);
        };
        setTimeout(() => step(0), 1);
      });
    },
    createSession: () => ({ dispose: () => undefined, cachedTokens: () => 0 }),
    stats: () => ({
      activeSequences: active, waitingSequences: 0, maxSequences: 4, kvBlocksInUse: 0, kvBlocksCached: 0,
      kvBlocksCapacity: 10, kvBlockBytes: 1024, kvBytesResident: 0, promptTokens: 0, cachedPromptTokens: 0,
      mediaCacheBytes: 0, mediaCacheHits: 0, mediaEncoded: 0, requestsDeferred: 0,
    }),
    clearCache: async () => undefined,
    dispose: () => {
      disposed++;
    },
  };
}

jest.mock('../lib/native', () => {
  const actual = jest.requireActual('../lib/native');
  return {
    ...actual,
    native: {
      loadModel: async (_dir: string, _o: unknown, cb: (f: number, s: string) => void) => {
        cb(1, 'weights');
        return fakeModel();
      },
      createCancelToken: () => ({ cancel: () => undefined }),
      cpuFeatures: () => ['avx2'],
      cudaStatus: () => 'unavailable: mock',
    },
  };
});

import { loadModel } from '../lib/model';

describe('PerceptionLM over a mocked addon', () => {
  test('complete: greedy defaults, eos stop ids, text and timings', async () => {
    const m = await loadModel(DIR);
    const r = await m.complete({ prompt: 'Hi' });
    expect(r.text).toBe('Hello, world. STOP here');
    expect(r.finishReason).toBe('stop');
    expect(lastOpts).toMatchObject({ maxTokens: 256, temperature: 0, topK: 0, topP: 1, minP: 0, repetitionPenalty: 1 });
    expect(lastOpts?.stopIds.sort()).toEqual([128001, 128009]);
    expect(r.timings.promptTokens).toBeGreaterThan(10);
    expect(r.timings.decodeTokensPerSecond).toBeCloseTo(600);
    m.dispose();
  });

  test('stop strings are trimmed and finish with stop', async () => {
    const m = await loadModel(DIR);
    const chunks: string[] = [];
    for await (const c of m.generate({ prompt: 'Hi', stop: [' STOP'] })) chunks.push(c.text);
    expect(chunks.join('')).toBe('Hello, world.');
    const r = await m.complete({ prompt: 'Hi', stop: ['world'] });
    expect(r).toMatchObject({ text: 'Hello, ', finishReason: 'stop' });
    m.dispose();
  });

  test('maxTokens -> length', async () => {
    const m = await loadModel(DIR);
    const r = await m.complete({ prompt: 'Hi', maxTokens: 2 });
    expect(r).toMatchObject({ text: 'Hello,', finishReason: 'length' });
    m.dispose();
  });

  test('abort ends complete and generate the same way, before or during the call, with no error', async () => {
    const m = await loadModel(DIR);
    const ac = new AbortController();
    ac.abort();
    const before = await m.complete({ prompt: 'Hi', signal: ac.signal });
    expect(before).toMatchObject({ text: '', tokenIds: [], finishReason: 'cancelled' });
    const none: string[] = [];
    for await (const c of m.generate({ prompt: 'Hi', signal: ac.signal })) none.push(c.text);
    expect(none).toEqual([]);
    const ac2 = new AbortController();
    setTimeout(() => ac2.abort(), 6);
    const r = await m.complete({ prompt: 'Hi', signal: ac2.signal });
    expect(r.finishReason).toBe('cancelled');
    const ac3 = new AbortController();
    let n = 0;
    let afterAbort = 0;
    for await (const _c of m.generate({ prompt: 'Hi', signal: ac3.signal })) {
      if (ac3.signal.aborted) afterAbort++;
      if (++n === 2) ac3.abort();
    }
    expect(n).toBe(2);  // nothing is yielded once abort() has returned
    expect(afterAbort).toBe(0);
    m.dispose();
  });

  test('concurrent calls run together; break cancels', async () => {
    const m = await loadModel(DIR);
    maxActive = 0;
    const all = await Promise.all([m.complete({ prompt: 'a' }), m.complete({ prompt: 'b' }), m.complete({ prompt: 'c' })]);
    expect(all.map((r) => r.text)).toEqual(Array(3).fill('Hello, world. STOP here'));
    expect(maxActive).toBe(3);
    for await (const _c of m.generate({ prompt: 'x' })) break;
    expect((await m.complete({ prompt: 'y' })).finishReason).toBe('stop');
    m.dispose();
  });

  test('forward rows and dispose', async () => {
    const m = await loadModel(DIR);
    const f = await m.forward({ inputIds: [1, 2, 3] });
    expect(f.rows).toBe(3);
    expect(f.vocabSize).toBe(128256);
    expect((await m.forward({ inputIds: [1, 2, 3], logitsRows: 'last' })).rows).toBe(1);
    const before = disposed;
    m.dispose();
    m.dispose();
    expect(disposed).toBe(before + 1);
    await expect(m.complete({ prompt: 'x' })).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
    await expect(m.forward({ inputIds: [1] })).rejects.toMatchObject({ code: 'ERR_DISPOSED' });
  });

  test('invalid options', async () => {
    const m = await loadModel(DIR);
    await expect(m.complete({ prompt: 'x', temperature: -1 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(m.complete({ prompt: 'x', topP: 0 })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
    await expect(loadModel(path.join(ROOT, 'nope'))).rejects.toMatchObject({ code: 'ERR_FILE_NOT_FOUND' });
    m.dispose();
  });
});
