/**
 * The server's request guard: OpenAI-shaped HTTP errors, request-target parsing that cannot throw,
 * the Host allowlist (against DNS rebinding), the API key check (constant time) and CORS.
 */
import { createHash, timingSafeEqual } from 'crypto';
import * as net from 'net';
import * as os from 'os';
import { isPlmError } from './errors';

/** OpenAI-style error with an HTTP status. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string = 'invalid_request_error',
    readonly code: string | null = null,
    readonly param: string | null = null,
    /** Extra response headers (e.g. retry-after). */
    readonly headers: Record<string, string> = {},
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

/** The body of an error response: `{ error: { message, type, param, code } }` (OpenAI's shape). */
export function errorBody(e: HttpError): { error: { message: string; type: string; param: string | null; code: string | null } } {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

/** Maps any thrown value to an OpenAI-style HttpError (PlmError codes keep their meaning). */
export function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (isPlmError(e)) {
    switch (e.code) {
      case 'ERR_INVALID_ARGUMENT':
      case 'ERR_IMAGE_DECODE':
      case 'ERR_CONTEXT_OVERFLOW':
      case 'ERR_FILE_NOT_FOUND':
      case 'ERR_FFMPEG_MISSING':
      // The model's template renders this request's messages under a budget: a request that trips it (by its
      // size or shape) is refused like one too long for the context.
      case 'ERR_TEMPLATE':
        return new HttpError(400, e.message, 'invalid_request_error', e.code);
      case 'ERR_CANCELLED':
        return new HttpError(499, e.message, 'cancelled', e.code);
      case 'ERR_OUT_OF_MEMORY':
        return new HttpError(503, e.message, 'server_error', e.code);
      default:
        return new HttpError(500, e.message, 'server_error', e.code);
    }
  }
  return new HttpError(500, e instanceof Error ? e.message : String(e), 'server_error', 'ERR_INTERNAL');
}

/**
 * The path of a request target, without the query and trailing slashes ('/' stays '/'). Accepts the
 * origin form (`/v1/models?x`) and the absolute form (`http://host/v1/models`); anything else is a 400.
 * Never throws anything but {@link HttpError}.
 */
export function requestPath(target: string | undefined): string {
  let t = target ?? '/';
  if (!t.startsWith('/')) {
    const m = /^https?:\/\/[^/?#]*([/?#].*)?$/i.exec(t);
    if (!m) throw new HttpError(400, `the request target must be a path starting with '/'`, 'invalid_request_error', 'bad_request_target');
    t = m[1] && m[1].startsWith('/') ? m[1] : '/';
  }
  const q = t.search(/[?#]/);
  const p = (q >= 0 ? t.slice(0, q) : t).replace(/\/+$/, '');
  return p.length === 0 ? '/' : p;
}

/** decodeURIComponent that turns a malformed escape (`%ZZ`, `%E0%A4%A`) into a 400. */
export function decodePathSegment(s: string, what: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    throw new HttpError(400, `${what} has a malformed percent escape`, 'invalid_request_error', 'bad_percent_escape');
  }
}

/** Splits a Host header into its name (lower case, no trailing dot, IPv6 without brackets). */
export function hostName(header: string): string | null {
  const h = header.trim().toLowerCase();
  if (h.length === 0) return null;
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    if (end < 0) return null;
    const rest = h.slice(end + 1);
    if (rest !== '' && !/^:\d{1,5}$/.test(rest)) return null;
    return h.slice(1, end);
  }
  const colon = h.indexOf(':');
  if (colon >= 0 && !/^:\d{1,5}$/.test(h.slice(colon))) return null;
  const name = (colon >= 0 ? h.slice(0, colon) : h).replace(/\.$/, '');
  return name.length > 0 ? name : null;
}

const LOCAL_NAMES = ['localhost', '127.0.0.1', '::1', '0:0:0:0:0:0:0:1'];

/**
 * The Host allowlist. Allowed by default: `localhost` (and `*.localhost`), loopback literals and the
 * address the server is bound to; when it is bound to every interface (0.0.0.0 or ::), the machine's
 * host name and any IP literal (a page cannot reach an IP-literal Host through DNS rebinding). `extra` adds names; `'*'` allows
 * every Host.
 */
export class HostPolicy {
  private readonly names: Set<string>;
  private readonly any: boolean;
  private readonly anyIp: boolean;
  constructor(boundHost: string, extra: readonly string[] = []) {
    this.any = extra.includes('*');
    const bound = boundHost.replace(/^\[|\]$/g, '').toLowerCase();
    this.anyIp = bound === '0.0.0.0' || bound === '::' || bound === '';
    this.names = new Set([...LOCAL_NAMES, bound, ...extra.map((e) => hostName(e) ?? e.toLowerCase())]);
    // Bound to every interface: the machine's own name is how other machines reach it.
    if (this.anyIp) this.names.add(os.hostname().toLowerCase());
  }
  /** True when a request with this Host header may be served (no header: a non-browser client, allowed). */
  allows(header: string | undefined): boolean {
    if (this.any || header === undefined) return true;
    const name = hostName(header);
    if (name === null) return false;
    if (this.names.has(name) || name.endsWith('.localhost')) return true;
    if (net.isIP(name) !== 0) return this.anyIp || name.startsWith('127.');
    return false;
  }
}

/** Compares a presented key with the configured one in constant time (SHA-256 digests of both). */
export function apiKeyMatches(presented: string | undefined, key: string): boolean {
  const a = createHash('sha256').update(presented ?? '', 'utf8').digest();
  const b = createHash('sha256').update(key, 'utf8').digest();
  return timingSafeEqual(a, b) && presented !== undefined;
}

/** The key in `Authorization: Bearer KEY` (or `x-api-key: KEY`), if any. */
export function presentedKey(headers: { authorization?: string; 'x-api-key'?: string | string[] }): string | undefined {
  const auth = headers.authorization;
  if (typeof auth === 'string') {
    const m = /^\s*bearer\s+(.+?)\s*$/i.exec(auth);
    if (m) return m[1];
  }
  const x = headers['x-api-key'];
  return typeof x === 'string' ? x : undefined;
}

/** The `access-control-allow-origin` value for a request Origin, or null (no CORS header). */
export function corsOrigin(origin: string | undefined, allowed: readonly string[]): string | null {
  if (allowed.length === 0) return null;
  if (allowed.includes('*')) return '*';
  if (origin === undefined) return null;
  const o = origin.replace(/\/+$/, '').toLowerCase();
  return allowed.some((a) => a.replace(/\/+$/, '').toLowerCase() === o) ? origin : null;
}
