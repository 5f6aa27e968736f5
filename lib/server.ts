/**
 * An OpenAI-compatible HTTP server for a loaded {@link PerceptionLM} (node:http only).
 *
 * Routes:
 * - `POST /v1/chat/completions`: `messages` with string content or `text` / `image_url` parts
 *   (`data:` URLs always; `http(s)` URLs only with `allowRemoteImages`), `max_tokens` /
 *   `max_completion_tokens`, `temperature`, `top_p`, `top_k`, `seed`, `stop`, `stream`
 *   (Server-Sent Events in OpenAI's `chat.completion.chunk` format, ending with `data: [DONE]`) and
 *   `stream_options.include_usage`.
 * - `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`.
 *
 * One generation runs at a time; at most `maxQueue` more wait (429 when full). Bodies larger than
 * `maxBodyBytes` get 413; images with more than `maxImagePixels` pixels and `max_tokens` above
 * `maxTokensLimit` get 400. A client that disconnects cancels its generation (AbortSignal).
 *
 * @example
 * ```ts
 * const model = await loadModel('/models/Perception-LM-1B');
 * const srv = await startServer({ model, port: 8080 });
 * console.log(`listening on ${srv.url}`);
 * ```
 */
import * as http from 'http';
import { randomUUID } from 'crypto';
import { AddressInfo } from 'net';
import sharp from 'sharp';
import { isPlmError, PlmError } from './errors';
import type { GenerateOptions, Message, PerceptionLM } from './model';
import type { MessageContent } from './chat_template';

/** Options of {@link startServer}. */
export interface ServerOptions {
  model: PerceptionLM;
  /** The id reported by /v1/models and echoed in responses. Default: the model directory's name. */
  modelId?: string;
  /** Default '127.0.0.1'. */
  host?: string;
  /** Default 8080; 0 picks a free port. */
  port?: number;
  /** Requests waiting behind the running one; more get 429. Default 16. */
  maxQueue?: number;
  /** Largest request body in bytes (413 above). Default 32 MiB. */
  maxBodyBytes?: number;
  /** Largest image in pixels (width * height; 400 above). Default 50,000,000. */
  maxImagePixels?: number;
  /** Largest max_tokens a request may ask for (400 above). Default 4096. */
  maxTokensLimit?: number;
  /** max_tokens when a request gives none. Default 512. */
  defaultMaxTokens?: number;
  /** Fetch http(s) image URLs (off by default: a server that fetches URLs is an SSRF risk). */
  allowRemoteImages?: boolean;
  /** Timeout of a remote image fetch. Default 15 s. */
  remoteImageTimeoutMs?: number;
  /** Access log and events; default: none. */
  log?: (line: string) => void;
  /** Called when a generation ends (tests, metrics). */
  onRequestDone?: (info: RequestDoneInfo) => void;
}

/** What {@link ServerOptions.onRequestDone} receives. */
export interface RequestDoneInfo {
  id: string;
  stream: boolean;
  finishReason: 'stop' | 'length' | 'cancelled' | 'error';
  completionTokens: number;
  promptTokens: number;
  ms: number;
}

/** A running server. */
export interface PlmServer {
  server: http.Server;
  host: string;
  port: number;
  /** e.g. 'http://127.0.0.1:8080' */
  url: string;
  /** Stops accepting connections, cancels running generations and resolves once closed. */
  close(): Promise<void>;
}

/** OpenAI-style error with an HTTP status. */
export class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly type: string = 'invalid_request_error',
    readonly code: string | null = null,
    readonly param: string | null = null,
  ) {
    super(message);
    this.name = 'HttpError';
  }
}

interface OpenAIContentPart {
  type?: unknown;
  text?: unknown;
  image_url?: unknown;
}

interface OpenAIMessage {
  role?: unknown;
  content?: unknown;
}

