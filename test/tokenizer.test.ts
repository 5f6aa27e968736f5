import * as fs from 'fs';
import * as path from 'path';
import { PlmTokenizer } from '../lib/tokenizer';

interface TokCase {
  text: string;
  ids: number[];
  ids_special: number[];
  decoded?: string;
  decoded_skip_special?: string;
}

const ROOT = path.resolve(__dirname, '..');
const LLAMA3_DIR = path.join(ROOT, 'node_modules', '@lenml', 'tokenizer-llama3', 'models');
const FIX = path.join(ROOT, 'test', 'fixtures', 'tokenizer');

function readJson<T>(file: string): T {
  return JSON.parse(fs.readFileSync(file, 'utf8')) as T;
}

/** The PLM tokenizer: Llama 3 with 128002/128003 named <|image|>/<|video|> and a BOS post-processor. */
function plmTokenizerJson(): Record<string, unknown> {
  const tj = readJson<{ added_tokens: Array<{ id: number; content: string }>; post_processor: unknown }>(
    path.join(LLAMA3_DIR, 'tokenizer.json'),
  );
  for (const t of tj.added_tokens) {
    if (t.id === 128002) t.content = '<|image|>';
    if (t.id === 128003) t.content = '<|video|>';
  }
  return tj as unknown as Record<string, unknown>;
}

const llama3Cases = readJson<TokCase[]>(path.join(FIX, 'llama3_cases.json'));
const llama3 = PlmTokenizer.fromDirectory(LLAMA3_DIR);

describe('Llama 3 tokenizer parity with Python tokenizers', () => {
  test('the corpus is non-trivial', () => {
    expect(llama3Cases.length).toBeGreaterThan(30);
  });

  test.each(llama3Cases.map((c, i) => [i, JSON.stringify(c.text).slice(0, 60), c] as const))(
    'case %i %s: encode ids',
    (_i, _name, c) => {
      expect(llama3.encode(c.text)).toEqual(c.ids);
    },
  );

  test.each(
    llama3Cases.filter((c) => c.decoded !== undefined).map((c, i) => [i, JSON.stringify(c.text).slice(0, 60), c] as const),
  )('case %i %s: decode', (_i, _name, c) => {
    // Python tokenizers' Tokenizer.decode applies no clean-up of tokenization spaces.
    expect(llama3.decode(c.ids, { skipSpecialTokens: false, cleanUpTokenizationSpaces: false })).toBe(c.decoded);
    expect(llama3.decode(c.ids, { skipSpecialTokens: true, cleanUpTokenizationSpaces: false })).toBe(c.decoded_skip_special);
  });
});

describe('PLM tokenizer (PLM special-token names)', () => {
  const plmCasesPath = path.join(FIX, 'plm_cases.json');
  const bundledDir = path.join(ROOT, 'models', 'plm-tiny-random');
  const plm = fs.existsSync(path.join(bundledDir, 'tokenizer.json'))
    ? PlmTokenizer.fromDirectory(bundledDir)
    : new PlmTokenizer(plmTokenizerJson(), { bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>' });
  const cases = fs.existsSync(plmCasesPath) ? readJson<TokCase[]>(plmCasesPath) : [];

  test('special ids', () => {
    expect(plm.special.bos).toBe(128000);
    expect(plm.special.endOfText).toBe(128001);
    expect(plm.special.image).toBe(128002);
    expect(plm.special.video).toBe(128003);
    expect(plm.special.eot).toBe(128009);
    expect(plm.special.eos).toBe(128009);
    expect(plm.isSpecial(128002)).toBe(true);
    expect(plm.isSpecial(9906)).toBe(false);
  });

  test('placeholders are single ids', () => {
    expect(plm.encode('<|image|><|image|><|video|>two')).toEqual([128002, 128002, 128003, 20375]);
  });

  test.each(cases.map((c, i) => [i, JSON.stringify(c.text).slice(0, 60), c] as const))('plm case %i %s', (_i, _n, c) => {
    // encode() never adds BOS (the chat template writes it).
    expect(plm.encode(c.text)).toEqual(c.ids);
    if (c.decoded !== undefined) {
      expect(plm.decode(c.ids, { skipSpecialTokens: false, cleanUpTokenizationSpaces: false })).toBe(c.decoded);
      expect(plm.decode(c.ids, { skipSpecialTokens: true, cleanUpTokenizationSpaces: false })).toBe(c.decoded_skip_special);
    }
  });
});

describe('incremental detokenizer', () => {
  const texts = [
    ...llama3Cases.map((c) => c.text).filter((t) => t.length > 0 && !t.includes('<|')),
    'emoji 😀😃😄 and 👍🏽 thumbs, family 👨‍👩‍👧‍👦, flags 🇫🇷🇯🇵',
    'Hello , world . How are you ? I \'m fine , don \'t worry !',
    '中文测试：今天天气很好 — 東京 ☕ ♻️',
  ];

  test.each(texts.map((t, i) => [i, JSON.stringify(t).slice(0, 50), t] as const))('round trip %i %s', (_i, _n, text) => {
    const ids = llama3.encode(text);
    for (const cleanUp of [false, true]) {
      const stream = llama3.createStreamDecoder({ cleanUpTokenizationSpaces: cleanUp });
      const deltas: string[] = [];
      for (const id of ids) deltas.push(stream.push(id));
      deltas.push(stream.flush());
      for (const d of deltas) expect(d).not.toContain('\uFFFD');
      const full = llama3.decode(ids, { cleanUpTokenizationSpaces: cleanUp });
      expect(deltas.join('')).toBe(full);
      expect(stream.text).toBe(full);
      if (!cleanUp) expect(full).toBe(text);
    }
  });

  test('an emoji split over byte tokens is held back until complete', () => {
    const ids = llama3.encode('😀');
    expect(ids.length).toBeGreaterThan(1);
    const stream = llama3.createStreamDecoder({ cleanUpTokenizationSpaces: false });
    const deltas = ids.map((id) => stream.push(id));
    expect(deltas.slice(0, -1).every((d) => d === '')).toBe(true);
    expect(deltas[deltas.length - 1]).toBe('😀');
  });

  test('special tokens are skipped in the stream by default', () => {
    const stream = llama3.createStreamDecoder();
    const out = [9906, 128009].map((id) => stream.push(id)).join('') + stream.flush();
    expect(out).toBe('Hello');
  });

  test('an incomplete UTF-8 tail is emitted by flush', () => {
    const ids = llama3.encode('a😀');
    const stream = llama3.createStreamDecoder({ cleanUpTokenizationSpaces: false });
    const partial = ids.slice(0, -1).map((id) => stream.push(id)).join('');
    expect(partial).toBe('a');
    const tail = stream.flush();
    expect(partial + tail).toBe(llama3.decode(ids.slice(0, -1)));
  });

  test('with clean-up on, the last characters are held back until flush', () => {
    const ids = llama3.encode("I 'm here , ok");
    const stream = llama3.createStreamDecoder({ cleanUpTokenizationSpaces: true });
    const streamed = ids.map((id) => stream.push(id)).join('');
    expect(streamed.length).toBeLessThan("I'm here, ok".length);
    expect(streamed + stream.flush()).toBe("I'm here, ok");
  });

  test('empty decode', () => {
    expect(llama3.decode([])).toBe('');
    expect(llama3.encode('')).toEqual([]);
  });
});
