/**
 * Chat-template rendering and tokenization for the server, off the JS thread, with a bound checked
 * before any of that work starts.
 *
 * - {@link promptLowerBound}: a request whose text cannot fit the context is rejected up front. A
 *   token of a byte-level BPE covers at most `maxTokenBytes` bytes (128 for Llama 3: the longest
 *   vocabulary entry), so a text of B bytes is at least ceil(B / maxTokenBytes) tokens, and each
 *   image adds at least 2 tiles (thumbnail + one tile) of `tokens_per_tile` tokens.
 * - {@link PromptTokenizer}: renders the template and tokenizes in a worker thread that loads the
 *   checkpoint's own tokenizer and template with the package's code (so the ids are those
 *   `model.buildInput` would give), one job at a time with a deadline; a job over the deadline
 *   terminates the worker (a fresh one starts for the next job). The event loop only waits.
 */
import * as fs from 'fs';
import * as path from 'path';
import { Worker } from 'worker_threads';
import type { ChatMessage } from './chat_template';
import { PlmError } from './errors';
import type { PerceptionLM } from './model';
import { tokenizePrompt, PromptModelInfo } from './prompt';
import { HttpError } from './server_guard';
import { tokenBytes } from './server_request';

/** The longest vocabulary entry of a tokenizer.json, in bytes (added tokens included). */
export function maxTokenBytesOf(tokenizerJson: { model?: { vocab?: Record<string, number> | Array<[string, number]> }; added_tokens?: Array<{ content?: string }> }): number {
  let max = 1;
  const vocab = tokenizerJson.model?.vocab;
  const tokens = Array.isArray(vocab) ? vocab.map((v) => v[0]) : Object.keys(vocab ?? {});
  for (const t of tokens) max = Math.max(max, tokenBytes(t).length);
  for (const a of tokenizerJson.added_tokens ?? []) if (typeof a.content === 'string') max = Math.max(max, Buffer.byteLength(a.content));
  return max;
}

/** The facts about a model that prompt building needs (as the model computes them). */
export function promptInfoOf(model: PerceptionLM): PromptModelInfo {
  let pre: Record<string, unknown> = {};
  try {
    pre = JSON.parse(fs.readFileSync(path.join(model.dir, 'preprocessor_config.json'), 'utf8')) as Record<string, unknown>;
  } catch {
    pre = {};
  }
  const c = model.config;
  const bos = c.generation?.bos_token_id;
  return {
    imageTokenId: c.image_token_id,
    videoTokenId: c.video_token_id,
    tokensPerTile: c.tokens_per_tile,
    maxContext: model.maxContext,
    bosTokenId: typeof bos === 'number' && bos >= 0 ? bos : undefined,
    visionPresent: Boolean(c.vision?.present),
    tileSize: c.vision?.image_size || (typeof pre.tile_size === 'number' ? pre.tile_size : 448),
    maxNumTiles: typeof pre.max_num_tiles === 'number' ? pre.max_num_tiles : 36,
    numFrames: 32,
  };
}

// Generous: strips at least what Jinja's `trim` (Python str.strip) strips, so the bound stays low.
const EDGE_SPACE = /^[\s\u0085\u180e\u200b-\u200d\u2060\ufeff\x1c-\x1f]+|[\s\u0085\u180e\u200b-\u200d\u2060\ufeff\x1c-\x1f]+$/g;

/**
 * The fewest tokens the rendered prompt can have: ceil(text bytes / maxTokenBytes) plus
 * 2 x tokensPerTile per image. Assumes the template writes every message's (trimmed) text, as the
 * PerceptionLM template does.
 */
export function promptLowerBound(messages: ReadonlyArray<ChatMessage<unknown, never>>, maxTokenBytes: number, tokensPerTile: number): { tokens: number; textBytes: number; images: number } {
  let textBytes = 0;
  let images = 0;
  for (const m of messages) {
    if (typeof m.content === 'string') textBytes += Buffer.byteLength(m.content.replace(EDGE_SPACE, ''));
    else {
      for (const p of m.content) {
        if (p.type === 'text') textBytes += Buffer.byteLength(p.text.replace(EDGE_SPACE, ''));
        else if (p.type === 'image') images++;
      }
    }
  }
  return { tokens: Math.ceil(textBytes / maxTokenBytes) + images * 2 * tokensPerTile, textBytes, images };
}

