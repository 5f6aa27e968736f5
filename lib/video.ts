/**
 * Video input for PerceptionLM: frame sampling like Hugging Face `BaseVideoProcessor` (transformers
 * 5.18 `default_sample_indices_fn`) and per-frame preprocessing like `PerceptionLMVideoProcessor`
 * (each frame stretched to S x S with antialiased bicubic, no tiling, (x - 127.5) / 127.5).
 *
 * Video files are decoded with the system `ffmpeg` / `ffprobe` (spawned without a shell).
 */
import { spawn } from 'child_process';
import * as fs from 'fs';
import * as path from 'path';
import { PlmError, PlmErrorCode, wrapNativeError } from './errors';
import { DEFAULT_TILE_SIZE, DecodedImage, ImageInput, MAX_IMAGE_PIXELS, decodeImage } from './image';
import { native } from './native';
import { DEFAULT_NUM_FRAMES } from './defaults';

/** Options of {@link loadVideoFrames}. */
export interface LoadVideoOptions {
  /** Frames to sample uniformly (default 32, as the PerceptionLM processor's chat template uses). */
  numFrames?: number;
  /** Frame side S in pixels (default 448). */
  size?: number;
}

/** Output of {@link loadVideoFrames}. */
export interface VideoFrames {
  /** `[numFrames, 3, S, S]` float32. */
  pixelValues: Float32Array;
  numFrames: number;
  /** Index of every sampled frame in the source video / array. */
  frameIndices: number[];
}

const FFMPEG_MISSING = 'ERR_FFMPEG_MISSING' as PlmErrorCode;

/** Extensions read as videos (decoded with ffmpeg); everything else is read as an image. .gif is an image (first frame). */
export const VIDEO_EXTENSIONS: readonly string[] = ['.mp4', '.webm', '.mov', '.mkv', '.avi', '.m4v', '.mpg', '.mpeg', '.wmv', '.flv', '.3gp'];

/** True when `file` names a video by its extension. */
export function isVideoPath(file: string): boolean {
  return VIDEO_EXTENSIONS.includes(path.extname(file).toLowerCase());
}

/**
 * Uniform frame indices exactly as transformers 5.18 `default_sample_indices_fn`:
 * `np.arange(numFrames) * total // numFrames`, i.e. `floor(k * total / numFrames)` for
 * k = 0..numFrames-1 (integer arithmetic). Throws `ERR_INVALID_ARGUMENT` when
 * `numFrames > total`, like HF.
 *
 * @example
 * ```ts
 * sampleFrameIndices(10, 3); // [0, 3, 6]
 * ```
 */
export function sampleFrameIndices(total: number, numFrames: number): number[] {
  if (!Number.isSafeInteger(total) || total < 1) {
    throw new PlmError('ERR_INVALID_ARGUMENT', `the video has ${total} frames; it needs at least one`);
  }
  if (!Number.isSafeInteger(numFrames) || numFrames < 1) {
    throw new PlmError('ERR_INVALID_ARGUMENT', `numFrames must be a positive integer, got ${numFrames}`);
  }
  if (numFrames > total) {
    throw new PlmError(
      'ERR_INVALID_ARGUMENT',
      `numFrames=${numFrames} exceeds the ${total} frames of the video; pass numFrames <= ${total}`,
    );
  }
  const out: number[] = [];
  const T = BigInt(total);
  const N = BigInt(numFrames);
  for (let k = 0; k < numFrames; k++) out.push(Number((BigInt(k) * T) / N));
  return out;
}

interface RunResult {
  code: number | null;
  stdout: Buffer;
  stderr: string;
}

/** Runs a program without a shell; rejects with ENOENT when it is not on PATH. */
function run(cmd: string, args: string[], maxBytes: number): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], shell: false, env: process.env });
    const chunks: Buffer[] = [];
    let size = 0;
    let stderr = '';
    let killed = false;
    child.stdout.on('data', (b: Buffer) => {
      size += b.length;
      if (size > maxBytes) {
        killed = true;
        child.kill('SIGKILL');
        return;
      }
      chunks.push(b);
    });
    child.stderr.on('data', (b: Buffer) => {
      if (stderr.length < 8192) stderr += b.toString();
    });
    child.on('error', reject);
    child.on('close', (code) => {
      if (killed) {
        reject(new PlmError('ERR_IMAGE_DECODE', `${cmd} produced more than ${maxBytes} bytes; the video frames are too large`));
        return;
      }
      resolve({ code, stdout: Buffer.concat(chunks), stderr });
    });
  });
}

