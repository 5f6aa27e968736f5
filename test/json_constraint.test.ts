/**
 * Structured output's token masks (lib/json_constraint.ts, lib/json_grammar.ts) on the real Llama 3 vocabulary
 * (models/plm-tiny's tokenizer), without the engine:
 * - a seeded random "model" picks among the allowed tokens for generated schemas: every completed document
 *   parses and validates (ajv, ajv-formats), a mask never empties before the document is complete, and the masks
 *   equal a brute-force check of every token against the automaton (which covers the bit-set fast paths);
 * - unsupported keywords and malformed formats give ERR_INVALID_ARGUMENT naming the keyword;
 * - tokens that are partial UTF-8 sequences (an emoji split into bytes) are allowed exactly where they fit.
 */
import * as path from 'path';
import Ajv from 'ajv';
import addFormats from 'ajv-formats';
import { PlmTokenizer } from '../lib/tokenizer';
import { compileResponseFormat, JsonTokenConstraint, validateResponseFormat, VocabularyIndex } from '../lib/json_constraint';
import { canEnd, Frame, initialFrame, step } from '../lib/json_grammar';
import { TokenTrieBuilder } from '../lib/token_trie';
import { PlmError } from '../lib/errors';

const TOKENIZER_DIR = path.join(__dirname, '..', 'models', 'plm-tiny');
const VOCAB = 128256;
const EOT = 128009;
const STOPS = [128001, EOT];

let tokenizer: PlmTokenizer;
let index: VocabularyIndex;
const ajv = new Ajv({ strict: false, allErrors: true });
addFormats(ajv);

beforeAll(async () => {
  tokenizer = PlmTokenizer.fromDirectory(TOKENIZER_DIR);
  index = await VocabularyIndex.build(tokenizer, VOCAB);
});

/** mulberry32 */
function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const POPCOUNT = Uint8Array.from({ length: 256 }, (_, b) => {
  let n = 0;
  for (let x = b; x; x >>= 1) n += x & 1;
  return n;
});

function countBits(mask: Uint8Array): number {
  let n = 0;
  for (let i = 0; i < mask.length; i++) n += POPCOUNT[mask[i]];
  return n;
}

/** The id of the k-th set bit. */
function kthBit(mask: Uint8Array, k: number): number {
  for (let i = 0; i < mask.length; i++) {
    const c = POPCOUNT[mask[i]];
    if (k >= c) {
      k -= c;
      continue;
    }
    for (let b = 0; b < 8; b++) {
      if (mask[i] & (1 << b)) {
        if (k === 0) return i * 8 + b;
        k--;
      }
    }
  }
  throw new Error('k out of range');
}

function has(mask: Uint8Array, id: number): boolean {
  return (mask[id >> 3] & (1 << (id & 7))) !== 0;
}

function advance(configs: Frame[], bytes: Uint8Array): Frame[] {
  let cur = configs;
  for (const b of bytes) {
    const out: Frame[] = [];
    for (const f of cur) step(f, b, out);
    cur = out;
    if (cur.length === 0) break;
  }
  return cur;
}

/** Every token checked one by one against the automaton: the mask the constraint must give. */
function bruteForceMask(configs: Frame[]): Uint8Array {
  const mask = new Uint8Array(index.maskBytes);
  for (let id = 0; id < VOCAB; id++) {
    const bytes = index.bytesOf(id);
    if (bytes.length === 0) continue;
    if (advance(configs, bytes).length > 0) mask[id >> 3] |= 1 << (id & 7);
  }
  if (configs.some(canEnd)) for (const id of STOPS) mask[id >> 3] |= 1 << (id & 7);
  return mask;
}

function firstDifference(a: Uint8Array, b: Uint8Array): string {
  for (let id = 0; id < VOCAB; id++) {
    if (has(a, id) !== has(b, id)) {
      return `token ${id} ${JSON.stringify(Buffer.from(index.bytesOf(id)).toString('latin1'))}: mask ${has(a, id)}, brute force ${has(b, id)}`;
    }
  }
  return 'none';
}

/** Tokens with structure characters: the random model prefers them so that documents end. */
let structural: Uint8Array;
function structuralTokens(): Uint8Array {
  if (!structural) {
    structural = new Uint8Array(index.maskBytes);
    for (let id = 0; id < VOCAB; id++) {
      const bytes = index.bytesOf(id);
      if (bytes.length > 0 && bytes.length <= 3 && bytes.some((b) => '"{}[],:'.includes(String.fromCharCode(b)))) {
        structural[id >> 3] |= 1 << (id & 7);
      }
    }
  }
  return structural;
}

