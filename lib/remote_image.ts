/**
 * Fetching an image from an http(s) URL for the server (`--allow-remote-images`) without letting a
 * request reach the server's own network (SSRF).
 *
 * - The host name is resolved once; every address it resolves to must be a global unicast address
 *   ({@link isGlobalAddress}: no loopback, private, link-local, CGNAT, multicast, unspecified,
 *   documentation, benchmarking, IPv4-mapped IPv6 or other special-purpose ranges), else the fetch is
 *   refused before any connection is made.
 * - The connection dials the address that was checked (the socket's `lookup` returns it), so a second
 *   DNS answer cannot swap in another address (DNS rebinding).
 * - Redirects are followed by hand, at most `maxRedirects` (3), each target checked the same way.
 * - The body is capped at `maxBytes` (10 MiB) and the whole fetch, redirects included, at `timeoutMs` (5 s).
 */
import * as dns from 'dns';
import * as http from 'http';
import * as https from 'https';
import * as net from 'net';

/** Why a remote image could not be used. */
export type RemoteImageFailure = 'bad_url' | 'refused' | 'fetch_failed' | 'http_status' | 'too_large' | 'timeout' | 'too_many_redirects';

/** A remote image fetch that failed or was refused; `reason` says which. */
export class RemoteImageError extends Error {
  constructor(
    readonly reason: RemoteImageFailure,
    message: string,
  ) {
    super(message);
    this.name = 'RemoteImageError';
  }
}

/** A resolved address. */
export interface ResolvedAddress {
  address: string;
  /** 4 or 6. */
  family: number;
}

/** Options of {@link fetchRemoteImage}. */
export interface RemoteImageOptions {
  /** Largest body in bytes. Default 10 MiB. */
  maxBytes?: number;
  /** Time for the whole fetch, redirects included, in ms. Default 5000. */
  timeoutMs?: number;
  /** Redirects followed. Default 3. */
  maxRedirects?: number;
  signal?: AbortSignal;
  /**
   * Which resolved address may be dialled. Default: {@link isGlobalAddress}. Tests use it to permit
   * exactly one loopback test server (address and port); never widen it in production.
   */
  allowAddress?: (address: string, port: number) => boolean;
  /** Resolver. Default: `dns.promises.lookup(host, { all: true, verbatim: true })`. Tests inject names. */
  lookup?: (hostname: string) => Promise<ResolvedAddress[]>;
}

export const REMOTE_IMAGE_DEFAULTS = { maxBytes: 10 * 1024 * 1024, timeoutMs: 5000, maxRedirects: 3 } as const;

/** Parses a dotted-quad IPv4 address to a 32-bit unsigned integer, or null. */
export function parseIPv4(s: string): number | null {
  if (!net.isIPv4(s)) return null;
  const p = s.split('.').map(Number);
  return ((p[0] << 24) >>> 0) + (p[1] << 16) + (p[2] << 8) + p[3];
}

/**
 * Parses an IPv6 address (with `::` and an optional dotted IPv4 tail) to its eight 16-bit groups,
 * or null (also for a zone id such as `fe80::1%eth0`).
 */
export function parseIPv6(s: string): number[] | null {
  if (s.includes('%') || !net.isIPv6(s)) return null;
  let str = s;
  const lastColon = str.lastIndexOf(':');
  const tail = str.slice(lastColon + 1);
  if (tail.includes('.')) {
    const v4 = parseIPv4(tail);
    if (v4 === null) return null;
    str = `${str.slice(0, lastColon + 1)}${(v4 >>> 16).toString(16)}:${(v4 & 0xffff).toString(16)}`;
  }
  const halves = str.split('::');
  if (halves.length > 2) return null;
  const head = halves[0] ? halves[0].split(':') : [];
  const rest = halves.length === 2 && halves[1] ? halves[1].split(':') : [];
  const missing = 8 - head.length - rest.length;
  if (halves.length === 1 ? missing !== 0 : missing < 1) return null;
  const groups = [...head, ...Array<string>(halves.length === 2 ? missing : 0).fill('0'), ...rest].map((g) => (/^[0-9a-f]{1,4}$/i.test(g) ? parseInt(g, 16) : NaN));
  return groups.length === 8 && groups.every((g) => Number.isInteger(g)) ? groups : null;
}

