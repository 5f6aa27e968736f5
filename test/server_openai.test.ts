/**
 * The OpenAI surface of the server (issue 21, "The server"; issue 19, the prompt bound): unsupported
 * fields are 400s naming the field, logprobs and response_format (implemented when the engine reports
 * them, a 400 naming the field when it does not), image_url.detail and maxTiles, the model alias,
 * /metrics, and prompts that cannot fit the context.
 */
import * as path from 'path';
import sharp from 'sharp';
import OpenAI from 'openai';
import { loadModel, PerceptionLM } from '../lib/model';
import { preprocessImage } from '../lib/image';
import { PlmServer, startServer } from '../lib/server';
import { toOpenAILogprob, tokenBytes } from '../lib/server_request';

const root = path.resolve(__dirname, '..');
const modelId = 'plm-tiny-random';

let model: PerceptionLM;
let srv: PlmServer;
let wide: Buffer;
let wideUrl: string;

beforeAll(async () => {
  model = await loadModel(path.join(root, 'models', modelId), { backend: 'cpu', maxContext: 4096 });
  srv = await startServer({ model, port: 0, maxTokensLimit: 64 });
  wide = await sharp({ create: { width: 600, height: 150, channels: 3, background: { r: 10, g: 200, b: 40 } } }).png().toBuffer();
  wideUrl = `data:image/png;base64,${wide.toString('base64')}`;
});

afterAll(async () => {
  await srv?.close();
  model?.dispose();
});

const post = (body: unknown, base = srv.url): Promise<Response> =>
  fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
const hi = { model: modelId, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2, temperature: 0 };
type ErrorJson = { error: { message: string; type: string; param: string | null; code: string | null } };

/** Does this build's engine report log-probabilities? */
async function engineHasLogprobs(): Promise<boolean> {
  for await (const c of model.generate({ prompt: 'Hi', maxTokens: 1, temperature: 0, topLogprobs: 2 } as Parameters<PerceptionLM['generate']>[0])) {
    if (c.tokenId >= 0) return (c as { logprob?: unknown }).logprob !== undefined;
  }
  return false;
}

test('fields the server does not implement are a 400 that names them, never a silent 200', async () => {
  const cases: Array<[Record<string, unknown>, string]> = [
    [{ tools: [{ type: 'function', function: { name: 'f', parameters: {} } }] }, 'tools'],
    [{ tool_choice: 'auto' }, 'tool_choice'],
    [{ functions: [{ name: 'f' }] }, 'functions'],
    [{ function_call: 'auto' }, 'function_call'],
    [{ n: 2 }, 'n'],
    [{ frequency_penalty: 0.5 }, 'frequency_penalty'],
    [{ presence_penalty: -1 }, 'presence_penalty'],
    [{ logit_bias: { '42': 5 } }, 'logit_bias'],
    [{ audio: { voice: 'x', format: 'wav' } }, 'audio'],
    [{ modalities: ['text', 'audio'] }, 'modalities'],
    [{ prediction: { type: 'content', content: 'x' } }, 'prediction'],
    [{ reasoning_effort: 'low' }, 'reasoning_effort'],
    [{ store: true }, 'store'],
    [{ service_tier: 'flex' }, 'service_tier'],
    [{ web_search_options: {} }, 'web_search_options'],
    [{ verbosity: 'low' }, 'verbosity'],
    [{ best_of: 2 }, 'best_of'],
    [{ cache_prompt: true }, 'cache_prompt'],
    [{ top_logprobs: 2 }, 'top_logprobs'],
    [{ logprobs: true, top_logprobs: 21 }, 'top_logprobs'],
    [{ stream_options: { include_usage: true, foo: 1 } }, 'stream_options.foo'],
    [{ response_format: { type: 'xml' } }, 'response_format.type'],
    [{ response_format: { type: 'json_schema', json_schema: { schema: {} } } }, 'response_format.json_schema.name'],
    [{ top_p: 0 }, 'top_p'],
    [{ messages: [{ role: 'tool', content: 'x', tool_call_id: '1' }] }, 'messages[0].role'],
    [{ messages: [{ role: 'user', content: [{ type: 'input_audio', input_audio: { data: '', format: 'wav' } }] }] }, 'messages[0].content[0]'],
    [{ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: wideUrl, detail: 'ultra' } }] }] }, 'messages[0].content[0].image_url.detail'],
    [{ messages: [{ role: 'assistant', content: null, tool_calls: [{ id: '1', type: 'function', function: { name: 'f', arguments: '{}' } }] }] }, 'messages[0].tool_calls'],
    [{ messages: [{ role: 'user', content: 'x', extra: 1 }] }, 'messages[0].extra'],
    [{ model: 'gpt-4o' }, 'model'],
  ];
  for (const [patch, param] of cases) {
    const r = await post({ ...hi, ...patch });
    const j = (await r.json()) as ErrorJson;
    if (r.status !== 400 || j.error.param !== param) throw new Error(`${JSON.stringify(patch)}: got ${r.status} ${JSON.stringify(j)}, want 400 naming ${param}`);
    expect(j.error.type).toBe('invalid_request_error');
  }
  // What asks for the server's own behaviour is accepted.
  const r = await post({ ...hi, n: 1, frequency_penalty: 0, presence_penalty: 0, tool_choice: 'none', tools: [], logit_bias: {}, user: 'u', metadata: { a: 'b' }, store: false, parallel_tool_calls: false, response_format: { type: 'text' }, seed: 3 });
  expect(r.status).toBe(200);
  // The openai client surfaces the param.
  const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  await expect(client.chat.completions.create({ model: modelId, messages: [{ role: 'user', content: 'x' }], n: 3 })).rejects.toMatchObject({ status: 400, param: 'n' });
});

