/**
 * Image decoding and PerceptionLM image preprocessing.
 *
 * Decoding follows transformers' `load_image` + the processor's `convert_rgb`:
 *  - EXIF orientation is applied (PIL `ImageOps.exif_transpose`);
 *  - the image becomes 8-bit RGB like PIL `Image.convert("RGB")`: grayscale is replicated to three
 *    channels, and an alpha channel is **dropped** (the colour under transparent pixels is kept, not
 *    composited onto white or black); palette images use their palette colours;
 *  - animated GIF / WebP and multi-page TIFF: the first frame / page only.
 *
 * Preprocessing (thumbnail + tiles, antialiased bicubic resize, (x - 127.5) / 127.5) runs in the
 * native addon and matches Hugging Face `PerceptionLMImageProcessor` (transformers 5.18) on CPU
 * bit for bit; see native/model/image_processor.h.
 */
import * as fs from 'fs';
import sharp from 'sharp';
import { PlmError, wrapNativeError } from './errors';
import { native } from './native';
import { DEFAULT_MAX_NUM_TILES } from './defaults';

/** Default tile size of the released PerceptionLM checkpoints (preprocessor_config.json). */
export const DEFAULT_TILE_SIZE = 448;
/** Default maximum number of tiles (excluding the thumbnail) of the released checkpoints (lib/defaults.ts). */
export { DEFAULT_MAX_NUM_TILES };
/**
 * Largest accepted image, in pixels (2^28 = 268,435,456, e.g. 16384 x 16384). Larger inputs are
 * rejected with `ERR_IMAGE_DECODE` before they are decoded (sharp's `limitInputPixels`), so a huge
 * image never exhausts memory. The same limit is enforced by the native preprocessor.
 */
export const MAX_IMAGE_PIXELS = 2 ** 28;
/** Largest accepted image side, in pixels. */
export const MAX_IMAGE_SIDE = 65535;

/** Raw pixels: `data` is `[height, width, channels]` uint8, channels interleaved. */
export interface RawImage {
  data: Uint8Array;
  width: number;
  height: number;
  /** 1 = gray, 2 = gray + alpha, 3 = RGB, 4 = RGBA. */
  channels: 1 | 2 | 3 | 4 | number;
}

/** Anything {@link decodeImage} accepts: a file path, encoded bytes, or raw pixels. */
export type ImageInput = string | Buffer | Uint8Array | RawImage;

/** A decoded image: `data` is `[height, width, 3]` uint8 RGB. */
export interface DecodedImage {
  data: Uint8Array;
  width: number;
  height: number;
}

/** Options of {@link preprocessImage}. */
export interface PreprocessImageOptions {
  /** Tile side S in pixels (default 448, the checkpoints' `tile_size`). */
  tileSize?: number;
  /** Maximum number of tiles besides the thumbnail (default 36, the checkpoints' `max_num_tiles`). */
  maxNumTiles?: number;
}

/** Output of {@link preprocessImage}. */
export interface PreprocessedImage {
  /** `[numTiles, 3, S, S]` float32, thumbnail first, then the tiles row by row. */
  pixelValues: Float32Array;
  /** 1 + gridW * gridH. */
  numTiles: number;
  /** [tiles across, tiles down]. */
  grid: [number, number];
}

const SUPPORTED_FORMATS = new Set(['jpeg', 'png', 'webp', 'gif', 'tiff']);

function isRawImage(x: unknown): x is RawImage {
  return typeof x === 'object' && x !== null && !(x instanceof Uint8Array) && 'data' in x && 'width' in x;
}

function checkSize(width: number, height: number, what: string): void {
  if (!Number.isInteger(width) || !Number.isInteger(height) || width <= 0 || height <= 0) {
    throw new PlmError('ERR_IMAGE_DECODE', `${what} has zero or invalid size (${width}x${height}); pass an image of at least 1x1 pixels`);
  }
  if (width > MAX_IMAGE_SIDE || height > MAX_IMAGE_SIDE || width * height > MAX_IMAGE_PIXELS) {
    throw new PlmError(
      'ERR_IMAGE_DECODE',
      `${what} is ${width}x${height}; the largest supported image has ${MAX_IMAGE_PIXELS} pixels (2^28) and sides up to ${MAX_IMAGE_SIDE}: downscale it first`,
    );
  }
}

