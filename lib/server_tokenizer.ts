/**
 * Chat-template rendering and tokenization for the server, off the JS thread, with a bound checked
 * before any of that work starts.
 *
 * - {@link promptLowerBound}: a request whose text cannot fit the context is refused up front. Every
 *   token of the vocabulary holds at most so many bytes in all (128 for Llama 3: a run of spaces), and
 *   at most so many bytes of letters (64), of digits, of whitespace and of other characters; each byte
 *   of the text belongs to exactly one token, so a text with B_c bytes of class c has at least
 *   ceil(B_c / max_c) tokens for every class c (the largest of these is the bound), and each image adds
 *   at least 2 tiles (thumbnail + one tile) of `tokens_per_tile` tokens. 1 MB of 'a' is thus at least
 *   15625 tokens.
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

/** Bytes of text by character class. */
export interface ClassBytes {
  /** All bytes. */
  total: number;
  /** Bytes of letters (\p{L}). */
  letters: number;
  /** Bytes of digits (\p{N}). */
  digits: number;
  /** Bytes of whitespace (\s). */
  spaces: number;
  /** Bytes of everything else. */
  other: number;
}

const IS_LETTER = /\p{L}/u;
const IS_DIGIT = /\p{N}/u;
const IS_SPACE = /\s/u;

const zeroClasses = (): ClassBytes => ({ total: 0, letters: 0, digits: 0, spaces: 0, other: 0 });

/** Adds the UTF-8 bytes of each character of `s` to its class (a lone surrogate counts 3 bytes, as UTF-8 encodes U+FFFD). */
export function classBytes(s: string, into: ClassBytes = zeroClasses()): ClassBytes {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c < 0x80) {
      into.total++;
      if ((c >= 0x61 && c <= 0x7a) || (c >= 0x41 && c <= 0x5a)) into.letters++;
      else if (c >= 0x30 && c <= 0x39) into.digits++;
      else if (c === 0x20 || (c >= 0x09 && c <= 0x0d)) into.spaces++;
      else into.other++;
      continue;
    }
    let ch = s[i];
    if (c >= 0xd800 && c <= 0xdbff && i + 1 < s.length) {
      const d = s.charCodeAt(i + 1);
      if (d >= 0xdc00 && d <= 0xdfff) {
        ch = s.slice(i, i + 2);
        i++;
      }
    }
    const n = c < 0x800 ? 2 : ch.length === 2 ? 4 : 3;
    into.total += n;
    if (IS_LETTER.test(ch)) into.letters += n;
    else if (IS_DIGIT.test(ch)) into.digits += n;
    else if (IS_SPACE.test(ch)) into.spaces += n;
    else into.other += n;
  }
  return into;
}

type TokenizerJson = { model?: { vocab?: Record<string, number> | Array<[string, number]> }; added_tokens?: Array<{ content?: string }> };

/**
 * The most bytes of each class that one token of a tokenizer.json holds (added tokens included). A
 * token that is not whole UTF-8 (a fragment of a character) counts all its bytes in every class.
 */
export function tokenClassMaxima(tokenizerJson: TokenizerJson): ClassBytes {
  const max: ClassBytes = { total: 1, letters: 1, digits: 1, spaces: 1, other: 1 };
  const dec = new TextDecoder('utf-8', { fatal: false });
  const add = (bytes: Buffer): void => {
    const text = dec.decode(bytes);
    const c = text.includes('\ufffd') ? { total: bytes.length, letters: bytes.length, digits: bytes.length, spaces: bytes.length, other: bytes.length } : classBytes(text);
    for (const k of ['total', 'letters', 'digits', 'spaces', 'other'] as const) max[k] = Math.max(max[k], c[k]);
  };
  const vocab = tokenizerJson.model?.vocab;
  const tokens = Array.isArray(vocab) ? vocab.map((v) => v[0]) : Object.keys(vocab ?? {});
  for (const t of tokens) add(Buffer.from(tokenBytes(t)));
  for (const a of tokenizerJson.added_tokens ?? []) if (typeof a.content === 'string') add(Buffer.from(a.content, 'utf8'));
  return max;
}

/** The facts about a model that prompt building needs (as the model computes them). */
export function promptInfoOf(model: PerceptionLM): PromptModelInfo {
  const cached = infoCache.get(model);
  if (cached && cached.maxContext === model.maxContext) return cached;
  const info = computePromptInfo(model);
  infoCache.set(model, info);
  return info;
}

const infoCache = new WeakMap<PerceptionLM, PromptModelInfo>();

