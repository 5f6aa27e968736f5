/**
 * The CPU fast paths that the float32 fixture tests do not exercise, held to their stated bounds
 * (benchmarks/RESULTS.md, README "Quantization"):
 *   - precision 'bf16' (the AMX or AVX512-BF16 GEMM and flash attention where the CPU has them, f32 kernels
 *     elsewhere; test/cpu_isa.test.ts runs this file again at every lower PLM_CPU_ISA level):
 *     logits within 0.5 of the golden (max |logit| ~16) and greedy ids identical on the vision fixtures;
 *   - quantize 'int8' / 'q4' at load: logits close to the unquantized model (relative RMS error), decode runs;
 *   - an unknown quantize value is ERR_INVALID_ARGUMENT.
 */
import * as path from 'path';
import { loadModel } from '../lib';
import { readSafetensors, maxAbsDiff, toIntArray } from './helpers/safetensors';

jest.setTimeout(120000);
const FIXTURES = path.join(__dirname, 'fixtures');

describe.each(['vision/pe_l_cls_2tiles', 'vision/video_pe_l_3frames'])('bf16 path on %s', (name) => {
  test('logits within 0.5 of the golden, greedy ids identical', async () => {
    const dir = path.join(FIXTURES, name);
    const golden = readSafetensors(path.join(dir, 'golden.safetensors'));
    const ids = toIntArray(golden.input_ids);
    const px = golden.pixel_values ?? golden.pixel_values_videos;
    const model = await loadModel(dir, { backend: 'cpu', precision: 'bf16' });
    try {
      const r = await model.forward({ inputIds: ids, pixelValues: px.data as Float32Array, numTiles: px.shape[0], dump: true });
      const V = model.config.text.vocab_size;
      const rows = toIntArray(golden.logits_rows);
      const want = golden.logits.data as Float32Array;
      rows.forEach((row, i) => {
        expect(maxAbsDiff(r.logits.subarray(row * V, (row + 1) * V), want.subarray(i * V, (i + 1) * V))).toBeLessThanOrEqual(0.5);
      });
      const wantIds = toIntArray(golden['greedy.ids']);
      const g = await model.complete({
        inputIds: ids,
        pixelValues: px.data as Float32Array,
        numTiles: px.shape[0],
        maxTokens: wantIds.length,
        temperature: 0,
      });
      expect(g.tokenIds).toEqual(wantIds);
    } finally {
      model.dispose();
    }
  });
});

function relRms(a: Float32Array, b: Float32Array): number {
  let se = 0, ss = 0;
  for (let i = 0; i < a.length; i++) {
    se += (a[i] - b[i]) ** 2;
    ss += a[i] ** 2;
  }
  return Math.sqrt(se / ss);
}

describe('weight-only quantization at load', () => {
  const dir = path.join(FIXTURES, 'text/tied_llama3_gqa4_hd64_bf16_v5_sharded');
  const ids = Int32Array.from({ length: 24 }, (_, i) => (1 + i * 37) % 384);
  let ref: Float32Array;
  beforeAll(async () => {
    const m = await loadModel(dir, { backend: 'cpu', precision: 'f32' });
    ref = (await m.forward({ inputIds: ids, dump: true })).logits;
    m.dispose();
  });
  test.each([
    ['int8', 0.1],
    ['q4', 1.0],
  ] as const)('%s: logits close to the unquantized model, decode runs', async (quantize, bound) => {
    const m = await loadModel(dir, { backend: 'cpu', precision: 'f32', quantize });
    try {
      const got = (await m.forward({ inputIds: ids, dump: true })).logits;
      expect(got.length).toBe(ref.length);
      expect(relRms(ref, got)).toBeLessThan(bound);
      const g = await m.complete({ inputIds: ids, maxTokens: 8, temperature: 0 });
      expect(g.tokenIds.length).toBeGreaterThan(0);
    } finally {
      m.dispose();
    }
  });
  test('an unknown quantize value is ERR_INVALID_ARGUMENT', async () => {
    await expect(loadModel(dir, { backend: 'cpu', quantize: 'int3' as never })).rejects.toMatchObject({ code: 'ERR_INVALID_ARGUMENT' });
  });
});
