/**
 * Bad input gets a typed PlmError that names the problem, never a crash or a hang; long work stays
 * off the JS thread and stops on an AbortSignal.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadModel, PerceptionLM, PlmError } from '../lib';
import { copyCheckpoint } from './helpers/checkpoint';

const ROOT = path.join(__dirname, '..');
const TINY = path.join(ROOT, 'models', 'plm-tiny-random');
const TEXT_CASE = path.join(__dirname, 'fixtures', 'text', 'untied_norope_gqa3_hd32_f32_v5');

let scratch: string;
beforeAll(() => {
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-errors-'));
});
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

/** A copy of a checkpoint folder that a test may change or damage. */
const copyCase = (src: string, name: string): string => copyCheckpoint(src, scratch, name);

async function expectCode(p: Promise<unknown>, code: string, messagePart?: RegExp): Promise<PlmError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PlmError);
  expect((err as PlmError).code).toBe(code);
  if (messagePart) expect((err as PlmError).message).toMatch(messagePart);
  return err as PlmError;
}

describe('loading', () => {
  test('a missing directory', async () => {
    await expectCode(loadModel(path.join(scratch, 'nope')), 'ERR_FILE_NOT_FOUND', /not a directory/);
  });

  test('a folder without config.json', async () => {
    const dir = copyCase(TEXT_CASE, 'no-config');
    fs.rmSync(path.join(dir, 'config.json'));
    await expectCode(loadModel(dir), 'ERR_FILE_NOT_FOUND', /config\.json/);
  });

  test('a folder without weights', async () => {
    const dir = copyCase(TEXT_CASE, 'no-weights');
    fs.rmSync(path.join(dir, 'model.safetensors'));
    await expectCode(loadModel(dir), 'ERR_FILE_NOT_FOUND', /model\.safetensors/);
  });

  test('a truncated safetensors file', async () => {
    const dir = copyCase(TEXT_CASE, 'truncated');
    const f = path.join(dir, 'model.safetensors');
    fs.truncateSync(f, Math.floor(fs.statSync(f).size / 2));
    await expectCode(loadModel(dir), 'ERR_FILE_READ', /truncated/);
  });

  test('a file shorter than the 8-byte header length', async () => {
    const dir = copyCase(TEXT_CASE, 'tiny-file');
    fs.writeFileSync(path.join(dir, 'model.safetensors'), Buffer.from([1, 2, 3]));
    await expectCode(loadModel(dir), 'ERR_FILE_READ', /truncated/);
  });

  test('a corrupt safetensors header', async () => {
    const dir = copyCase(TEXT_CASE, 'corrupt-header');
    const f = path.join(dir, 'model.safetensors');
    const buf = fs.readFileSync(f);
    buf.write('}}}}', 12, 'latin1'); // break the JSON right after its opening brace
    fs.writeFileSync(f, buf);
    await expectCode(loadModel(dir), 'ERR_CORRUPT_FILE', /invalid JSON|header/);
  });

  test('a header length that does not fit the file', async () => {
    const dir = copyCase(TEXT_CASE, 'bad-length');
    const f = path.join(dir, 'model.safetensors');
    const buf = fs.readFileSync(f);
    buf.writeBigUInt64LE(BigInt(buf.length * 4), 0);
    fs.writeFileSync(f, buf);
    await expectCode(loadModel(dir), 'ERR_CORRUPT_FILE', /header length/);
  });

  test('a shape that does not match config.json', async () => {
    const dir = copyCase(TEXT_CASE, 'shape');
    const cfgPath = path.join(dir, 'config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
    cfg.text_config.intermediate_size += 8;
    fs.writeFileSync(cfgPath, JSON.stringify(cfg));
    await expectCode(loadModel(dir), 'ERR_SHAPE_MISMATCH', /mlp\.gate_proj\.weight.*has shape/);
  });

  test('an unsupported tensor dtype', async () => {
    const dir = copyCase(TEXT_CASE, 'dtype');
    const f = path.join(dir, 'model.safetensors');
    const buf = fs.readFileSync(f);
    const n = Number(buf.readBigUInt64LE(0));
    const header = buf.subarray(8, 8 + n).toString('latin1').replace('"F32"', '"F64"');
    buf.write(header, 8, 'latin1');
    fs.writeFileSync(f, buf);
    await expectCode(loadModel(dir), 'ERR_UNSUPPORTED_DTYPE', /F64/);
  });

  test('an unsupported vision architecture', async () => {
    const dir = copyCase(TEXT_CASE, 'arch');
    const cfgPath = path.join(dir, 'config.json');
    const cfg = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
    cfg.vision_config.architecture = 'vit_huge_patch14_224';
    fs.writeFileSync(cfgPath, JSON.stringify(cfg));
    await expectCode(loadModel(dir), 'ERR_UNSUPPORTED_MODEL', /vit_huge_patch14_224.*not supported/);
  });

  test('a config.json that is not JSON', async () => {
    const dir = copyCase(TEXT_CASE, 'bad-json');
    fs.writeFileSync(path.join(dir, 'config.json'), '{"model_type": "perception_lm", ');
    await expectCode(loadModel(dir), 'ERR_CORRUPT_FILE', /config\.json/);
  });
});

describe('running', () => {
  let model: PerceptionLM;
  beforeAll(async () => {
    model = await loadModel(TINY, { backend: 'cpu', maxContext: 4096 });
  });
  afterAll(() => model.dispose());

  test('a prompt longer than the context', async () => {
    const ids = new Array<number>(5000).fill(1000);
    await expectCode(model.forward({ inputIds: ids }), 'ERR_CONTEXT_OVERFLOW', /context/);
    await expectCode(model.complete({ inputIds: ids.slice(0, 4000), maxTokens: 200 }), 'ERR_CONTEXT_OVERFLOW');
  });

  test('a token id outside the vocabulary', async () => {
    await expectCode(model.forward({ inputIds: [1, 999999] }), 'ERR_INVALID_ARGUMENT', /outside the vocabulary/);
  });

  test('placeholders that do not match the tiles', async () => {
    const S = model.config.vision.image_size;
    const pixels = new Float32Array(3 * S * S);
    await expectCode(
      model.forward({ inputIds: [128000, 128002, 128002], pixelValues: pixels, numTiles: 1 }),
      'ERR_INVALID_ARGUMENT',
      /placeholder/,
    );
  });

  test('an image that is not an image', async () => {
    await expectCode(
      model.complete({ prompt: 'Describe the image.', images: [Buffer.from('definitely not a picture')], maxTokens: 2 }),
      'ERR_IMAGE_DECODE',
    );
  });

  test('the event loop stays responsive during a long prefill', async () => {
    const ids = Array.from({ length: 3000 }, (_, i) => 1000 + (i % 5000));
    let ticks = 0;
    const timer = setInterval(() => ticks++, 5);
    const t0 = Date.now();
    await model.forward({ inputIds: ids, logitsRows: 'last' });
    const elapsed = Date.now() - t0;
    clearInterval(timer);
    // The timer ran while the native prefill worked: at least a third of the possible ticks.
    expect(elapsed).toBeGreaterThan(20);
    expect(ticks).toBeGreaterThanOrEqual(Math.floor(elapsed / 5 / 3));
  });

  test('an AbortSignal stops a generation within a token', async () => {
    const controller = new AbortController();
    let tokens = 0;
    const done = model.complete({
      inputIds: [128000, 9906, 11, 1917],
      maxTokens: 3000,
      temperature: 0,
      stopTokenIds: [],
      signal: controller.signal,
      onProgress: (p) => {
        if (p.stage === 'decode' && ++tokens === 3) controller.abort();
      },
    });
    const r = await done;
    expect(r.finishReason).toBe('cancelled');
    // The native loop checks the flag before every token (and between layers); the few extra ids
    // are the ones already generated while their callbacks were queued for the JS thread.
    expect(r.tokenIds.length).toBeLessThan(20);
  });

  test('an already aborted signal rejects with ERR_CANCELLED', async () => {
    const controller = new AbortController();
    controller.abort();
    await expectCode(model.forward({ inputIds: [1, 2, 3], signal: controller.signal }), 'ERR_CANCELLED');
  });
});

test('every progress call of a load reaches JS before the load resolves', async () => {
  // Progress travels on a queue to the JS thread; a fast job used to resolve while calls were still
  // queued (about one load in five of this checkpoint), so the last fraction seen was below 1.
  const lastSeen: number[] = [];
  for (let i = 0; i < 12; i++) {
    const seen: number[] = [];
    const model = await loadModel(TINY, { backend: 'cpu', onProgress: (p) => seen.push(p.fraction) });
    lastSeen.push(seen[seen.length - 1] ?? -1);
    model.dispose();
  }
  expect(lastSeen).toEqual(new Array(12).fill(1));
});

test('calls on a disposed model reject with ERR_DISPOSED', async () => {
  const model = await loadModel(TEXT_CASE, { backend: 'cpu' });
  model.dispose();
  await expectCode(model.forward({ inputIds: [1, 2, 3] }), 'ERR_DISPOSED');
  await expectCode(model.complete({ inputIds: [1, 2, 3], maxTokens: 2 }), 'ERR_DISPOSED');
});

test('asking for the CUDA backend without a GPU is a typed error, not a crash', async () => {
  if (process.env.PLM_EXPECT_GPU === '1') return; // on GPU machines the GPU suite covers it
  await expectCode(loadModel(TEXT_CASE, { backend: 'cuda' }), 'ERR_BACKEND', /CUDA/);
});
