/**
 * The models a server serves: each loaded at start (503 until ready) or on first use, unloaded after
 * an idle timeout, at most `maxLoaded` at once (the least recently used idle one makes room), and
 * each with its own generation slots (`parallel` running, `maxQueue` waiting, 429 beyond).
 */
import type { PerceptionLM } from './model';
import { PlmError } from './errors';
import { HttpError } from './server_guard';
import { PromptTokenizer, PromptTokenizerOptions, sharedPromptTokenizer } from './server_tokenizer';

/** One model of a server. */
export interface ModelSource {
  /** The id clients name in `model` and /v1/models lists. */
  id: string;
  /** A loaded model (the caller owns it: never unloaded nor disposed), or a promise of one. */
  model?: PerceptionLM | Promise<PerceptionLM>;
  /** Loads the model (the server owns what it returns: unloaded when idle, disposed on close). */
  load?: () => Promise<PerceptionLM>;
  /** With `load`: start loading when the server starts; requests get 503 until it is ready. Default false. */
  preload?: boolean;
}

/** Bounded FIFO: `capacity` holders and `maxWaiting` waiters; 429 beyond. */
export class SlotQueue {
  active = 0;
  private readonly waiting: Array<{ resolve: () => void; reject: (e: unknown) => void; signal: AbortSignal; onAbort: () => void }> = [];
  constructor(
    readonly capacity: number,
    readonly maxWaiting: number,
  ) {}

  get waitingCount(): number {
    return this.waiting.length;
  }

  /** Resolves when the caller holds a slot; rejects with 429 when the queue is full. Call release() after. */
  acquire(signal: AbortSignal): Promise<void> {
    if (this.active < this.capacity && this.waiting.length === 0) {
      this.active++;
      return Promise.resolve();
    }
    if (this.waiting.length >= this.maxWaiting) {
      return Promise.reject(
        new HttpError(
          429,
          `the server is busy: ${this.active} request(s) running and ${this.waiting.length} waiting (max ${this.maxWaiting}); retry later`,
          'rate_limit_error',
          'queue_full',
          null,
          { 'retry-after': '1' },
        ),
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
      if (signal.aborted) return entry.onAbort();
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
      this.active = Math.max(0, this.active - 1);
    }
  }
}

/** Options of {@link ModelRegistry}. */
export interface ModelRegistryOptions {
  /** Unload a model the server loaded after this long without requests; 0 = never. */
  idleTimeoutMs: number;
  /** Models loaded at once (the least recently used idle one is unloaded to make room). */
  maxLoaded: number;
  /** Requests generating at once per model; undefined = the model's `sequences` when it has one, else 1. */
  parallel: number | undefined;
  /** Requests waiting per model beyond `parallel` (429 beyond). */
  maxQueue: number;
  tokenizer: PromptTokenizerOptions;
  log: (line: string) => void;
}

export type ModelState = 'unloaded' | 'loading' | 'ready' | 'error';

/** A served model and its state. */
export class ServedModel {
  state: ModelState = 'unloaded';
  model: PerceptionLM | null = null;
  /** The last load error. */
  error: Error | null = null;
  /** True while the load started with the server runs (requests get 503). */
  startupLoad = false;
  /** Requests holding the model. */
  users = 0;
  lastUsed = 0;
  slots: SlotQueue | null = null;
  tokenizer: PromptTokenizer | null = null;
  /** Gives the shared tokenizer back. */
  releaseTokenizer: (() => Promise<void>) | null = null;
  loading: Promise<PerceptionLM> | null = null;
  idleTimer: NodeJS.Timeout | null = null;
  loadedAt = 0;
  loadMs = 0;
  constructor(readonly source: ModelSource) {}
  get id(): string {
    return this.source.id;
  }
  /** True when the server loaded it (and may unload it). */
  get owned(): boolean {
    return this.source.model === undefined && this.source.load !== undefined;
  }
}

/** A model held by one request; call release() once. */
export interface ModelLease {
  served: ServedModel;
  model: PerceptionLM;
  release(): void;
}

/** The engine's sequence limit (`model.stats().maxSequences`, or a `sequences` property), or undefined. */
export function engineSequences(model: PerceptionLM): number | undefined {
  const m = model as unknown as { sequences?: unknown; stats?: () => { maxSequences?: unknown } };
  let seq = m.sequences;
  if (seq === undefined && typeof m.stats === 'function') {
    try {
      seq = m.stats.call(model).maxSequences;
    } catch {
      seq = undefined;
    }
  }
  return typeof seq === 'number' && Number.isInteger(seq) && seq >= 1 ? seq : undefined;
}

/** How many requests a model runs at once: `parallel`, else the engine's sequences (what fits its KV budget), else 1. */
export function parallelOf(model: PerceptionLM, parallel: number | undefined): number {
  return parallel ?? engineSequences(model) ?? 1;
}

/** The models of one server. */
export class ModelRegistry {
  readonly models: ServedModel[];
  private readonly byId = new Map<string, ServedModel>();
  private capacityWaiters: Array<() => void> = [];
  private closed = false;

