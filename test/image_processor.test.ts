/**
 * Image / video preprocessing against Hugging Face transformers 5.18 fixtures
 * (reference/image_processor_fixtures.py -> test/fixtures/image_processor/).
 *
 * Pixel tolerance: every value, mapped back to uint8 levels as round(pixel * 127.5 + 127.5), must be
 * within 1 level of HF's (the native resize is designed to be bit-exact; the measured max is logged).
 *
 * PLM_IMAGE_ADDON=/path/to/addon.node points the test at a standalone build of the image bindings
 * (before they are linked into the main addon).
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import sharp from 'sharp';

jest.mock('../lib/native', () => {
  const p = process.env.PLM_IMAGE_ADDON;
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  if (p) return { native: require(p) };
  return jest.requireActual('../lib/native');
});

import { PlmError } from '../lib/errors';
import { decodeImage, preprocessImage } from '../lib/image';
import { native } from '../lib/native';
import { loadVideoFrames, sampleFrameIndices } from '../lib/video';

const FIX = path.join(__dirname, 'fixtures', 'image_processor');
const manifest = JSON.parse(fs.readFileSync(path.join(FIX, 'manifest.json'), 'utf8'));
const U8_TOLERANCE = 1;

interface Tensor {
  dtype: string;
  shape: number[];
  data: Buffer;
}

/** Minimal safetensors reader. */
function readSafetensors(file: string): Record<string, Tensor> {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
  const out: Record<string, Tensor> = {};
  for (const [k, v] of Object.entries(header)) {
    if (k === '__metadata__') continue;
    const t = v as { dtype: string; shape: number[]; data_offsets: [number, number] };
    out[k] = { dtype: t.dtype, shape: t.shape, data: buf.subarray(8 + n + t.data_offsets[0], 8 + n + t.data_offsets[1]) };
  }
  return out;
}

function i64(t: Tensor): number[] {
  const r: number[] = [];
  for (let i = 0; i < t.data.length; i += 8) r.push(Number(t.data.readBigInt64LE(i)));
  return r;
}

/** Max |round(pv*127.5+127.5) - ref| over all values. */
function maxU8Diff(pv: Float32Array, ref: Buffer): number {
  expect(pv.length).toBe(ref.length);
  let m = 0;
  for (let i = 0; i < pv.length; i++) {
    const d = Math.abs(Math.round(pv[i] * 127.5 + 127.5) - ref[i]);
    if (d > m) m = d;
  }
  return m;
}

async function expectPlmError(p: Promise<unknown>, code: string, msg?: RegExp): Promise<PlmError> {
  let err: unknown;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(PlmError);
  expect((err as PlmError).code).toBe(code);
  if (msg) expect((err as PlmError).message).toMatch(msg);
  return err as PlmError;
}

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-img-'));
afterAll(() => fs.rmSync(tmp, { recursive: true, force: true }));

describe('tile grid', () => {
  test('matches HF for every case in grids.json', () => {
    const { cases } = JSON.parse(fs.readFileSync(path.join(FIX, 'grids.json'), 'utf8')) as {
      cases: { w: number; h: number; tile: number; max_num_tiles: number; grid: [number, number] }[];
    };
    expect(cases.length).toBeGreaterThanOrEqual(1000);
    const select = (native as unknown as { selectTileGrid(w: number, h: number, t: number, m: number): number[] }).selectTileGrid;
    const bad = cases.filter((c) => {
      const g = select(c.w, c.h, c.tile, c.max_num_tiles);
      return g[0] !== c.grid[0] || g[1] !== c.grid[1];
    });
    expect(bad).toEqual([]);
  });
});