// [base, prefix length] of the IPv4 ranges that are not global unicast (IANA special-purpose registry).
const IPV4_BLOCKED: ReadonlyArray<[string, number, string]> = [
  ['0.0.0.0', 8, 'this network / unspecified'],
  ['10.0.0.0', 8, 'private'],
  ['100.64.0.0', 10, 'shared address space (CGNAT)'],
  ['127.0.0.0', 8, 'loopback'],
  ['169.254.0.0', 16, 'link-local'],
  ['172.16.0.0', 12, 'private'],
  ['192.0.0.0', 24, 'IETF protocol assignments'],
  ['192.0.2.0', 24, 'documentation'],
  ['192.88.99.0', 24, '6to4 relay anycast'],
  ['192.168.0.0', 16, 'private'],
  ['198.18.0.0', 15, 'benchmarking'],
  ['198.51.100.0', 24, 'documentation'],
  ['203.0.113.0', 24, 'documentation'],
  ['224.0.0.0', 4, 'multicast'],
  ['240.0.0.0', 4, 'reserved / broadcast'],
];

function inV4(v: number, base: string, bits: number): boolean {
  const b = parseIPv4(base) as number;
  const mask = bits === 0 ? 0 : (0xffffffff << (32 - bits)) >>> 0;
  return ((v & mask) >>> 0) === ((b & mask) >>> 0);
}

/** Why an IPv4 address is not global (e.g. 'private'), or null when it is. */
function ipv4Block(v: number): string | null {
  for (const [base, bits, why] of IPV4_BLOCKED) if (inV4(v, base, bits)) return why;
  return null;
}

/** Why an IPv6 address (eight groups) is not global, or null when it is. */
function ipv6Block(g: number[]): string | null {
  const zeros = (n: number): boolean => g.slice(0, n).every((x) => x === 0);
  if (zeros(8)) return 'unspecified';
  if (zeros(7) && g[7] === 1) return 'loopback';
  if (zeros(5) && g[5] === 0xffff) return 'IPv4-mapped IPv6';
  if (g[0] === 0x64 && g[1] === 0xff9b && g[2] === 0 && g[3] === 0 && g[4] === 0 && g[5] === 0) {
    // NAT64 well-known prefix: as global as the IPv4 address it carries.
    const why = ipv4Block(((g[6] << 16) >>> 0) + g[7]);
    return why === null ? null : `NAT64 of a ${why} IPv4 address`;
  }
  if ((g[0] & 0xe000) !== 0x2000) {
    if ((g[0] & 0xfe00) === 0xfc00) return 'unique local (private)';
    if ((g[0] & 0xffc0) === 0xfe80) return 'link-local';
    if ((g[0] & 0xffc0) === 0xfec0) return 'site-local';
    if ((g[0] & 0xff00) === 0xff00) return 'multicast';
    return 'not global unicast (outside 2000::/3)';
  }
  if (g[0] === 0x2001 && g[1] < 0x200) return 'IETF protocol assignments (Teredo, benchmarking, ...)';
  if (g[0] === 0x2001 && g[1] === 0x0db8) return 'documentation';
  if (g[0] === 0x2002) return '6to4';
  if (g[0] === 0x3fff && g[1] < 0x1000) return 'documentation';
  return null;
}

/**
 * Why `address` (an IPv4 or IPv6 literal) may not be dialled, or null when it is a global unicast
 * address. Anything that does not parse is refused.
 *
 * @example
 * ```ts
 * nonGlobalReason('10.1.2.3');          // 'private'
 * nonGlobalReason('::ffff:127.0.0.1');  // 'IPv4-mapped IPv6'
 * nonGlobalReason('93.184.215.14');     // null
 * ```
 */
export function nonGlobalReason(address: string): string | null {
  const a = address.startsWith('[') && address.endsWith(']') ? address.slice(1, -1) : address;
  const v4 = parseIPv4(a);
  if (v4 !== null) return ipv4Block(v4);
  const v6 = parseIPv6(a);
  if (v6 !== null) return ipv6Block(v6);
  return a.includes('%') ? 'scoped (zone id) address' : 'not an IP address';
}

