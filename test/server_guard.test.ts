/**
 * The server's request guard (issue 19, "The server"): no request crashes or hangs the process, every
 * failure is an OpenAI-shaped JSON error, no CORS by default, API key, Host allowlist, timeouts and
 * the connection cap, and data: URLs with bad escapes. Over raw sockets on 127.0.0.1.
 */
import * as http from 'http';
import * as net from 'net';
import * as path from 'path';
import sharp from 'sharp';
import OpenAI from 'openai';
import { loadModel, PerceptionLM } from '../lib/model';
import { PlmServer, startServer } from '../lib/server';
import { apiKeyMatches, corsOrigin, HostPolicy, hostName, requestPath } from '../lib/server_guard';
import { decodeDataUrl, percentDecodeBytes } from '../lib/server_images';
import { JsonBodyError, JsonParser } from '../lib/server_json';
import { Gen, prng, request, sendRaw, useImage } from './helpers/server_fuzz';

const root = path.resolve(__dirname, '..');
const modelDir = path.join(root, 'models', 'plm-tiny-random');

let model: PerceptionLM;
let png: Buffer;

beforeAll(async () => {
  model = await loadModel(modelDir, { backend: 'cpu', maxContext: 4096 });
  png = await sharp({ create: { width: 8, height: 6, channels: 3, background: { r: 200, g: 20, b: 20 } } }).png().toBuffer();
  useImage(png.toString('base64'));
});

afterAll(() => {
  model?.dispose();
});

async function withServer<T>(opts: Partial<Parameters<typeof startServer>[0]>, f: (srv: PlmServer) => Promise<T>): Promise<T> {
  const srv = await startServer({ model, port: 0, maxTokensLimit: 4, defaultMaxTokens: 1, ...opts });
  try {
    return await f(srv);
  } finally {
    await srv.close();
  }
}

/** GET over a fresh connection (no keep-alive), with optional headers. */
function get(srv: PlmServer, p: string, headers: Record<string, string> = {}, method = 'GET'): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port: srv.port, path: p, method, headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const rawGet = (target: string, host = 'localhost'): Buffer => Buffer.from(`GET ${target} HTTP/1.1\r\nHost: ${host}\r\n\r\n`);

test('unit: request paths, Host names, CORS, API keys and percent-decoding never throw', () => {
  expect(requestPath('/v1/models/?x=1')).toBe('/v1/models');
  expect(requestPath('//')).toBe('/');
  expect(requestPath('http://h:1/health?q')).toBe('/health');
  expect(() => requestPath('x')).toThrow(/must be a path/);
  expect(hostName('LocalHost.:8080')).toBe('localhost');
  expect(hostName('[::1]:99')).toBe('::1');
  expect(hostName('[::1')).toBeNull();
  expect(hostName('a:b')).toBeNull();
  const hp = new HostPolicy('127.0.0.1', ['plm.lan']);
  expect([hp.allows('localhost:1'), hp.allows('127.0.0.1'), hp.allows('[::1]:8'), hp.allows('app.localhost'), hp.allows('plm.lan:80'), hp.allows(undefined)]).toEqual([true, true, true, true, true, true]);
  expect([hp.allows('evil.example'), hp.allows('10.0.0.1'), hp.allows('localhost.evil.example'), hp.allows('')]).toEqual([false, false, false, false]);
  expect(new HostPolicy('0.0.0.0').allows('192.168.1.9:8080')).toBe(true);
  expect(new HostPolicy('0.0.0.0').allows('evil.example')).toBe(false);
  expect(new HostPolicy('127.0.0.1', ['*']).allows('evil.example')).toBe(true);
  expect(corsOrigin('https://a.example', [])).toBeNull();
  expect(corsOrigin('https://a.example', ['https://a.example'])).toBe('https://a.example');
  expect(corsOrigin('https://b.example', ['https://a.example'])).toBeNull();
  expect(corsOrigin(undefined, ['*'])).toBe('*');
  expect(apiKeyMatches('k1', 'k1')).toBe(true);
  expect(apiKeyMatches('k2', 'k1')).toBe(false);
  expect(apiKeyMatches(undefined, 'k1')).toBe(false);
  expect(apiKeyMatches('k1-longer', 'k1')).toBe(false);
  expect(percentDecodeBytes('a%20b%ff')).toEqual(Buffer.from([0x61, 0x20, 0x62, 0xff]));
  for (const bad of ['%', '%Z1', '%E0%A4%A', 'x%4']) expect(percentDecodeBytes(bad)).toBeNull();
  expect(() => decodeDataUrl('data:image/png,%ZZ', 'p')).toThrow(/malformed percent escape/);
  expect(decodeDataUrl('data:image/png;base64,AAEC', 'p')).toEqual(Buffer.from([0, 1, 2]));
});