test('unit: engine log-probabilities in OpenAI shape (token text and UTF-8 bytes from the byte-level vocabulary)', () => {
  const tok = model.tokenizer;
  if (!tok) throw new Error('the test model has a tokenizer');
  const idHello = tok.encode(' hello')[0];
  const idEot = tok.special.eot as number;
  expect(tokenBytes('Ġhello')).toEqual([...Buffer.from(' hello')]);
  expect(tokenBytes('Ã©')).toEqual([0xc3, 0xa9]);
  const e = toOpenAILogprob({ tokenId: idHello, logprob: -0.25, top: [{ tokenId: idHello, logprob: -0.25 }, { tokenId: idEot, logprob: -2 }, { tokenId: 0, logprob: -3 }] }, (id) => tok.idToToken(id), 2);
  expect(e).toEqual({
    token: ' hello',
    logprob: -0.25,
    bytes: [...Buffer.from(' hello')],
    top_logprobs: [
      { token: ' hello', logprob: -0.25, bytes: [...Buffer.from(' hello')] },
      { token: '<|eot_id|>', logprob: -2, bytes: [...Buffer.from('<|eot_id|>')] },
    ],
  });
});

test('logprobs / top_logprobs: OpenAI shape when the engine reports them, else a 400 naming logprobs', async () => {
  const supported = await engineHasLogprobs();
  const req = { ...hi, max_tokens: 4, logprobs: true, top_logprobs: 3 };
  const r = await post(req);
  const rs = await post({ ...req, stream: true });
  if (!supported) {
    for (const x of [r, rs]) {
      expect(x.status).toBe(400);
      const j = (await x.json()) as ErrorJson;
      expect(j.error.param).toBe('logprobs');
      expect(j.error.message).toMatch(/logprobs is not supported by this build/);
    }
    return;
  }
  expect(r.status).toBe(200);
  const j = (await r.json()) as { choices: Array<{ message: { content: string }; logprobs: { content: Array<{ token: string; logprob: number; bytes: number[]; top_logprobs: Array<{ token: string; logprob: number }> }> } }>; usage: { completion_tokens: number } };
  const lp = j.choices[0].logprobs.content;
  expect(lp.length).toBe(j.usage.completion_tokens);
  for (const t of lp) {
    expect(t.logprob).toBeLessThanOrEqual(0);
    expect(t.top_logprobs.length).toBe(3);
    for (let k = 1; k < 3; k++) expect(t.top_logprobs[k].logprob).toBeLessThanOrEqual(t.top_logprobs[k - 1].logprob);
    // Greedy: the chosen token is the most likely one.
    expect(t.logprob).toBeCloseTo(t.top_logprobs[0].logprob, 5);
    expect(Buffer.from(t.bytes).toString('utf8')).toBe(t.token);
  }
  expect(rs.status).toBe(200);
  const events = (await rs.text()).split('\n\n').filter((e) => e.startsWith('data: {'));
  const streamed = events.flatMap((e) => (JSON.parse(e.slice(6)) as { choices: Array<{ logprobs: { content: unknown[] } | null }> }).choices.flatMap((c) => c.logprobs?.content ?? []));
  expect(streamed).toEqual(lp);
});