describe('pixels vs HF PerceptionLMImageProcessor', () => {
  let worst = 0;
  afterAll(() => console.log(`image pixels: max |uint8 diff| vs HF = ${worst}`));
  for (const c of manifest.pixels as {
    name: string;
    image: string;
    file: string;
    tile_size: number;
    max_num_tiles: number;
    grid: [number, number];
    num_tiles: number;
  }[]) {
    test(`${c.name} tile ${c.tile_size} max ${c.max_num_tiles}`, async () => {
      const ref = readSafetensors(path.join(FIX, c.file));
      const r = await preprocessImage(path.join(FIX, 'images', c.image), { tileSize: c.tile_size, maxNumTiles: c.max_num_tiles });
      expect(r.grid).toEqual(c.grid);
      expect(r.numTiles).toBe(c.num_tiles);
      expect(ref.pixels_u8.shape).toEqual([c.num_tiles, 3, c.tile_size, c.tile_size]);
      const d = maxU8Diff(r.pixelValues, ref.pixels_u8.data);
      worst = Math.max(worst, d);
      expect(d).toBeLessThanOrEqual(U8_TOLERANCE);
    });
  }

  test('raw RGB input gives the same result as the decoded file', async () => {
    const file = path.join(FIX, 'images', 'odd_333x517.png');
    const dec = await decodeImage(file);
    expect([dec.width, dec.height]).toEqual([333, 517]);
    const a = await preprocessImage(file, { tileSize: 112, maxNumTiles: 4 });
    const b = await preprocessImage({ data: dec.data, width: dec.width, height: dec.height, channels: 3 }, { tileSize: 112, maxNumTiles: 4 });
    expect(Buffer.from(b.pixelValues.buffer).equals(Buffer.from(a.pixelValues.buffer))).toBe(true);
  });

  test('EXIF orientation 6 is applied (400x240 stored -> 240x400)', async () => {
    const dec = await decodeImage(path.join(FIX, 'images', 'exif6_400x240.jpg'));
    expect([dec.width, dec.height]).toEqual([240, 400]);
  });

  test('raw gray / gray+alpha / RGBA inputs convert like PIL convert("RGB")', async () => {
    const g = await decodeImage({ data: new Uint8Array([7, 9]), width: 2, height: 1, channels: 1 });
    expect(Array.from(g.data)).toEqual([7, 7, 7, 9, 9, 9]);
    const la = await decodeImage({ data: new Uint8Array([7, 0, 9, 255]), width: 2, height: 1, channels: 2 });
    expect(Array.from(la.data)).toEqual([7, 7, 7, 9, 9, 9]);
    const rgba = await decodeImage({ data: new Uint8Array([1, 2, 3, 0, 4, 5, 6, 128]), width: 2, height: 1, channels: 4 });
    expect(Array.from(rgba.data)).toEqual([1, 2, 3, 4, 5, 6]);
  });

  test('default options: 448 tiles, up to 36 (1920x1080 -> 8x4 grid, 33 tiles)', async () => {
    const data = new Uint8Array(1920 * 1080 * 3).fill(100);
    const r = await preprocessImage({ data, width: 1920, height: 1080, channels: 3 });
    expect(r.grid).toEqual([8, 4]);
    expect(r.numTiles).toBe(33);
    expect(r.pixelValues.length).toBe(33 * 3 * 448 * 448);
    expect(r.pixelValues[12345]).toBeCloseTo((100 - 127.5) / 127.5, 6);
  });
});

describe('video', () => {
  const vid = readSafetensors(path.join(FIX, manifest.video.file));

  test('sampling indices match HF default_sample_indices_fn', () => {
    for (const s of manifest.video.sampling as { total: number; num_frames: number; key: string }[]) {
      expect(sampleFrameIndices(s.total, s.num_frames)).toEqual(i64(vid[s.key]));
    }
  });

  test('more frames than the video has is an error (as in HF)', () => {
    expect(() => sampleFrameIndices(3, 4)).toThrow(PlmError);
  });

  function clipFrames(): { data: Uint8Array; width: number; height: number; channels: 3 }[] {
    const [T, H, W] = vid.video_frames.shape;
    const frameBytes = H * W * 3;
    return Array.from({ length: T }, (_, t) => ({
      data: new Uint8Array(vid.video_frames.data.subarray(t * frameBytes, (t + 1) * frameBytes)),
      width: W,
      height: H,
      channels: 3 as const,
    }));
  }

  test('frames array matches HF PerceptionLMVideoProcessor', async () => {
    const c = manifest.video.clip;
    const r = await loadVideoFrames(clipFrames(), { numFrames: c.num_frames, size: c.size });
    expect(r.numFrames).toBe(c.num_frames);
    expect(r.frameIndices).toEqual(i64(vid.video_indices));
    const d = maxU8Diff(r.pixelValues, vid.video_pixels_u8.data);
    console.log(`video pixels: max |uint8 diff| vs HF = ${d}`);
    expect(d).toBeLessThanOrEqual(U8_TOLERANCE);
  });

  let hasFfmpeg = true;
  try {
    execFileSync('ffmpeg', ['-version'], { stdio: 'ignore' });
  } catch {
    hasFfmpeg = false;
  }

  (hasFfmpeg ? test : test.skip)('a losslessly encoded video file gives the same frames as the array', async () => {
    const c = manifest.video.clip;
    const frames = clipFrames();
    const raw = path.join(tmp, 'clip.rgb');
    fs.writeFileSync(raw, Buffer.concat(frames.map((f) => Buffer.from(f.data))));
    const mkv = path.join(tmp, 'clip.mkv');
    execFileSync('ffmpeg', ['-v', 'error', '-y', '-f', 'rawvideo', '-pix_fmt', 'rgb24', '-s', `${c.width}x${c.height}`, '-r', '30',
      '-i', raw, '-c:v', 'ffv1', '-pix_fmt', 'bgr0', mkv]);
    const fromFile = await loadVideoFrames(mkv, { numFrames: c.num_frames, size: c.size });
    expect(fromFile.frameIndices).toEqual(i64(vid.video_indices));
    expect(maxU8Diff(fromFile.pixelValues, vid.video_pixels_u8.data)).toBeLessThanOrEqual(U8_TOLERANCE);
  });

  test('ffmpeg missing from PATH gives ERR_FFMPEG_MISSING', async () => {
    const file = path.join(tmp, 'some.mp4');
    fs.writeFileSync(file, 'not really a video');
    const saved = process.env.PATH;
    process.env.PATH = path.join(tmp, 'no-such-dir');
    try {
      await expectPlmError(loadVideoFrames(file, { numFrames: 2 }), 'ERR_FFMPEG_MISSING', /ffmpeg was not found on PATH/);
    } finally {
      process.env.PATH = saved;
    }
  });

  test('missing video file gives ERR_FILE_NOT_FOUND', async () => {
    await expectPlmError(loadVideoFrames(path.join(tmp, 'nope.mp4')), 'ERR_FILE_NOT_FOUND');
  });
});

