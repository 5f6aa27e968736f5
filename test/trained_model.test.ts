/**
 * The bundled trained default (models/plm-tiny, training/) against transformers' whole pipeline on
 * 20 held-out images (training/make_e2e_fixture.py): the same prompt ids and, with greedy decoding,
 * the same generated ids, through our image processor, template, tokenizer, model and sampler.
 * The fixture keeps only cases whose greedy steps all have a top-1 margin >= golden.min_margin, so
 * identical ids are expected from any correct float32 engine.
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadModel, PerceptionLM } from '../lib';

const ROOT = path.join(__dirname, '..');
const DIR = path.join(__dirname, 'fixtures', 'e2e_trained');
const MODEL = path.join(ROOT, 'models', 'plm-tiny');

interface Case {
  image: string;
  seed: number;
  prompt: string;
  expected_answer: string;
  input_ids: number[];
  generated_ids: number[];
  generated_text: string;
  min_margin: number;
}
interface Golden { max_new_tokens: number; min_margin: number; cases: Case[] }

const golden = JSON.parse(fs.readFileSync(path.join(DIR, 'golden.json'), 'utf8')) as Golden;

let model: PerceptionLM;
beforeAll(async () => {
  model = await loadModel(MODEL, { backend: 'cpu', precision: 'f32' });
});
afterAll(() => model?.dispose());

test('the fixture has 20 held-out cases, each with a greedy margin of at least 0.1', () => {
  expect(golden.cases).toHaveLength(20);
  expect(golden.min_margin).toBeGreaterThanOrEqual(0.1);
  for (const c of golden.cases) {
    expect(c.min_margin).toBeGreaterThanOrEqual(golden.min_margin);
    expect(c.seed).toBeGreaterThanOrEqual(9_000_000); // test-range seeds: never used in training
  }
});

describe.each(golden.cases.map((c, i) => [i, c] as const))('case %i', (_i, c) => {
  const messages = [{ role: 'user' as const, content: [
    { type: 'image' as const, image: path.join(DIR, c.image) },
    { type: 'text' as const, text: c.prompt },
  ] }];

  test(`"${c.prompt}": prompt ids and greedy ids equal transformers generate()`, async () => {
    const built = await model.buildInput({ messages });
    expect(Array.from(built.inputIds)).toEqual(c.input_ids);
    const r = await model.complete({ messages, maxTokens: golden.max_new_tokens, temperature: 0 });
    expect(r.tokenIds).toEqual(c.generated_ids);
    expect(r.text).toBe(c.generated_text);
  });
});
