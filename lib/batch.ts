/**
 * Batch captioning and questions over many images or videos with one loaded model: the items (from a
 * folder, a glob or a JSONL manifest), the runner ({@link batch}) and the resumable JSONL output
 * ({@link BatchOutput}). `plm batch` (lib/cli_batch.ts) and the BullMQ worker (lib/batch_queue.ts) use
 * the same pieces.
 *
 * Pipeline per item: decode + preprocess (`model.buildInput`, run ahead of the model by `prefetch`
 * items), then `model.complete()` on the built input, at most `concurrency` at once. Records are
 * appended to the output as each item finishes, one `write` of a whole line to a file opened with
 * O_APPEND, so a kill -9 can leave at most one torn last line, which {@link BatchOutput.open} cuts off.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { isPlmError, PlmError, PlmErrorCode, wrapNativeError } from './errors';
import type { CompleteResult, FinishReason, GenerateOptions, PerceptionLM } from './model';
import type { BuiltPrompt } from './prompt';
import { isVideoPath, VIDEO_EXTENSIONS } from './video';

/** File extensions read as images when a folder or glob is listed (besides {@link VIDEO_EXTENSIONS}). */
export const IMAGE_EXTENSIONS: readonly string[] = ['.jpg', '.jpeg', '.png', '.webp', '.gif', '.tif', '.tiff'];

/** Extensions a folder is listed with by default: images and videos. */
export const MEDIA_EXTENSIONS: readonly string[] = [...IMAGE_EXTENSIONS, ...VIDEO_EXTENSIONS];

/** Default number of items decoded and preprocessed ahead of the ones the model runs. */
export const DEFAULT_PREFETCH = 2;
/** Default concurrency when the model does not say how many sequences it runs at once. */
export const DEFAULT_CONCURRENCY = 4;

/** One unit of work: one image or one video, with an optional prompt and token limit. */
export interface BatchItem {
  /** Unique within a run; the key for resuming and deduplicating. */
  id: string;
  /** Image file path (exactly one of image / video). */
  image?: string;
  /** Video file path (decoded with ffmpeg). */
  video?: string;
  /** Overrides {@link BatchOptions.prompt}. */
  prompt?: string;
  /** Overrides {@link BatchOptions.maxTokens}. */
  maxTokens?: number;
  /** Anything JSON: copied into the record unchanged. */
  meta?: unknown;
}

/** The model identity written into every record. */
export interface BatchModelInfo {
  /** The checkpoint folder's name, e.g. 'Perception-LM-1B'. */
  name: string;
  /** The checkpoint folder. */
  path: string;
  backend: string;
  dtype: string | null;
  quantization: string;
}

/** Timings of one item in milliseconds. */
export interface BatchTimings {
  /** Decoding and preprocessing the media, tokenizing the prompt. */
  preprocessMs: number;
  /** Waiting for one of the `concurrency` generation slots after preprocessing. */
  waitMs: number;
  visionMs: number;
  prefillMs: number;
  decodeMs: number;
  decodeTokensPerSecond: number;
  /** From the start of preprocessing to the record. */
  totalMs: number;
}

/** One line of the output: a result or a typed error, never both. */
export interface BatchRecord {
  id: string;
  image?: string;
  video?: string;
  prompt: string;
  text?: string;
  finishReason?: FinishReason;
  /** Prompt tokens, image or video tokens included. */
  promptTokens?: number;
  /** Generated tokens (a final stop token included). */
  completionTokens?: number;
  /** Tiles (image) or frames (video) the media became. */
  numTiles?: number;
  error?: { code: PlmErrorCode; message: string };
  /** The generation settings that were given (unset ones are the model's defaults). */
  params: BatchParams;
  /** The model that made it (absent only in queue failures no worker reported, e.g. a job whose workers kept dying). */
  model?: BatchModelInfo;
  meta?: unknown;
  /** Which process made it (`host:pid`), set by queue workers. */
  worker?: string;
  timings?: BatchTimings;
}

/** Generation settings shared by all items of a run. */
export interface BatchParams {
  maxTokens?: number;
  maxTiles?: number;
  frames?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
}

/** Progress of a {@link batch} run, reported after every item. */
export interface BatchProgress {
  /** Items in the input when known (arrays), skipped ones included. */
  total?: number;
  /** Records written in this run (results and errors). */
  done: number;
  /** Of `done`, error records. */
  failed: number;
  /** Items skipped because the output already had a record for them. */
  skipped: number;
  /** Items being preprocessed or generated now. */
  inFlight: number;
  elapsedMs: number;
  /** Records per hour in this run (0 before the first). */
  itemsPerHour: number;
  /** Estimated time left, when `total` is known and a record was written. */
  etaMs?: number;
}

