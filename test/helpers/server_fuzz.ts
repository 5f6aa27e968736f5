/**
 * Seeded generators of malformed HTTP requests for the server's guard test: request lines, paths,
 * headers and bodies, from plainly broken to almost valid (so that deep code paths are reached too).
 */
import * as net from 'net';

/** mulberry32: a small seeded PRNG; returns floats in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export class Gen {
  constructor(readonly rnd: () => number) {}
  int(lo: number, hi: number): number {
    return lo + Math.floor(this.rnd() * (hi - lo + 1));
  }
  pick<T>(xs: readonly T[]): T {
    return xs[Math.floor(this.rnd() * xs.length)];
  }
  chance(p: number): boolean {
    return this.rnd() < p;
  }
  bytes(n: number): Buffer {
    const b = Buffer.alloc(n);
    for (let i = 0; i < n; i++) b[i] = this.int(0, 255);
    return b;
  }
  /** A string of characters drawn from ASCII, controls, Latin-1, CJK, lone surrogates and emoji. */
  text(maxLen: number): string {
    const n = this.int(0, maxLen);
    let s = '';
    for (let i = 0; i < n; i++) {
      const k = this.int(0, 9);
      if (k < 5) s += String.fromCharCode(this.int(0x20, 0x7e));
      else if (k === 5) s += String.fromCharCode(this.int(0, 0x1f));
      else if (k === 6) s += String.fromCharCode(this.int(0x80, 0xff));
      else if (k === 7) s += String.fromCharCode(this.int(0x4e00, 0x9fff));
      else if (k === 8) s += String.fromCharCode(this.int(0xd800, 0xdfff));
      else s += String.fromCodePoint(this.int(0x1f300, 0x1faff));
    }
    return s;
  }
  /** Visible ASCII (no space), as allowed in a request target or header value. */
  visible(maxLen: number): string {
    let s = '';
    for (let i = this.int(0, maxLen); i > 0; i--) s += String.fromCharCode(this.int(0x21, 0x7e));
    return s;
  }
  /** Percent escapes, valid and broken: %41, %ZZ, %E0%A4%A, a lone %, ... */
  escape(): string {
    const hex = '0123456789abcdefABCDEF';
    const any = hex + 'GZz%/ ';
    switch (this.int(0, 5)) {
      case 0:
        return `%${this.pick([...hex])}${this.pick([...hex])}`;
      case 1:
        return `%${this.pick([...any])}${this.pick([...any])}`;
      case 2:
        return '%';
      case 3: {
        // A UTF-8 sequence, truncated at a random point.
        const bytes = Buffer.from(String.fromCodePoint(this.int(0x80, 0x10ffff) & ~0x800), 'utf8');
        const enc = [...bytes].map((b) => `%${b.toString(16).toUpperCase().padStart(2, '0')}`).join('');
        return enc.slice(0, this.int(1, enc.length));
      }
      case 4:
        return `%${this.pick([...hex])}`;
      default:
        return `%${this.int(0xc0, 0xff).toString(16)}%${this.int(0, 0x7f).toString(16).padStart(2, '0')}`;
    }
  }
}

const ROUTES = ['/health', '/v1/models', '/v1/models/', '/v1/models/plm-tiny-random', '/v1/chat/completions', '/chat/completions', '/metrics', '/', '//', '//x:99999', '*', '/models'];

/** A request target; `wellFormed` keeps to characters an HTTP parser accepts (the escapes stay hostile). */
function target(g: Gen, wellFormed: boolean): string {
  const k = g.int(0, 9);
  if (k === 0) return g.pick(['//', '//x:99999', '///', '//:', '//[', '//[::1', 'http://', 'http://%zz/', 'http://[::1]:99999/health', 'https://x/v1/models', '/?', '/#', '*']);
  if (k === 1 && !wellFormed) return g.text(40);
  let t = g.pick(ROUTES);
  const parts = g.int(0, 4);
  for (let i = 0; i < parts; i++) {
    const what = g.int(0, 6);
    if (what === 0) t += g.escape();
    else if (what === 1) t += g.pick(wellFormed ? ['/', '..', '/./', '?', '#', '&', '=', ';'] : ['/', '..', ' ', '\t', '\r']);
    else if (what === 2) t += wellFormed ? g.visible(8) : g.text(8);
    else if (what === 3) t += `?${wellFormed ? g.visible(10) : g.text(10)}`;
    else if (what === 4) t = t.replace(/\/[^/]*$/, `/${g.escape()}${g.escape()}`);
    else if (what === 5) t += 'a'.repeat(g.int(100, 9000));
    else t = `/${t}`;
  }
  return t;
}

let TINY_PNG = '';

/** The small valid image (base64 PNG) that generated chat bodies carry. */
export function useImage(base64Png: string): void {
  TINY_PNG = base64Png;
}

