/**
 * An OpenAI-compatible HTTP server for PerceptionLM models (node:http only).
 *
 * Routes:
 * - `POST /v1/chat/completions`: `messages` with string content or `text` / `image_url` parts
 *   (`data:` URLs always; `http(s)` URLs only with `allowRemoteImages`; `detail` 'low' = one tile),
 *   `model`, `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`, `top_k`, `min_p`,
 *   `repetition_penalty`, `seed`, `stop`, `logprobs` / `top_logprobs`, `response_format`, `stream`
 *   (Server-Sent Events in OpenAI's `chat.completion.chunk` format, ending with `data: [DONE]`) and
 *   `stream_options.include_usage`. Anything else OpenAI defines is a 400 naming the field.
 * - `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`, `GET /metrics` (Prometheus).
 *
 * Per model, `parallel` requests generate at once and `maxQueue` more wait (429 beyond). Every
 * request runs inside a guard: whatever fails becomes an OpenAI-shaped JSON error and the process
 * lives on. No CORS header unless `cors` names origins; `apiKey` makes every route but /health need
 * `Authorization: Bearer KEY`; a Host header outside `allowedHosts` (localhost names and the bound
 * address by default) is refused (DNS rebinding). Prompts that cannot fit the context are refused
 * before tokenizing; rendering and tokenizing run in a worker thread. docs/security-server.md has
 * the limits and their defaults.
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
import { AddressInfo, Socket } from 'net';
import { PlmError } from './errors';
import { validateResponseFormat } from './json_constraint';
import { preprocessImage } from './image';
import type { GenerateChunk, GenerateOptions, PerceptionLM } from './model';
import { buildPrompt, MediaProcessors } from './prompt';
import type { ChatMessage, MessageContent } from './chat_template';
import { REMOTE_IMAGE_DEFAULTS, ResolvedAddress } from './remote_image';
import { apiKeyMatches, corsOrigin, decodePathSegment, errorBody, HostPolicy, HttpError, presentedKey, requestPath, toHttpError } from './server_guard';
import { ImageDetail, ChatRequest, parseChatRequest, toOpenAILogprob, EngineLogprob, OpenAILogprob } from './server_request';
import { loadImageUrl, ImageSourceOptions } from './server_images';
import { ModelLease, ModelRegistry, ModelSource, ServedModel } from './server_models';
import { MetricsRegistry } from './server_metrics';
import { JsonBodyError, JsonParser } from './server_json';
import { checkPromptBound, promptInfoOf } from './server_tokenizer';
import { DEFAULT_MAX_TOKENS, DEFAULT_MAX_TOKENS_LIMIT } from './defaults';

export { HttpError, toHttpError } from './server_guard';
export type { ModelSource } from './server_models';

/** Options of {@link startServer}. */
export interface ServerOptions {
  /**
   * The model to serve: a loaded model, or a promise of one (the port is bound first; generation
   * routes answer 503 and /health `loading` until it resolves). The caller owns it. Give this or `models`.
   */
  model?: PerceptionLM | Promise<PerceptionLM>;
  /** The id of `model` in /v1/models and responses. Default: the model directory's name. */
  modelId?: string;
  /** Several models, each given or loaded on first use (see {@link ModelSource}). */
  models?: ModelSource[];
  /** Unload a model the server loaded (`models[].load`) after this many ms without requests; 0 = never. Default 300000 (5 min). */
  idleTimeoutMs?: number;
  /** Models loaded at once; the least recently used idle one is unloaded to load another. Default 3. */
  maxLoadedModels?: number;
  /** Default '127.0.0.1'. */
  host?: string;
  /** Default 8080; 0 picks a free port. */
  port?: number;
  /** Requests generating at once per model. Default: the model's `sequences` (what fits its KV budget) when it has one, else 1. */
  parallel?: number;
  /** Requests waiting per model behind the running ones; more get 429. Default 16. */
  maxQueue?: number;
  /** Largest request body in bytes (413 above). Default 32 MiB. */
  maxBodyBytes?: number;
  /** Largest image in pixels (width * height; 400 above). Default 50,000,000. */
  maxImagePixels?: number;
  /** Largest max_tokens a request may ask for (400 above). Default 4096. */
  maxTokensLimit?: number;
  /**
   * max_tokens when a request gives none. Default 256 (`DEFAULT_MAX_TOKENS`, the same as `complete()` and the CLI),
   * or `maxTokensLimit` when that is lower; an explicit value above `maxTokensLimit` is ERR_INVALID_ARGUMENT.
   */
  defaultMaxTokens?: number;
  /** Largest tiles per image (thumbnail excluded) for `detail` 'high'/'auto': min(checkpoint's max_num_tiles, this). Default: the checkpoint's. */
  maxTiles?: number;
  /** Fetch http(s) image URLs (off by default; global addresses only, see ./remote_image). */
  allowRemoteImages?: boolean;
  /** Time for a remote image fetch, redirects included. Default 5000 ms. */
  remoteImageTimeoutMs?: number;
  /** Largest remote image in bytes. Default 10 MiB. */
  remoteImageMaxBytes?: number;
  /** Test hooks of the remote fetch: which address may be dialled, and the resolver. Never widen in production. */
  remoteImageHooks?: { allowAddress?: (address: string, port: number) => boolean; lookup?: (hostname: string) => Promise<ResolvedAddress[]> };
  /** Origins that get CORS headers (`'*'` = any). Default: none (no CORS header). */
  cors?: string[];
  /** When set, every route but /health needs `Authorization: Bearer <apiKey>` (401 otherwise). */
  apiKey?: string;
  /** Host header names accepted besides localhost names and the bound address (`'*'` = any). */
  allowedHosts?: string[];
  /** Time to receive the request headers. Default 10000 ms. */
  headersTimeoutMs?: number;
  /** Time to receive the whole request (headers and body; not the answer). Default 60000 ms. */
  requestTimeoutMs?: number;
  /** Idle time of a kept-alive connection. Default 5000 ms. */
  keepAliveTimeoutMs?: number;
  /** Open connections at most; more are closed at once. Default 256. */
  maxConnections?: number;
  /** Longest chat-template rendering + tokenization of one request. Default 30000 ms. */
  tokenizeTimeoutMs?: number;
  /** Render and tokenize in a worker thread. Default true. */
  tokenizeInWorker?: boolean;
  /** Access log and events; default: none. */
  log?: (line: string) => void;
  /** Called when a chat completion ends (tests, metrics). */
  onRequestDone?: (info: RequestDoneInfo) => void;
}