function missingFfmpeg(e: unknown): PlmError {
  return new PlmError(
    FFMPEG_MISSING,
    'ffmpeg was not found on PATH; install it (apt-get install ffmpeg / brew install ffmpeg) or pass an array of frames',
    { cause: e },
  );
}

async function runTool(cmd: string, args: string[], maxBytes: number): Promise<RunResult> {
  try {
    return await run(cmd, args, maxBytes);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') throw missingFfmpeg(e);
    throw e;
  }
}

interface ProbeInfo {
  width: number;
  height: number;
  frames: number;
}

/** Frame size and count of the first video stream (container frame count like PyAV's
 * `stream.frames`; falls back to counting decoded frames when the container has none). */
async function probe(file: string): Promise<ProbeInfo> {
  const base = ['-v', 'error', '-select_streams', 'v:0', '-of', 'json'];
  const r = await runTool('ffprobe', [...base, '-show_entries', 'stream=width,height,nb_frames', file], 1 << 20);
  const bad = (why: string) =>
    new PlmError('ERR_IMAGE_DECODE', `video file "${file}" could not be read (${why}); check that it is a valid video`);
  if (r.code !== 0) throw bad(r.stderr.trim() || `ffprobe exit code ${r.code}`);
  let s: { width?: number; height?: number; nb_frames?: string } | undefined;
  try {
    s = (JSON.parse(r.stdout.toString()) as { streams?: (typeof s)[] }).streams?.[0];
  } catch {
    throw bad('ffprobe output is not JSON');
  }
  if (!s || !s.width || !s.height) throw bad('no video stream');
  let frames = Number(s.nb_frames);
  if (!Number.isSafeInteger(frames) || frames <= 0) {
    const c = await runTool('ffprobe', [...base, '-count_frames', '-show_entries', 'stream=nb_read_frames', file], 1 << 20);
    try {
      frames = Number((JSON.parse(c.stdout.toString()) as { streams: { nb_read_frames: string }[] }).streams[0].nb_read_frames);
    } catch {
      frames = 0;
    }
    if (!Number.isSafeInteger(frames) || frames <= 0) throw bad('cannot count its frames');
  }
  return { width: s.width, height: s.height, frames };
}

/** Decodes the frames at `indices` as RGB24, without applying rotation metadata (like PyAV). */
async function decodeFrames(file: string, info: ProbeInfo, indices: number[]): Promise<Uint8Array[]> {
  const frameBytes = info.width * info.height * 3;
  const unique = [...new Set(indices)];
  const select = unique.map((i) => `eq(n\\,${i})`).join('+');
  const args = [
    '-v', 'error', '-noautorotate', '-i', file, '-map', '0:v:0',
    '-vf', `select='${select}'`, '-fps_mode', 'passthrough',
    '-f', 'rawvideo', '-pix_fmt', 'rgb24', 'pipe:1',
  ];
  const r = await runTool('ffmpeg', args, frameBytes * unique.length + 1);
  if (r.code !== 0) {
    throw new PlmError('ERR_IMAGE_DECODE', `ffmpeg could not decode "${file}" (${r.stderr.trim() || `exit code ${r.code}`})`);
  }
  if (r.stdout.length !== frameBytes * unique.length) {
    throw new PlmError(
      'ERR_IMAGE_DECODE',
      `ffmpeg returned ${Math.floor(r.stdout.length / frameBytes)} of the ${unique.length} requested frames of "${file}"; the file may be truncated`,
    );
  }
  const byIndex = new Map<number, Uint8Array>();
  unique.forEach((idx, k) => byIndex.set(idx, new Uint8Array(r.stdout.buffer, r.stdout.byteOffset + k * frameBytes, frameBytes)));
  return indices.map((i) => byIndex.get(i) as Uint8Array);
}