function jsonValue(g: Gen, depth = 0): unknown {
  switch (g.int(0, depth > 3 ? 6 : 9)) {
    case 0:
      return null;
    case 1:
      return g.chance(0.5);
    case 2:
      return g.pick([0, 1, -1, 2, 0.5, 1e308, -1e308, 4097, 2 ** 53, 21, 1.5]);
    case 3:
      return g.text(20);
    case 4:
      return `data:image/png;base64,${g.chance(0.5) ? TINY_PNG : g.bytes(g.int(0, 30)).toString('base64')}`;
    case 5:
      return `data:${g.pick(['image/png', '', 'text/plain', 'image/png;charset=x'])},${g.text(5)}${g.escape()}${g.text(5)}`;
    case 6:
      return g.pick(['http://127.0.0.1:1/x.png', 'http://10.0.0.1/x.png', 'https://[::1]/a.png', 'file:///etc/passwd', 'ftp://x/y']);
    case 7:
      return Array.from({ length: g.int(0, 3) }, () => jsonValue(g, depth + 1));
    case 8: {
      const o: Record<string, unknown> = {};
      for (let i = 0; i < g.int(0, 3); i++) o[g.pick(['type', 'text', 'image_url', 'url', 'detail', 'role', 'content', g.text(6)])] = jsonValue(g, depth + 1);
      return o;
    }
    default:
      return [[[[[[[[[[]]]]]]]]]];
  }
}

/** A chat request, then a few random edits at random places. */
function chatBody(g: Gen): unknown {
  const body: Record<string, unknown> = {
    model: 'plm-tiny-random',
    messages: [
      {
        role: 'user',
        content: [
          { type: 'image_url', image_url: { url: `data:image/png;base64,${TINY_PNG}`, detail: 'low' } },
          { type: 'text', text: 'What is it?' },
        ],
      },
    ],
    max_tokens: 1,
    temperature: 0,
  };
  const edits = g.int(0, 4);
  for (let i = 0; i < edits; i++) {
    // Walk to a random container and set, delete or add a key.
    let node: unknown = body;
    for (let d = 0; d < g.int(0, 5); d++) {
      if (Array.isArray(node) && node.length > 0) node = node[g.int(0, node.length - 1)];
      else if (node && typeof node === 'object' && Object.keys(node).length > 0) node = (node as Record<string, unknown>)[g.pick(Object.keys(node))];
      else break;
    }
    if (!node || typeof node !== 'object') continue;
    const keys = Array.isArray(node) ? node.map((_, k) => String(k)) : Object.keys(node);
    const key = keys.length > 0 && g.chance(0.7) ? g.pick(keys) : g.pick(['stream', 'n', 'logprobs', 'top_logprobs', 'tools', 'response_format', 'stop', 'seed', 'top_p', 'max_tokens', 'frequency_penalty', 'stream_options', 'extra', g.text(6)]);
    if (g.chance(0.2)) delete (node as Record<string, unknown>)[key];
    else (node as Record<string, unknown>)[key] = jsonValue(g);
  }
  return body;
}

function body(g: Gen): Buffer {
  switch (g.int(0, 7)) {
    case 0:
      return Buffer.alloc(0);
    case 1:
      return g.bytes(g.int(1, 300));
    case 2: {
      const s = JSON.stringify(chatBody(g));
      return Buffer.from(s.slice(0, g.int(0, s.length)));
    }
    case 3:
      return Buffer.from(g.text(200));
    default:
      return Buffer.from(JSON.stringify(chatBody(g)));
  }
}

/**
 * One raw request (bytes as sent on the wire). About half are well-formed HTTP (valid method, version,
 * header syntax and framing) with hostile paths, hosts and bodies, so that they reach the routes; the
 * rest break the request line, the headers or the framing.
 */