/** Raw 1/2/3/4-channel pixels to RGB (gray replicated, alpha dropped, as PIL convert("RGB")). */
function rawToRgb(img: RawImage): DecodedImage {
  const { width, height, channels } = img;
  checkSize(width, height, 'raw image');
  if (![1, 2, 3, 4].includes(channels)) {
    throw new PlmError('ERR_IMAGE_DECODE', `raw image has ${channels} channels; use 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA)`);
  }
  const data = img.data;
  if (!(data instanceof Uint8Array)) {
    throw new PlmError('ERR_IMAGE_DECODE', 'raw image data must be a Uint8Array (or Buffer) of 8-bit samples');
  }
  const n = width * height;
  if (data.length !== n * channels) {
    throw new PlmError(
      'ERR_IMAGE_DECODE',
      `raw image data has ${data.length} bytes, expected width*height*channels = ${n * channels}`,
    );
  }
  if (channels === 3) return { data: new Uint8Array(data), width, height };
  const out = new Uint8Array(n * 3);
  for (let i = 0; i < n; i++) {
    if (channels <= 2) {
      const v = data[i * channels];
      out[3 * i] = v;
      out[3 * i + 1] = v;
      out[3 * i + 2] = v;
    } else {
      out[3 * i] = data[4 * i];
      out[3 * i + 1] = data[4 * i + 1];
      out[3 * i + 2] = data[4 * i + 2];
    }
  }
  return { data: out, width, height };
}

function decodeError(e: unknown, what: string): PlmError {
  if (e instanceof PlmError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  if (/pixel limit/i.test(msg)) {
    return new PlmError(
      'ERR_IMAGE_DECODE',
      `${what} is larger than ${MAX_IMAGE_PIXELS} pixels (2^28), the largest supported image: downscale it first`,
      { cause: e },
    );
  }
  if (/unsupported image format/i.test(msg)) {
    return new PlmError(
      'ERR_IMAGE_DECODE',
      `${what} is not a supported image (JPEG, PNG, WebP, GIF or TIFF expected)`,
      { cause: e },
    );
  }
  return new PlmError('ERR_IMAGE_DECODE', `${what} could not be decoded (${msg}); check that the file is a complete, valid image`, {
    cause: e,
  });
}

/**
 * Decodes an image to 8-bit RGB the way transformers' `load_image` + `convert("RGB")` does.
 *
 * Accepts a file path, an encoded image (`Buffer` / `Uint8Array`: JPEG, PNG, WebP, GIF (first
 * frame), TIFF (first page)), or raw pixels `{ data, width, height, channels }` with 1 (gray),
 * 2 (gray + alpha), 3 (RGB) or 4 (RGBA) interleaved uint8 channels.
 *
 * - EXIF orientation is applied; alpha is dropped without compositing; gray is replicated;
 *   16-bit images are reduced to 8 bits.
 * - Images over {@link MAX_IMAGE_PIXELS} pixels (2^28, e.g. a 20000 x 20000 photo) or with a side
 *   over {@link MAX_IMAGE_SIDE} are rejected with `ERR_IMAGE_DECODE` from the header alone, before
 *   any pixel is decoded.
 *
 * Errors (all {@link PlmError}): `ERR_FILE_NOT_FOUND` for a missing path; `ERR_IMAGE_DECODE` for an
 * empty, corrupt, truncated, unsupported, zero-sized or too large input.
 *
 * @param input file path, encoded bytes or raw pixels.
 * @returns `{ data: [height, width, 3] uint8 RGB, width, height }` (after EXIF rotation).
 * @example
 * ```ts
 * const { data, width, height } = await decodeImage('photo.jpg');
 * const gray = await decodeImage({ data: new Uint8Array(4), width: 2, height: 2, channels: 1 });
 * ```
 */
export async function decodeImage(input: ImageInput): Promise<DecodedImage> {
  if (isRawImage(input)) return rawToRgb(input);

  let bytes: Uint8Array;
  let what: string;
  if (typeof input === 'string') {
    what = `image file "${input}"`;
    try {
      bytes = await fs.promises.readFile(input);
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === 'ENOENT' || code === 'ENOTDIR') {
        throw new PlmError('ERR_FILE_NOT_FOUND', `${what} does not exist; check the path`, { cause: e });
      }
      if (code === 'EISDIR') {
        throw new PlmError('ERR_IMAGE_DECODE', `${what} is a directory, not an image file`, { cause: e });
      }
      throw new PlmError('ERR_FILE_READ', `${what} could not be read (${(e as Error).message})`, { cause: e });
    }
  } else if (input instanceof Uint8Array) {
    what = 'image buffer';
    bytes = input;
  } else {
    throw new PlmError(
      'ERR_INVALID_ARGUMENT',
      'image input must be a file path, a Buffer/Uint8Array with an encoded image, or { data, width, height, channels }',
    );
  }
  if (bytes.length === 0) {
    throw new PlmError('ERR_IMAGE_DECODE', `${what} is empty (0 bytes); pass a JPEG, PNG, WebP, GIF or TIFF image`);
  }

  // Only the first frame/page; the pixel limit is checked from the header before decoding.
  const opts = { limitInputPixels: MAX_IMAGE_PIXELS, pages: 1, page: 0 } as const;
  let meta: Awaited<ReturnType<ReturnType<typeof sharp>['metadata']>>;
  try {
    meta = await sharp(bytes, opts).metadata();
  } catch (e) {
    throw decodeError(e, what);
  }
  if (!meta.format || !SUPPORTED_FORMATS.has(meta.format)) {
    throw new PlmError(
      'ERR_IMAGE_DECODE',
      `${what} is in format "${meta.format ?? 'unknown'}", which is not supported; convert it to JPEG, PNG, WebP, GIF or TIFF`,
    );
  }
  // meta.width/height are the stored size; autoOrient may swap them.
  checkSize(meta.width ?? 0, meta.height ?? 0, what);

  try {
    // autoOrient = EXIF transpose. toColourspace('srgb') turns gray into 3 channels and 16-bit into
    // 8-bit; removeAlpha drops alpha without compositing (PIL's RGBA -> RGB).
    const { data, info } = await sharp(bytes, opts)
      .autoOrient()
      .toColourspace('srgb')
      .removeAlpha()
      .raw({ depth: 'uchar' })
      .toBuffer({ resolveWithObject: true });
    if (info.channels !== 3) {
      throw new PlmError('ERR_IMAGE_DECODE', `${what} decoded to ${info.channels} channels instead of 3`);
    }
    checkSize(info.width, info.height, what);
    return { data: new Uint8Array(data.buffer, data.byteOffset, data.byteLength), width: info.width, height: info.height };
  } catch (e) {
    throw decodeError(e, what);
  }
}