/** Options of {@link batch}. */
export interface BatchOptions extends BatchParams {
  /** Default prompt. Default 'Describe the image.' / 'Describe the video.'. */
  prompt?: string;
  /**
   * Items generated at once (concurrent `complete()` calls; the engine runs them together). Default: the
   * model's `sequences` when it has one, else 4.
   */
  concurrency?: number;
  /** Items decoded and preprocessed ahead of the running ones. Default 2. */
  prefetch?: number;
  /**
   * A JSONL file: records are appended to it as items finish, and items it already has a record for are
   * skipped (and not yielded), so a killed run started again with the same file loses nothing. A
   * {@link BatchOutput} the caller opened is used and left open. Default: none.
   */
  output?: string | BatchOutput;
  /** Base folder for relative media paths of items. Default: the current directory. */
  cwd?: string;
  /** Stops the run: running items are cancelled (no record) and the iteration rejects with ERR_CANCELLED. */
  signal?: AbortSignal;
  onProgress?: (progress: BatchProgress) => void;
  /** Set as `worker` in every record. */
  worker?: string;
}

/** What {@link batch} needs of a model (a {@link PerceptionLM}). */
export type BatchModel = Pick<PerceptionLM, 'buildInput' | 'complete' | 'dir' | 'backend' | 'quantization' | 'config' | 'tokenizer'> & {
  /** Engine counters; `maxSequences` (the `sequences` load option) is the default concurrency. */
  stats?: () => { maxSequences?: number };
};

/**
 * Codes that stop a run instead of becoming an error record: the engine or the run itself failed,
 * not the item. A resumed run tries those items again.
 */
export const FATAL_CODES: ReadonlySet<PlmErrorCode> = new Set<PlmErrorCode>(['ERR_CANCELLED', 'ERR_DISPOSED', 'ERR_BACKEND', 'ERR_OUT_OF_MEMORY', 'ERR_NATIVE_NOT_FOUND']);

function round2(x: number): number {
  return Math.round(x * 100) / 100;
}

function cancelled(): PlmError {
  return new PlmError('ERR_CANCELLED', 'the batch was aborted (AbortSignal); run it again with the same output file to resume');
}

function posInt(name: string, v: unknown, min: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw new PlmError('ERR_INVALID_ARGUMENT', `${name} must be an integer >= ${min}, got ${String(v)}`);
  return v;
}

// ---------------------------------------------------------------------------------------------
// Items: folders, globs, manifests
// ---------------------------------------------------------------------------------------------

/** True when `s` has glob syntax (`*`, `?`, `[...]`, `{a,b}`). */
export function isGlob(s: string): boolean {
  return /[*?[{]/.test(s);
}

function escapeRegExp(c: string): string {
  return /[\\^$.*+?()[\]{}|/]/.test(c) ? `\\${c}` : c;
}

/**
 * A glob pattern as a RegExp over '/'-separated relative paths: `*` (within a segment), `?`, `**` (any
 * number of folders), `[abc]` / `[!abc]` / `[a-z]`, `{a,b}` (nestable), `\` escapes the next character.
 *
 * @example
 * ```ts
 * globToRegExp('**\/*.{jpg,png}').test('a/b/c.png'); // true
 * ```
 */
export function globToRegExp(pattern: string): RegExp {
  let re = '';
  let braces = 0;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i];
    if (c === '\\' && i + 1 < pattern.length) {
      re += escapeRegExp(pattern[++i]);
    } else if (c === '*') {
      if (pattern[i + 1] === '*' && (i === 0 || pattern[i - 1] === '/')) {
        if (pattern[i + 2] === '/') {
          re += '(?:[^/]+/)*';
          i += 2;
        } else if (i + 2 === pattern.length) {
          re += '.*';
          i += 1;
        } else {
          re += '[^/]*';
          i += 1;
        }
      } else re += '[^/]*';
    } else if (c === '?') {
      re += '[^/]';
    } else if (c === '[') {
      const end = pattern.indexOf(']', i + 2);
      if (end < 0) {
        re += '\\[';
        continue;
      }
      let body = pattern.slice(i + 1, end);
      const negate = body.startsWith('!') || body.startsWith('^');
      if (negate) body = body.slice(1);
      re += `[${negate ? '^/' : ''}${body.replace(/[\\\]^]/g, (m) => `\\${m}`)}]`;
      i = end;
    } else if (c === '{') {
      braces++;
      re += '(?:';
    } else if (c === '}' && braces > 0) {
      braces--;
      re += ')';
    } else if (c === ',' && braces > 0) {
      re += '|';
    } else re += escapeRegExp(c);
  }
  if (braces > 0) throw new PlmError('ERR_INVALID_ARGUMENT', `glob "${pattern}" has an unclosed {`);
  return new RegExp(`^${re}$`);
}

