/**
 * Structured output through the real engine (`responseFormat` on complete, generate and chats) with the bundled
 * models/plm-tiny, a model that only knows coloured shapes and never writes JSON by itself: under `json_object`
 * and a JSON Schema, greedy and sampled, the text parses and validates (ajv). The engine applied exactly the
 * constraint's masks: with `returnLogits`, the tokens with a finite logit at each step are the ones the
 * constraint allowed there (replayed on a fresh constraint).
 */
import * as path from 'path';
import Ajv from 'ajv';
import { loadModel, PerceptionLM, PlmError } from '../lib';
import type { GenerateOptions, ResponseFormat } from '../lib';
import { compileResponseFormat, JsonTokenConstraint, vocabularyIndexFor } from '../lib/json_constraint';

const ROOT = path.join(__dirname, '..');
const MODEL = path.join(ROOT, 'models', 'plm-tiny');
const IMAGE = path.join(ROOT, 'samples', 'scene1.png');

const SHAPES_SCHEMA = {
  type: 'object',
  properties: {
    objects: {
      type: 'array',
      maxItems: 4,
      items: {
        type: 'object',
        properties: {
          shape: { enum: ['circle', 'square', 'triangle', 'cross', 'star'] },
          colour: { enum: ['red', 'green', 'blue', 'yellow', 'white', 'purple'] },
        },
        required: ['shape', 'colour'],
        additionalProperties: false,
      },
    },
    count: { type: 'integer' },
  },
  required: ['objects', 'count'],
  additionalProperties: false,
};
const SCHEMA_FORMAT: ResponseFormat = { type: 'json_schema', schema: SHAPES_SCHEMA, name: 'shapes', strict: true };

let model: PerceptionLM;
const ajv = new Ajv({ strict: false });
const validateShapes = ajv.compile(SHAPES_SCHEMA);

beforeAll(async () => {
  model = await loadModel(MODEL, { backend: 'cpu' });
});
afterAll(() => model?.dispose());

function request(extra: GenerateOptions = {}): GenerateOptions {
  return {
    messages: [{ role: 'user', content: [{ type: 'image', image: IMAGE }, { type: 'text', text: 'Describe the image.' }] }],
    maxNumTiles: 1,
    maxTokens: 200,
    ...extra,
  };
}

async function rejection(p: Promise<unknown>): Promise<PlmError> {
  try {
    await p;
  } catch (e) {
    return e as PlmError;
  }
  throw new Error('expected a rejection');
}

test('the capability flag is set', () => {
  expect(model.supportsResponseFormat).toBe(true);
});

test('without responseFormat the toy model does not write JSON', async () => {
  const r = await model.complete(request({ temperature: 0 }));
  expect(r.finishReason).toBe('stop');
  expect(() => JSON.parse(r.text)).toThrow();
});

test('json_object, greedy: a JSON object, and the engine applied exactly the constraint masks', async () => {
  const r = await model.complete(request({ temperature: 0, responseFormat: { type: 'json_object' }, returnLogits: true }));
  expect(r.finishReason).toBe('stop');
  const value = JSON.parse(r.text) as unknown;
  expect(typeof value === 'object' && value !== null && !Array.isArray(value)).toBe(true);

  const vocab = model.config.text.vocab_size;
  const stops = model.config.generation?.eos_token_ids ?? [];
  const replay = new JsonTokenConstraint(await vocabularyIndexFor(model.tokenizer!, vocab), compileResponseFormat({ type: 'json_object' })!, stops);
  const logits = r.logits as Float32Array;
  expect(logits.length).toBe(r.tokenIds.length * vocab);
  let mask: Uint8Array | null = replay.first();
  r.tokenIds.forEach((id, step) => {
    const row = logits.subarray(step * vocab, (step + 1) * vocab);
    for (let t = 0; t < vocab; t++) {
      const allowed = ((mask as Uint8Array)[t >> 3] & (1 << (t & 7))) !== 0;
      if (allowed !== Number.isFinite(row[t])) throw new Error(`step ${step}, token ${t}: allowed ${allowed}, logit ${row[t]}`);
    }
    expect(Number.isFinite(row[id])).toBe(true);
    mask = replay.next(id);
  });
  expect(stops).toContain(r.tokenIds[r.tokenIds.length - 1]);
});

