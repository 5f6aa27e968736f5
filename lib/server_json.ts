/**
 * JSON parsing of large request bodies in a worker thread: `JSON.parse` of a 1 MB body takes ~7 ms of the
 * event loop (32 MiB: ~200 ms); handing the bytes over is free (transferred) and taking the parsed object
 * back is a copy. Bodies up to `inlineBytes` are parsed on the JS thread, where that is faster than a
 * round trip. If the worker cannot run, everything is parsed on the JS thread.
 */
import { Worker } from 'worker_threads';

const SOURCE = `
const { parentPort } = require('worker_threads');
parentPort.on('message', (m) => {
  try {
    parentPort.postMessage({ id: m.id, value: JSON.parse(Buffer.from(m.bytes).toString('utf8')) });
  } catch (e) {
    parentPort.postMessage({ id: m.id, error: String(e && e.message) });
  }
});
`;

/** What a failed parse throws: `message` is JSON.parse's. */
export class JsonBodyError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'JsonBodyError';
  }
}

/**
 * Parses request bodies, large ones off the JS thread.
 *
 * @example
 * ```ts
 * const parser = new JsonParser();
 * const body = await parser.parse(buffer); // throws JsonBodyError on invalid JSON
 * await parser.close();
 * ```
 */
export class JsonParser {
  private worker: Worker | null = null;
  private failed = false;
  private nextId = 1;
  private readonly pending = new Map<number, { resolve: (v: unknown) => void; reject: (e: unknown) => void }>();

  /** @param inlineBytes bodies up to this size are parsed on the JS thread. Default 64 KiB. */
  constructor(private readonly inlineBytes = 64 * 1024) {}

  private start(): Worker | null {
    if (this.worker || this.failed) return this.worker;
    try {
      const w = new Worker(SOURCE, { eval: true });
      w.unref();
      w.on('message', (m: { id: number; value?: unknown; error?: string }) => {
        const p = this.pending.get(m.id);
        if (!p) return;
        this.pending.delete(m.id);
        if (m.error !== undefined) p.reject(new JsonBodyError(m.error));
        else p.resolve(m.value);
      });
      w.on('error', (e) => this.fail(e));
      w.on('exit', () => this.fail(new Error('the JSON worker exited')));
      this.worker = w;
    } catch {
      this.failed = true;
    }
    return this.worker;
  }

  private fail(e: Error): void {
    if (!this.worker) return;
    this.worker = null;
    this.failed = true;
    for (const p of this.pending.values()) p.reject(new JsonBodyError(`the JSON worker failed: ${e.message}`));
    this.pending.clear();
  }

  /** Parses `body` (UTF-8 JSON). Throws {@link JsonBodyError} on invalid JSON. */
  parse(body: Buffer): Promise<unknown> {
    const inline = (): unknown => {
      try {
        return JSON.parse(body.toString('utf8'));
      } catch (e) {
        throw new JsonBodyError((e as Error).message);
      }
    };
    if (body.length <= this.inlineBytes) return Promise.resolve().then(inline);
    const w = this.start();
    if (!w) return Promise.resolve().then(inline);
    const id = this.nextId++;
    // Transfer the body's memory when it owns all of it (Buffer.concat of a large body does), else a copy.
    const owns = body.byteOffset === 0 && body.byteLength === body.buffer.byteLength && body.buffer instanceof ArrayBuffer;
    const bytes = owns ? new Uint8Array(body.buffer as ArrayBuffer) : Uint8Array.from(body);
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject });
      w.postMessage({ id, bytes }, [bytes.buffer]);
    });
  }

  async close(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    this.failed = true;
    for (const p of this.pending.values()) p.reject(new JsonBodyError('the server is closing'));
    this.pending.clear();
    if (w) await w.terminate();
  }
}