/** Splits a glob into its literal leading folder and the pattern below it. */
function globBase(pattern: string): { base: string; rest: string } {
  const parts = pattern.split('/');
  let k = 0;
  while (k < parts.length - 1 && !isGlob(parts[k]) && !parts[k].includes('\\')) k++;
  const baseParts = parts.slice(0, k);
  const base = baseParts.length === 0 ? '.' : baseParts.join('/') || '/';
  return { base, rest: parts.slice(k).join('/') };
}

/** Files under `dir` (recursively, sorted by name, symlinked folders followed once) as '/'-separated relative paths. */
async function walk(dir: string, maxDepth: number, keep: (rel: string) => boolean): Promise<string[]> {
  const out: string[] = [];
  const seen = new Set<string>();
  const visit = async (abs: string, rel: string, depth: number): Promise<void> => {
    const real = await fs.promises.realpath(abs);
    if (seen.has(real)) return;
    seen.add(real);
    const entries = await fs.promises.readdir(abs, { withFileTypes: true });
    entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    for (const e of entries) {
      const childAbs = path.join(abs, e.name);
      const childRel = rel ? `${rel}/${e.name}` : e.name;
      let isDir = e.isDirectory();
      let isFile = e.isFile();
      if (e.isSymbolicLink()) {
        const st = await fs.promises.stat(childAbs).catch(() => undefined);
        isDir = Boolean(st?.isDirectory());
        isFile = Boolean(st?.isFile());
      }
      if (isDir && depth < maxDepth) await visit(childAbs, childRel, depth + 1);
      else if (isFile && keep(childRel)) out.push(childRel);
    }
  };
  await visit(dir, '', 1);
  return out;
}

function hasExtension(file: string, extensions: readonly string[]): boolean {
  return extensions.includes(path.extname(file).toLowerCase());
}

function mediaItem(id: string, file: string): BatchItem {
  return isVideoPath(file) ? { id, video: file } : { id, image: file };
}

/** Options of {@link listItems}. */
export interface ListItemsOptions {
  /** Extensions a folder is listed with (lower case, with the dot). Default {@link MEDIA_EXTENSIONS}. */
  extensions?: readonly string[];
  /** Base for relative inputs. Default: the current directory. */
  cwd?: string;
}

/**
 * Turns `plm batch` inputs into items, in order, ids unique:
 * - a folder: its files with a media extension, recursively, sorted; id = the path below the folder;
 * - a glob (`photos/**\/*.jpg`, quote it from the shell): id = the path below the glob's literal folder;
 * - a `.jsonl` / `.ndjson` manifest: one `{ "id", "image" | "video", "prompt"?, "maxTokens"?, "meta"? }`
 *   per line, paths relative to the manifest's folder;
 * - a media file: id = the path as given.
 *
 * Media paths in the items are absolute. Missing inputs, bad manifest lines and duplicate ids throw
 * `PlmError` (`ERR_FILE_NOT_FOUND`, `ERR_CORRUPT_FILE`, `ERR_INVALID_ARGUMENT`) naming the input and line.
 *
 * @example
 * ```ts
 * const items = await listItems(['photos/', 'extra/*.png', 'questions.jsonl']);
 * ```
 */