interface Run {
  ids: number[];
  text: string;
  complete: boolean;
  steps: number;
  bruteChecks: number;
}

/**
 * Generates with a seeded random model through the constraint. Checks at every step that the mask is not empty,
 * and on a share of steps that it equals the brute-force mask.
 */
function randomGeneration(format: unknown, seed: number, maxSteps: number, bruteEvery: number): Run {
  const grammar = compileResponseFormat(format);
  if (!grammar) throw new Error('no grammar');
  const c = new JsonTokenConstraint(index, grammar, STOPS);
  const r = rng(seed);
  let shadow: Frame[] = [initialFrame(grammar)];
  let mask = c.first();
  const ids: number[] = [];
  const tmp = new Uint8Array(index.maskBytes);
  const structure = structuralTokens();
  let bruteChecks = 0;
  for (let s = 0; s < maxSteps; s++) {
    const n = countBits(mask);
    if (n === 0) throw new Error(`dead end after ${JSON.stringify(tokenizer.decode(ids, { cleanUpTokenizationSpaces: false }))}`);
    if (bruteEvery > 0 && s % bruteEvery === bruteEvery - 1) {
      const expected = bruteForceMask(shadow);
      if (!Buffer.from(mask).subarray(0, expected.length).equals(Buffer.from(expected))) {
        throw new Error(`mask differs from brute force after ${JSON.stringify(Buffer.from(ids.flatMap((id) => [...index.bytesOf(id)])).toString())}: ${firstDifference(mask, expected)}`);
      }
      bruteChecks++;
    }
    let pick: number;
    if (has(mask, EOT) && (n === STOPS.length || r() < 0.7)) pick = EOT;
    else {
      for (let i = 0; i < tmp.length; i++) tmp[i] = mask[i] & structure[i];
      for (const id of STOPS) tmp[id >> 3] &= ~(1 << (id & 7));
      const ns = countBits(tmp);
      // Structure tokens more often as the document grows, so that it ends.
      if (ns > 0 && r() < 0.5 + s / (2 * maxSteps)) pick = kthBit(tmp, Math.floor(r() * ns));
      else {
        do pick = kthBit(mask, Math.floor(r() * n));
        while (STOPS.includes(pick) && n > STOPS.length);
      }
    }
    const next = c.next(pick);
    if (STOPS.includes(pick)) {
      expect(next).toBeNull();
      expect(shadow.some(canEnd)).toBe(true);
      return { ids, text: decodeBytes(ids), complete: true, steps: s + 1, bruteChecks };
    }
    ids.push(pick);
    shadow = advance(shadow, index.bytesOf(pick));
    expect(shadow.length).toBeGreaterThan(0);
    mask = next as Uint8Array;
  }
  return { ids, text: decodeBytes(ids), complete: false, steps: maxSteps, bruteChecks };
}

/** The generated bytes as text: must be valid UTF-8 and agree with the tokenizer's decoding. */
function decodeBytes(ids: number[]): string {
  const bytes = Buffer.concat(ids.map((id) => Buffer.from(index.bytesOf(id))));
  const text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
  expect(tokenizer.decode(ids, { cleanUpTokenizationSpaces: false })).toBe(text);
  return text;
}

// --- generated schemas -----------------------------------------------------------------------------------------

const NAMES = ['name', 'colour', 'shape', 'x', 'naïve', 'say "hi"', 'a\\b', 'count', 'tags', 'ok', '', 'emoji😀'];
const POOL: unknown[] = ['red', 'green', 'a , b', 'ünïcödé', '😀', 'quote"d', 'back\\slash', 'new\nline', 1, 2.5, -3, 0, null, true, false, { a: 1 }, [1, 'x']];
const FORMATS = ['date', 'time', 'date-time', 'uuid', 'ipv4'];