describe('typed errors', () => {
  test('missing file', async () => {
    await expectPlmError(decodeImage(path.join(tmp, 'missing.png')), 'ERR_FILE_NOT_FOUND', /does not exist/);
  });

  test('empty file', async () => {
    const f = path.join(tmp, 'empty.png');
    fs.writeFileSync(f, Buffer.alloc(0));
    await expectPlmError(preprocessImage(f), 'ERR_IMAGE_DECODE', /empty/);
  });

  test('unsupported format (a text file)', async () => {
    const f = path.join(tmp, 'notes.txt');
    fs.writeFileSync(f, 'hello, I am not an image\n'.repeat(20));
    await expectPlmError(decodeImage(f), 'ERR_IMAGE_DECODE', /not a supported image/);
  });

  test('corrupt image (valid PNG signature, garbage body)', async () => {
    const good = fs.readFileSync(path.join(FIX, 'images', 'square_448.png'));
    const bad = Buffer.concat([good.subarray(0, 40), Buffer.alloc(200, 0xab)]);
    await expectPlmError(decodeImage(bad), 'ERR_IMAGE_DECODE');
  });

  test('truncated JPEG', async () => {
    const good = fs.readFileSync(path.join(FIX, 'images', 'hd_1920x1080.jpg'));
    await expectPlmError(decodeImage(good.subarray(0, good.length >> 1)), 'ERR_IMAGE_DECODE');
  });

  test('zero-size raw input', async () => {
    await expectPlmError(decodeImage({ data: new Uint8Array(0), width: 0, height: 5, channels: 3 }), 'ERR_IMAGE_DECODE', /zero/);
    await expectPlmError(
      (native.preprocessImage(new Uint8Array(0), 0, 0, 448, 36) as Promise<unknown>).catch((e) => {
        throw new PlmError(e.code, e.message);
      }),
      'ERR_IMAGE_DECODE',
    );
  });

  test('raw input with a wrong byte count or channel count', async () => {
    await expectPlmError(decodeImage({ data: new Uint8Array(5), width: 2, height: 1, channels: 3 }), 'ERR_IMAGE_DECODE', /expected/);
    await expectPlmError(decodeImage({ data: new Uint8Array(10), width: 2, height: 1, channels: 5 }), 'ERR_IMAGE_DECODE', /channels/);
  });

  test('a 20000x20000 image is rejected before decoding', async () => {
    const big = await sharp({ create: { width: 20000, height: 20000, channels: 3, background: { r: 1, g: 2, b: 3 } }, limitInputPixels: false })
      .png({ compressionLevel: 1 })
      .toBuffer();
    const t0 = Date.now();
    await expectPlmError(preprocessImage(big), 'ERR_IMAGE_DECODE', /268435456 pixels/);
    expect(Date.now() - t0).toBeLessThan(5000);
  });

  test('invalid options', async () => {
    const img = { data: new Uint8Array(3), width: 1, height: 1, channels: 3 };
    await expectPlmError(preprocessImage(img, { tileSize: 0 }), 'ERR_INVALID_ARGUMENT');
    await expectPlmError(preprocessImage(img, { maxNumTiles: 0 }), 'ERR_INVALID_ARGUMENT');
  });
});