/**
 * Decodes an image and preprocesses it exactly like Hugging Face `PerceptionLMImageProcessor`:
 * a `tileSize` x `tileSize` thumbnail of the whole image, then the image stretched over the best
 * grid of at most `maxNumTiles` tiles and cut into tiles (row-major), all normalized to
 * `(x - 127.5) / 127.5`. Runs off the JS thread.
 *
 * @param input see {@link decodeImage}.
 * @param options `tileSize` (default 448), `maxNumTiles` (default 36). Model code passes the
 *   checkpoint's preprocessor_config.json values.
 * @returns `{ pixelValues: Float32Array [numTiles, 3, S, S], numTiles, grid: [nW, nH] }`.
 * @example
 * ```ts
 * const { pixelValues, numTiles, grid } = await preprocessImage('cat.jpg', { maxNumTiles: 16 });
 * // 1920x1080 -> grid [5, 3], numTiles 16, pixelValues.length === 16 * 3 * 448 * 448
 * ```
 */
export async function preprocessImage(input: ImageInput, options: PreprocessImageOptions = {}): Promise<PreprocessedImage> {
  const tileSize = options.tileSize ?? DEFAULT_TILE_SIZE;
  const maxNumTiles = options.maxNumTiles ?? DEFAULT_MAX_NUM_TILES;
  if (!Number.isInteger(tileSize) || tileSize < 1 || tileSize > 4096) {
    throw new PlmError('ERR_INVALID_ARGUMENT', `tileSize must be an integer in 1..4096, got ${tileSize}`);
  }
  if (!Number.isInteger(maxNumTiles) || maxNumTiles < 1 || maxNumTiles > 1024) {
    throw new PlmError('ERR_INVALID_ARGUMENT', `maxNumTiles must be an integer in 1..1024, got ${maxNumTiles}`);
  }
  const img = await decodeImage(input);
  try {
    const r = await native.preprocessImage(img.data, img.width, img.height, tileSize, maxNumTiles);
    return { pixelValues: r.pixelValues, numTiles: r.numTiles, grid: [r.grid[0], r.grid[1]] };
  } catch (e) {
    throw wrapNativeError(e, 'ERR_IMAGE_DECODE');
  }
}
