/**
 * The entry point exports the server, the hub client and the model store, so that callers need no deep
 * imports (perception-lm/dist/lib/server, .../hub).
 */
import * as path from 'path';
import * as lib from '../lib';
import { pull as hubPull } from '../lib/hub';
import { startServer as serverStart } from '../lib/server';

test('startServer, pull and the model store come from the entry point and are the modules\' own', () => {
  expect(lib.startServer).toBe(serverStart);
  expect(lib.pull).toBe(hubPull);
  for (const name of ['resolveModel', 'listModels', 'removeModel', 'hfHubCacheDir', 'pulledModelsDir', 'defaultModelDir', 'bundledModelDir'] as const) {
    expect(typeof lib[name]).toBe('function');
  }
  expect(lib.DEFAULT_MAX_TOKENS).toBe(256);
  expect(path.basename(lib.defaultModelDir())).toBe('plm-tiny');
});

test('startServer from the entry point serves a model', async () => {
  const srv = await lib.startServer({ models: [{ id: 'tiny', load: () => lib.loadModel(lib.defaultModelDir(), { backend: 'cpu', threads: 1 }), preload: true }], port: 0 });
  try {
    await srv.ready;
    const r = await fetch(`${srv.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 3, temperature: 0 }),
    });
    expect(r.status).toBe(200);
    const j = (await r.json()) as { model: string; usage: { completion_tokens: number } };
    expect(j.model).toBe('tiny');
    expect(j.usage.completion_tokens).toBeGreaterThan(0);
    expect(j.usage.completion_tokens).toBeLessThanOrEqual(3);
  } finally {
    await srv.close();
  }
});

test('max_tokens has one default: a request without it gets as many tokens as complete() without maxTokens', async () => {
  // The random-weight model does not stop by itself (greedy), so both run to the default length.
  const model = await lib.loadModel(lib.bundledModelDir(), { backend: 'cpu', threads: 1 });
  const srv = await lib.startServer({ model, port: 0 });
  try {
    await srv.ready;
    const api = await model.complete({ prompt: 'hi', temperature: 0 });
    expect(api.finishReason).toBe('length');
    expect(api.tokenIds).toHaveLength(lib.DEFAULT_MAX_TOKENS);
    const r = await fetch(`${srv.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [{ role: 'user', content: 'hi' }], temperature: 0 }),
    });
    const j = (await r.json()) as { choices: Array<{ finish_reason: string }>; usage: { completion_tokens: number } };
    expect(j.choices[0].finish_reason).toBe('length');
    expect(j.usage.completion_tokens).toBe(lib.DEFAULT_MAX_TOKENS);
  } finally {
    await srv.close();
    model.dispose();
  }
}, 60_000);
