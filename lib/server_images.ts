/**
 * Images of chat requests: `data:` URLs (base64 or percent-encoded) and, when the server allows it,
 * http(s) URLs fetched with the SSRF rules of ./remote_image. Every failure is a 400 naming the part.
 */
import sharp from 'sharp';
import { fetchRemoteImage, RemoteImageError, RemoteImageOptions } from './remote_image';
import { HttpError } from './server_guard';

/** How the server gets image bytes. */
export interface ImageSourceOptions {
  allowRemoteImages: boolean;
  /** Largest image in pixels (width * height). */
  maxImagePixels: number;
  /** Remote fetch limits and test hooks (see {@link RemoteImageOptions}). */
  remote: Omit<RemoteImageOptions, 'signal'>;
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  return -1;
}

/**
 * Percent-decodes the payload of a non-base64 `data:` URL to bytes: `%XX` is one byte, other characters
 * are their UTF-8 bytes. Returns null on a malformed escape (`%`, `%Z1`, ...).
 */
export function percentDecodeBytes(s: string): Buffer | null {
  const utf8 = Buffer.from(s, 'utf8');
  const out = Buffer.allocUnsafe(utf8.length);
  let o = 0;
  for (let i = 0; i < utf8.length; i++) {
    const c = utf8[i];
    if (c !== 0x25) {
      out[o++] = c;
      continue;
    }
    const hi = i + 2 < utf8.length ? hexValue(utf8[i + 1]) : -1;
    const lo = i + 2 < utf8.length ? hexValue(utf8[i + 2]) : -1;
    if (hi < 0 || lo < 0) return null;
    out[o++] = hi * 16 + lo;
    i += 2;
  }
  return out.subarray(0, o);
}

/** Decodes a `data:` URL to its bytes, or null when `url` is not one. Throws a 400 on a bad payload. */
export function decodeDataUrl(url: string, param: string): Buffer | null {
  if (!/^data:/i.test(url)) return null;
  const comma = url.indexOf(',');
  if (comma < 0) throw new HttpError(400, `${param}: the data: URL has no ',' before its payload`, 'invalid_request_error', 'invalid_image_url', param);
  const meta = url.slice(5, comma);
  const payload = url.slice(comma + 1);
  if (/;base64$/i.test(meta)) return Buffer.from(payload, 'base64');
  const bytes = percentDecodeBytes(payload);
  if (bytes === null) {
    throw new HttpError(400, `${param}: the data: URL has a malformed percent escape; use base64 (data:image/png;base64,...)`, 'invalid_request_error', 'invalid_image_url', param);
  }
  return bytes;
}

/**
 * Gets an image's bytes from its URL and checks that it decodes and is within the pixel limit.
 *
 * @throws HttpError 400 (`invalid_image_url`, `ERR_IMAGE_DECODE`, `image_too_large`, `remote_image_*`).
 */
export async function loadImageUrl(url: string, o: ImageSourceOptions, param: string, signal: AbortSignal): Promise<Buffer> {
  let bytes = decodeDataUrl(url, param);
  if (bytes === null) {
    if (!/^https?:\/\//i.test(url)) {
      throw new HttpError(400, 'image_url.url must be a data: URL (or an http(s) URL when the server allows remote images)', 'invalid_request_error', 'ERR_INVALID_ARGUMENT', param);
    }
    if (!o.allowRemoteImages) {
      throw new HttpError(
        400,
        'http(s) image URLs are disabled on this server; send the image as a data: URL (base64), or start the server with --allow-remote-images',
        'invalid_request_error',
        'ERR_INVALID_ARGUMENT',
        param,
      );
    }
    try {
      bytes = await fetchRemoteImage(url, { ...o.remote, signal });
    } catch (e) {
      if (e instanceof RemoteImageError) throw new HttpError(400, `${param}: ${e.message}`, 'invalid_request_error', `remote_image_${e.reason}`, param);
      throw e;
    }
  }
  if (bytes.length === 0) throw new HttpError(400, 'the image is empty', 'invalid_request_error', 'ERR_IMAGE_DECODE', param);
  let meta: { width?: number; height?: number };
  try {
    meta = await sharp(bytes, { limitInputPixels: false, pages: 1 }).metadata();
  } catch (e) {
    throw new HttpError(400, `the image could not be decoded (${(e as Error).message}); send a JPEG, PNG, WebP, GIF or TIFF`, 'invalid_request_error', 'ERR_IMAGE_DECODE', param);
  }
  const pixels = (meta.width ?? 0) * (meta.height ?? 0);
  if (pixels <= 0) throw new HttpError(400, 'the image has no pixels', 'invalid_request_error', 'ERR_IMAGE_DECODE', param);
  if (pixels > o.maxImagePixels) {
    throw new HttpError(400, `the image has ${meta.width}x${meta.height} = ${pixels} pixels, more than this server's limit of ${o.maxImagePixels}`, 'invalid_request_error', 'image_too_large', param);
  }
  return bytes;
}