function randomSchema(r: () => number, depth: number, defs: Record<string, unknown>): Record<string, unknown> {
  const pick = <T>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];
  const leaves = ['string', 'integer', 'number', 'boolean', 'null', 'enum', 'const', 'format', 'lenstring'];
  const kind = pick(depth <= 0 ? leaves : [...leaves, 'object', 'object', 'array', 'array', 'anyOf', 'nullable', 'ref']);
  switch (kind) {
    case 'string':
    case 'integer':
    case 'number':
    case 'boolean':
    case 'null':
      return { type: kind };
    case 'lenstring': {
      const min = Math.floor(r() * 3);
      return r() < 0.5 ? { type: 'string', minLength: min, maxLength: min + Math.floor(r() * 6) } : { type: 'string', maxLength: Math.floor(r() * 4) };
    }
    case 'enum': {
      const values = [...new Set(Array.from({ length: 1 + Math.floor(r() * 4) }, () => pick(POOL)))];
      return { enum: values };
    }
    case 'const':
      return { const: pick(POOL) };
    case 'format':
      return { type: 'string', format: pick(FORMATS) };
    case 'object': {
      const names = [...new Set(Array.from({ length: 1 + Math.floor(r() * 4) }, () => pick(NAMES)))];
      const properties: Record<string, unknown> = {};
      for (const n of names) properties[n] = randomSchema(r, depth - 1, defs);
      const required = names.filter(() => r() < 0.6);
      return { type: 'object', properties, required, additionalProperties: false };
    }
    case 'array': {
      const s: Record<string, unknown> = { type: 'array', items: randomSchema(r, depth - 1, defs) };
      if (r() < 0.5) s.minItems = Math.floor(r() * 3);
      if (r() < 0.5) s.maxItems = ((s.minItems as number) ?? 0) + Math.floor(r() * 3);
      return s;
    }
    case 'anyOf':
      return { anyOf: Array.from({ length: 2 + Math.floor(r() * 2) }, () => randomSchema(r, depth - 1, defs)) };
    case 'nullable': {
      const t = pick(['string', 'integer', 'number', 'boolean']);
      return { type: [t, 'null'] };
    }
    default: {
      const name = `D${Object.keys(defs).length}`;
      defs[name] = true; // reserved before the recursion adds others
      defs[name] = randomSchema(r, depth - 1, defs);
      return { $ref: `#/$defs/${name}` };
    }
  }
}

function generatedSchema(seed: number): Record<string, unknown> {
  const r = rng(seed * 7919);
  const defs: Record<string, unknown> = {};
  const properties: Record<string, unknown> = {};
  const n = 1 + Math.floor(r() * 4);
  for (let i = 0; i < n; i++) properties[`p${i}`] = randomSchema(r, 3, defs);
  const required = Object.keys(properties).filter(() => r() < 0.7);
  return { type: 'object', properties, required, additionalProperties: false, ...(Object.keys(defs).length ? { $defs: defs } : {}) };
}