test('json_schema, greedy and sampled: the output validates against the schema', async () => {
  const runs = [
    await model.complete(request({ temperature: 0, responseFormat: SCHEMA_FORMAT })),
    ...(await Promise.all([1, 2, 3].map((seed) => model.complete(request({ temperature: 1, seed, responseFormat: SCHEMA_FORMAT }))))),
  ];
  for (const r of runs) {
    expect(r.finishReason).toBe('stop');
    const value = JSON.parse(r.text) as Record<string, unknown>;
    if (!validateShapes(value)) throw new Error(`${r.text}: ${ajv.errorsText(validateShapes.errors)}`);
    expect(Object.keys(value)).toEqual(['objects', 'count']);
  }
});

test('generate() streams the same document as complete()', async () => {
  const options = request({ temperature: 0, responseFormat: SCHEMA_FORMAT });
  let streamed = '';
  for await (const chunk of model.generate(options)) streamed += chunk.text;
  const r = await model.complete(options);
  expect(streamed).toBe(r.text);
  expect(validateShapes(JSON.parse(streamed))).toBe(true);
});

test('a chat with a responseFormat default answers every turn with valid JSON, and a turn can override it', async () => {
  const chat = model.createChat({ responseFormat: SCHEMA_FORMAT, temperature: 0 });
  try {
    const first = await chat.send({ text: 'Describe the image.', images: [IMAGE] }, { maxNumTiles: 1, maxTokens: 200 });
    expect(validateShapes(JSON.parse(first.text))).toBe(true);
    let streamed = '';
    for await (const c of chat.stream('And again, please.', { maxTokens: 200 })) streamed += c.text;
    expect(validateShapes(JSON.parse(streamed))).toBe(true);
    const free = await chat.send('Describe it in words.', { maxTokens: 40, responseFormat: { type: 'text' } });
    expect(free.text.length).toBeGreaterThan(0);
    expect(chat.history).toHaveLength(6);
    expect(chat.history[1].content).toBe(first.text);
  } finally {
    chat.dispose();
  }
});

test('maxTokens running out ends with finishReason "length" and an unfinished document', async () => {
  const r = await model.complete(request({ temperature: 0, maxTokens: 3, responseFormat: SCHEMA_FORMAT }));
  expect(r.finishReason).toBe('length');
  expect(r.tokenIds).toHaveLength(3);
  expect(() => JSON.parse(r.text)).toThrow();
  expect(r.text.startsWith('{')).toBe(true);
});

test('strings are returned byte for byte (no tokenizer space clean-up), emoji included', async () => {
  const text = 'a , b ? don \'t 😀';
  const schema = { type: 'object', properties: { v: { const: text }, w: { enum: ['x . y', 'z !'] } }, required: ['v', 'w'] };
  for (const seed of [1, 2]) {
    const r = await model.complete(request({ temperature: 1, seed, responseFormat: { type: 'json_schema', schema } }));
    expect(r.finishReason).toBe('stop');
    const value = JSON.parse(r.text) as { v: string; w: string };
    expect(value.v).toBe(text);
    expect(['x . y', 'z !']).toContain(value.w);
  }
});

test('concurrent requests with different formats each keep their own constraint', async () => {
  const [a, b, c] = await Promise.all([
    model.complete(request({ temperature: 0, responseFormat: { type: 'json_object' } })),
    model.complete(request({ temperature: 1, seed: 8, responseFormat: SCHEMA_FORMAT })),
    model.complete(request({ temperature: 0, maxTokens: 30 })),
  ]);
  expect([a.finishReason, b.finishReason]).toEqual(['stop', 'stop']);
  expect(typeof JSON.parse(a.text)).toBe('object');
  expect(validateShapes(JSON.parse(b.text))).toBe(true);
  expect(c.text.length).toBeGreaterThan(0);
});

test('bad formats are rejected before generating, naming the problem', async () => {
  let e = await rejection(model.complete(request({ responseFormat: { type: 'json_schema', schema: { type: 'string', pattern: 'a+' } } })));
  expect(e.code).toBe('ERR_INVALID_ARGUMENT');
  expect(e.message).toContain("'pattern'");
  e = await rejection(model.complete(request({ responseFormat: { type: 'json_object' }, stop: ['}'] })));
  expect(e.code).toBe('ERR_INVALID_ARGUMENT');
  expect(e.message).toContain('stop');
  e = await rejection(model.complete(request({ responseFormat: { type: 'yaml' } as unknown as ResponseFormat })));
  expect(e.code).toBe('ERR_INVALID_ARGUMENT');
  expect(e.message).toContain('yaml');
});

test('an aborted structured generation ends as "cancelled"', async () => {
  const controller = new AbortController();
  controller.abort();
  const r = await model.complete(request({ responseFormat: SCHEMA_FORMAT, signal: controller.signal }));
  expect(r.finishReason).toBe('cancelled');
});
