/**
 * {@link quantizeModel}: converts a checkpoint's decoder matrices to weight-only int8 or 4-bit once and
 * writes them to a plm-quant file (docs/quantized-format.md), which {@link loadModel} then maps with no
 * conversion. The vision tower, projector, norms and embedding table keep coming from the checkpoint.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PlmError, wrapNativeError } from './errors';
import { native, NativeQuantizeResult } from './native';

/** Weight-only quantization kinds a plm-quant file can hold. */
export type QuantizeKind = 'int8' | 'q4';

/** Progress of {@link quantizeModel}. */
export interface QuantizeProgress {
  /** 0..1 of the checkpoint bytes converted so far. */
  fraction: number;
  /** 'quantize'. */
  stage: string;
}

/** Options of {@link quantizeModel}. */
export interface QuantizeOptions {
  /**
   * 'int8': symmetric int8 with one f32 scale per output row; 'q4': 4-bit in groups of 32 along the input
   * dimension, one f32 scale per group (matrices whose input dimension is not a multiple of 32 stay in the
   * checkpoint's dtype). Required.
   */
  kind: QuantizeKind;
  /**
   * Output file. Default `<dir>/model.<kind>.plmq.safetensors`, where {@link loadModel} finds it by itself
   * when called with `quantize: kind`. A file elsewhere is loaded with `loadModel(dir, { quantizedFile })`.
   * Inside the checkpoint folder the name must end in `.plmq.safetensors` (checkpoint loaders skip those).
   */
  out?: string;
  /** CPU threads for the conversion; 0 = physical cores. Default 0. */
  threads?: number;
  /** Aborting rejects with ERR_CANCELLED and leaves no file behind. */
  signal?: AbortSignal;
  onProgress?: (progress: QuantizeProgress) => void;
}

/** What {@link quantizeModel} wrote. */
export interface QuantizeResult {
  /** Absolute path of the plm-quant file. */
  path: string;
  kind: QuantizeKind;
  /** Matrices written quantized (every decoder projection and the LM head that the kind can hold). */
  quantized: number;
  /** Matrices left in the checkpoint's dtype (q4: input dimension not a multiple of 32). */
  kept: number;
  /** Size of the written file in bytes. */
  fileBytes: number;
  /** Checkpoint bytes of the matrices that were quantized. */
  sourceBytes: number;
  /** Wall-clock seconds. */
  seconds: number;
}

/** The suffix of plm-quant files; checkpoint loaders skip files that end with it. */
export const QUANTIZED_FILE_SUFFIX = '.plmq.safetensors';

/**
 * Where {@link quantizeModel} writes by default and where {@link loadModel} looks for a quantized file:
 * `<dir>/model.<kind>.plmq.safetensors`.
 *
 * @example
 * ```ts
 * defaultQuantizedPath('/models/plm-1b', 'int8'); // '/models/plm-1b/model.int8.plmq.safetensors'
 * ```
 */
export function defaultQuantizedPath(dir: string, kind: QuantizeKind): string {
  return path.join(path.resolve(dir), `model.${kind}${QUANTIZED_FILE_SUFFIX}`);
}

/**
 * Quantizes the decoder matrices (every layer's q/k/v/o/gate/up/down projection and the LM head) of the
 * checkpoint in `dir` and writes them to a plm-quant file, off the JavaScript thread. The file records the
 * checkpoint it was made from: loading it with another checkpoint fails with `ERR_STALE_FILE`. A model
 * loaded from the file computes exactly (bit for bit) what `loadModel(dir, { quantize: kind })` computes
 * when it converts at load, but starts faster and never holds the unquantized matrices.
 *
 * @param dir the checkpoint folder (config.json and *.safetensors).
 * @param options `kind` ('int8' | 'q4', required), `out` (default `<dir>/model.<kind>.plmq.safetensors`),
 *   `threads` (default 0 = physical cores), `signal`, `onProgress`.
 * @returns the path, counts and sizes of what was written.
 * @throws PlmError `ERR_FILE_NOT_FOUND` (no checkpoint), `ERR_INVALID_ARGUMENT` (bad kind or out),
 *   `ERR_FILE_READ` (cannot write), `ERR_CANCELLED`, and the checkpoint's own load errors.
 * @example
 * ```ts
 * import { quantizeModel, loadModel } from 'perception-lm';
 * const r = await quantizeModel('/models/plm-1b', { kind: 'int8', onProgress: (p) => console.log(p.fraction) });
 * console.log(`${r.path}: ${r.fileBytes} bytes`);
 * const model = await loadModel('/models/plm-1b', { quantize: 'int8' }); // maps the file written above
 * ```
 */
export async function quantizeModel(dir: string, options: QuantizeOptions): Promise<QuantizeResult> {
  if (typeof dir !== 'string' || dir.length === 0) throw new PlmError('ERR_INVALID_ARGUMENT', 'dir must be a non-empty path');
  const kind = options?.kind;
  if (kind !== 'int8' && kind !== 'q4') {
    throw new PlmError('ERR_INVALID_ARGUMENT', `kind must be 'int8' or 'q4', got ${String(kind)}`);
  }
  const threads = options.threads ?? 0;
  if (!Number.isInteger(threads) || threads < 0) throw new PlmError('ERR_INVALID_ARGUMENT', `threads must be an integer >= 0, got ${threads}`);
  const abs = path.resolve(dir);
  if (!fs.existsSync(abs) || !fs.statSync(abs).isDirectory()) {
    throw new PlmError('ERR_FILE_NOT_FOUND', `${abs} is not a directory: pass the folder holding config.json and the *.safetensors files`);
  }
  const out = options.out !== undefined ? path.resolve(options.out) : defaultQuantizedPath(abs, kind);
  if (fs.existsSync(out) && fs.statSync(out).isDirectory()) {
    throw new PlmError('ERR_INVALID_ARGUMENT', `out (${out}) is a directory; give a file name, e.g. ${path.join(out, `model.${kind}${QUANTIZED_FILE_SUFFIX}`)}`);
  }
  if (!fs.existsSync(path.dirname(out))) throw new PlmError('ERR_FILE_NOT_FOUND', `the folder of out (${path.dirname(out)}) does not exist`);
  if (path.dirname(out) === abs && !out.endsWith(QUANTIZED_FILE_SUFFIX)) {
    throw new PlmError(
      'ERR_INVALID_ARGUMENT',
      `inside the checkpoint folder the quantized file's name must end in ${QUANTIZED_FILE_SUFFIX} (so it is not read as a checkpoint shard), got ${path.basename(out)}`,
    );
  }
  if (options.signal?.aborted) throw new PlmError('ERR_CANCELLED', 'the operation was aborted (AbortSignal)');
  if (typeof native.quantizeModel !== 'function') {
    throw new PlmError('ERR_NATIVE_NOT_FOUND', 'the loaded native addon predates quantizeModel: rebuild it (npm run build:native) or update the prebuilt binary (npm run build:prebuilt)');
  }
  const cancel = native.createCancelToken();
  const onAbort = (): void => cancel.cancel();
  options.signal?.addEventListener('abort', onAbort);
  const t0 = Date.now();
  let r: NativeQuantizeResult;
  try {
    r = await native.quantizeModel(
      abs,
      { kind, out, threads },
      options.onProgress ? (fraction, stage) => options.onProgress?.({ fraction, stage }) : null,
      cancel,
    );
  } catch (e) {
    throw wrapNativeError(e);
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
  }
  return { ...r, seconds: (Date.now() - t0) / 1000 };
}
