/**
 * The bound that refuses prompts before tokenizing (issue 19) must never refuse one that fits: on
 * generated texts (runs of letters, spaces, digits, punctuation, CJK, emoji, special-token strings,
 * mixed), the lower bound is at most the real token count of the rendered prompt. And the worker's ids
 * are the ids the model builds itself.
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadModel, PerceptionLM } from '../lib/model';
import { classBytes, promptLowerBound, PromptTokenizer, tokenClassMaxima } from '../lib/server_tokenizer';
import { Gen, prng } from './helpers/server_fuzz';

const root = path.resolve(__dirname, '..');
let model: PerceptionLM;

beforeAll(async () => {
  model = await loadModel(path.join(root, 'models', 'plm-tiny-random'), { backend: 'cpu', maxContext: 4096 });
});
afterAll(() => model?.dispose());

const RUNS: Array<(g: Gen, n: number) => string> = [
  (_g, n) => 'a'.repeat(n),
  (_g, n) => ' '.repeat(n),
  (_g, n) => '-'.repeat(n),
  (_g, n) => '1'.repeat(n),
  (_g, n) => 'џ'.repeat(n),
  (_g, n) => '漢'.repeat(n),
  (_g, n) => '😀'.repeat(n),
  (_g, n) => '\n'.repeat(n),
  (g, n) => Array.from({ length: n }, () => String.fromCharCode(g.int(0x61, 0x7a))).join(''),
  (g, n) => Array.from({ length: n }, () => g.pick(['the ', 'cat ', 'sat ', 'on ', 'a ', 'mat. ', 'Hello, ', 'world! '])).join(''),
  (g, n) => Array.from({ length: Math.ceil(n / 10) }, () => g.pick(['<|eot_id|>', '<|begin_of_text|>', '<|image|>', '<|start_header_id|>'])).join(''),
  (g, n) => g.text(n),
];

test('the lower bound never exceeds the real token count (400 generated prompts)', async () => {
  const tj = JSON.parse(fs.readFileSync(path.join(model.dir, 'tokenizer.json'), 'utf8')) as Parameters<typeof tokenClassMaxima>[0];
  const maxima = tokenClassMaxima(tj);
  expect(maxima.total).toBe(128);
  expect(maxima.letters).toBe(64);
  const tok = model.tokenizer;
  if (!tok) throw new Error('the test model has a tokenizer');
  const g = new Gen(prng(1912));
  let tight = 0;
  for (let i = 0; i < 400; i++) {
    let text = '';
    for (let k = g.int(1, 4); k > 0; k--) text += g.pick(RUNS)(g, g.int(1, 2000));
    const messages = [{ role: 'user', content: text }];
    const bound = promptLowerBound(messages, maxima, model.config.tokens_per_tile).tokens;
    // The rendered prompt's tokens (what the server's worker computes; buildInput would also refuse
    // texts that spell out <|image|>, which is not what is measured here).
    const real = tok.encode(model.chatTemplate.render(messages, { addGenerationPrompt: true })).length;
    if (bound > real) throw new Error(`bound ${bound} > real ${real} for ${JSON.stringify(text.slice(0, 200))}`);
    if (bound * 8 >= real) tight++;
  }
  // Not vacuous: for a good share of the prompts the bound is within 8x of the truth.
  expect(tight).toBeGreaterThan(40);
}, 600000);

test('classBytes counts UTF-8 bytes per class', () => {
  expect(classBytes('ab 12-')).toEqual({ total: 6, letters: 2, digits: 2, spaces: 1, other: 1 });
  expect(classBytes('џ漢😀٣\u3000')).toEqual({ total: 2 + 3 + 4 + 2 + 3, letters: 5, digits: 2, spaces: 3, other: 4 });
  expect(classBytes('\ud800x').total).toBe(Buffer.byteLength('\ud800x'));
});

test("the worker's ids equal model.buildInput's (text and image placeholders, BOS once)", async () => {
  const pt = new PromptTokenizer(model);
  try {
    const msgs = [
      { role: 'system', content: '  Be brief.  ' },
      { role: 'user', content: [{ type: 'image' as const, image: 0 }, { type: 'text' as const, text: 'What is this? <|eot_id|> 漢字' }] },
      { role: 'assistant', content: 'A cat.' },
      { role: 'user', content: [{ type: 'text' as const, text: 'And this?' }, { type: 'image' as const, image: 1 }] },
    ];
    const ids = await pt.tokenize(msgs, new AbortController().signal);
    expect(pt.mode).toBe('worker');
    const tok = model.tokenizer;
    if (!tok) throw new Error('tokenizer');
    const text = model.chatTemplate.render(msgs, { addGenerationPrompt: true });
    expect(Array.from(ids)).toEqual(tok.encode(text));
    expect(ids.filter((id) => id === model.config.image_token_id).length).toBe(2);
  } finally {
    await pt.close();
  }
});
