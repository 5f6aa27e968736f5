/**
 * Typed errors of perception-lm.
 *
 * Every failure that the package reports on purpose is a {@link PlmError} with a stable `code`
 * (the same code names the native core uses, see native/core/error.h) and a message that says how
 * to fix it. Native rejections are converted with {@link wrapNativeError}.
 */

/** Every error code a {@link PlmError} can carry. */
export type PlmErrorCode =
  | 'ERR_INVALID_ARGUMENT' // bad call arguments
  | 'ERR_FILE_NOT_FOUND' // missing directory or file
  | 'ERR_FILE_READ' // I/O error, truncated file
  | 'ERR_CORRUPT_FILE' // malformed safetensors header, bad JSON
  | 'ERR_TEMPLATE' // a chat template that fails or exceeds its render budget (steps, time, size, depth)
  | 'ERR_SHAPE_MISMATCH' // tensor shape disagrees with config.json
  | 'ERR_UNSUPPORTED_DTYPE' // tensor dtype we cannot read
  | 'ERR_UNSUPPORTED_MODEL' // architecture or config we do not implement
  | 'ERR_CONTEXT_OVERFLOW' // prompt (+ maxTokens) longer than the context
  | 'ERR_IMAGE_DECODE' // input is not a decodable image / video
  | 'ERR_CANCELLED' // AbortSignal fired
  | 'ERR_DISPOSED' // call on a disposed model
  | 'ERR_BACKEND' // CUDA or other backend failure
  | 'ERR_OUT_OF_MEMORY' // allocation failed
  | 'ERR_UNSUPPORTED_VERSION' // a quantized file (plm-quant) of a format version this build cannot read: re-run plm quantize
  | 'ERR_STALE_FILE' // a quantized file made from another checkpoint than the one loaded: re-run plm quantize
  | 'ERR_NATIVE_NOT_FOUND' // the compiled addon could not be loaded
  | 'ERR_UNSUPPORTED_PLATFORM' // no prebuilt binary and no source build exist for this OS (Windows)
  | 'ERR_FFMPEG_MISSING' // a video file needs ffmpeg on PATH
  | 'ERR_HUB_UNAUTHORIZED' // plm pull: 401 without a (valid) token
  | 'ERR_HUB_GATED' // plm pull: gated repo, accept the license and set HF_TOKEN
  | 'ERR_HUB_FORBIDDEN' // plm pull: 403
  | 'ERR_HUB_NOT_FOUND' // plm pull: repo, revision or file not found
  | 'ERR_HUB_HTTP' // plm pull: another HTTP status
  | 'ERR_CHECKSUM_MISMATCH' // plm pull: a download's sha256 differs from the hub's
  | 'ERR_NETWORK' // plm pull: the connection failed after retries
  | 'ERR_INTERNAL'; // a bug: please report it

/** All known codes, for validation. */
export const PLM_ERROR_CODES: readonly PlmErrorCode[] = [
  'ERR_INVALID_ARGUMENT',
  'ERR_FILE_NOT_FOUND',
  'ERR_FILE_READ',
  'ERR_CORRUPT_FILE',
  'ERR_TEMPLATE',
  'ERR_SHAPE_MISMATCH',
  'ERR_UNSUPPORTED_DTYPE',
  'ERR_UNSUPPORTED_MODEL',
  'ERR_CONTEXT_OVERFLOW',
  'ERR_IMAGE_DECODE',
  'ERR_CANCELLED',
  'ERR_DISPOSED',
  'ERR_BACKEND',
  'ERR_OUT_OF_MEMORY',
  'ERR_UNSUPPORTED_VERSION',
  'ERR_STALE_FILE',
  'ERR_NATIVE_NOT_FOUND',
  'ERR_UNSUPPORTED_PLATFORM',
  'ERR_FFMPEG_MISSING',
  'ERR_HUB_UNAUTHORIZED',
  'ERR_HUB_GATED',
  'ERR_HUB_FORBIDDEN',
  'ERR_HUB_NOT_FOUND',
  'ERR_HUB_HTTP',
  'ERR_CHECKSUM_MISMATCH',
  'ERR_NETWORK',
  'ERR_INTERNAL',
];

const CODE_SET: ReadonlySet<string> = new Set<string>(PLM_ERROR_CODES);

/** True when `code` is one of the {@link PlmErrorCode} names. */
export function isPlmErrorCode(code: unknown): code is PlmErrorCode {
  return typeof code === 'string' && CODE_SET.has(code);
}

/**
 * The error type every public API of perception-lm rejects or throws with.
 *
 * @example
 * ```ts
 * try {
 *   await loadModel('./missing');
 * } catch (e) {
 *   if (e instanceof PlmError && e.code === 'ERR_FILE_NOT_FOUND') console.error(e.message);
 * }
 * ```
 */
export class PlmError extends Error {
  /** Stable machine-readable code, e.g. `'ERR_CONTEXT_OVERFLOW'`. */
  readonly code: PlmErrorCode;

  /**
   * @param code one of {@link PlmErrorCode} (unknown strings become `'ERR_INTERNAL'`).
   * @param message what went wrong and how to fix it.
   * @param options `cause`: the original error, kept for debugging.
   */
  constructor(code: PlmErrorCode | string, message: string, options?: { cause?: unknown }) {
    super(message, options && 'cause' in options ? { cause: options.cause } : undefined);
    this.name = 'PlmError';
    this.code = isPlmErrorCode(code) ? code : 'ERR_INTERNAL';
    Object.setPrototypeOf(this, new.target.prototype);
  }
}

/** True for a {@link PlmError}, also across module copies (checks name and code). */
export function isPlmError(e: unknown): e is PlmError {
  if (e instanceof PlmError) return true;
  return (
    typeof e === 'object' &&
    e !== null &&
    (e as { name?: unknown }).name === 'PlmError' &&
    isPlmErrorCode((e as { code?: unknown }).code)
  );
}

/**
 * Converts anything a native call rejected with (an Error with a `.code` string set by the addon,
 * a plain string, ...) into a {@link PlmError}. A {@link PlmError} is returned unchanged. Errors
 * without a known code become `ERR_INTERNAL` (or `fallbackCode` when given), keeping the original
 * as `cause`.
 *
 * @example
 * ```ts
 * const ids = await native.loadModel(dir, opts, cb).catch((e) => { throw wrapNativeError(e); });
 * ```
 */
export function wrapNativeError(e: unknown, fallbackCode: PlmErrorCode = 'ERR_INTERNAL'): PlmError {
  if (e instanceof PlmError) return e;
  if (e instanceof Error) {
    const code = (e as Error & { code?: unknown }).code;
    if (isPlmErrorCode(code)) return new PlmError(code, e.message, { cause: e });
    // Plain JS errors raised by N-API type checks (napi_throw_type_error etc.).
    if (e instanceof TypeError || e instanceof RangeError) {
      return new PlmError('ERR_INVALID_ARGUMENT', e.message, { cause: e });
    }
    return new PlmError(fallbackCode, e.message, { cause: e });
  }
  if (typeof e === 'object' && e !== null) {
    const o = e as { code?: unknown; message?: unknown };
    const msg = typeof o.message === 'string' ? o.message : String(e);
    return new PlmError(isPlmErrorCode(o.code) ? o.code : fallbackCode, msg, { cause: e });
  }
  return new PlmError(fallbackCode, String(e), { cause: e });
}