test('unit: large bodies are parsed in a worker with the same result and errors as JSON.parse', async () => {
  const parser = new JsonParser(1024);
  try {
    const value = { messages: [{ role: 'user', content: 'é漢😀'.repeat(50_000) }], n: [1, 2.5, null, true], nested: { a: { b: 'c' } } };
    const text = JSON.stringify(value);
    expect(await parser.parse(Buffer.from(text))).toEqual(value);
    // A slice of a larger buffer (not transferable as is) and a small body (parsed inline).
    const big = Buffer.from(`xx${text}yy`);
    expect(await parser.parse(big.subarray(2, big.length - 2))).toEqual(value);
    expect(await parser.parse(Buffer.from('{"a":1}'))).toEqual({ a: 1 });
    let syntax = '';
    try {
      JSON.parse(`${text.slice(0, 5000)}`);
    } catch (e) {
      syntax = (e as Error).message;
    }
    await expect(parser.parse(Buffer.from(text.slice(0, 5000)))).rejects.toEqual(new JsonBodyError(syntax));
  } finally {
    await parser.close();
  }
});

test('bad percent escapes and odd targets in the path are JSON errors, not a crash', async () => {
  await withServer({}, async (srv) => {
    for (const t of ['/v1/models/%ZZ', '/v1/models/%E0%A4%A', '//', '//x:99999', '/v1/models/%', '/%C0%AF']) {
      const r = await sendRaw(srv.port, rawGet(t), 3000);
      expect(r.status).not.toBeNull();
      expect(r.status as number).toBeGreaterThanOrEqual(400);
      expect(r.status as number).toBeLessThan(500);
      const j = JSON.parse(r.body.toString('utf8')) as { error: { message: string; type: string } };
      expect(typeof j.error.message).toBe('string');
      expect((await get(srv, '/health')).status).toBe(200);
    }
    const r = await sendRaw(srv.port, rawGet('/v1/models/%ZZ'), 3000);
    expect(r.status).toBe(400);
    expect((JSON.parse(r.body.toString()) as { error: { code: string } }).error.code).toBe('bad_percent_escape');
  });
});

test('a data: URL with a bad % escape is a 400 (was 500 ERR_INTERNAL)', async () => {
  await withServer({}, async (srv) => {
    const r = await fetch(`${srv.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:image/png,%E0%A4%A' } }] }] }),
    });
    expect(r.status).toBe(400);
    const j = (await r.json()) as { error: { code: string; param: string } };
    expect(j.error).toMatchObject({ code: 'invalid_image_url', param: 'messages[0].content[0]' });
    // Percent-encoded bytes of a real PNG work.
    const enc = [...png].map((b) => `%${b.toString(16).padStart(2, '0')}`).join('');
    const ok = await fetch(`${srv.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: `data:image/png,${enc}` } }, { type: 'text', text: 'x' }] }], max_tokens: 1 }),
    });
    expect(ok.status).toBe(200);
  });
});