export async function listItems(inputs: readonly string[], options: ListItemsOptions = {}): Promise<BatchItem[]> {
  const cwd = options.cwd ?? process.cwd();
  const extensions = (options.extensions ?? MEDIA_EXTENSIONS).map((e) => e.toLowerCase());
  const items: BatchItem[] = [];
  const from = new Map<string, string>();
  const add = (item: BatchItem, input: string): void => {
    const prev = from.get(item.id);
    if (prev !== undefined) {
      throw new PlmError('ERR_INVALID_ARGUMENT', `the id "${item.id}" comes from both ${prev} and ${input}: ids must be unique (list the inputs in one manifest with ids of your own)`);
    }
    from.set(item.id, input);
    items.push(item);
  };
  for (const input of inputs) {
    const abs = path.resolve(cwd, input);
    const st = fs.existsSync(abs) ? fs.statSync(abs) : undefined;
    if (st?.isDirectory()) {
      for (const rel of await walk(abs, Infinity, (r) => hasExtension(r, extensions))) add(mediaItem(rel, path.join(abs, rel)), input);
    } else if (st?.isFile() && /\.(jsonl|ndjson)$/i.test(abs)) {
      for (const item of await readManifest(abs)) add(item, `${input}`);
    } else if (st?.isFile()) {
      add(mediaItem(input.split(path.sep).join('/'), abs), input);
    } else if (isGlob(input)) {
      const pattern = input.split(path.sep).join('/');
      const { base, rest } = globBase(pattern);
      const baseAbs = path.resolve(cwd, base);
      if (!fs.existsSync(baseAbs) || !fs.statSync(baseAbs).isDirectory()) {
        throw new PlmError('ERR_FILE_NOT_FOUND', `the folder ${baseAbs} of the glob "${input}" does not exist`);
      }
      const re = globToRegExp(rest);
      const depth = rest.includes('**') ? Infinity : rest.split('/').length;
      for (const rel of await walk(baseAbs, depth, (r) => re.test(r))) add(mediaItem(rel, path.join(baseAbs, rel)), input);
    } else {
      throw new PlmError('ERR_FILE_NOT_FOUND', `${abs} does not exist: give a folder, a glob (quoted), a .jsonl manifest or a media file`);
    }
  }
  return items;
}

/**
 * Reads a JSONL manifest: one `{ "id", "image" | "video", "prompt"?, "maxTokens"?, "meta"? }` per line
 * (blank lines skipped), media paths relative to the manifest's folder. A bad line throws a PlmError
 * naming the file and line.
 *
 * @example
 * ```ts
 * const items = await readManifest('questions.jsonl');
 * ```
 */
export async function readManifest(file: string): Promise<BatchItem[]> {
  const abs = path.resolve(file);
  const dir = path.dirname(abs);
  const items: BatchItem[] = [];
  let lineNo = 0;
  for await (const line of readLines(abs)) {
    lineNo++;
    if (line.trim() === '') continue;
    const where = `${abs}:${lineNo}`;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new PlmError('ERR_CORRUPT_FILE', `${where} is not JSON (${(e as Error).message}); each line must be one object like {"id": "a", "image": "a.jpg"}`);
    }
    items.push(checkItem(v, where, dir));
  }
  return items;
}

/** Validates one item (from a manifest, a queue job or the API); media paths become absolute. */
export function checkItem(v: unknown, where: string, baseDir: string): BatchItem {
  const bad = (why: string): never => {
    throw new PlmError('ERR_INVALID_ARGUMENT', `${where}: ${why}`);
  };
  if (typeof v !== 'object' || v === null || Array.isArray(v)) bad('an item must be an object like {"id": "a", "image": "a.jpg"}');
  const o = v as Record<string, unknown>;
  const id = typeof o.id === 'number' && Number.isFinite(o.id) ? String(o.id) : o.id;
  if (typeof id !== 'string' || id.length === 0) bad('"id" must be a non-empty string');
  const hasImage = o.image !== undefined;
  const hasVideo = o.video !== undefined;
  if (hasImage === hasVideo) bad(`item "${String(id)}" needs exactly one of "image" and "video"`);
  const media = hasImage ? o.image : o.video;
  if (typeof media !== 'string' || media.length === 0) bad(`item "${String(id)}": "${hasImage ? 'image' : 'video'}" must be a file path`);
  if (o.prompt !== undefined && typeof o.prompt !== 'string') bad(`item "${String(id)}": "prompt" must be a string`);
  if (o.maxTokens !== undefined && !(typeof o.maxTokens === 'number' && Number.isInteger(o.maxTokens) && o.maxTokens >= 1)) {
    bad(`item "${String(id)}": "maxTokens" must be an integer >= 1`);
  }
  const file = path.resolve(baseDir, media as string);
  return {
    id: id as string,
    ...(hasImage ? { image: file } : { video: file }),
    ...(o.prompt !== undefined ? { prompt: o.prompt as string } : {}),
    ...(o.maxTokens !== undefined ? { maxTokens: o.maxTokens as number } : {}),
    ...(o.meta !== undefined ? { meta: o.meta } : {}),
  };
}