/** Bounded FIFO of one running job and `max` waiting ones. */
class SlotQueue {
  active = 0;
  private readonly waiting: Array<{ resolve: () => void; reject: (e: unknown) => void; signal: AbortSignal; onAbort: () => void }> = [];
  constructor(readonly max: number) {}

  get waitingCount(): number {
    return this.waiting.length;
  }

  /** Resolves when the caller may run; throws 429 when the queue is full. Call release() after. */
  acquire(signal: AbortSignal): Promise<void> {
    if (this.active === 0 && this.waiting.length === 0) {
      this.active = 1;
      return Promise.resolve();
    }
    if (this.waiting.length >= this.max) {
      return Promise.reject(
        new HttpError(429, `the server is busy: 1 request running and ${this.waiting.length} waiting (max ${this.max}); retry later`, 'rate_limit_error', 'queue_full'),
      );
    }
    return new Promise<void>((resolve, reject) => {
      const entry = {
        resolve,
        reject,
        signal,
        onAbort: () => {
          const i = this.waiting.indexOf(entry);
          if (i >= 0) this.waiting.splice(i, 1);
          reject(new PlmError('ERR_CANCELLED', 'the client disconnected while waiting'));
        },
      };
      signal.addEventListener('abort', entry.onAbort, { once: true });
      this.waiting.push(entry);
    });
  }

  release(): void {
    const next = this.waiting.shift();
    if (next) {
      next.signal.removeEventListener('abort', next.onAbort);
      next.resolve();
    } else {
      this.active = 0;
    }
  }
}

const DEFAULTS = {
  host: '127.0.0.1',
  port: 8080,
  maxQueue: 16,
  maxBodyBytes: 32 * 1024 * 1024,
  maxImagePixels: 50_000_000,
  maxTokensLimit: 4096,
  defaultMaxTokens: 512,
  remoteImageTimeoutMs: 15_000,
};

function sendJson(res: http.ServerResponse, status: number, body: unknown, extraHeaders: Record<string, string> = {}): void {
  if (res.headersSent) {
    res.end();
    return;
  }
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data), ...extraHeaders });
  res.end(data);
}

function errorBody(e: HttpError): unknown {
  return { error: { message: e.message, type: e.type, param: e.param, code: e.code } };
}

/** Maps any thrown value to an OpenAI-style HttpError. */
export function toHttpError(e: unknown): HttpError {
  if (e instanceof HttpError) return e;
  if (isPlmError(e)) {
    switch (e.code) {
      case 'ERR_INVALID_ARGUMENT':
      case 'ERR_IMAGE_DECODE':
      case 'ERR_CONTEXT_OVERFLOW':
      case 'ERR_FILE_NOT_FOUND':
      case 'ERR_FFMPEG_MISSING':
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

/** Reads the body up to `limit` bytes; 413 beyond (the rest is drained, up to a cap, then the socket is closed). */
function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    const tooLarge = (): HttpError =>
      new HttpError(413, `the request body exceeds the limit of ${limit} bytes`, 'invalid_request_error', 'body_too_large');
    let size = 0;
    let over = false;
    const chunks: Buffer[] = [];
    const fail = (): void => {
      over = true;
      chunks.length = 0;
      reject(tooLarge());
    };
    if (Number.isFinite(declared) && declared > limit) fail();
    req.on('data', (c: Buffer) => {
      size += c.length;
      if (over) {
        if (size > limit * 4 + 1024 * 1024) req.destroy();
        return;
      }
      if (size > limit) fail();
      else chunks.push(c);
    });
    req.on('end', () => {
      if (!over) resolve(Buffer.concat(chunks));
    });
    req.on('error', (e) => {
      if (!over) reject(e);
    });
  });
}

function num(body: Record<string, unknown>, key: string, min: number, max: number, integer = false): number | undefined {
  const v = body[key];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max || (integer && !Number.isInteger(v))) {
    throw new HttpError(400, `${key} must be ${integer ? 'an integer' : 'a number'} in [${min}, ${max}]`, 'invalid_request_error', 'invalid_value', key);
  }
  return v;
}