test('2000 generated malformed requests (seeded): /health answers after each, no 500, every JSON error in OpenAI shape', async () => {
  const statuses = new Map<string, number>();
  await withServer({ cors: ['https://ok.example'], headersTimeoutMs: 2000, requestTimeoutMs: 3000 }, async (srv) => {
    const g = new Gen(prng(19));
    for (let i = 0; i < 2000; i++) {
      const req = request(g, srv.port);
      const r = await sendRaw(srv.port, req, 400);
      const key = r.status === null ? 'none' : String(r.status);
      statuses.set(key, (statuses.get(key) ?? 0) + 1);
      const context = `request #${i}: ${JSON.stringify(req.subarray(0, 300).toString('latin1'))}`;
      if (r.status !== null) {
        if (r.status === 500) throw new Error(`500 for ${context}: ${r.body.toString()}`);
        if (r.status >= 400 && /json/.test(r.headers['content-type'] ?? '') && r.body.length > 0 && r.body.length >= Number(r.headers['content-length'] ?? Infinity)) {
          const j = JSON.parse(r.body.toString('utf8')) as { error?: { message?: unknown; type?: unknown } };
          if (typeof j.error?.message !== 'string' || typeof j.error?.type !== 'string') throw new Error(`not an OpenAI error for ${context}: ${r.body.toString()}`);
        }
      }
      const h = await get(srv, '/health');
      if (h.status !== 200) throw new Error(`/health gave ${h.status} after ${context}`);
    }
  });
  // The inputs reach both the parser's rejections and the routes (a spread of statuses, not one).
  expect(statuses.get('400')).toBeGreaterThan(100);
  expect([...statuses.keys()].filter((k) => k !== 'none').length).toBeGreaterThanOrEqual(5);
}, 600000);

test('no CORS header by default; --cors origins get it (preflight included)', async () => {
  await withServer({}, async (srv) => {
    const r = await get(srv, '/v1/models', { origin: 'https://evil.example' });
    expect(r.status).toBe(200);
    expect(r.headers['access-control-allow-origin']).toBeUndefined();
    const pre = await get(srv, '/v1/chat/completions', { origin: 'https://evil.example', 'access-control-request-method': 'POST' }, 'OPTIONS');
    expect(pre.status).toBe(204);
    expect(pre.headers['access-control-allow-origin']).toBeUndefined();
    expect(pre.headers['access-control-allow-methods']).toBeUndefined();
  });
  await withServer({ cors: ['https://app.example', 'https://two.example'] }, async (srv) => {
    const ok = await get(srv, '/v1/models', { origin: 'https://two.example' });
    expect(ok.headers['access-control-allow-origin']).toBe('https://two.example');
    expect(ok.headers.vary).toMatch(/origin/i);
    const pre = await get(srv, '/v1/chat/completions', { origin: 'https://app.example' }, 'OPTIONS');
    expect(pre.headers['access-control-allow-origin']).toBe('https://app.example');
    expect(pre.headers['access-control-allow-headers']).toMatch(/authorization/);
    expect((await get(srv, '/v1/models', { origin: 'https://evil.example' })).headers['access-control-allow-origin']).toBeUndefined();
  });
});

test('--api-key: 401 on every route but /health, constant-time match, works with the openai client', async () => {
  await withServer({ apiKey: 'sk-test-123' }, async (srv) => {
    for (const p of ['/v1/models', '/v1/models/plm-tiny-random', '/metrics', '/nope']) {
      const r = await get(srv, p);
      expect(r.status).toBe(401);
      expect(r.headers['www-authenticate']).toBe('Bearer');
      expect((JSON.parse(r.body) as { error: { code: string } }).error.code).toBe('invalid_api_key');
      expect((await get(srv, p, { authorization: 'Bearer sk-test-124' })).status).toBe(401);
    }
    const chat = await fetch(`${srv.url}/v1/chat/completions`, { method: 'POST', body: '{}' });
    expect(chat.status).toBe(401);
    const h = await get(srv, '/health');
    expect(h.status).toBe(200);
    expect(JSON.parse(h.body)).toEqual({ status: 'ok' });
    expect(JSON.parse((await get(srv, '/health', { authorization: 'Bearer sk-test-123' })).body)).toMatchObject({ status: 'ok', model: 'plm-tiny-random' });
    expect((await get(srv, '/v1/models', { authorization: 'Bearer sk-test-123' })).status).toBe(200);
    const client = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'sk-test-123', maxRetries: 0 });
    const c = await client.chat.completions.create({ model: 'plm-tiny-random', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2 });
    expect(c.choices[0].message.role).toBe('assistant');
    const wrong = new OpenAI({ baseURL: `${srv.url}/v1`, apiKey: 'nope', maxRetries: 0 });
    await expect(wrong.models.list()).rejects.toMatchObject({ status: 401 });
  });
});