/** The lines of a file without their '\n' (a last line without one is returned too). */
async function* readLines(file: string): AsyncGenerator<string> {
  let rest = '';
  for await (const chunk of fs.createReadStream(file, { encoding: 'utf8', highWaterMark: 1 << 20 })) {
    rest += chunk as string;
    let nl: number;
    let from = 0;
    while ((nl = rest.indexOf('\n', from)) >= 0) {
      yield rest.slice(from, nl);
      from = nl + 1;
    }
    rest = rest.slice(from);
  }
  if (rest.length > 0) yield rest;
}

// ---------------------------------------------------------------------------------------------
// Resumable output
// ---------------------------------------------------------------------------------------------

/** What {@link BatchOutput.open} found in an existing output file. */
export interface BatchOutputScan {
  /** Ids that have a record (result or error). */
  done: Set<string>;
  /** Of those, ids whose record is an error. */
  failed: Set<string>;
  /** Bytes of a torn last line that were cut off (a write interrupted by a crash). */
  truncatedBytes: number;
  /** Complete lines that are not a JSON record with an id (ignored; their items are run again). */
  badLines: number;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Cuts a last line that has no '\n' (a torn write) off `file`; returns the bytes removed. */
function cutTornTail(file: string): number {
  const fd = fs.openSync(file, 'r+');
  try {
    const size = fs.fstatSync(fd).size;
    if (size === 0) return 0;
    const buf = Buffer.alloc(64 * 1024);
    let end = size;
    while (end > 0) {
      const start = Math.max(0, end - buf.length);
      const n = fs.readSync(fd, buf, 0, end - start, start);
      const nl = buf.subarray(0, n).lastIndexOf(0x0a);
      if (nl >= 0) {
        const keep = start + nl + 1;
        if (keep < size) fs.ftruncateSync(fd, keep);
        return size - keep;
      }
      end = start;
    }
    fs.ftruncateSync(fd, 0);
    return size;
  } finally {
    fs.closeSync(fd);
  }
}

/**
 * A JSONL output that survives kills: it is opened O_APPEND and every record goes out as one `write` of
 * one whole line; {@link BatchOutput.open} cuts a torn last line off and reads the ids already done.
 * A lock file (`FILE.lock`, with the writer's pid and host) keeps two runs from writing one file; a lock
 * left by a killed process on this host is taken over.
 */
export class BatchOutput {
  private fd: number;
  private readonly lockFile: string;

  private constructor(
    /** The output file (absolute). */
    readonly file: string,
    /** What was in the file when it was opened (`done` grows with every {@link append}). */
    readonly scan: BatchOutputScan,
    fd: number,
    lockFile: string,
  ) {
    this.fd = fd;
    this.lockFile = lockFile;
  }

  /**
   * Opens (creating it and its folder) `file` for appending, after taking its lock, cutting a torn last
   * line and reading the ids it has.
   *
   * @throws PlmError ERR_INVALID_ARGUMENT when another live process holds the lock.
   * @example
   * ```ts
   * const out = await BatchOutput.open('captions.jsonl');
   * if (!out.scan.done.has('a.jpg')) out.append(record);
   * out.close();
   * ```
   */
  static async open(file: string): Promise<BatchOutput> {
    const abs = path.resolve(file);
    fs.mkdirSync(path.dirname(abs), { recursive: true });
    const lockFile = `${abs}.lock`;
    takeLock(lockFile, abs);
    try {
      const scan: BatchOutputScan = { done: new Set(), failed: new Set(), truncatedBytes: 0, badLines: 0 };
      if (fs.existsSync(abs)) {
        scan.truncatedBytes = cutTornTail(abs);
        for await (const line of readLines(abs)) {
          if (line.trim() === '') continue;
          let rec: unknown;
          try {
            rec = JSON.parse(line);
          } catch {
            scan.badLines++;
            continue;
          }
          const id = (rec as { id?: unknown } | null)?.id;
          if (typeof id !== 'string') {
            scan.badLines++;
            continue;
          }
          scan.done.add(id);
          if ((rec as { error?: unknown }).error !== undefined) scan.failed.add(id);
          else scan.failed.delete(id);
        }
      }
      const fd = fs.openSync(abs, 'a');
      return new BatchOutput(abs, scan, fd, lockFile);
    } catch (e) {
      fs.rmSync(lockFile, { force: true });
      throw e;
    }
  }

  /** True when `id` has a record in the file. */
  has(id: string): boolean {
    return this.scan.done.has(id);
  }