const DATA_URL = /^data:([^;,]*)((?:;[^;,]*)*?)(;base64)?,(.*)$/s;

/** Decodes a data: URL, or fetches an http(s) URL when allowed, and checks the pixel limit. */
async function loadImageUrl(url: string, opts: Required<Pick<ServerOptions, 'allowRemoteImages' | 'maxImagePixels' | 'remoteImageTimeoutMs' | 'maxBodyBytes'>>, param: string, signal: AbortSignal): Promise<Buffer> {
  let bytes: Buffer;
  const m = DATA_URL.exec(url);
  if (m) {
    bytes = m[3] ? Buffer.from(m[4], 'base64') : Buffer.from(decodeURIComponent(m[4]), 'latin1');
  } else if (/^https?:\/\//i.test(url)) {
    if (!opts.allowRemoteImages) {
      throw new HttpError(400, 'http(s) image URLs are disabled on this server; send the image as a data: URL (base64), or start the server with --allow-remote-images', 'invalid_request_error', 'ERR_INVALID_ARGUMENT', param);
    }
    let r: Response;
    try {
      r = await fetch(url, { redirect: 'follow', signal: AbortSignal.any([signal, AbortSignal.timeout(opts.remoteImageTimeoutMs)]) });
    } catch (e) {
      throw new HttpError(400, `could not fetch the image ${url}: ${(e as Error).message}`, 'invalid_request_error', 'ERR_IMAGE_DECODE', param);
    }
    if (!r.ok) throw new HttpError(400, `fetching the image ${url} gave HTTP ${r.status}`, 'invalid_request_error', 'ERR_IMAGE_DECODE', param);
    const len = Number(r.headers.get('content-length'));
    if (Number.isFinite(len) && len > opts.maxBodyBytes) {
      throw new HttpError(400, `the image at ${url} is larger than ${opts.maxBodyBytes} bytes`, 'invalid_request_error', 'ERR_IMAGE_DECODE', param);
    }
    bytes = Buffer.from(await r.arrayBuffer());
    if (bytes.length > opts.maxBodyBytes) {
      throw new HttpError(400, `the image at ${url} is larger than ${opts.maxBodyBytes} bytes`, 'invalid_request_error', 'ERR_IMAGE_DECODE', param);
    }
  } else {
    throw new HttpError(400, 'image_url.url must be a data: URL (or an http(s) URL when the server allows remote images)', 'invalid_request_error', 'ERR_INVALID_ARGUMENT', param);
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
  if (pixels > opts.maxImagePixels) {
    throw new HttpError(400, `the image has ${meta.width}x${meta.height} = ${pixels} pixels, more than this server's limit of ${opts.maxImagePixels}`, 'invalid_request_error', 'image_too_large', param);
  }
  return bytes;
}

/** Converts OpenAI chat messages to perception-lm messages (images fetched/decoded). */
async function convertMessages(raw: unknown, o: Parameters<typeof loadImageUrl>[1], signal: AbortSignal): Promise<Message[]> {
  if (!Array.isArray(raw) || raw.length === 0) {
    throw new HttpError(400, 'messages must be a non-empty array', 'invalid_request_error', 'invalid_value', 'messages');
  }
  const out: Message[] = [];
  for (let i = 0; i < raw.length; i++) {
    const m = raw[i] as OpenAIMessage;
    const param = `messages[${i}]`;
    if (typeof m !== 'object' || m === null) throw new HttpError(400, `${param} must be an object`, 'invalid_request_error', 'invalid_value', param);
    let role = m.role;
    if (role === 'developer') role = 'system';
    if (role !== 'system' && role !== 'user' && role !== 'assistant') {
      throw new HttpError(400, `${param}.role must be system, user or assistant`, 'invalid_request_error', 'invalid_value', `${param}.role`);
    }
    if (typeof m.content === 'string') {
      out.push({ role, content: m.content });
      continue;
    }
    if (m.content === null && role === 'assistant') {
      out.push({ role, content: '' });
      continue;
    }
    if (!Array.isArray(m.content)) {
      throw new HttpError(400, `${param}.content must be a string or an array of content parts`, 'invalid_request_error', 'invalid_value', `${param}.content`);
    }
    const parts: MessageContent<Buffer, never>[] = [];
    for (let j = 0; j < m.content.length; j++) {
      const p = m.content[j] as OpenAIContentPart;
      const pp = `${param}.content[${j}]`;
      if (p?.type === 'text' && typeof p.text === 'string') {
        parts.push({ type: 'text', text: p.text });
      } else if (p?.type === 'image_url') {
        const iu = p.image_url as { url?: unknown } | string | undefined;
        const url = typeof iu === 'string' ? iu : iu?.url;
        if (typeof url !== 'string') throw new HttpError(400, `${pp}.image_url.url must be a string`, 'invalid_request_error', 'invalid_value', `${pp}.image_url`);
        if (role !== 'user') throw new HttpError(400, `${pp}: images are accepted in user messages only`, 'invalid_request_error', 'invalid_value', pp);
        parts.push({ type: 'image', image: await loadImageUrl(url, o, pp, signal) });
      } else {
        throw new HttpError(400, `${pp}: unsupported content part (supported: text, image_url)`, 'invalid_request_error', 'invalid_value', pp);
      }
    }
    out.push({ role, content: parts as Message['content'] });
  }
  return out;
}

function modelIdOf(model: PerceptionLM): string {
  const parts = model.dir.split(/[\\/]/).filter(Boolean);
  return parts[parts.length - 1] ?? 'perception-lm';
}

/**
 * Starts the server and resolves once it listens.
 *
 * @example
 * ```ts
 * const srv = await startServer({ model, port: 0 });
 * const r = await fetch(`${srv.url}/v1/chat/completions`, {
 *   method: 'POST',
 *   headers: { 'content-type': 'application/json' },
 *   body: JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }] }),
 * });
 * await srv.close();
 * ```
 */
export async function startServer(options: ServerOptions): Promise<PlmServer> {
  const o = { ...DEFAULTS, allowRemoteImages: false, ...stripUndefined(options) };
  const model = options.model;
  const modelId = options.modelId ?? modelIdOf(model);
  const created = Math.floor(Date.now() / 1000);
  const queue = new SlotQueue(o.maxQueue);
  const controllers = new Set<AbortController>();
  const stats = { requests: 0, completed: 0, cancelled: 0, rejected: 0, errors: 0 };
  const log = options.log ?? ((): void => undefined);

  async function chatCompletions(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const ac = new AbortController();
    controllers.add(ac);
    // 'close' on the response before it finished = the client went away.
    res.on('close', () => {
      if (!res.writableFinished) ac.abort();
    });
    const id = `chatcmpl-${randomUUID().replace(/-/g, '').slice(0, 24)}`;
    const t0 = Date.now();
    let acquired = false;
    let stream = false;
    let completionTokens = 0;
    let promptTokens = 0;
    const done = (finishReason: RequestDoneInfo['finishReason']): void => {
      if (finishReason === 'cancelled') stats.cancelled++;
      else if (finishReason === 'error') stats.errors++;
      else stats.completed++;
      const info = { id, stream, finishReason, completionTokens, promptTokens, ms: Date.now() - t0 };
      log(`${id} ${finishReason} ${completionTokens} tokens ${info.ms} ms`);
      options.onRequestDone?.(info);
    };
    try {
      const raw = await readBody(req, o.maxBodyBytes);
      let body: Record<string, unknown>;
      try {
        body = JSON.parse(raw.toString('utf8')) as Record<string, unknown>;
      } catch (e) {
        throw new HttpError(400, `the body is not valid JSON: ${(e as Error).message}`, 'invalid_request_error', 'invalid_json');
      }
      if (typeof body !== 'object' || body === null || Array.isArray(body)) throw new HttpError(400, 'the body must be a JSON object');
      stream = body.stream === true;
      const n = num(body, 'n', 1, 1, true);
      void n;
      const maxTokens =
        num(body, 'max_completion_tokens', 1, o.maxTokensLimit, true) ?? num(body, 'max_tokens', 1, o.maxTokensLimit, true) ?? Math.min(o.defaultMaxTokens, o.maxTokensLimit);
      const temperature = num(body, 'temperature', 0, 2);
      const topP = num(body, 'top_p', 0, 1);
      const topK = num(body, 'top_k', 0, 1_000_000, true);
      const seed = num(body, 'seed', 0, Number.MAX_SAFE_INTEGER, true);
      let stop: string[] | undefined;
      if (typeof body.stop === 'string') stop = [body.stop];
      else if (Array.isArray(body.stop) && body.stop.every((s) => typeof s === 'string')) stop = body.stop as string[];
      else if (body.stop !== undefined && body.stop !== null) throw new HttpError(400, 'stop must be a string or an array of strings', 'invalid_request_error', 'invalid_value', 'stop');
      const includeUsage = (body.stream_options as { include_usage?: unknown } | undefined)?.include_usage === true;
      const messages = await convertMessages(body.messages, o, ac.signal);

      try {
        await queue.acquire(ac.signal);
      } catch (e) {
        if (e instanceof HttpError && e.status === 429) stats.rejected++;
        throw e;
      }
      acquired = true;
      if (ac.signal.aborted) {
        done('cancelled');
        return;
      }
      const gen: GenerateOptions = { messages, maxTokens, temperature, topP, topK, seed, stop: stop?.length ? stop : undefined, signal: ac.signal };
      // Prompt size for usage (template + tokenization + media); cheap next to the generation.
      const built = await model.buildInput(gen);
      promptTokens = built.inputIds.length;
      // Generate from the built input so media is not decoded twice.
      gen.messages = undefined;
      gen.inputIds = built.inputIds;
      if (built.pixelValues && built.numTiles > 0) {
        gen.pixelValues = built.pixelValues;
        gen.numTiles = built.numTiles;
      }
      const eos = new Set(model.config.generation?.eos_token_ids ?? []);
      let lastToken = -1;
      const finishOf = (): 'stop' | 'length' => (completionTokens >= maxTokens && !eos.has(lastToken) ? 'length' : 'stop');
      const usage = (): unknown => ({ prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens });

      if (!stream) {
        let text = '';
        for await (const c of model.generate(gen)) {
          text += c.text;
          if (c.tokenId >= 0) {
            completionTokens++;
            lastToken = c.tokenId;
          }
        }
        if (ac.signal.aborted) {
          done('cancelled');
          return;
        }
        const finish = finishOf();
        sendJson(res, 200, {
          id,
          object: 'chat.completion',
          created: Math.floor(Date.now() / 1000),
          model: modelId,
          system_fingerprint: null,
          choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null }, logprobs: null, finish_reason: finish }],
          usage: usage(),
        });
        done(finish);
        return;
      }

      res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
      res.flushHeaders();
      const chunk = (delta: Record<string, unknown>, finish: string | null): string =>
        `data: ${JSON.stringify({
          id,
          object: 'chat.completion.chunk',
          created: Math.floor(Date.now() / 1000),
          model: modelId,
          system_fingerprint: null,
          choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }],
          ...(includeUsage ? { usage: null } : {}),
        })}\n\n`;
      res.write(chunk({ role: 'assistant', content: '' }, null));
      for await (const c of model.generate(gen)) {
        if (c.tokenId >= 0) {
          completionTokens++;
          lastToken = c.tokenId;
        }
        if (c.text.length > 0 && !res.destroyed) res.write(chunk({ content: c.text }, null));
      }
      if (ac.signal.aborted || res.destroyed) {
        done('cancelled');
        return;
      }
      const finish = finishOf();
      res.write(chunk({}, finish));
      if (includeUsage) {
        res.write(`data: ${JSON.stringify({ id, object: 'chat.completion.chunk', created: Math.floor(Date.now() / 1000), model: modelId, system_fingerprint: null, choices: [], usage: usage() })}\n\n`);
      }
      res.end('data: [DONE]\n\n');
      done(finish);
    } catch (e) {
      const he = toHttpError(e);
      if (ac.signal.aborted || he.status === 499) {
        done('cancelled');
        if (!res.destroyed) res.destroy();
        return;
      }
      if (he.status >= 500) done('error');
      log(`${id} error ${he.status} ${he.message}`);
      if (res.headersSent) {
        // Mid-stream: report the error as an SSE event, then end.
        res.end(`data: ${JSON.stringify(errorBody(he))}\n\ndata: [DONE]\n\n`);
      } else {
        sendJson(res, he.status, errorBody(he), he.status === 413 ? { connection: 'close' } : {});
      }
    } finally {
      controllers.delete(ac);
      if (acquired) queue.release();
    }
  }

  const server = http.createServer((req, res) => {
    stats.requests++;
    const url = new URL(req.url ?? '/', 'http://localhost');
    const p = url.pathname.replace(/\/+$/, '') || '/';
    res.setHeader('access-control-allow-origin', '*');
    if (req.method === 'OPTIONS') {
      res.writeHead(204, { 'access-control-allow-methods': 'GET, POST, OPTIONS', 'access-control-allow-headers': 'content-type, authorization' });
      res.end();
      return;
    }
    const methodNotAllowed = (allowed: string): void =>
      sendJson(res, 405, errorBody(new HttpError(405, `${req.method} is not allowed on ${p}; use ${allowed}`, 'invalid_request_error', 'method_not_allowed')), { allow: allowed });
    if (p === '/v1/chat/completions' || p === '/chat/completions') {
      if (req.method !== 'POST') return methodNotAllowed('POST');
      void chatCompletions(req, res);
      return;
    }
    if (p === '/v1/models' || p === '/models') {
      if (req.method !== 'GET') return methodNotAllowed('GET');
      sendJson(res, 200, { object: 'list', data: [{ id: modelId, object: 'model', created, owned_by: 'perception-lm' }] });
      return;
    }
    if (p.startsWith('/v1/models/')) {
      const want = decodeURIComponent(p.slice('/v1/models/'.length));
      if (want !== modelId) {
        sendJson(res, 404, errorBody(new HttpError(404, `the model '${want}' does not exist; this server serves '${modelId}'`, 'invalid_request_error', 'model_not_found')));
        return;
      }
      sendJson(res, 200, { id: modelId, object: 'model', created, owned_by: 'perception-lm' });
      return;
    }
    if (p === '/health') {
      sendJson(res, 200, {
        status: 'ok',
        model: modelId,
        backend: model.backend,
        queue: { running: queue.active, waiting: queue.waitingCount, maxWaiting: o.maxQueue },
        stats,
      });
      return;
    }
    sendJson(res, 404, errorBody(new HttpError(404, `no route ${req.method} ${p}`, 'invalid_request_error', 'not_found')));
  });
  server.requestTimeout = 0; // long generations
  server.headersTimeout = 30_000;

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  const hostForUrl = addr.family === 'IPv6' || addr.address.includes(':') ? `[${addr.address}]` : addr.address;
  return {
    server,
    host: addr.address,
    port: addr.port,
    url: `http://${hostForUrl}:${addr.port}`,
    close: () =>
      new Promise<void>((resolve) => {
        for (const c of controllers) c.abort();
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  const r: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (r as Record<string, unknown>)[k] = v;
  return r;
}