/** Throws a 400 `ERR_CONTEXT_OVERFLOW` when the prompt cannot fit, before any tokenization. */
export function checkPromptBound(messages: ReadonlyArray<ChatMessage<unknown, never>>, maxTokens: number, maxContext: number, maxTokenBytes: number, tokensPerTile: number): void {
  const b = promptLowerBound(messages, maxTokenBytes, tokensPerTile);
  if (b.tokens + maxTokens > maxContext) {
    throw new HttpError(
      400,
      `the prompt cannot fit the context: its ${b.textBytes} bytes of text are at least ${Math.ceil(b.textBytes / maxTokenBytes)} tokens ` +
        `(a token covers at most ${maxTokenBytes} bytes)${b.images ? ` and its ${b.images} image(s) at least ${b.images * 2 * tokensPerTile}` : ''}, ` +
        `plus max_tokens ${maxTokens} > the context limit of ${maxContext} tokens. Shorten the messages or lower max_tokens.`,
      'invalid_request_error',
      'ERR_CONTEXT_OVERFLOW',
      'messages',
    );
  }
}

/** Options of {@link PromptTokenizer}. */
export interface PromptTokenizerOptions {
  /** Longest time one render + tokenization may take. Default 30 s. */
  timeoutMs?: number;
  /** Render and tokenize in a worker thread (default true); false runs them on the JS thread. */
  worker?: boolean;
  log?: (line: string) => void;
}

interface Job {
  messages: ChatMessage<number, never>[];
  resolve: (ids: Int32Array) => void;
  reject: (e: unknown) => void;
  signal: AbortSignal;
}

// Runs in the worker: loads the checkpoint's tokenizer and template with the package's own modules.
const WORKER_SOURCE = `
const { parentPort, workerData } = require('worker_threads');
const fs = require('fs');
if (workerData.typescript) {
  // Running from the TypeScript sources (tests): compile the package's .ts modules on require.
  const ts = require(workerData.typescript);
  require.extensions['.ts'] = (m, filename) => {
    const out = ts.transpileModule(fs.readFileSync(filename, 'utf8'), {
      fileName: filename,
      compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2022, esModuleInterop: true },
    });
    m._compile(out.outputText, filename);
  };
}
const { PlmTokenizer } = require(workerData.modules.tokenizer);
const { ChatTemplate } = require(workerData.modules.chatTemplate);
const { tokenizePrompt } = require(workerData.modules.prompt);
const { maxTokenBytesOf } = require(workerData.modules.self);
const path = require('path');
let tok, tpl, maxTokenBytes;
try {
  tok = PlmTokenizer.fromDirectory(workerData.dir);
  tpl = ChatTemplate.fromDirectory(workerData.dir, tok.config);
  maxTokenBytes = maxTokenBytesOf(JSON.parse(fs.readFileSync(path.join(workerData.dir, 'tokenizer.json'), 'utf8')));
  parentPort.postMessage({ ready: true, maxTokenBytes });
} catch (e) {
  parentPort.postMessage({ ready: false, error: { message: e && e.message, code: e && e.code } });
}
parentPort.on('message', (m) => {
  try {
    const r = tokenizePrompt(tok, tpl, workerData.info, { messages: m.messages });
    const ids = Int32Array.from(r.ids);
    parentPort.postMessage({ id: m.id, ids }, [ids.buffer]);
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: { message: e && e.message, code: e && e.code } });
  }
});
`;

function moduleFile(name: string): string {
  // Next to this file: .js in dist/, .ts when running from the sources.
  return path.join(__dirname, name);
}

/**
 * Renders the chat template and tokenizes for one model, in a worker thread.
 *
 * @example
 * ```ts
 * const pt = new PromptTokenizer(model);
 * const ids = await pt.tokenize([{ role: 'user', content: [{ type: 'image', image: 0 }, { type: 'text', text: 'Hi' }] }], signal);
 * await pt.close();
 * ```
 */