describe('random model through the constraint (real Llama 3 vocabulary)', () => {
  test('generated schemas: every completed document parses and validates, no dead ends, masks equal brute force', () => {
    let completed = 0;
    let steps = 0;
    let bruteChecks = 0;
    const SCHEMAS = 60;
    for (let seed = 1; seed <= SCHEMAS; seed++) {
      const schema = generatedSchema(seed);
      const validate = ajv.compile(schema);
      for (let run = 0; run < 2; run++) {
        const r = randomGeneration({ type: 'json_schema', schema }, seed * 100 + run, 160, run === 0 && seed % 4 === 0 ? 23 : 0);
        steps += r.steps;
        bruteChecks += r.bruteChecks;
        if (!r.complete) continue;
        completed++;
        let value: unknown;
        try {
          value = JSON.parse(r.text);
        } catch (e) {
          throw new Error(`schema ${seed}: not JSON: ${r.text}`);
        }
        if (!validate(value)) {
          throw new Error(`schema ${seed} ${JSON.stringify(schema)}\noutput ${r.text}\n${ajv.errorsText(validate.errors)}`);
        }
      }
    }
    expect(steps).toBeGreaterThan(3000);
    expect(bruteChecks).toBeGreaterThan(10);
    // Unfinished runs only ran out of steps (the random model writes long strings); most finish.
    expect(completed).toBeGreaterThan(SCHEMAS * 2 * 0.8);
  });

  test('json_object: any JSON object, ends only when complete', () => {
    let completed = 0;
    for (let seed = 1; seed <= 30; seed++) {
      const r = randomGeneration({ type: 'json_object' }, seed, 300, seed % 5 === 0 ? 17 : 0);
      if (!r.complete) continue;
      completed++;
      const value = JSON.parse(r.text) as unknown;
      expect(typeof value === 'object' && value !== null && !Array.isArray(value)).toBe(true);
      expect(r.text.startsWith('{') && r.text.endsWith('}')).toBe(true);
    }
    expect(completed).toBeGreaterThan(20);
  });

  test('a recursive schema ($ref to the root) completes and validates', () => {
    const schema = {
      type: 'object',
      properties: { name: { enum: ['circle', 'square'] }, children: { type: 'array', items: { $ref: '#' }, maxItems: 2 } },
      required: ['name', 'children'],
      additionalProperties: false,
    };
    const validate = ajv.compile(schema);
    let completed = 0;
    for (let seed = 1; seed <= 10; seed++) {
      const r = randomGeneration({ type: 'json_schema', schema }, seed, 300, seed === 1 ? 13 : 0);
      if (!r.complete) continue;
      completed++;
      expect(validate(JSON.parse(r.text))).toBe(true);
    }
    expect(completed).toBeGreaterThan(5);
  });

  test('the object shapes of the image tasks: exactly the declared keys, in order, enum values only', () => {
    const schema = {
      type: 'object',
      properties: {
        objects: {
          type: 'array',
          minItems: 1,
          maxItems: 3,
          items: {
            type: 'object',
            properties: { shape: { enum: ['circle', 'square', 'triangle'] }, colour: { enum: ['red', 'green', 'blue'] }, size: { type: 'integer' } },
            required: ['shape', 'colour'],
            additionalProperties: false,
          },
        },
      },
      required: ['objects'],
      additionalProperties: false,
    };
    const validate = ajv.compile(schema);
    for (let seed = 1; seed <= 10; seed++) {
      const r = randomGeneration({ type: 'json_schema', schema }, seed, 200, seed === 1 ? 7 : 0);
      expect(r.complete).toBe(true);
      const value = JSON.parse(r.text) as { objects: Array<Record<string, unknown>> };
      expect(validate(value)).toBe(true);
      expect(Object.keys(value)).toEqual(['objects']);
      for (const o of value.objects) expect(Object.keys(o).slice(0, 2)).toEqual(['shape', 'colour']);
    }
  });
});

// --- masks at chosen states ------------------------------------------------------------------------------------

/** The configurations after `text` (bytes), checked to be reachable. */
function configsAfter(format: unknown, text: string | Uint8Array): Frame[] {
  const grammar = compileResponseFormat(format);
  if (!grammar) throw new Error('no grammar');
  const configs = advance([initialFrame(grammar)], typeof text === 'string' ? new TextEncoder().encode(text) : text);
  expect(configs.length).toBeGreaterThan(0);
  return configs;
}

function maskAfter(format: unknown, text: string | Uint8Array): Uint8Array {
  const grammar = compileResponseFormat(format);
  if (!grammar) throw new Error('no grammar');
  const c = new JsonTokenConstraint(index, grammar, STOPS);
  let mask = c.first();
  // Feed the text as single-byte tokens (every byte has one in a byte-level vocabulary).
  for (const b of typeof text === 'string' ? new TextEncoder().encode(text) : text) mask = c.next(byteToken(b)) as Uint8Array;
  return mask;
}

const byteTokenIds = new Map<number, number>();
function byteToken(b: number): number {
  let id = byteTokenIds.get(b);
  if (id === undefined) {
    for (let t = 0; t < VOCAB; t++) {
      const bytes = index.bytesOf(t);
      if (bytes.length === 1 && bytes[0] === b) {
        id = t;
        break;
      }
    }
    if (id === undefined) throw new Error(`no token for byte ${b}`);
    byteTokenIds.set(b, id);
  }
  return id;
}