/** What {@link ServerOptions.onRequestDone} receives. */
export interface RequestDoneInfo {
  id: string;
  /** The served model's id. */
  model: string;
  stream: boolean;
  finishReason: 'stop' | 'length' | 'cancelled' | 'error';
  completionTokens: number;
  promptTokens: number;
  ms: number;
  /** Requests of this model holding a generation slot when this one got its slot (itself included); 0 if it never did. */
  concurrent: number;
}

/** A running server. */
export interface PlmServer {
  server: http.Server;
  host: string;
  port: number;
  /** e.g. 'http://127.0.0.1:8080' */
  url: string;
  /** Resolves when every model that loads with the server is ready (rejects when one fails). */
  ready: Promise<void>;
  /** Stops accepting connections, cancels running generations, disposes the models it loaded and resolves once closed. */
  close(): Promise<void>;
}

const DEFAULTS = {
  host: '127.0.0.1',
  port: 8080,
  maxQueue: 16,
  maxBodyBytes: 32 * 1024 * 1024,
  maxImagePixels: 50_000_000,
  maxTokensLimit: DEFAULT_MAX_TOKENS_LIMIT,
  defaultMaxTokens: DEFAULT_MAX_TOKENS,
  idleTimeoutMs: 300_000,
  maxLoadedModels: 3,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 60_000,
  keepAliveTimeoutMs: 5_000,
  maxConnections: 256,
  tokenizeTimeoutMs: 30_000,
};

const TTFT_BUCKETS = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120];
const TOKEN_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5];

function sendJson(res: http.ServerResponse, status: number, body: unknown, extraHeaders: Record<string, string> = {}): void {
  if (res.headersSent || res.destroyed) {
    if (!res.writableEnded && !res.destroyed) res.end();
    return;
  }
  const data = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data), ...extraHeaders });
  res.end(data);
}

function sendError(res: http.ServerResponse, e: HttpError): void {
  sendJson(res, e.status, errorBody(e), { ...e.headers, ...(e.status === 413 ? { connection: 'close' } : {}) });
}

/** Reads the body up to `limit` bytes; 413 beyond (the rest is drained, up to a cap, then the socket is closed). */
function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const declared = Number(req.headers['content-length']);
    const tooLarge = (): HttpError => new HttpError(413, `the request body exceeds the limit of ${limit} bytes`, 'invalid_request_error', 'body_too_large');
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
      if (!over) reject(new HttpError(400, `reading the request failed: ${e.message}`, 'invalid_request_error', 'bad_request'));
    });
    req.on('close', () => {
      if (!over && !req.complete) reject(new PlmError('ERR_CANCELLED', 'the client disconnected'));
    });
  });
}

function modelIdOf(model: PerceptionLM): string {
  const parts = model.dir.split(/[\\/]/).filter(Boolean);
  return parts[parts.length - 1] ?? 'perception-lm';
}