export function request(g: Gen, port: number): Buffer {
  const wf = g.chance(0.55);
  const method = wf || g.chance(0.7) ? g.pick(['GET', 'POST', 'POST', 'POST', 'OPTIONS', 'HEAD', 'PUT', 'DELETE']) : g.pick(['get', 'PO ST', 'X'.repeat(g.int(1, 40)), '', 'CONNECT', 'TRACE', g.text(6)]);
  // Most well-formed POSTs go to the chat route, where the bodies matter.
  const t = wf && method === 'POST' && g.chance(0.7) ? g.pick(['/v1/chat/completions', '/chat/completions', '/v1/chat/completions?x=1']) : target(g, wf);
  const version = wf || g.chance(0.8) ? g.pick(['HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0']) : g.pick(['HTTP/2.0', 'HTTP/1.1x', '', 'HTTP/9', g.text(5)]);
  const b = body(g);
  const headers: string[] = [];
  const hostKind = g.int(0, 9);
  if (hostKind < (wf ? 8 : 6)) headers.push(`Host: ${g.pick(['localhost', '127.0.0.1', `127.0.0.1:${port}`, `localhost:${port}`, '[::1]'])}`);
  else if (hostKind < 9) headers.push(`Host: ${g.pick(['evil.example', '[', '[::1', `x:${g.int(0, 999999)}`, ':', wf ? g.visible(12) : g.text(12)])}`);
  const framing = wf ? (g.chance(0.85) ? 0 : 7) : g.int(0, 9);
  if (framing < 6) headers.push(`Content-Length: ${b.length}`);
  else if (framing === 6) headers.push(`Content-Length: ${g.pick([-1, 1e20, b.length + g.int(1, 50), 'abc', `${b.length}, ${b.length + 1}`, ' '])}`);
  else if (framing === 7) headers.push('Transfer-Encoding: chunked');
  else if (framing === 8) headers.push(`Content-Length: ${b.length}`, 'Transfer-Encoding: chunked');
  if (g.chance(0.6)) headers.push(`Content-Type: ${g.pick(['application/json', 'text/plain', 'multipart/form-data', wf ? g.visible(10) : g.text(10)])}`);
  for (let i = 0; i < g.int(0, wf ? 2 : 4); i++) {
    const k = g.int(0, 7);
    if (k === 0) headers.push(`Origin: ${g.pick(['https://ok.example', 'https://evil.example', 'null', g.visible(10)])}`);
    else if (k === 1) headers.push(`Authorization: ${g.pick(['Bearer x', 'Bearer', 'Basic Zm9vOmJhcg==', g.visible(20)])}`);
    else if (k === 2) headers.push(wf ? `X-${g.pick(['A', 'Foo', 'Api-Key'])}: ${g.visible(20)}` : `${g.text(8)}: ${g.text(20)}`);
    else if (k === 3) headers.push(wf ? `X-Dup: 1` : g.text(30));
    else if (k === 4) headers.push(`X-Long: ${'v'.repeat(g.int(1000, wf ? 8000 : 20000))}`);
    else if (k === 5) headers.push(`Connection: ${g.pick(['close', 'keep-alive', 'upgrade', g.visible(5)])}`);
    else if (k === 6) headers.push(`Expect: ${g.pick(['100-continue', g.visible(5)])}`);
    else headers.push(`Upgrade: ${g.pick(['websocket', 'h2c', g.visible(5)])}`);
  }
  let payload = b;
  if (framing === 7 || framing === 8) {
    // Chunked: correct framing or broken sizes.
    const size = wf || g.chance(0.7) ? b.length.toString(16) : g.pick(['zz', '-1', 'ffffffffffffffff', '', (b.length + 3).toString(16)]);
    payload = Buffer.concat([Buffer.from(`${size}\r\n`), b, Buffer.from(wf || g.chance(0.8) ? '\r\n0\r\n\r\n' : '\r\n')]);
  }
  const eol = wf || g.chance(0.9) ? '\r\n' : g.pick(['\n', '\r', '\r\r\n']);
  const head = `${method} ${t} ${version}${eol}${headers.join(eol)}${eol}${eol}`;
  return Buffer.concat([Buffer.from(head, wf || g.chance(0.9) ? 'utf8' : 'latin1'), payload]);
}

/** What came back for one raw request (until a full response, the socket closed, or `waitMs`). */
export interface RawResponse {
  status: number | null;
  headers: Record<string, string>;
  body: Buffer;
  raw: Buffer;
}

/** Sends raw bytes on a fresh connection and reads one response. */
export function sendRaw(port: number, data: Buffer, waitMs: number): Promise<RawResponse> {
  return new Promise((resolve) => {
    const sock = net.connect(port, '127.0.0.1');
    const chunks: Buffer[] = [];
    let done = false;
    const finish = (): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(parseResponse(Buffer.concat(chunks)));
    };
    const timer = setTimeout(finish, waitMs);
    sock.on('error', finish);
    sock.on('close', finish);
    sock.on('data', (c: Buffer) => {
      chunks.push(c);
      const r = parseResponse(Buffer.concat(chunks));
      const len = Number(r.headers['content-length']);
      if (r.status !== null && Number.isFinite(len) && r.body.length >= len) finish();
    });
    sock.write(data, () => undefined);
  });
}

export function parseResponse(raw: Buffer): RawResponse {
  const end = raw.indexOf('\r\n\r\n');
  if (end < 0) return { status: null, headers: {}, body: Buffer.alloc(0), raw };
  const lines = raw.subarray(0, end).toString('latin1').split('\r\n');
  const m = /^HTTP\/1\.[01] (\d{3})/.exec(lines[0]);
  const headers: Record<string, string> = {};
  for (const l of lines.slice(1)) {
    const i = l.indexOf(':');
    if (i > 0) headers[l.slice(0, i).trim().toLowerCase()] = l.slice(i + 1).trim();
  }
  return { status: m ? Number(m[1]) : null, headers, body: raw.subarray(end + 4), raw };
}