  /** Appends one record as one line with one `write` (retried for the rest only if the kernel wrote part of it). */
  append(record: BatchRecord): void {
    if (this.fd < 0) throw new PlmError('ERR_INVALID_ARGUMENT', `${this.file} is closed`);
    const buf = Buffer.from(JSON.stringify(record) + '\n', 'utf8');
    let off = 0;
    while (off < buf.length) off += fs.writeSync(this.fd, buf, off, buf.length - off);
    this.scan.done.add(record.id);
    if (record.error) this.scan.failed.add(record.id);
  }

  /** Flushes to disk (fsync) without closing. */
  sync(): void {
    if (this.fd >= 0) fs.fsyncSync(this.fd);
  }

  /** Closes the file and releases the lock. Safe to call twice. */
  close(): void {
    if (this.fd < 0) return;
    try {
      fs.fsyncSync(this.fd);
    } catch {
      /* e.g. a pipe: nothing to flush */
    }
    fs.closeSync(this.fd);
    this.fd = -1;
    fs.rmSync(this.lockFile, { force: true });
  }
}

function takeLock(lockFile: string, file: string): void {
  const me = JSON.stringify({ pid: process.pid, host: os.hostname() });
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      fs.writeFileSync(lockFile, me, { flag: 'wx' });
      return;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw wrapNativeError(e, 'ERR_FILE_READ');
    }
    let holder: { pid?: unknown; host?: unknown } = {};
    try {
      holder = JSON.parse(fs.readFileSync(lockFile, 'utf8')) as typeof holder;
    } catch {
      /* empty or torn lock: treated as stale */
    }
    const pid = typeof holder.pid === 'number' ? holder.pid : -1;
    const sameHost = holder.host === os.hostname();
    if (pid > 0 && (!sameHost || pidAlive(pid))) {
      throw new PlmError(
        'ERR_INVALID_ARGUMENT',
        `${file} is being written by another plm batch (pid ${pid} on ${String(holder.host)}); wait for it, or delete ${lockFile} if that process is gone`,
      );
    }
    fs.rmSync(lockFile, { force: true }); // stale: its writer was killed
  }
  throw new PlmError('ERR_INVALID_ARGUMENT', `could not take the lock ${lockFile}; delete it if no plm batch writes ${file}`);
}

// ---------------------------------------------------------------------------------------------
// Running items
// ---------------------------------------------------------------------------------------------

/** A FIFO counting semaphore. */
class Slots {
  private free: number;
  private readonly waiting: Array<() => void> = [];
  constructor(n: number) {
    this.free = n;
  }
  async acquire(): Promise<() => void> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((r) => this.waiting.push(r));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next) next();
      else this.free++;
    };
  }
}

/** The identity of a model as records carry it. */
export function modelInfo(model: BatchModel): BatchModelInfo {
  return {
    name: path.basename(model.dir),
    path: model.dir,
    backend: model.backend,
    dtype: model.config.dtype ?? null,
    quantization: model.quantization.kind,
  };
}

/** The concurrency a run uses when none is given: the sequences the engine runs at once (`stats().maxSequences`), else 4. */
export function defaultConcurrency(model: BatchModel): number {
  const s = typeof model.stats === 'function' ? model.stats().maxSequences : undefined;
  return typeof s === 'number' && Number.isInteger(s) && s >= 1 ? s : DEFAULT_CONCURRENCY;
}

/** The generation settings of `o` that are set. */
export function pickParams(o: BatchParams): BatchParams {
  const p: BatchParams = {};
  for (const k of ['maxTokens', 'maxTiles', 'frames', 'temperature', 'topP', 'topK', 'seed'] as const) {
    if (o[k] !== undefined) p[k] = o[k];
  }
  return p;
}

/** What one item is run with: the run's prompt and generation settings (an item's own prompt and maxTokens win). */
export interface RunSettings extends BatchParams {
  prompt?: string;
}

/**
 * Runs single items through a model: preprocessing first (unbounded here: callers bound how many items
 * are in flight), then generation in at most `concurrency` slots. Input errors become error records;
 * {@link FATAL_CODES} are thrown.
 */
export class ItemRunner {
  private readonly slots: Slots;
  private readonly info: BatchModelInfo;

  /**
   * @param model the loaded model.
   * @param options `concurrency`: generation slots; `worker`: set as `worker` in every record.
   */
  constructor(
    private readonly model: BatchModel,
    private readonly options: { concurrency: number; worker?: string },
  ) {
    this.slots = new Slots(options.concurrency);
    this.info = modelInfo(model);
  }

