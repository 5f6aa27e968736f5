/**
 * End to end against transformers' whole pipeline (reference/make_fixtures.py --only e2e): an image
 * file (or video frames) through our image processor, chat template, tokenizer, model and greedy
 * generation gives the same prompt ids and the same generated ids as PerceptionLMProcessor +
 * model.generate on the bundled checkpoint.
 */
import * as fs from 'fs';
import * as path from 'path';
import { loadModel, PerceptionLM } from '../lib';
import { readSafetensors, maxAbsDiff } from './helpers/safetensors';

const ROOT = path.join(__dirname, '..');
const E2E = path.join(__dirname, 'fixtures', 'e2e');

interface Golden {
  messages: { role: string; content: { type: string; text?: string; path?: string | string[] }[] }[];
  input_ids: number[];
  generated_ids: number[];
  rendered_prompt: string;
  tolerance_abs: number;
}

let model: PerceptionLM;
beforeAll(async () => {
  model = await loadModel(path.join(ROOT, 'models', 'plm-tiny-random'), { backend: 'cpu', precision: 'f32' });
});
afterAll(() => model?.dispose());

function messagesFor(dir: string, g: Golden) {
  return g.messages.map((m) => ({
    role: m.role,
    content: m.content.map((part) => {
      if (part.type === 'image') return { type: 'image' as const, image: path.join(dir, part.path as string) };
      if (part.type === 'video') {
        return { type: 'video' as const, video: (part.path as string[]).map((f) => path.join(dir, f)) };
      }
      return { type: 'text' as const, text: part.text ?? '' };
    }),
  }));
}

describe.each(['tiny_image', 'tiny_video'])('%s', (name) => {
  const dir = path.join(E2E, name);
  const g = JSON.parse(fs.readFileSync(path.join(dir, 'golden.json'), 'utf8')) as Golden;

  test('the prompt ids (template, tokenizer, placeholder expansion) are identical', async () => {
    const built = await model.buildInput({ messages: messagesFor(dir, g), numFrames: 3 });
    expect(built.text).toBe(g.rendered_prompt);
    expect(Array.from(built.inputIds)).toEqual(g.input_ids);
  });

  test('the pixel values and the last prompt row of logits match', async () => {
    const golden = readSafetensors(path.join(dir, 'golden.safetensors'));
    const built = await model.buildInput({ messages: messagesFor(dir, g), numFrames: 3 });
    const px = golden.pixel_values ?? golden.pixel_values_videos;
    expect(built.pixelValues).not.toBeNull();
    // One uint8 level is 1/127.5 after normalization; the processor matches exactly.
    expect(maxAbsDiff(built.pixelValues!, px.data as Float32Array)).toBeLessThanOrEqual(1 / 127.5);
    const r = await model.forward({ inputIds: built.inputIds, pixelValues: built.pixelValues, logitsRows: 'last' });
    expect(maxAbsDiff(r.logits, golden.logits.data as Float32Array)).toBeLessThanOrEqual(g.tolerance_abs);
  });

  test('greedy generation gives the same ids as transformers generate()', async () => {
    const r = await model.complete({ messages: messagesFor(dir, g), numFrames: 3, maxTokens: g.generated_ids.length, temperature: 0 });
    expect(r.tokenIds).toEqual(g.generated_ids);
    expect(r.timings.promptTokens).toBe(g.input_ids.length);
  });
});