describe('masks at chosen states equal a brute-force check of every token', () => {
  const lengthSchema = { type: 'json_schema', schema: { type: 'object', properties: { s: { type: 'string', minLength: 2, maxLength: 5 } }, required: ['s'] } };
  const cases: Array<[string, unknown, string]> = [
    ['json_object start', { type: 'json_object' }, ''],
    ['json_object free key', { type: 'json_object' }, '{"ke'],
    ['json_object value', { type: 'json_object' }, '{"a":'],
    ['json_object in a string value', { type: 'json_object' }, '{"a": "hello'],
    ['json_object after an escape', { type: 'json_object' }, '{"a":"x\\'],
    ['json_object in \\u escape', { type: 'json_object' }, '{"a":"x\\u00'],
    ['json_object in a number', { type: 'json_object' }, '{"a":-12.5'],
    ['json_object after a value, indented', { type: 'json_object' }, '{"a":1,\n  "b":[true,\n'],
    ['json_object complete', { type: 'json_object' }, '{"a":{}}'],
    ['string with minLength 2 / maxLength 5, 1 char', lengthSchema, '{"s":"a'],
    ['string with maxLength, 4 chars', lengthSchema, '{"s":"abcd'],
    ['string with maxLength, full', lengthSchema, '{"s":"ab\\ncd'],
    ['enum', { type: 'json_schema', schema: { enum: ['red', 'green', 'a , b', 12, 1.5] } }, ''],
    ['date-time', { type: 'json_schema', schema: { type: 'string', format: 'date-time' } }, '"2024-02-2'],
  ];
  test.each(cases)('%s', (_name, format, text) => {
    const configs = configsAfter(format, text);
    const mask = maskAfter(format, text);
    const expected = bruteForceMask(configs);
    expect(firstDifference(mask, expected)).toBe('none');
  });

  test('after a complete document only the stop tokens are allowed', () => {
    const mask = maskAfter({ type: 'json_object' }, '{"a":[1,2]}');
    expect(countBits(mask)).toBe(STOPS.length);
    for (const id of STOPS) expect(has(mask, id)).toBe(true);
  });

  test('special tokens are never allowed, stop tokens not before the end', () => {
    const mask = maskAfter({ type: 'json_object' }, '{"a":"x');
    for (let id = 128000; id < VOCAB; id++) expect(has(mask, id)).toBe(false);
  });

  test('whitespace between tokens is bounded: one space, or a newline and up to 20 spaces/tabs', () => {
    const format = { type: 'json_object' };
    expect(configsAfter(format, '{ "a" : 1 }').length).toBe(1);
    expect(configsAfter(format, '{\n' + ' '.repeat(20) + '"a":1}').length).toBe(1);
    const grammar = compileResponseFormat(format);
    if (!grammar) throw new Error('no grammar');
    for (const bad of ['{  "a":1}', '{\n' + ' '.repeat(21), '{ \n', '{\n\n', ' {', '{"a":1} ', '{\t"a":1}']) {
      expect(advance([initialFrame(grammar)], new TextEncoder().encode(bad))).toEqual([]);
    }
  });
});

describe('partial UTF-8 tokens', () => {
  const format = { type: 'json_schema', schema: { type: 'object', properties: { s: { type: 'string', maxLength: 3 } }, required: ['s'] } };
  const EMOJI = [0xf0, 0x9f, 0x98, 0x80]; // U+1F600

  function firstBytesAllowed(mask: Uint8Array): Set<number> {
    const firsts = new Set<number>();
    for (let id = 0; id < VOCAB; id++) if (has(mask, id) && index.bytesOf(id).length > 0) firsts.add(index.bytesOf(id)[0]);
    return firsts;
  }

  test('an emoji split into byte tokens: only its valid continuations are allowed, and it counts as one character', () => {
    const prefix = [...new TextEncoder().encode('{"s":"')];
    // After the lead byte F0 the next byte must be 90..BF.
    let firsts = firstBytesAllowed(maskAfter(format, Uint8Array.from([...prefix, 0xf0])));
    expect([...firsts].every((b) => b >= 0x90 && b <= 0xbf)).toBe(true);
    expect(firsts.has(0x9f)).toBe(true);
    // After F0 9F 98 only a continuation byte 80..BF.
    firsts = firstBytesAllowed(maskAfter(format, Uint8Array.from([...prefix, 0xf0, 0x9f, 0x98])));
    expect([...firsts].every((b) => b >= 0x80 && b <= 0xbf)).toBe(true);
    // The whole emoji is one character of maxLength 3: two more characters fit, a third does not.
    const full = [...prefix, ...EMOJI];
    const mask = maskAfter(format, Uint8Array.from([...full, 0x61, 0x62]));
    expect(has(mask, byteToken(0x22))).toBe(true);
    expect(has(mask, byteToken(0x63))).toBe(false);
    expect(JSON.parse(Buffer.from([...full, 0x61, 0x62, 0x22, 0x7d]).toString('utf8'))).toEqual({ s: '😀ab' });
  });

  test('a token that ends in the middle of a character is allowed inside a string, and must be continued', () => {
    // Find a vocabulary token that is complete characters followed by the lead byte of another one (' \xe2').
    const utf8 = new TextDecoder('utf-8', { fatal: true });
    let partial = -1;
    for (let id = 0; id < 128000 && partial < 0; id++) {
      const b = index.bytesOf(id);
      if (b.length < 2 || b[b.length - 1] < 0xe1 || b[b.length - 1] > 0xec) continue;
      try {
        utf8.decode(b.subarray(0, b.length - 1));
        partial = id;
      } catch {
        // not complete characters before the lead byte
      }
    }
    expect(partial).toBeGreaterThanOrEqual(0);
    const inString = maskAfter({ type: 'json_object' }, '{"a":"');
    expect(has(inString, partial)).toBe(true);
    const bytes = [...new TextEncoder().encode('{"a":"'), ...index.bytesOf(partial)];
    const after = maskAfter({ type: 'json_object' }, Uint8Array.from(bytes));
    expect([...firstBytesAllowed(after)].every((b) => b >= 0x80 && b <= 0xbf)).toBe(true);
    expect(has(after, byteToken(0x22))).toBe(false);
  });

  test('partial UTF-8 is never allowed outside strings, and stray continuation bytes never', () => {
    expect(has(maskAfter({ type: 'json_object' }, '{"a":'), byteToken(0xf0))).toBe(false);
    const inString = maskAfter({ type: 'json_object' }, '{"a":"');
    for (const b of [0x80, 0xbf, 0xc0, 0xc1, 0xf5, 0xff]) expect(has(inString, byteToken(b))).toBe(false);
    expect(has(inString, byteToken(0xf0))).toBe(true);
  });

  test('\\u escapes of surrogates are not allowed (the string must parse to well-formed UTF-16)', () => {
    const mask = maskAfter({ type: 'json_object' }, '{"a":"\\ud');
    expect(has(mask, byteToken(0x37))).toBe(true); // \ud7.. is a normal code point
    expect(has(mask, byteToken(0x38))).toBe(false); // \ud8.. starts a surrogate
  });
});