test('response_format maps to the engine when the model supports it, else a 400 naming response_format', async () => {
  // A bounded string, so that the (random-weight) model's document ends within max_tokens.
  const schema = { type: 'object', properties: { color: { type: 'string', maxLength: 8 } }, required: ['color'], additionalProperties: false };
  const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'unused', maxRetries: 0 });
  const supported = (model as unknown as { supportsResponseFormat?: unknown }).supportsResponseFormat === true;
  const parse = (): Promise<unknown> =>
    client.chat.completions.parse({
      model: modelId,
      messages: [{ role: 'user', content: 'The color?' }],
      max_tokens: 64,
      temperature: 0,
      response_format: { type: 'json_schema', json_schema: { name: 'answer', schema, strict: true } },
    });
  if (supported) {
    const c = (await parse()) as { choices: Array<{ message: { parsed: { color: unknown } } }> };
    expect(typeof c.choices[0].message.parsed.color).toBe('string');
  } else {
    await expect(parse()).rejects.toMatchObject({ status: 400, param: 'response_format' });
    const r = await post({ ...hi, response_format: { type: 'json_object' } });
    expect(r.status).toBe(400);
    expect(((await r.json()) as ErrorJson).error.message).toMatch(/not supported by this build/);
  }
  // What reaches the engine, with a model that declares the capability.
  const seen: Array<Record<string, unknown>> = [];
  const capable = Object.create(model) as PerceptionLM & { supportsResponseFormat: boolean };
  capable.supportsResponseFormat = true;
  capable.generate = (o) => {
    seen.push(o as Record<string, unknown>);
    return model.generate(o);
  };
  const s2 = await startServer({ model: capable, modelId, port: 0 });
  try {
    expect((await post({ ...hi, response_format: { type: 'json_schema', json_schema: { name: 'answer', schema, strict: true } } }, s2.url)).status).toBe(200);
    expect((await post({ ...hi, response_format: { type: 'json_object' } }, s2.url)).status).toBe(200);
    expect((await post({ ...hi, response_format: { type: 'text' } }, s2.url)).status).toBe(200);
  } finally {
    await s2.close();
  }
  expect(seen.map((o) => o.responseFormat)).toEqual([{ type: 'json_schema', schema }, { type: 'json_object' }, undefined]);
});

test('a response_format schema with an unsupported keyword is a 400 naming response_format and the keyword', async () => {
  const schema = { type: 'object', properties: { id: { type: 'string', pattern: '^[a-z]+$' } }, required: ['id'] };
  const r = await post({ ...hi, response_format: { type: 'json_schema', json_schema: { name: 'x', schema } } });
  expect(r.status).toBe(400);
  const e = ((await r.json()) as ErrorJson).error;
  expect(e.param).toBe('response_format');
  expect(e.message).toMatch(/pattern/);
  expect((await fetch(`${srv.url}/health`)).status).toBe(200);
});