function computePromptInfo(model: PerceptionLM): PromptModelInfo {
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

/** Characters that Jinja's `trim` (Python str.strip) may remove, and a few more: stripping more keeps the bound low. */
function isEdgeSpace(c: number): boolean {
  return (
    (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20) || c === 0x85 || c === 0xa0 || c === 0x1680 || c === 0x180e ||
    (c >= 0x2000 && c <= 0x200d) || c === 0x2028 || c === 0x2029 || c === 0x202f || c === 0x205f || c === 0x2060 || c === 0x3000 || c === 0xfeff
  );
}

/** `s` without leading and trailing whitespace (a loop, not a regular expression: linear on any input). */
function trimEdges(s: string): string {
  let a = 0;
  let b = s.length;
  while (a < b && isEdgeSpace(s.charCodeAt(a))) a++;
  while (b > a && isEdgeSpace(s.charCodeAt(b - 1))) b--;
  return a === 0 && b === s.length ? s : s.slice(a, b);
}

/**
 * The fewest tokens the rendered prompt can have (see the file comment). Assumes the template writes
 * every message's (trimmed) text, as the PerceptionLM template does. With `classes` false only the
 * byte count is used (no scan of the text).
 */
export function promptLowerBound(messages: ReadonlyArray<ChatMessage<unknown, never>>, maxima: ClassBytes, tokensPerTile: number, classes = true): { tokens: number; text: ClassBytes; images: number } {
  const texts: string[] = [];
  let images = 0;
  for (const m of messages) {
    if (typeof m.content === 'string') texts.push(trimEdges(m.content));
    else {
      for (const p of m.content) {
        if (p.type === 'text') texts.push(trimEdges(p.text));
        else if (p.type === 'image') images++;
      }
    }
  }
  const text = zeroClasses();
  if (classes) {
    for (const t of texts) classBytes(t, text);
  } else {
    for (const t of texts) text.total += Buffer.byteLength(t);
  }
  let textTokens = Math.ceil(text.total / maxima.total);
  if (classes) for (const k of ['letters', 'digits', 'spaces', 'other'] as const) textTokens = Math.max(textTokens, Math.ceil(text[k] / maxima[k]));
  return { tokens: textTokens + images * 2 * tokensPerTile, text, images };
}

/**
 * Throws a 400 `ERR_CONTEXT_OVERFLOW` when the prompt cannot fit, before any rendering or tokenization.
 * With `classes` false only the byte count is checked (native, no scan of the text); with true also the
 * per-class count, a scan of at most maxContext x maxima.total bytes (~2 ms per MB).
 */
export function checkPromptBound(messages: ReadonlyArray<ChatMessage<unknown, never>>, maxTokens: number, maxContext: number, maxima: ClassBytes, tokensPerTile: number, classes: boolean): void {
  const quick = promptLowerBound(messages, maxima, tokensPerTile, false);
  const b = quick.tokens + maxTokens > maxContext || !classes ? quick : promptLowerBound(messages, maxima, tokensPerTile, true);
  if (b.tokens + maxTokens > maxContext) {
    const textTokens = b.tokens - b.images * 2 * tokensPerTile;
    throw new HttpError(
      400,
      `the prompt cannot fit the context: its ${b.text.total} bytes of text are at least ${textTokens} tokens ` +
        `(no token of this vocabulary holds more than ${maxima.total} bytes, nor more than ${maxima.letters} bytes of letters)` +
        `${b.images ? ` and its ${b.images} image(s) at least ${b.images * 2 * tokensPerTile}` : ''}, ` +
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
const { tokenClassMaxima } = require(workerData.modules.self);
const path = require('path');
let tok, tpl, maxima;
try {
  tok = PlmTokenizer.fromDirectory(workerData.dir);
  tpl = ChatTemplate.fromDirectory(workerData.dir, tok.config);
  maxima = tokenClassMaxima(JSON.parse(fs.readFileSync(path.join(workerData.dir, 'tokenizer.json'), 'utf8')));
  parentPort.postMessage({ ready: true, maxima });
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
  private maxima: ClassBytes | null = null;
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

  /** The most bytes of each class one token holds (for {@link checkPromptBound}); starts the worker when needed. */
  async tokenMaxima(): Promise<ClassBytes> {
    if (this.maxima) return this.maxima;
    if (this.mode === 'worker') await this.start().catch(() => undefined);
    if (!this.maxima) {
      // Main-thread mode (or a failed worker): read the vocabulary here, once.
      this.maxima = tokenClassMaxima(JSON.parse(fs.readFileSync(path.join(this.model.dir, 'tokenizer.json'), 'utf8')) as TokenizerJson);
    }
    return this.maxima;
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
      const onFirst = (m: { ready?: boolean; maxima?: ClassBytes; error?: { message?: string } }): void => {
        worker.off('error', onError);
        if (m.ready) {
          this.maxima = m.maxima ?? null;
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