/** Normalized route label for metrics. */
function routeOf(p: string): string {
  if (p === '/v1/chat/completions' || p === '/chat/completions') return '/v1/chat/completions';
  if (p === '/v1/models' || p === '/models') return '/v1/models';
  if (p.startsWith('/v1/models/')) return '/v1/models/{id}';
  if (p === '/health' || p === '/metrics') return p;
  return 'other';
}

/**
 * Starts the server and resolves once it listens (models given as promises or `preload` sources may
 * still be loading: see {@link PlmServer.ready}).
 *
 * @throws PlmError ERR_INVALID_ARGUMENT when the port is in use or cannot be bound (the message names it).
 * @example
 * ```ts
 * const srv = await startServer({ model, port: 0, parallel: 4, apiKey: process.env.PLM_API_KEY });
 * const r = await fetch(`${srv.url}/v1/chat/completions`, {
 *   method: 'POST',
 *   headers: { 'content-type': 'application/json', authorization: `Bearer ${process.env.PLM_API_KEY}` },
 *   body: JSON.stringify({ messages: [{ role: 'user', content: 'Hi' }] }),
 * });
 * await srv.close();
 * ```
 */
export async function startServer(options: ServerOptions): Promise<PlmServer> {
  const o = { ...DEFAULTS, allowRemoteImages: false, ...stripUndefined(options) };
  const positive = (name: string, v: number | undefined, min = 1): void => {
    if (v !== undefined && (!Number.isInteger(v) || v < min)) throw new PlmError('ERR_INVALID_ARGUMENT', `${name} must be an integer >= ${min}, got ${v}`);
  };
  positive('parallel', options.parallel);
  positive('maxQueue', o.maxQueue, 0);
  positive('maxTiles', options.maxTiles);
  positive('maxConnections', o.maxConnections);
  positive('maxLoadedModels', o.maxLoadedModels);
  positive('idleTimeoutMs', o.idleTimeoutMs, 0);
  positive('maxTokensLimit', o.maxTokensLimit);
  positive('defaultMaxTokens', o.defaultMaxTokens);
  // An explicit default above the limit is a mistake; the built-in default just follows a lower limit.
  if (options.defaultMaxTokens !== undefined && o.defaultMaxTokens > o.maxTokensLimit) {
    throw new PlmError(
      'ERR_INVALID_ARGUMENT',
      `defaultMaxTokens (plm serve --max-tokens) ${o.defaultMaxTokens} is above maxTokensLimit (--max-tokens-limit) ${o.maxTokensLimit}: lower it, or raise the limit`,
    );
  }
  const log = options.log ?? ((): void => undefined);

  // Models.
  let sources: ModelSource[];
  if (options.models && options.models.length > 0) {
    if (options.model) throw new PlmError('ERR_INVALID_ARGUMENT', 'give either model or models, not both');
    sources = options.models;
  } else if (options.model) {
    const id = options.modelId ?? (options.model instanceof Promise ? 'perception-lm' : modelIdOf(options.model));
    sources = [{ id, model: options.model }];
  } else {
    throw new PlmError('ERR_INVALID_ARGUMENT', 'startServer needs a model (or models)');
  }
  const registry = new ModelRegistry(sources, {
    idleTimeoutMs: o.idleTimeoutMs,
    maxLoaded: o.maxLoadedModels,
    parallel: options.parallel,
    maxQueue: o.maxQueue,
    tokenizer: { timeoutMs: o.tokenizeTimeoutMs, worker: options.tokenizeInWorker ?? true },
    log,
  });
  const created = Math.floor(Date.now() / 1000);
  const controllers = new Set<AbortController>();
  const jsonParser = new JsonParser();
  const stats = { requests: 0, completed: 0, cancelled: 0, rejected: 0, errors: 0 };
  const hostPolicy = new HostPolicy(o.host, options.allowedHosts ?? []);
  const cors = options.cors ?? [];
  const apiKey = options.apiKey !== undefined && options.apiKey !== '' ? options.apiKey : undefined;
  const imageOptions: ImageSourceOptions = {
    allowRemoteImages: o.allowRemoteImages,
    maxImagePixels: o.maxImagePixels,
    remote: {
      timeoutMs: options.remoteImageTimeoutMs ?? REMOTE_IMAGE_DEFAULTS.timeoutMs,
      maxBytes: options.remoteImageMaxBytes ?? REMOTE_IMAGE_DEFAULTS.maxBytes,
      maxRedirects: REMOTE_IMAGE_DEFAULTS.maxRedirects,
      ...(options.remoteImageHooks ?? {}),
    },
  };

  // Metrics.
  const metrics = new MetricsRegistry();
  const mRequests = metrics.counter('plm_http_requests_total', 'HTTP requests by route, method and status.');
  const mPromptTokens = metrics.counter('plm_prompt_tokens_total', 'Prompt tokens of completed chat requests (image features included).');
  const mCompletionTokens = metrics.counter('plm_completion_tokens_total', 'Generated tokens.');
  const mTtft = metrics.histogram('plm_time_to_first_token_seconds', 'From the request arriving to the first generated token.', TTFT_BUCKETS);
  const mPerToken = metrics.histogram('plm_time_per_output_token_seconds', 'Time between consecutive generated tokens.', TOKEN_BUCKETS);
  const perModel = <T>(f: (m: ServedModel) => T | undefined): Array<{ labels: Record<string, string>; value: number }> =>
    registry.models.flatMap((m) => {
      const v = f(m);
      return typeof v === 'number' ? [{ labels: { model: m.id }, value: v }] : [];
    });
  const statsOf = (m: ServedModel): Record<string, number> | undefined => {
    const s = (m.model as unknown as { stats?: () => Record<string, number> } | null)?.stats;
    if (typeof s !== 'function') return undefined;
    try {
      return s.call(m.model);
    } catch {
      return undefined;
    }
  };
  metrics.gauge('plm_model_loaded', 'Whether the model is loaded (1) or not (0).', () => perModel((m) => (m.state === 'ready' ? 1 : 0)));
  metrics.gauge('plm_requests_running', 'Chat requests holding a generation slot.', () => perModel((m) => m.slots?.active ?? 0));
  metrics.gauge('plm_queue_depth', 'Chat requests waiting for a generation slot.', () => perModel((m) => m.slots?.waitingCount ?? 0));
  metrics.gauge('plm_parallel_slots', 'Requests that may generate at once.', () => perModel((m) => m.slots?.capacity));
  metrics.gauge('plm_active_sequences', "Sequences the engine is running (model.stats(); the server's running requests when the engine has no stats).", () =>
    perModel((m) => statsOf(m)?.activeSequences ?? m.slots?.active ?? 0),
  );
  metrics.gauge('plm_waiting_sequences', 'Sequences waiting inside the engine (model.stats()).', () => perModel((m) => statsOf(m)?.waitingSequences));
  metrics.gauge('plm_kv_cache_bytes_used', 'KV-cache bytes in use (model.stats()).', () => perModel((m) => statsOf(m)?.kvCacheBytesUsed));
  metrics.gauge('plm_kv_cache_bytes_budget', 'KV-cache byte budget (model.stats()).', () => perModel((m) => statsOf(m)?.kvCacheBytesBudget));
  metrics.gauge('plm_kv_cache_bytes_cached', "KV-cache bytes of finished requests' prefixes kept for reuse (model.stats()).", () => perModel((m) => statsOf(m)?.kvCacheBytesCached));
  metrics.gauge('plm_image_cache_hits', 'Images whose features came from the cache since load (model.stats()).', () => perModel((m) => statsOf(m)?.imageCacheHits));
  metrics.gauge('plm_requests_deferred', 'Requests that waited for KV-cache space before starting, since load (model.stats()).', () => perModel((m) => statsOf(m)?.requestsDeferred));
  metrics.gauge('plm_cached_prompt_tokens', 'Prompt tokens served from the prefix cache since load (model.stats()).', () => perModel((m) => statsOf(m)?.cachedPromptTokens));
  metrics.gauge('plm_engine_prompt_tokens', 'Prompt tokens the engine processed since load (model.stats()).', () => perModel((m) => statsOf(m)?.promptTokens));

  const tilesFor = (model: PerceptionLM, detail: ImageDetail): number => {
    if (detail === 'low') return 1;
    const ckpt = promptInfoOf(model).maxNumTiles;
    return options.maxTiles !== undefined ? Math.min(ckpt, options.maxTiles) : ckpt;
  };

  async function chatCompletions(req: http.IncomingMessage, res: http.ServerResponse, t0: number): Promise<void> {
    const ac = new AbortController();
    controllers.add(ac);
    // 'close' on the response before it finished = the client went away.
    res.on('close', () => {
      if (!res.writableFinished) ac.abort();
    });
    const id = `chatcmpl-${randomUUID().replace(/-/g, '').slice(0, 24)}`;
    let lease: ModelLease | undefined;
    let slotHeld = false;
    let stream = false;
    let completionTokens = 0;
    let promptTokens = 0;
    let concurrent = 0;
    let modelId = '';
    let finished = false;
    const done = (finishReason: RequestDoneInfo['finishReason']): void => {
      if (finished) return;
      finished = true;
      if (finishReason === 'cancelled') stats.cancelled++;
      else if (finishReason === 'error') stats.errors++;
      else stats.completed++;
      if (modelId) {
        mPromptTokens.inc({ model: modelId }, promptTokens);
        mCompletionTokens.inc({ model: modelId }, completionTokens);
      }
      const info: RequestDoneInfo = { id, model: modelId, stream, finishReason, completionTokens, promptTokens, ms: Date.now() - t0, concurrent };
      log(`${id} ${modelId} ${finishReason} ${completionTokens} tokens ${info.ms} ms`);
      options.onRequestDone?.(info);
    };
    try {
      const raw = await readBody(req, o.maxBodyBytes);
      let body: unknown;
      try {
        // Large bodies are parsed off the JS thread.
        body = await jsonParser.parse(raw);
      } catch (e) {
        if (e instanceof JsonBodyError) throw new HttpError(400, `the body is not valid JSON: ${e.message}`, 'invalid_request_error', 'invalid_json');
        throw e;
      }
      const cr: ChatRequest = parseChatRequest(body, { maxTokensLimit: o.maxTokensLimit, defaultMaxTokens: o.defaultMaxTokens });
      stream = cr.stream;
      if (cr.responseFormat) {
        // An unsupported schema is a 400 naming response_format before any model is loaded or queued.
        try {
          validateResponseFormat(cr.responseFormat);
        } catch (e) {
          const message = e instanceof Error ? e.message : String(e);
          throw new HttpError(400, `response_format: ${message}`, 'invalid_request_error', 'invalid_response_format', 'response_format');
        }
      }
      const served = registry.resolve(cr.model);
      modelId = served.id;
      lease = await registry.acquire(served, ac.signal);
      const model = lease.model;
      if (cr.responseFormat && (model as unknown as { supportsResponseFormat?: unknown }).supportsResponseFormat !== true) {
        throw new HttpError(
          400,
          `response_format ${cr.responseFormat.type} is not supported by this build of perception-lm (no constrained decoding in this engine); remove response_format or use a build that supports it`,
          'invalid_request_error',
          'unsupported_parameter',
          'response_format',
        );
      }
      const tokenizer = served.tokenizer;
      if (!tokenizer) throw new HttpError(503, `the model '${served.id}' was unloaded; retry`, 'server_error', 'model_unloaded');

      // Messages for the template: image parts carry their index; bytes are fetched next.
      const images: Array<{ url: string; detail: ImageDetail; param: string }> = [];
      const messages: ChatMessage<number, never>[] = cr.messages.map((m) => ({
        role: m.role,
        content:
          typeof m.content === 'string'
            ? m.content
            : m.content.map((p): MessageContent<number, never> => {
                if (p.type === 'text') return { type: 'text', text: p.text };
                images.push({ url: p.url, detail: p.detail, param: p.param });
                return { type: 'image', image: images.length - 1 };
              }),
      }));
      // Refuse what cannot fit before any rendering or tokenizing (a byte count, then a scan of at most
      // maxContext x 128 bytes: ~2 ms per MB, cheaper than handing the text to the worker), then the
      // exact count once tokenized.
      checkPromptBound(messages, cr.maxTokens, model.maxContext, await tokenizer.tokenMaxima(), model.config.tokens_per_tile, true);
      const slots = served.slots;
      if (!slots) throw new HttpError(503, `the model '${served.id}' was unloaded; retry`, 'server_error', 'model_unloaded');
      // A full queue answers 429 before any work is spent on the request.
      if (slots.active >= slots.capacity && slots.waitingCount >= slots.maxWaiting) {
        stats.rejected++;
        await slots.acquire(ac.signal); // throws the 429
      }
      const ids = await tokenizer.tokenize(messages, ac.signal);
      const imageBytes: Buffer[] = [];
      for (const im of images) imageBytes.push(await loadImageUrl(im.url, imageOptions, im.param, ac.signal));
      try {
        await slots.acquire(ac.signal);
      } catch (e) {
        if (e instanceof HttpError && e.status === 429) stats.rejected++;
        throw e;
      }
      slotHeld = true;
      concurrent = slots.active;
      if (ac.signal.aborted) {
        done('cancelled');
        return;
      }

      const info = promptInfoOf(model);
      const media: MediaProcessors<number, never> = {
        image: async (k, opts) => preprocessImage(imageBytes[k], { tileSize: opts.tileSize, maxNumTiles: tilesFor(model, images[k].detail) }),
        video: async () => {
          throw new PlmError('ERR_INVALID_ARGUMENT', 'videos are not accepted by this server');
        },
      };
      if (!model.tokenizer) throw new HttpError(500, `${model.dir} has no tokenizer.json`, 'server_error', 'ERR_FILE_NOT_FOUND');
      const built = await buildPrompt(model.tokenizer, model.chatTemplate, info, media, {
        inputIds: ids,
        images: images.map((_, k) => k),
        maxTokens: cr.maxTokens,
        maxNumTiles: tilesFor(model, 'high'),
        signal: ac.signal,
      });
      promptTokens = built.inputIds.length;
      const wantLogprobs = cr.logprobs;
      const gen: GenerateOptions & { topLogprobs?: number; responseFormat?: unknown } = {
        inputIds: built.inputIds,
        // One entry per image: each is hashed, cached and reused on its own.
        ...(built.mediaPixels.length > 0 ? { pixelValues: built.mediaPixels.map((m) => m.pixels) } : {}),
        maxTokens: cr.maxTokens,
        temperature: cr.temperature,
        topP: cr.topP,
        topK: cr.topK,
        minP: cr.minP,
        repetitionPenalty: cr.repetitionPenalty,
        seed: cr.seed,
        stop: cr.stop,
        signal: ac.signal,
        ...(wantLogprobs ? { topLogprobs: Math.max(1, cr.topLogprobs) } : {}),
        ...(cr.responseFormat ? { responseFormat: cr.responseFormat } : {}),
      };
      const eos = new Set(model.config.generation?.eos_token_ids ?? []);
      let lastToken = -1;
      const finishOf = (): 'stop' | 'length' => (completionTokens >= cr.maxTokens && !eos.has(lastToken) ? 'length' : 'stop');
      const usage = (): unknown => ({ prompt_tokens: promptTokens, completion_tokens: completionTokens, total_tokens: promptTokens + completionTokens });
      const idToToken = (tid: number): string | undefined => model.tokenizer?.idToToken(tid);
      let lastTokenAt = 0;
      const noLogprobs = (): HttpError =>
        new HttpError(400, 'logprobs is not supported by this build of perception-lm (the engine reports no log-probabilities); remove logprobs', 'invalid_request_error', 'unsupported_parameter', 'logprobs');
      /** Counts a chunk; returns its logprob entry (or throws when logprobs were asked for and the engine has none). */
      const onChunk = (c: GenerateChunk): OpenAILogprob | null => {
        if (c.tokenId < 0) return null;
        const now = performance.now();
        if (completionTokens === 0) mTtft.observe((Date.now() - t0) / 1000, { model: modelId });
        else mPerToken.observe((now - lastTokenAt) / 1000, { model: modelId });
        lastTokenAt = now;
        completionTokens++;
        lastToken = c.tokenId;
        if (!wantLogprobs) return null;
        const lp = (c as GenerateChunk & { logprob?: EngineLogprob }).logprob;
        if (!lp) throw noLogprobs();
        return toOpenAILogprob(lp, idToToken, cr.topLogprobs);
      };

      if (!stream) {
        let text = '';
        const content: OpenAILogprob[] = [];
        for await (const c of model.generate(gen)) {
          text += c.text;
          const lp = onChunk(c);
          if (lp) content.push(lp);
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
          choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null }, logprobs: wantLogprobs ? { content, refusal: null } : null, finish_reason: finish }],
          usage: usage(),
        });
        done(finish);
        return;
      }

      const chunk = (delta: Record<string, unknown>, finish: string | null, logprobs: OpenAILogprob[] | null = null): string =>
        `data: ${JSON.stringify({
          id,
          object: 'chat.completion.chunk',
          created: Math.floor(Date.now() / 1000),
          model: modelId,
          system_fingerprint: null,
          choices: [{ index: 0, delta, logprobs: logprobs ? { content: logprobs, refusal: null } : null, finish_reason: finish }],
          ...(cr.includeUsage ? { usage: null } : {}),
        })}\n\n`;
      let started = false;
      const startStream = (): void => {
        if (started) return;
        started = true;
        res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
        res.flushHeaders();
        res.write(chunk({ role: 'assistant', content: '' }, null));
      };
      // With logprobs the headers wait for the first token, so that a build without them can still answer 400.
      if (!wantLogprobs) startStream();
      // Tokens whose text is held back (an incomplete character, a possible stop string) pass their
      // logprobs on to the next chunk that carries text.
      let pendingLogprobs: OpenAILogprob[] = [];
      for await (const c of model.generate(gen)) {
        const lp = onChunk(c);
        startStream();
        if (lp) pendingLogprobs.push(lp);
        if (c.text.length > 0 && !res.destroyed) {
          res.write(chunk({ content: c.text }, null, wantLogprobs ? pendingLogprobs : null));
          pendingLogprobs = [];
        }
      }
      startStream();
      if (ac.signal.aborted || res.destroyed) {
        done('cancelled');
        return;
      }
      const finish = finishOf();
      res.write(chunk({}, finish, wantLogprobs && pendingLogprobs.length > 0 ? pendingLogprobs : null));
      if (cr.includeUsage) {
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
        if (!res.writableEnded && !res.destroyed) res.end(`data: ${JSON.stringify(errorBody(he))}\n\ndata: [DONE]\n\n`);
      } else {
        sendError(res, he);
      }
    } finally {
      controllers.delete(ac);
      if (slotHeld) lease?.served.slots?.release();
      lease?.release();
    }
  }

  function modelEntry(m: ServedModel): Record<string, unknown> {
    return { id: m.id, object: 'model', created, owned_by: 'perception-lm', status: m.state };
  }

  function health(): { status: number; body: unknown } {
    const loading = registry.models.some((m) => m.state === 'loading' && m.startupLoad);
    const failed = registry.models.some((m) => m.state === 'error');
    const status = failed ? 'error' : loading ? 'loading' : 'ok';
    const q = { running: 0, waiting: 0, parallel: 0, maxWaiting: o.maxQueue };
    for (const m of registry.models) {
      q.running += m.slots?.active ?? 0;
      q.waiting += m.slots?.waitingCount ?? 0;
      q.parallel += m.slots?.capacity ?? 0;
    }
    const single = registry.models.length === 1 ? registry.models[0] : undefined;
    return {
      status: status === 'ok' ? 200 : 503,
      body: {
        status,
        ...(single ? { model: single.id, ...(single.model ? { backend: single.model.backend } : {}) } : {}),
        queue: q,
        models: registry.models.map((m) => ({
          id: m.id,
          status: m.state,
          ...(m.model ? { backend: m.model.backend } : {}),
          ...(m.slots ? { queue: { running: m.slots.active, waiting: m.slots.waitingCount, parallel: m.slots.capacity, maxWaiting: m.slots.maxWaiting } } : {}),
          ...(m.tokenizer ? { tokenizer: m.tokenizer.mode } : {}),
          ...(m.error ? { error: m.error.message } : {}),
        })),
        stats,
      },
    };
  }

  /** Every request passes here; nothing it does can throw out of it. */
  async function handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const t0 = Date.now();
    stats.requests++;
    let route = 'other';
    res.on('close', () =>
      mRequests.inc({ route, method: /^[A-Z]{1,10}$/.test(req.method ?? '') ? (req.method as string) : 'other', status: res.headersSent ? String(res.statusCode) : '499' }),
    );
    if (!hostPolicy.allows(req.headers.host)) {
      throw new HttpError(
        403,
        `the Host header ${JSON.stringify(String(req.headers.host).slice(0, 100))} is not allowed (DNS rebinding protection); start the server with --allow-host NAME to accept it`,
        'invalid_request_error',
        'host_not_allowed',
      );
    }
    const p = requestPath(req.url);
    route = routeOf(p);
    const origin = corsOrigin(typeof req.headers.origin === 'string' ? req.headers.origin : undefined, cors);
    if (origin) {
      res.setHeader('access-control-allow-origin', origin);
      if (origin !== '*') res.setHeader('vary', 'origin');
    }
    if (req.method === 'OPTIONS') {
      res.writeHead(204, {
        allow: 'GET, POST, OPTIONS',
        ...(origin ? { 'access-control-allow-methods': 'GET, POST, OPTIONS', 'access-control-allow-headers': 'content-type, authorization', 'access-control-max-age': '600' } : {}),
      });
      res.end();
      return;
    }
    if (apiKey !== undefined && p !== '/health' && !apiKeyMatches(presentedKey(req.headers), apiKey)) {
      throw new HttpError(401, 'a valid API key is required: send Authorization: Bearer <key>', 'invalid_request_error', 'invalid_api_key', null, { 'www-authenticate': 'Bearer' });
    }
    const methodNotAllowed = (allowed: string): HttpError =>
      new HttpError(405, `${String(req.method).slice(0, 20)} is not allowed on ${p.slice(0, 200)}; use ${allowed}`, 'invalid_request_error', 'method_not_allowed', null, { allow: allowed });
    if (route === '/v1/chat/completions') {
      if (req.method !== 'POST') throw methodNotAllowed('POST');
      await chatCompletions(req, res, t0);
      return;
    }
    if (route === '/v1/models') {
      if (req.method !== 'GET') throw methodNotAllowed('GET');
      sendJson(res, 200, { object: 'list', data: registry.models.map(modelEntry) });
      return;
    }
    if (route === '/v1/models/{id}') {
      if (req.method !== 'GET') throw methodNotAllowed('GET');
      const want = decodePathSegment(p.slice('/v1/models/'.length), 'the model id in the path');
      const m = registry.get(want);
      if (!m) {
        throw new HttpError(404, `the model '${want.slice(0, 200)}' does not exist; this server serves ${registry.models.map((x) => `'${x.id}'`).join(', ')}`, 'invalid_request_error', 'model_not_found');
      }
      sendJson(res, 200, modelEntry(m));
      return;
    }
    if (route === '/health') {
      if (req.method !== 'GET' && req.method !== 'HEAD') throw methodNotAllowed('GET');
      const h = health();
      // Without the key (when one is set) only the status: model ids, paths in load errors and counters stay private.
      const full = apiKey === undefined || apiKeyMatches(presentedKey(req.headers), apiKey);
      sendJson(res, h.status, full ? h.body : { status: (h.body as { status: string }).status });
      return;
    }
    if (route === '/metrics') {
      if (req.method !== 'GET') throw methodNotAllowed('GET');
      const text = metrics.render();
      res.writeHead(200, { 'content-type': 'text/plain; version=0.0.4; charset=utf-8', 'content-length': Buffer.byteLength(text) });
      res.end(text);
      return;
    }
    throw new HttpError(404, `no route ${String(req.method).slice(0, 20)} ${p.slice(0, 200)}`, 'invalid_request_error', 'not_found');
  }

  const server = http.createServer({ connectionsCheckingInterval: 1000, requestTimeout: o.requestTimeoutMs, headersTimeout: o.headersTimeoutMs, keepAliveTimeout: o.keepAliveTimeoutMs }, (req, res) => {
    // Stream errors (resets, aborted bodies) must never become uncaught 'error' events.
    req.on('error', () => undefined);
    res.on('error', () => undefined);
    let p: Promise<void>;
    try {
      p = handle(req, res);
    } catch (e) {
      p = Promise.reject(e);
    }
    p.catch((e: unknown) => {
      try {
        const he = toHttpError(e);
        if (he.status >= 500) log(`internal error on ${String(req.method).slice(0, 20)} ${String(req.url).slice(0, 200)}: ${he.message}`);
        if (he.status === 499) {
          if (!res.destroyed) res.destroy();
          return;
        }
        sendError(res, he);
      } catch {
        if (!res.destroyed) res.destroy();
      }
    });
  });
  server.maxConnections = o.maxConnections;
  server.headersTimeout = o.headersTimeoutMs;
  server.requestTimeout = o.requestTimeoutMs;
  server.keepAliveTimeout = o.keepAliveTimeoutMs;
  // Malformed request lines and headers: a JSON 400 (431 for oversized headers, 408 for timeouts), then close.
  server.on('clientError', (err: NodeJS.ErrnoException, socket: Socket) => {
    if (!socket.writable || (err as { code?: string }).code === 'ECONNRESET') {
      socket.destroy();
      return;
    }
    const code = (err as { code?: string }).code;
    const status = code === 'HPE_HEADER_OVERFLOW' ? 431 : code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
    const text = status === 431 ? 'Request Header Fields Too Large' : status === 408 ? 'Request Timeout' : 'Bad Request';
    const body = JSON.stringify(errorBody(new HttpError(status, status === 408 ? 'the request was not received in time' : `malformed HTTP request (${code ?? 'parse error'})`, 'invalid_request_error', 'bad_request')));
    socket.end(`HTTP/1.1 ${status} ${text}\r\ncontent-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\nconnection: close\r\n\r\n${body}`);
  });
  // Errors after listen (e.g. EMFILE on accept) are logged, never thrown.
  const onServerError = (e: Error): void => log(`server error: ${e.message}`);

  await new Promise<void>((resolve, reject) => {
    const onListenError = (e: NodeJS.ErrnoException): void => {
      if (e.code === 'EADDRINUSE') {
        reject(new PlmError('ERR_INVALID_ARGUMENT', `port ${o.port} on ${o.host} is already in use: stop the other server or choose another port with --port N (0 picks a free one)`, { cause: e }));
      } else if (e.code === 'EACCES') {
        reject(new PlmError('ERR_INVALID_ARGUMENT', `no permission to listen on port ${o.port} of ${o.host}: use a port above 1023 with --port N`, { cause: e }));
      } else if (e.code === 'EADDRNOTAVAIL' || e.code === 'ENOTFOUND') {
        reject(new PlmError('ERR_INVALID_ARGUMENT', `cannot listen on ${o.host}: no such local address (--host)`, { cause: e }));
      } else {
        reject(new PlmError('ERR_INVALID_ARGUMENT', `cannot listen on ${o.host}:${o.port} (--host, --port): ${e.message}`, { cause: e }));
      }
    };
    server.once('error', onListenError);
    server.listen(o.port, o.host, () => {
      server.off('error', onListenError);
      server.on('error', onServerError);
      resolve();
    });
  });
  // The port is bound: now the models that load with the server start loading.
  const ready = registry.start();
  ready.catch(() => undefined);

  const addr = server.address() as AddressInfo;
  const hostForUrl = addr.family === 'IPv6' || addr.address.includes(':') ? `[${addr.address}]` : addr.address;
  let closing: Promise<void> | null = null;
  return {
    server,
    host: addr.address,
    port: addr.port,
    url: `http://${hostForUrl}:${addr.port}`,
    ready,
    close: () => {
      closing ??= new Promise<void>((resolve) => {
        for (const c of controllers) c.abort();
        server.close(() => {
          void Promise.all([registry.close(), jsonParser.close()]).then(() => resolve(), () => resolve());
        });
        server.closeAllConnections();
      });
      return closing;
    },
  };
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  const r: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (r as Record<string, unknown>)[k] = v;
  return r;
}