test("image_url.detail: 'low' is the thumbnail + one tile; 'high'/'auto' the checkpoint's tiles up to maxTiles", async () => {
  const tpt = model.config.tokens_per_tile;
  const tilesLow = (await preprocessImage(wide, { tileSize: 112, maxNumTiles: 1 })).numTiles;
  const tilesCkpt = (await preprocessImage(wide, { tileSize: 112, maxNumTiles: 4 })).numTiles;
  const tilesCap2 = (await preprocessImage(wide, { tileSize: 112, maxNumTiles: 2 })).numTiles;
  expect(tilesLow).toBe(2);
  expect(tilesCkpt).toBeGreaterThan(tilesCap2);
  const ask = async (detail: string | undefined, base = srv.url): Promise<{ prompt: number; text: string }> => {
    const r = await post({ ...hi, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: wideUrl, ...(detail ? { detail } : {}) } }, { type: 'text', text: 'Shapes?' }] }] }, base);
    expect(r.status).toBe(200);
    const j = (await r.json()) as { usage: { prompt_tokens: number }; choices: Array<{ message: { content: string } }> };
    return { prompt: j.usage.prompt_tokens, text: j.choices[0].message.content };
  };
  const low = await ask('low');
  const high = await ask('high');
  const auto = await ask(undefined);
  expect(high.prompt - low.prompt).toBe((tilesCkpt - tilesLow) * tpt);
  expect(auto.prompt).toBe(high.prompt);
  // Same answer as the library with one tile.
  const direct = await model.complete({ messages: [{ role: 'user', content: [{ type: 'image', image: wide }, { type: 'text', text: 'Shapes?' }] }], maxTokens: 2, temperature: 0, maxNumTiles: 1 });
  expect(low.text).toBe(direct.text);
  const capped = await startServer({ model, port: 0, maxTiles: 2 });
  try {
    const c = await ask('high', capped.url);
    expect(c.prompt - low.prompt).toBe((tilesCap2 - tilesLow) * tpt);
    expect((await ask('low', capped.url)).prompt).toBe(low.prompt);
  } finally {
    await capped.close();
  }
});

test('--alias names the model in /v1/models and in responses; the folder name is then unknown', async () => {
  const s = await startServer({ model, modelId: 'vision-small', port: 0 });
  try {
    const models = (await (await fetch(`${s.url}/v1/models`)).json()) as { data: Array<{ id: string }> };
    expect(models.data.map((m) => m.id)).toEqual(['vision-small']);
    expect((await fetch(`${s.url}/v1/models/vision-small`)).status).toBe(200);
    const r = await post({ ...hi, model: 'vision-small' }, s.url);
    expect(((await r.json()) as { model: string }).model).toBe('vision-small');
    const r2 = await post(hi, s.url);
    expect(r2.status).toBe(400);
    expect(((await r2.json()) as ErrorJson).error.param).toBe('model');
    // No model field: the only model.
    expect((await post({ ...hi, model: undefined }, s.url)).status).toBe(200);
  } finally {
    await s.close();
  }
});