/**
 * True when `address` is a global unicast IPv4 or IPv6 address, i.e. one a server may fetch from.
 *
 * @example
 * ```ts
 * isGlobalAddress('100.64.0.1');  // false (CGNAT)
 * isGlobalAddress('2606:4700::1'); // true
 * ```
 */
export function isGlobalAddress(address: string): boolean {
  return nonGlobalReason(address) === null;
}

async function defaultLookup(hostname: string): Promise<ResolvedAddress[]> {
  return dns.promises.lookup(hostname, { all: true, verbatim: true });
}

interface Target {
  url: URL;
  host: string;
  port: number;
  address: string;
  family: number;
}

/** Parses and checks a URL, resolves its host and checks every address. */
async function resolveTarget(raw: string | URL, o: Required<Pick<RemoteImageOptions, 'allowAddress' | 'lookup'>>): Promise<Target> {
  let url: URL;
  try {
    url = typeof raw === 'string' ? new URL(raw) : raw;
  } catch {
    throw new RemoteImageError('bad_url', `not a valid URL: ${String(raw).slice(0, 200)}`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') throw new RemoteImageError('bad_url', `only http and https image URLs are fetched, not ${url.protocol}`);
  if (url.username || url.password) throw new RemoteImageError('bad_url', 'image URLs with credentials (user:password@) are refused');
  const host = url.hostname.startsWith('[') ? url.hostname.slice(1, -1) : url.hostname;
  if (!host) throw new RemoteImageError('bad_url', 'the image URL has no host');
  const port = url.port ? Number(url.port) : url.protocol === 'https:' ? 443 : 80;
  let addrs: ResolvedAddress[];
  if (net.isIP(host)) addrs = [{ address: host, family: net.isIP(host) }];
  else {
    try {
      addrs = await o.lookup(host);
    } catch (e) {
      throw new RemoteImageError('fetch_failed', `could not resolve ${host}: ${(e as Error).message}`);
    }
  }
  if (addrs.length === 0) throw new RemoteImageError('fetch_failed', `${host} resolves to no address`);
  // Every answer must pass: a name that mixes a public and a private address is refused.
  for (const a of addrs) {
    if (!o.allowAddress(a.address, port)) {
      const why = nonGlobalReason(a.address) ?? 'not permitted';
      throw new RemoteImageError('refused', `the image host ${host} resolves to ${a.address} (${why}); this server fetches images from global addresses only`);
    }
  }
  return { url, host, port, address: addrs[0].address, family: addrs[0].family === 6 ? 6 : 4 };
}

type Outcome = { kind: 'body'; bytes: Buffer } | { kind: 'redirect'; location: string };

/** One GET to the checked address; resolves with the body or a redirect location. */
function getOnce(t: Target, maxBytes: number, signal: AbortSignal): Promise<Outcome> {
  return new Promise<Outcome>((resolve, reject) => {
    const mod = t.url.protocol === 'https:' ? https : http;
    // Whatever net asks for, the checked address is what it gets: no second DNS query.
    const lookup = (_host: string, opts: { all?: boolean }, cb: (...args: unknown[]) => void): void => {
      if (opts && opts.all) cb(null, [{ address: t.address, family: t.family }]);
      else cb(null, t.address, t.family);
    };
    let settled = false;
    const fail = (e: RemoteImageError): void => {
      if (settled) return;
      settled = true;
      req.destroy();
      reject(e);
    };
    const req = mod.request(
      {
        protocol: t.url.protocol,
        hostname: t.host,
        port: t.port,
        path: `${t.url.pathname}${t.url.search}`,
        method: 'GET',
        headers: { host: t.url.host, accept: 'image/*', 'user-agent': 'perception-lm-server' },
        lookup: lookup as unknown as net.LookupFunction,
        agent: false,
        ...(t.url.protocol === 'https:' && !net.isIP(t.host) ? { servername: t.host } : {}),
      },
      (res) => {
        const status = res.statusCode ?? 0;
        if ([301, 302, 303, 307, 308].includes(status)) {
          const location = res.headers.location;
          res.resume();
          if (!location) return fail(new RemoteImageError('http_status', `HTTP ${status} redirect without a Location header`));
          settled = true;
          req.destroy();
          resolve({ kind: 'redirect', location });
          return;
        }
        if (status < 200 || status >= 300) {
          res.resume();
          return fail(new RemoteImageError('http_status', `fetching the image gave HTTP ${status}`));
        }
        const declared = Number(res.headers['content-length']);
        if (Number.isFinite(declared) && declared > maxBytes) return fail(new RemoteImageError('too_large', `the image is ${declared} bytes, more than the limit of ${maxBytes}`));
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > maxBytes) return fail(new RemoteImageError('too_large', `the image is larger than the limit of ${maxBytes} bytes`));
          chunks.push(c);
        });
        res.on('end', () => {
          if (settled) return;
          settled = true;
          resolve({ kind: 'body', bytes: Buffer.concat(chunks) });
        });
        res.on('error', (e) => fail(new RemoteImageError('fetch_failed', `reading the image failed: ${e.message}`)));
      },
    );
    const onAbort = (): void => fail(new RemoteImageError('timeout', 'the image fetch was cancelled or ran out of time'));
    if (signal.aborted) return onAbort();
    signal.addEventListener('abort', onAbort, { once: true });
    req.on('close', () => signal.removeEventListener('abort', onAbort));
    req.on('error', (e) => fail(signal.aborted ? new RemoteImageError('timeout', 'the image fetch ran out of time') : new RemoteImageError('fetch_failed', `could not fetch the image: ${e.message}`)));
    req.end();
  });
}