  constructor(
    sources: ModelSource[],
    private readonly o: ModelRegistryOptions,
  ) {
    if (sources.length === 0) throw new PlmError('ERR_INVALID_ARGUMENT', 'the server needs at least one model');
    this.models = sources.map((s) => new ServedModel(s));
    for (const m of this.models) {
      if (this.byId.has(m.id)) throw new PlmError('ERR_INVALID_ARGUMENT', `two models have the id '${m.id}': give them different aliases (--alias)`);
      if (!m.source.model && !m.source.load) throw new PlmError('ERR_INVALID_ARGUMENT', `model '${m.id}' has neither a model nor a load function`);
      this.byId.set(m.id, m);
    }
  }

  /**
   * Starts the loads that begin with the server (given promises and `preload` sources); resolves when
   * they are all ready, rejects with the first load error.
   */
  start(): Promise<void> {
    const loads: Promise<unknown>[] = [];
    for (const m of this.models) {
      const given = m.source.model;
      if (given !== undefined && !(given instanceof Promise)) {
        this.becomeReady(m, given, 0);
      } else if (given instanceof Promise || m.source.preload) {
        m.startupLoad = true;
        loads.push(this.load(m));
      }
    }
    return Promise.all(loads).then(() => undefined);
  }

  /** The model a request names (`undefined`: the only one). Throws 400 naming `model`. */
  resolve(requested: string | undefined): ServedModel {
    if (requested === undefined || requested === '') {
      if (this.models.length === 1) return this.models[0];
      throw new HttpError(400, `model is required: this server serves ${this.models.map((m) => `'${m.id}'`).join(', ')}`, 'invalid_request_error', 'model_required', 'model');
    }
    const m = this.byId.get(requested);
    if (!m) {
      throw new HttpError(
        400,
        `the model '${requested.slice(0, 200)}' does not exist on this server; it serves ${this.models.map((x) => `'${x.id}'`).join(', ')} (GET /v1/models)`,
        'invalid_request_error',
        'model_not_found',
        'model',
      );
    }
    return m;
  }

  get(id: string): ServedModel | undefined {
    return this.byId.get(id);
  }

  private becomeReady(m: ServedModel, model: PerceptionLM, loadMs: number): void {
    m.model = model;
    m.state = 'ready';
    m.error = null;
    m.startupLoad = false;
    m.loadedAt = Date.now();
    m.loadMs = loadMs;
    m.lastUsed = Date.now();
    m.slots = new SlotQueue(parallelOf(model, this.o.parallel), this.o.maxQueue);
    const seq = engineSequences(model);
    if (seq !== undefined && m.slots.capacity > seq) {
      this.o.log(`model ${m.id}: ${m.slots.capacity} requests may run at once but the engine runs ${seq} sequences; the others wait inside the engine (load it with more sequences)`);
    }
    const st = sharedPromptTokenizer(model, { ...this.o.tokenizer, log: this.o.log });
    m.tokenizer = st.tokenizer;
    m.releaseTokenizer = st.release;
    // Load the tokenizer worker now, not on the first request.
    void m.tokenizer.start().catch(() => undefined);
    this.armIdleTimer(m);
  }

  /** Models loaded or loading, `self` not counted. */
  private loadedCount(self: ServedModel): number {
    return this.models.filter((m) => m !== self && (m.state === 'ready' || m.state === 'loading')).length;
  }

  /** Makes room for one more loaded model: unloads the least recently used idle one, or waits. */
  private async makeRoom(self: ServedModel, signal: AbortSignal | undefined): Promise<void> {
    for (;;) {
      if (this.loadedCount(self) < this.o.maxLoaded) return;
      const idle = this.models.filter((m) => m.state === 'ready' && m.users === 0 && m.owned).sort((a, b) => a.lastUsed - b.lastUsed);
      if (idle.length > 0) {
        await this.unload(idle[0], 'to make room');
        continue;
      }
      if (signal?.aborted) throw new PlmError('ERR_CANCELLED', 'the client disconnected while waiting for a model');
      await new Promise<void>((resolve) => {
        const done = (): void => {
          signal?.removeEventListener('abort', done);
          resolve();
        };
        this.capacityWaiters.push(done);
        signal?.addEventListener('abort', done, { once: true });
      });
    }
  }

  private wakeCapacityWaiters(): void {
    const w = this.capacityWaiters;
    this.capacityWaiters = [];
    for (const f of w) f();
  }