export class PromptTokenizer {
  private worker: Worker | null = null;
  private ready: Promise<void> | null = null;
  private readonly queue: Job[] = [];
  private busy = false;
  private nextId = 1;
  private closed = false;
  private readonly info: PromptModelInfo;
  private readonly timeoutMs: number;
  private readonly useWorker: boolean;
  private maxBytes = 0;
  /** 'worker' or 'main-thread' (also after a worker failed to start). */
  mode: 'worker' | 'main-thread';

  constructor(
    private readonly model: PerceptionLM,
    private readonly options: PromptTokenizerOptions = {},
  ) {
    this.info = promptInfoOf(model);
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.useWorker = options.worker ?? true;
    this.mode = this.useWorker ? 'worker' : 'main-thread';
  }

  /** The longest token in bytes (for {@link checkPromptBound}); starts the worker when needed. */
  async maxTokenBytes(): Promise<number> {
    if (this.maxBytes > 0) return this.maxBytes;
    if (this.mode === 'worker') await this.start().catch(() => undefined);
    if (this.maxBytes === 0) {
      // Main-thread mode (or a failed worker): read the vocabulary here, once.
      this.maxBytes = maxTokenBytesOf(JSON.parse(fs.readFileSync(path.join(this.model.dir, 'tokenizer.json'), 'utf8')) as Parameters<typeof maxTokenBytesOf>[0]);
    }
    return this.maxBytes;
  }