/**
 * Fetches an image over http(s) with the SSRF rules of this module (see the file comment).
 *
 * @param url an `http:` or `https:` URL.
 * @param options `maxBytes` (10 MiB), `timeoutMs` (5000), `maxRedirects` (3), `signal`; `allowAddress`
 *   and `lookup` are test hooks.
 * @returns the body bytes.
 * @throws RemoteImageError with `reason` 'bad_url', 'refused', 'fetch_failed', 'http_status',
 *   'too_large', 'timeout' or 'too_many_redirects'.
 * @example
 * ```ts
 * const bytes = await fetchRemoteImage('https://example.com/cat.jpg', { signal: req.signal });
 * ```
 */
export async function fetchRemoteImage(url: string, options: RemoteImageOptions = {}): Promise<Buffer> {
  const maxBytes = options.maxBytes ?? REMOTE_IMAGE_DEFAULTS.maxBytes;
  const timeoutMs = options.timeoutMs ?? REMOTE_IMAGE_DEFAULTS.timeoutMs;
  const maxRedirects = options.maxRedirects ?? REMOTE_IMAGE_DEFAULTS.maxRedirects;
  const o = { allowAddress: options.allowAddress ?? ((a: string): boolean => isGlobalAddress(a)), lookup: options.lookup ?? defaultLookup };
  const deadline = AbortSignal.timeout(timeoutMs);
  const signal = options.signal ? AbortSignal.any([options.signal, deadline]) : deadline;
  const timedOut = (): RemoteImageError => new RemoteImageError('timeout', `fetching the image took more than ${timeoutMs} ms`);
  let current: string | URL = url;
  for (let hop = 0; ; hop++) {
    if (signal.aborted) throw timedOut();
    const target: Target = await Promise.race([
      resolveTarget(current, o),
      new Promise<never>((_, reject) => {
        if (signal.aborted) reject(timedOut());
        signal.addEventListener('abort', () => reject(timedOut()), { once: true });
      }),
    ]);
    const out: Outcome = await getOnce(target, maxBytes, signal).catch((e: unknown) => {
      throw e instanceof RemoteImageError && e.reason === 'timeout' && deadline.aborted ? timedOut() : e;
    });
    if (out.kind === 'body') return out.bytes;
    if (hop >= maxRedirects) throw new RemoteImageError('too_many_redirects', `the image URL redirected more than ${maxRedirects} times`);
    try {
      current = new URL(out.location, target.url);
    } catch {
      throw new RemoteImageError('bad_url', `the image URL redirected to an invalid location: ${out.location.slice(0, 200)}`);
    }
  }
}