test('a Host header outside the allowlist is refused (DNS rebinding); --allow-host adds names', async () => {
  await withServer({}, async (srv) => {
    for (const host of ['evil.example', 'evil.example:80', 'localhost.evil.example', '10.1.1.1']) {
      const r = await get(srv, '/health', { host });
      expect(r.status).toBe(403);
      expect((JSON.parse(r.body) as { error: { code: string } }).error.code).toBe('host_not_allowed');
    }
    for (const host of ['localhost', `localhost:${srv.port}`, `127.0.0.1:${srv.port}`, '[::1]']) expect((await get(srv, '/health', { host })).status).toBe(200);
  });
  await withServer({ allowedHosts: ['plm.lan'] }, async (srv) => {
    expect((await get(srv, '/health', { host: 'plm.lan:8080' })).status).toBe(200);
    expect((await get(srv, '/health', { host: 'other.lan' })).status).toBe(403);
  });
});

/** Opens a socket and resolves with how it ended and what it received. */
function stall(port: number, data: string, maxMs: number): Promise<{ closedAfterMs: number | null; received: string }> {
  return new Promise((resolve) => {
    const t0 = Date.now();
    const s = net.connect(port, '127.0.0.1', () => s.write(data));
    let received = '';
    s.on('data', (c: Buffer) => (received += c.toString()));
    const timer = setTimeout(() => {
      s.destroy();
      resolve({ closedAfterMs: null, received });
    }, maxMs);
    s.on('close', () => {
      clearTimeout(timer);
      resolve({ closedAfterMs: Date.now() - t0, received });
    });
    s.on('error', () => undefined);
  });
}

test('stalled headers and stalled bodies are closed (headers and request timeouts); the connection cap holds', async () => {
  await withServer({ headersTimeoutMs: 300, requestTimeoutMs: 600 }, async (srv) => {
    expect(srv.server.headersTimeout).toBe(300);
    expect(srv.server.requestTimeout).toBe(600);
    const headers = await stall(srv.port, 'GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: ', 10000);
    expect(headers.closedAfterMs).not.toBeNull();
    expect(headers.received).toMatch(/^HTTP\/1\.1 408/);
    const bodyStall = await stall(srv.port, 'POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{"messages"', 10000);
    expect(bodyStall.closedAfterMs).not.toBeNull();
    expect(bodyStall.received).toMatch(/^HTTP\/1\.1 408/);
    expect((await get(srv, '/health')).status).toBe(200);
  });
  await withServer({ maxConnections: 3 }, async (srv) => {
    expect(srv.server.maxConnections).toBe(3);
    const held = await Promise.all(
      [0, 1, 2].map(
        () =>
          new Promise<net.Socket>((resolve) => {
            const s = net.connect(srv.port, '127.0.0.1', () => resolve(s));
            s.on('error', () => undefined);
          }),
      ),
    );
    // The fourth connection is dropped at once, without an answer.
    const fourth = await stall(srv.port, 'GET /health HTTP/1.1\r\nHost: localhost\r\n\r\n', 5000);
    expect(fourth.closedAfterMs).not.toBeNull();
    expect(fourth.received).toBe('');
    for (const s of held) s.destroy();
    await new Promise((r) => setTimeout(r, 100));
    expect((await get(srv, '/health')).status).toBe(200);
  });
});