test('/metrics: Prometheus text with requests by route and status, tokens, latency histograms, queue and engine gauges', async () => {
  const s = await startServer({ model, port: 0 });
  try {
    expect((await post({ ...hi, max_tokens: 3 }, s.url)).status).toBe(200);
    expect((await post({ ...hi, stream: true }, s.url)).status).toBe(200);
    expect((await post({ ...hi, n: 2 }, s.url)).status).toBe(400);
    expect((await fetch(`${s.url}/nope`)).status).toBe(404);
    const m = await fetch(`${s.url}/metrics`);
    expect(m.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/);
    const text = await m.text();
    // Every line is a comment or `name{labels} value`.
    for (const line of text.trim().split('\n')) expect(line).toMatch(/^(# (HELP|TYPE) [a-z_]+ .+|[a-z_]+(\{[a-z_]+="[^"]*"(,[a-z_]+="[^"]*")*\})? [-+0-9.eEInfNa]+)$/);
    const value = (series: string): number => {
      const l = text.split('\n').find((x) => x.startsWith(`${series} `));
      if (!l) throw new Error(`no ${series} in /metrics`);
      return Number(l.slice(series.length + 1));
    };
    expect(value('plm_http_requests_total{route="/v1/chat/completions",method="POST",status="200"}')).toBe(2);
    expect(value('plm_http_requests_total{route="/v1/chat/completions",method="POST",status="400"}')).toBe(1);
    expect(value('plm_http_requests_total{route="other",method="GET",status="404"}')).toBe(1);
    expect(value(`plm_time_to_first_token_seconds_count{model="${modelId}"}`)).toBe(2);
    expect(value(`plm_time_to_first_token_seconds_bucket{model="${modelId}",le="+Inf"}`)).toBe(2);
    const completion = value(`plm_completion_tokens_total{model="${modelId}"}`);
    expect(completion).toBeGreaterThanOrEqual(2);
    expect(value(`plm_time_per_output_token_seconds_count{model="${modelId}"}`)).toBe(completion - 2);
    expect(value(`plm_prompt_tokens_total{model="${modelId}"}`)).toBeGreaterThan(10);
    expect(value(`plm_queue_depth{model="${modelId}"}`)).toBe(0);
    expect(value(`plm_requests_running{model="${modelId}"}`)).toBe(0);
    expect(value(`plm_model_loaded{model="${modelId}"}`)).toBe(1);
    const stats = (model as unknown as { stats?: () => { kvCacheBytesUsed: number; kvCacheBytesBudget: number } }).stats;
    if (typeof stats === 'function') {
      expect(value(`plm_kv_cache_bytes_budget{model="${modelId}"}`)).toBe(stats.call(model).kvCacheBytesBudget);
    } else {
      expect(text).not.toMatch(/plm_kv_cache_bytes_budget\{/);
    }
  } finally {
    await s.close();
  }
});

test('a prompt that cannot fit is refused before tokenizing; one that fits the bound but not the context is counted off the JS thread', async () => {
  const h = (await (await fetch(`${srv.url}/health`)).json()) as { models: Array<{ tokenizer: string }> };
  expect(h.models[0].tokenizer).toBe('worker');
  // 4096-token context, no token holds more than 128 bytes: 600 KB of text cannot fit.
  const huge = await post({ ...hi, messages: [{ role: 'user', content: 'a'.repeat(600_000) }] });
  expect(huge.status).toBe(400);
  const hj = (await huge.json()) as ErrorJson;
  expect(hj.error).toMatchObject({ code: 'ERR_CONTEXT_OVERFLOW', param: 'messages' });
  expect(hj.error.message).toMatch(/cannot fit the context: its 600000 bytes of text are at least 4688 tokens/);
  // Nor more than 64 bytes of letters: 300 KB of 'a' is at least 4688 tokens too.
  const letters = await post({ ...hi, messages: [{ role: 'user', content: 'a'.repeat(300_000) }] });
  expect(letters.status).toBe(400);
  expect(((await letters.json()) as ErrorJson).error.message).toMatch(/its 300000 bytes of text are at least 4688 tokens/);
  // 60000 'a' is 7500 tokens: under the bound (938), over the context: tokenized (in the worker) and
  // refused by the exact count, while /health keeps answering.
  // (Whether it is still running when /health answers depends on the machine's speed, so it is not asserted.)
  const big = post({ ...hi, messages: [{ role: 'user', content: 'a'.repeat(60_000) }] }).then(async (r) => ({
    status: r.status,
    body: (await r.json()) as ErrorJson,
  }));
  const health = await fetch(`${srv.url}/health`);
  expect(health.status).toBe(200);
  const b = await big;
  expect(b.status).toBe(400);
  expect(b.body.error.code).toBe('ERR_CONTEXT_OVERFLOW');
  expect(b.body.error.message).toMatch(/the prompt is \d+ tokens/);
});