  /** Starts the worker (once); resolves when its tokenizer is loaded. */
  start(): Promise<void> {
    if (this.mode !== 'worker') return Promise.resolve();
    if (this.ready) return this.ready;
    const fromSources = __filename.endsWith('.ts');
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: {
        dir: this.model.dir,
        info: this.info,
        typescript: fromSources ? require.resolve('typescript') : null,
        modules: {
          tokenizer: moduleFile('tokenizer'),
          chatTemplate: moduleFile('chat_template'),
          prompt: moduleFile('prompt'),
          self: moduleFile('server_tokenizer'),
        },
      },
    });
    worker.unref();
    this.worker = worker;
    this.ready = new Promise<void>((resolve, reject) => {
      const onFirst = (m: { ready?: boolean; maxTokenBytes?: number; error?: { message?: string } }): void => {
        worker.off('error', onError);
        if (m.ready) {
          this.maxBytes = m.maxTokenBytes ?? 0;
          resolve();
        } else {
          onError(new Error(m.error?.message ?? 'the tokenizer worker failed to start'));
        }
      };
      const onError = (e: Error): void => {
        worker.off('message', onFirst);
        this.worker = null;
        this.ready = null;
        void worker.terminate();
        // Correct answers first: fall back to the JS thread, and say so.
        this.mode = 'main-thread';
        this.options.log?.(`tokenizer worker failed (${e.message}); rendering and tokenizing on the JS thread`);
        reject(e);
      };
      worker.once('message', onFirst);
      worker.once('error', onError);
    });
    this.ready.catch(() => undefined);
    return this.ready;
  }

  /**
   * Renders `messages` (image parts carry their index) with the chat template and tokenizes them:
   * one `<|image|>` id per image, BOS included, exactly as `model.buildInput` would.
   *
   * @throws HttpError 400 `prompt_too_complex` when it takes longer than `timeoutMs`; PlmError from
   *   the template (`ERR_INVALID_ARGUMENT`).
   */
  tokenize(messages: ChatMessage<number, never>[], signal: AbortSignal): Promise<Int32Array> {
    if (this.closed) return Promise.reject(new PlmError('ERR_DISPOSED', 'the server is closing'));
    return new Promise<Int32Array>((resolve, reject) => {
      this.queue.push({ messages, resolve, reject, signal });
      void this.pump();
    });
  }

  private async pump(): Promise<void> {
    if (this.busy) return;
    const job = this.queue.shift();
    if (!job) return;
    this.busy = true;
    try {
      if (job.signal.aborted) throw new PlmError('ERR_CANCELLED', 'the client disconnected');
      job.resolve(await this.run(job));
    } catch (e) {
      job.reject(e);
    } finally {
      this.busy = false;
      if (this.queue.length > 0) void this.pump();
    }
  }

  private async run(job: Job): Promise<Int32Array> {
    if (this.mode === 'worker') {
      try {
        await this.start();
      } catch {
        /* fell back to the JS thread */
      }
    }
    if (this.mode === 'main-thread' || !this.worker) {
      const tok = this.model.tokenizer;
      if (!tok) throw new HttpError(500, `${this.model.dir} has no tokenizer.json: chat requests need one`, 'server_error', 'ERR_FILE_NOT_FOUND');
      return Int32Array.from(tokenizePrompt(tok, this.model.chatTemplate, this.info, { messages: job.messages }).ids);
    }
    const worker = this.worker;
    const id = this.nextId++;
    return new Promise<Int32Array>((resolve, reject) => {
      const timer = setTimeout(() => {
        cleanup();
        // A stuck render or a pathological text: drop this worker, the next job starts a fresh one.
        this.worker = null;
        this.ready = null;
        void worker.terminate();
        reject(
          new HttpError(400, `rendering and tokenizing the prompt took more than ${this.timeoutMs} ms; shorten the messages`, 'invalid_request_error', 'prompt_too_complex', 'messages'),
        );
      }, this.timeoutMs);
      const onMessage = (m: { id?: number; ids?: Int32Array; error?: { message?: string; code?: string } }): void => {
        if (m.id !== id) return;
        cleanup();
        if (m.ids) resolve(m.ids);
        else {
          const code = m.error?.code;
          reject(new PlmError(typeof code === 'string' && code.startsWith('ERR_') ? (code as 'ERR_INVALID_ARGUMENT') : 'ERR_INTERNAL', m.error?.message ?? 'tokenization failed'));
        }
      };
      const onError = (e: Error): void => {
        cleanup();
        this.worker = null;
        this.ready = null;
        reject(new HttpError(500, `the tokenizer worker failed: ${e.message}`, 'server_error', 'ERR_INTERNAL'));
      };
      const cleanup = (): void => {
        clearTimeout(timer);
        worker.off('message', onMessage);
        worker.off('error', onError);
      };
      worker.on('message', onMessage);
      worker.once('error', onError);
      worker.postMessage({ id, messages: job.messages });
    });
  }

  /** Stops the worker; queued jobs reject with ERR_DISPOSED. */
  async close(): Promise<void> {
    this.closed = true;
    for (const j of this.queue.splice(0)) j.reject(new PlmError('ERR_DISPOSED', 'the server is closing'));
    const w = this.worker;
    this.worker = null;
    if (w) await w.terminate();
  }
}

const shared = new Map<PerceptionLM, Map<string, { pt: PromptTokenizer; refs: number }>>();

/**
 * A {@link PromptTokenizer} shared by every server of the same model and options (one worker and one
 * tokenizer copy per model). Call the returned `release()` once; the last release closes it.
 */
export function sharedPromptTokenizer(model: PerceptionLM, options: PromptTokenizerOptions = {}): { tokenizer: PromptTokenizer; release: () => Promise<void> } {
  const key = JSON.stringify({ t: options.timeoutMs ?? null, w: options.worker ?? true });
  let byKey = shared.get(model);
  if (!byKey) {
    byKey = new Map();
    shared.set(model, byKey);
  }
  let e = byKey.get(key);
  if (!e) {
    e = { pt: new PromptTokenizer(model, options), refs: 0 };
    byKey.set(key, e);
  }
  e.refs++;
  const entry = e;
  const map = byKey;
  let released = false;
  return {
    tokenizer: entry.pt,
    release: async () => {
      if (released) return;
      released = true;
      if (--entry.refs > 0) return;
      map.delete(key);
      if (map.size === 0) shared.delete(model);
      await entry.pt.close();
    },
  };
}