// --- invalid formats and schemas -------------------------------------------------------------------------------

describe('responseFormat validation', () => {
  function rejects(format: unknown, ...words: string[]): void {
    let error: unknown;
    try {
      validateResponseFormat(format);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(PlmError);
    expect((error as PlmError).code).toBe('ERR_INVALID_ARGUMENT');
    for (const w of words) expect((error as PlmError).message).toContain(w);
  }
  const schema = (s: unknown): unknown => ({ type: 'json_schema', schema: s });

  test.each([
    ['pattern', { type: 'string', pattern: '^a+$' }],
    ['minimum', { type: 'integer', minimum: 0 }],
    ['maximum', { type: 'object', properties: { n: { type: 'number', maximum: 3 } } }],
    ['multipleOf', { type: 'number', multipleOf: 2 }],
    ['oneOf', { oneOf: [{ type: 'string' }, { type: 'integer' }] }],
    ['allOf', { allOf: [{ type: 'string' }] }],
    ['not', { not: { type: 'string' } }],
    ['uniqueItems', { type: 'array', items: { type: 'string' }, uniqueItems: true }],
    ['patternProperties', { type: 'object', patternProperties: { '^x': { type: 'string' } } }],
    ['prefixItems', { type: 'array', prefixItems: [{ type: 'string' }] }],
    ['if', { if: { type: 'string' }, then: { minLength: 1 } }],
    ['minProperties', { type: 'object', minProperties: 1 }],
    ['nullable', { type: 'string', nullable: true }],
  ])('unsupported keyword %s is named', (keyword, s) => rejects(schema(s), `'${keyword}'`));

  test('unsupported values and combinations name the keyword', () => {
    rejects(schema({ type: 'string', format: 'email' }), 'format', 'email', 'date-time');
    rejects(schema({ type: 'object', additionalProperties: { type: 'string' } }), 'additionalProperties');
    rejects(schema({ $ref: 'https://example.com/schema.json' }), '$ref', 'local');
    rejects(schema({ $ref: '#/$defs/Missing' }), '$ref', 'Missing');
    rejects(schema({ type: 'array', items: [{ type: 'string' }] }), 'items', 'tuple');
    rejects(schema({ type: 'object', properties: { a: { type: 'string' } }, required: ['b'] }), 'required', "'b'");
    rejects(schema({ enum: [] }), 'enum');
    rejects(schema({ type: 'strng' }), 'type', 'strng');
    rejects(schema({ type: 'integer', minLength: 2 }), 'minLength', 'string');
    rejects(schema({ type: 'string', minLength: 5, maxLength: 2 }), 'minLength');
    rejects(schema({ type: 'string', enum: ['a', 'b'], maxLength: 1 }), 'enum', 'maxLength');
    rejects(schema({ anyOf: [{ type: 'string' }], type: 'string' }), 'anyOf', 'type');
    rejects(schema({ enum: ['a'], const: 'a' }), 'enum', 'const');
    rejects(schema({ type: 'integer', enum: ['x'] }), 'enum', 'integer');
  });

  test('schemas that admit no finite value are refused', () => {
    rejects(schema({ type: 'object', properties: { self: { $ref: '#' } }, required: ['self'] }), 'no finite');
    rejects(schema(false), 'no finite');
  });

  test('the option itself', () => {
    rejects('json', 'responseFormat');
    rejects({ type: 'xml' }, 'responseFormat.type', 'xml');
    rejects({ type: 'json_schema' }, 'responseFormat.schema', 'required');
    rejects({ type: 'json_schema', json_schema: { schema: {} } }, 'responseFormat.json_schema', 'responseFormat.schema');
    rejects({ type: 'json_object', schema: {} }, 'responseFormat.schema');
    rejects({ type: 'json_schema', schema: {}, strict: 'yes' }, 'strict');
    rejects({ type: 'json_schema', schema: 'object' }, 'schema');
  });

  test('accepted: text, json_object, the supported subset with annotations, name and strict', () => {
    expect(compileResponseFormat(undefined)).toBeNull();
    expect(compileResponseFormat({ type: 'text' })).toBeNull();
    expect(compileResponseFormat({ type: 'json_object' })).not.toBeNull();
    const s = {
      $schema: 'https://json-schema.org/draft/2020-12/schema',
      title: 'Receipt',
      type: 'object',
      properties: {
        total: { type: 'number', description: 'the total' },
        items: { type: 'array', items: { $ref: '#/$defs/Item' }, minItems: 1 },
        date: { type: ['string', 'null'], format: 'date' },
        kind: { const: 'receipt' },
      },
      required: ['total', 'items', 'date', 'kind'],
      additionalProperties: false,
      $defs: { Item: { type: 'object', properties: { name: { type: 'string', maxLength: 40 }, price: { type: 'number' } }, required: ['name', 'price'] } },
    };
    expect(compileResponseFormat({ type: 'json_schema', schema: s, name: 'receipt', strict: true })).not.toBeNull();
  });
});

describe('TokenTrie', () => {
  test('each node holds the keys equal to its path, and its subtree range the keys that start with it', () => {
    const r = rng(5);
    const keys: Uint8Array[] = [];
    for (let i = 0; i < 400; i++) keys.push(Uint8Array.from({ length: 1 + Math.floor(r() * 4) }, () => 97 + Math.floor(r() * 3)));
    keys.push(keys[3]); // a duplicate key
    const blob = Buffer.concat(keys.map((k) => Buffer.from(k)));
    const start: number[] = [];
    const end: number[] = [];
    let o = 0;
    for (const k of keys) {
      start.push(o);
      o += k.length;
      end.push(o);
    }
    const b = new TokenTrieBuilder(blob.length, keys.length);
    keys.forEach((_, i) => b.add(blob, start[i], end[i], i));
    const trie = b.finish();
    const text = keys.map((k) => Buffer.from(k).toString('latin1'));
    let nodes = 0;
    const visit = (node: number, prefix: string): void => {
      nodes++;
      const own = [...trie.ids.subarray(trie.tokenStart[node], trie.tokenEnd[node])].sort((x, y) => x - y);
      const below = [...trie.ids.subarray(trie.tokenStart[node], trie.subtreeEnd[node])].sort((x, y) => x - y);
      expect(own).toEqual(text.map((t, i) => (t === prefix ? i : -1)).filter((i) => i >= 0));
      expect(below).toEqual(text.map((t, i) => (t.startsWith(prefix) ? i : -1)).filter((i) => i >= 0));
      for (let c = trie.first[node]; c > 0; c = trie.next[c]) visit(c, prefix + String.fromCharCode(trie.byte[c]));
    };
    visit(0, '');
    expect(nodes).toBe(trie.size);
  });
});