  /** Runs one item; resolves with its record (a result or an input error), rejects with a fatal PlmError. */
  async run(item: BatchItem, o: RunSettings, signal?: AbortSignal): Promise<BatchRecord> {
    const t0 = performance.now();
    const video = item.video !== undefined;
    const prompt = item.prompt ?? o.prompt ?? (video ? 'Describe the video.' : 'Describe the image.');
    const params = pickParams({ ...o, ...(item.maxTokens !== undefined ? { maxTokens: item.maxTokens } : {}) });
    const base = {
      id: item.id,
      ...(video ? { video: item.video } : { image: item.image }),
      prompt,
    };
    const tail = {
      params,
      model: this.info,
      ...(item.meta !== undefined ? { meta: item.meta } : {}),
      ...(this.options.worker !== undefined ? { worker: this.options.worker } : {}),
    };
    const sampling: GenerateOptions = {
      maxTokens: params.maxTokens,
      temperature: params.temperature,
      topP: params.topP,
      topK: params.topK,
      seed: params.seed,
      signal,
    };
    try {
      if (signal?.aborted) throw cancelled();
      const built: BuiltPrompt = await this.model.buildInput({
        prompt,
        ...(video ? { videos: [item.video as string] } : { images: [item.image as string] }),
        maxNumTiles: params.maxTiles,
        numFrames: params.frames,
        ...sampling,
      });
      const t1 = performance.now();
      const release = await this.slots.acquire();
      const t2 = performance.now();
      let r: CompleteResult;
      try {
        if (signal?.aborted) throw cancelled();
        r = await this.model.complete({
          inputIds: built.inputIds,
          ...(built.pixelValues ? { pixelValues: built.pixelValues, numTiles: built.numTiles } : {}),
          ...sampling,
        });
      } finally {
        release();
      }
      if (r.finishReason === 'cancelled') throw cancelled();
      const t = r.timings;
      return {
        ...base,
        text: r.text,
        finishReason: r.finishReason,
        promptTokens: t.promptTokens,
        completionTokens: r.tokenIds.length,
        numTiles: built.numTiles,
        ...tail,
        timings: {
          preprocessMs: round2(t1 - t0),
          waitMs: round2(t2 - t1),
          visionMs: round2(t.visionMs),
          prefillMs: round2(t.prefillMs),
          decodeMs: round2(t.decodeMs),
          decodeTokensPerSecond: round2(t.decodeTokensPerSecond),
          totalMs: round2(performance.now() - t0),
        },
      };
    } catch (e) {
      const err = isPlmError(e) ? e : wrapNativeError(e);
      if (FATAL_CODES.has(err.code)) throw err;
      return { ...base, error: { code: err.code, message: err.message }, ...tail };
    }
  }
}

function toItem(raw: BatchItem | string, cwd: string, index: number): BatchItem {
  if (typeof raw === 'string') {
    const file = path.resolve(cwd, raw);
    return mediaItem(raw, file);
  }
  return checkItem(raw, `item ${index}`, cwd);
}

/**
 * Runs many images or videos through one model and yields one record per item as it finishes
 * (completion order): `{ id, image | video, prompt, text, finishReason, promptTokens, completionTokens,
 * numTiles, params, model, timings }`, or `{ id, ..., error: { code, message } }` for an item that failed
 * (missing file, undecodable image, prompt too long for the context, ...). Failures never stop the run;
 * only engine failures ({@link FATAL_CODES}) reject the iteration, after the running items settle.
 *
 * Up to `concurrency` items generate at once (concurrent `complete()` calls) while the next `prefetch`
 * items are decoded and preprocessed. At temperature 0 the records do not depend on either.
 *
 * @param model a loaded {@link PerceptionLM}.
 * @param items file paths (id = the path as given) or {@link BatchItem}s; an array, iterable or async
 *   iterable. Ids must be unique.
 * @param options `prompt` ('Describe the image.' / 'Describe the video.'), `maxTokens` (256), `maxTiles`,
 *   `frames`, `temperature`, `topP`, `topK`, `seed` (model defaults), `concurrency` (the model's
 *   `sequences`, else 4), `prefetch` (2), `output` (a JSONL file made resumable: done ids are skipped),
 *   `cwd`, `signal`, `onProgress`.
 * @example
 * ```ts
 * import { batch, loadModel } from 'perception-lm';
 * const model = await loadModel('/models/Perception-LM-1B');
 * for await (const r of batch(model, ['a.jpg', { id: 'b', image: 'b.png', prompt: 'How many cats?' }], { maxTokens: 64 })) {
 *   console.log(r.id, r.error ? r.error.code : r.text);
 * }
 * ```
 */