  private load(m: ServedModel, signal?: AbortSignal): Promise<PerceptionLM> {
    if (m.loading) return m.loading;
    const started = Date.now();
    m.state = 'loading';
    m.loading = (async (): Promise<PerceptionLM> => {
      try {
        if (!(m.source.model instanceof Promise)) await this.makeRoom(m, signal);
        this.o.log(`loading model ${m.id}`);
        const model = await (m.source.model instanceof Promise ? m.source.model : (m.source.load as () => Promise<PerceptionLM>)());
        if (this.closed) {
          if (m.owned) model.dispose();
          throw new PlmError('ERR_DISPOSED', 'the server closed while the model loaded');
        }
        this.becomeReady(m, model, Date.now() - started);
        this.o.log(`model ${m.id} ready in ${Date.now() - started} ms (${model.backend})`);
        return model;
      } catch (e) {
        m.error = e instanceof Error ? e : new Error(String(e));
        // A failed start-up load (or a given promise) stays failed; a lazy load is retried by the next request.
        m.state = m.startupLoad || m.source.model instanceof Promise ? 'error' : 'unloaded';
        m.startupLoad = false;
        this.o.log(`model ${m.id} failed to load: ${m.error.message}`);
        this.wakeCapacityWaiters();
        throw e;
      } finally {
        m.loading = null;
      }
    })();
    return m.loading;
  }

  /**
   * Holds `m` for one request, loading it first when needed.
   *
   * @throws HttpError 503 while its start-up load runs (`model_loading`) or when it failed (`model_load_failed`).
   */
  async acquire(m: ServedModel, signal: AbortSignal): Promise<ModelLease> {
    if (this.closed) throw new HttpError(503, 'the server is shutting down', 'server_error', 'shutting_down');
    if (m.state === 'loading' && m.startupLoad) {
      throw new HttpError(503, `the model '${m.id}' is loading; retry in a moment (GET /health says when it is ready)`, 'server_error', 'model_loading', null, { 'retry-after': '2' });
    }
    if (m.state === 'error') {
      throw new HttpError(503, `the model '${m.id}' failed to load: ${m.error?.message ?? 'unknown error'}`, 'server_error', 'model_load_failed');
    }
    m.users++;
    this.clearIdleTimer(m);
    try {
      while (m.state !== 'ready' || !m.model) {
        if (signal.aborted) throw new PlmError('ERR_CANCELLED', 'the client disconnected while the model loaded');
        try {
          await this.load(m, signal);
        } catch (e) {
          if (e instanceof PlmError && e.code === 'ERR_CANCELLED') throw e;
          throw new HttpError(503, `the model '${m.id}' failed to load: ${(e as Error).message}`, 'server_error', 'model_load_failed');
        }
      }
    } catch (e) {
      this.releaseUser(m);
      throw e;
    }
    m.lastUsed = Date.now();
    let released = false;
    return {
      served: m,
      model: m.model,
      release: () => {
        if (released) return;
        released = true;
        this.releaseUser(m);
      },
    };
  }

  private releaseUser(m: ServedModel): void {
    m.users = Math.max(0, m.users - 1);
    m.lastUsed = Date.now();
    if (m.users === 0) {
      this.armIdleTimer(m);
      this.wakeCapacityWaiters();
    }
  }

  private clearIdleTimer(m: ServedModel): void {
    if (m.idleTimer) clearTimeout(m.idleTimer);
    m.idleTimer = null;
  }

  private armIdleTimer(m: ServedModel): void {
    this.clearIdleTimer(m);
    if (this.o.idleTimeoutMs <= 0 || !m.owned || m.state !== 'ready' || m.users > 0) return;
    m.idleTimer = setTimeout(() => {
      m.idleTimer = null;
      if (m.users === 0 && m.state === 'ready') void this.unload(m, `idle for ${this.o.idleTimeoutMs} ms`);
    }, this.o.idleTimeoutMs);
    m.idleTimer.unref();
  }

  /** Unloads a model the server loaded (no request may hold it). */
  private async unload(m: ServedModel, why: string): Promise<void> {
    if (m.state !== 'ready' || m.users > 0 || !m.owned) return;
    this.clearIdleTimer(m);
    const model = m.model;
    const releaseTok = m.releaseTokenizer;
    m.state = 'unloaded';
    m.model = null;
    m.slots = null;
    m.tokenizer = null;
    m.releaseTokenizer = null;
    await releaseTok?.();
    model?.dispose();
    this.o.log(`unloaded model ${m.id} (${why})`);
    this.wakeCapacityWaiters();
  }

  /** Stops tokenizer workers and disposes the models the server loaded. */
  async close(): Promise<void> {
    this.closed = true;
    this.wakeCapacityWaiters();
    for (const m of this.models) {
      this.clearIdleTimer(m);
      await m.releaseTokenizer?.();
      m.releaseTokenizer = null;
      m.tokenizer = null;
      if (m.owned && m.model) m.model.dispose();
    }
  }
}