/** Preprocesses frames (grouping runs of equal size into one native call). [F, 3, S, S] */
async function preprocessDecoded(frames: DecodedImage[], size: number): Promise<Float32Array> {
  const per = 3 * size * size;
  const out = new Float32Array(frames.length * per);
  let start = 0;
  while (start < frames.length) {
    const { width, height } = frames[start];
    let end = start + 1;
    while (end < frames.length && frames[end].width === width && frames[end].height === height) end++;
    const frameBytes = width * height * 3;
    const batch = new Uint8Array(frameBytes * (end - start));
    for (let i = start; i < end; i++) batch.set(frames[i].data, (i - start) * frameBytes);
    const preprocessFrames = native.preprocessFrames;
    if (!preprocessFrames) throw new PlmError('ERR_INTERNAL', 'the native addon lacks preprocessFrames; rebuild it');
    let r: { pixelValues: Float32Array };
    try {
      r = await preprocessFrames(batch, width, height, end - start, size);
    } catch (e) {
      throw wrapNativeError(e, 'ERR_IMAGE_DECODE');
    }
    out.set(r.pixelValues, start * per);
    start = end;
  }
  return out;
}

/**
 * Loads `numFrames` uniformly sampled frames of a video and preprocesses them like Hugging Face
 * `PerceptionLMVideoProcessor` with `do_sample_frames=True`.
 *
 * - A **file path** is decoded with the system `ffmpeg` / `ffprobe` (no shell). The frame count is
 *   the container's (`nb_frames`, as PyAV's `stream.frames`), counted by decoding when absent.
 *   Rotation metadata is not applied (PyAV does not apply it either). Missing ffmpeg rejects with
 *   `ERR_FFMPEG_MISSING`.
 * - An **array** is taken as the frames of a video, each anything {@link decodeImage} accepts.
 *
 * Sampled indices are `floor(k * total / numFrames)` ({@link sampleFrameIndices}); asking for more
 * frames than exist rejects with `ERR_INVALID_ARGUMENT` (as HF does).
 *
 * @param input video file path, or an array of frames.
 * @param options `numFrames` (default 32), `size` (frame side S, default 448).
 * @returns `{ pixelValues: Float32Array [numFrames, 3, S, S], numFrames, frameIndices }`.
 * @example
 * ```ts
 * const clip = await loadVideoFrames('clip.mp4', { numFrames: 16 });
 * const fromFrames = await loadVideoFrames(['f0.png', 'f1.png', 'f2.png'], { numFrames: 2 });
 * ```
 */
export async function loadVideoFrames(input: string | ImageInput[], options: LoadVideoOptions = {}): Promise<VideoFrames> {
  const numFrames = options.numFrames ?? DEFAULT_NUM_FRAMES;
  const size = options.size ?? DEFAULT_TILE_SIZE;
  if (!Number.isInteger(size) || size < 1 || size > 4096) {
    throw new PlmError('ERR_INVALID_ARGUMENT', `size must be an integer in 1..4096, got ${size}`);
  }

  if (Array.isArray(input)) {
    const frameIndices = sampleFrameIndices(input.length, numFrames);
    const frames: DecodedImage[] = [];
    for (const i of frameIndices) frames.push(await decodeImage(input[i]));
    return { pixelValues: await preprocessDecoded(frames, size), numFrames, frameIndices };
  }
  if (typeof input !== 'string') {
    throw new PlmError('ERR_INVALID_ARGUMENT', 'video input must be a file path or an array of frames');
  }
  try {
    const st = await fs.promises.stat(input);
    if (!st.isFile()) throw new PlmError('ERR_IMAGE_DECODE', `video path "${input}" is not a file`);
    if (st.size === 0) throw new PlmError('ERR_IMAGE_DECODE', `video file "${input}" is empty (0 bytes)`);
  } catch (e) {
    if (e instanceof PlmError) throw e;
    throw new PlmError('ERR_FILE_NOT_FOUND', `video file "${input}" does not exist; check the path`, { cause: e });
  }
  const info = await probe(input);
  if (info.width * info.height > MAX_IMAGE_PIXELS) {
    throw new PlmError('ERR_IMAGE_DECODE', `video frames are ${info.width}x${info.height}, over the ${MAX_IMAGE_PIXELS}-pixel limit`);
  }
  const frameIndices = sampleFrameIndices(info.frames, numFrames);
  const raw = await decodeFrames(input, info, frameIndices);
  const frames = raw.map((data) => ({ data, width: info.width, height: info.height }));
  return { pixelValues: await preprocessDecoded(frames, size), numFrames, frameIndices };
}