export function batch(
  model: BatchModel,
  items: Iterable<BatchItem | string> | AsyncIterable<BatchItem | string>,
  options: BatchOptions = {},
): AsyncIterable<BatchRecord> {
  return { [Symbol.asyncIterator]: () => runBatch(model, items, options) };
}

async function* runBatch(
  model: BatchModel,
  items: Iterable<BatchItem | string> | AsyncIterable<BatchItem | string>,
  options: BatchOptions,
): AsyncGenerator<BatchRecord> {
  const concurrency = posInt('concurrency', options.concurrency ?? defaultConcurrency(model), 1);
  const prefetch = posInt('prefetch', options.prefetch ?? DEFAULT_PREFETCH, 0);
  if (options.signal?.aborted) throw cancelled();
  if (!model.tokenizer) throw new PlmError('ERR_FILE_NOT_FOUND', `${path.join(model.dir, 'tokenizer.json')} does not exist: batch prompts need the tokenizer`);
  const cwd = options.cwd ?? process.cwd();
  const out = typeof options.output === 'string' ? await BatchOutput.open(options.output) : options.output;
  const runner = new ItemRunner(model, { worker: options.worker, concurrency });
  const settings: RunSettings = { ...pickParams(options), prompt: options.prompt };
  const inner = new AbortController();
  const onAbort = (): void => inner.abort();
  options.signal?.addEventListener('abort', onAbort);
  const total = Array.isArray(items) ? items.length : undefined;
  const started = performance.now();
  const stats = { done: 0, failed: 0, skipped: 0 };
  const inFlight = new Set<Promise<void>>();
  const ready: BatchRecord[] = [];
  let fatal: PlmError | undefined;
  const report = (): void => {
    if (!options.onProgress) return;
    const elapsedMs = performance.now() - started;
    const perMs = stats.done > 0 ? stats.done / elapsedMs : 0;
    const left = total !== undefined ? total - stats.skipped - stats.done : undefined;
    options.onProgress({
      ...(total !== undefined ? { total } : {}),
      ...stats,
      inFlight: inFlight.size,
      elapsedMs,
      itemsPerHour: perMs * 3_600_000,
      ...(left !== undefined && perMs > 0 ? { etaMs: left / perMs } : {}),
    });
  };
  const seen = new Set<string>();
  let index = 0;
  try {
    for await (const raw of items) {
      if (fatal || inner.signal.aborted) break;
      const item = toItem(raw, cwd, index++);
      if (seen.has(item.id)) throw new PlmError('ERR_INVALID_ARGUMENT', `the id "${item.id}" appears twice: ids must be unique`);
      seen.add(item.id);
      if (out?.has(item.id)) {
        stats.skipped++;
        report();
        continue;
      }
      while (inFlight.size >= concurrency + prefetch && !fatal) {
        await Promise.race(inFlight);
        while (ready.length > 0) yield ready.shift() as BatchRecord;
      }
      if (fatal || inner.signal.aborted) break;
      const job: Promise<void> = runner.run(item, settings, inner.signal).then(
        (rec) => {
          out?.append(rec);
          stats.done++;
          if (rec.error) stats.failed++;
          ready.push(rec);
        },
        (e: unknown) => {
          const err = isPlmError(e) ? e : wrapNativeError(e);
          if (!fatal && !(err.code === 'ERR_CANCELLED' && inner.signal.aborted)) {
            fatal = err;
            inner.abort();
          }
        },
      );
      const tracked = job.finally(() => {
        inFlight.delete(tracked);
        report();
      });
      inFlight.add(tracked);
      report();
      while (ready.length > 0) yield ready.shift() as BatchRecord;
    }
    while (inFlight.size > 0) {
      await Promise.race(inFlight);
      while (ready.length > 0) yield ready.shift() as BatchRecord;
    }
    while (ready.length > 0) yield ready.shift() as BatchRecord;
    if (fatal) throw fatal;
    if (options.signal?.aborted) throw cancelled();
  } finally {
    if (inFlight.size > 0) {
      inner.abort();
      await Promise.allSettled([...inFlight]);
    }
    options.signal?.removeEventListener('abort', onAbort);
    if (typeof options.output === 'string') out?.close();
  }
}
