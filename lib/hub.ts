/**
 * Downloads checkpoints from the Hugging Face hub (or any server with the same routes):
 * resumable (`.part` files + HTTP Range), sha256-verified where the hub gives one (LFS files),
 * `HF_TOKEN` for gated repos and `HF_ENDPOINT` for mirrors.
 *
 * @example
 * ```ts
 * import { pull } from 'perception-lm/hub';
 * const { dir } = await pull('facebook/Perception-LM-1B', { onProgress: (p) => console.log(p.file, p.fileBytes) });
 * const model = await loadModel(dir);
 * ```
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as path from 'path';
import { PlmError } from './errors';
import { pulledModelDir } from './model_store';

/** Codes of {@link HubError}. */
export type HubErrorCode =
  | 'ERR_HUB_UNAUTHORIZED' // 401 without a (valid) token
  | 'ERR_HUB_GATED' // gated repo: accept the license and set HF_TOKEN
  | 'ERR_HUB_FORBIDDEN' // 403
  | 'ERR_HUB_NOT_FOUND' // 404: repo, revision or file
  | 'ERR_CHECKSUM_MISMATCH' // sha256 of a download differs from the hub's
  | 'ERR_HUB_HTTP' // other HTTP status
  | 'ERR_NETWORK' // connection failed (after retries)
  | 'ERR_INVALID_ARGUMENT';

/** A typed error of {@link pull}: a {@link PlmError} with the HTTP status when there was one. */
export class HubError extends PlmError {
  declare readonly code: HubErrorCode;
  constructor(
    code: HubErrorCode,
    message: string,
    readonly status?: number,
    options?: { cause?: unknown },
  ) {
    super(code, message, options);
    this.name = 'HubError';
  }
}

/** A file listed by the hub API. */
export interface HubFile {
  /** Path inside the repo, e.g. 'model-00001-of-00002.safetensors'. */
  path: string;
  size?: number;
  /** Expected sha256 (hex) for LFS files. */
  sha256?: string;
}

/** Progress of {@link pull}. */
export interface PullProgress {
  file: string;
  /** 1-based index of the file and the number of files. */
  index: number;
  count: number;
  fileBytes: number;
  fileTotal?: number;
  /** Bytes of all files so far / in total (total known when the API gave every size). */
  bytes: number;
  total?: number;
  /** 'download' while bytes flow, 'skip' for a file already complete, 'verify' while hashing, 'done' at the end of a file. */
  stage: 'download' | 'skip' | 'verify' | 'resume' | 'done';
}

/** Options of {@link pull}. */
export interface PullOptions {
  /** Branch, tag or commit. Default 'main'. */
  revision?: string;
  /** Target directory. Default: `$PLM_MODELS_DIR` or `~/.cache/perception-lm/models`, then `owner--name`. */
  dir?: string;
  /** Bearer token. Default: `HF_TOKEN` (or `HUGGING_FACE_HUB_TOKEN`). */
  token?: string;
  /** Hub URL. Default: `HF_ENDPOINT` or 'https://huggingface.co'. */
  endpoint?: string;
  /** Only files whose repo path passes. Default: everything except other weight formats (.bin, .pt, .pth, .gguf, .onnx, .h5, .msgpack, original/) when .safetensors exist. */
  filter?: (file: string) => boolean;
  /** Retries of an interrupted transfer (each resumes where it stopped). Default 5. */
  retries?: number;
  signal?: AbortSignal;
  onProgress?: (p: PullProgress) => void;
}

/** Result of {@link pull}. */
export interface PullResult {
  dir: string;
  revision: string;
  files: Array<HubFile & { verified: boolean; skipped: boolean }>;
}

const OTHER_WEIGHTS = /\.(bin|pt|pth|ckpt|gguf|onnx|h5|msgpack|ot|tflite)$/i;

/** The default download directory of a repo. */
export function defaultPullDir(repo: string): string {
  return pulledModelDir(repo);
}

function encodePath(p: string): string {
  return p.split('/').map(encodeURIComponent).join('/');
}

function httpError(status: number, headers: Headers, what: string, repo: string, hasToken: boolean, bodyText: string): HubError {
  const code = headers.get('x-error-code') ?? '';
  const msg = (headers.get('x-error-message') ?? bodyText.slice(0, 300)).trim();
  const gated = code === 'GatedRepo' || /gated|restricted|accept/i.test(msg);
  if (status === 401 || status === 403) {
    if (gated) {
      return new HubError(
        'ERR_HUB_GATED',
        `${repo} is a gated repo (${what}: HTTP ${status}). Accept its license on https://huggingface.co/${repo} with your account, ` +
          `then create a read token at https://huggingface.co/settings/tokens and set HF_TOKEN=<token>` +
          (hasToken ? ' (the token given was refused: has its account accepted the license?)' : ''),
        status,
      );
    }
    if (status === 401) {
      return new HubError(
        'ERR_HUB_UNAUTHORIZED',
        `${what}: HTTP 401 ${msg}. ${hasToken ? 'The token was refused; check HF_TOKEN.' : 'The repo may be private, gated or missing: set HF_TOKEN=<token> (https://huggingface.co/settings/tokens).'}`,
        status,
      );
    }
    return new HubError('ERR_HUB_FORBIDDEN', `${what}: HTTP 403 ${msg}. Check that HF_TOKEN has read access to ${repo}.`, status);
  }
  if (status === 404) {
    const kind = code === 'RevisionNotFound' ? 'revision' : code === 'EntryNotFound' ? 'file' : 'repo or revision';
    return new HubError('ERR_HUB_NOT_FOUND', `${what}: HTTP 404, ${kind} not found${msg ? ` (${msg})` : ''}. Check the repo name (owner/name) and --revision.`, status);
  }
  return new HubError('ERR_HUB_HTTP', `${what}: HTTP ${status}${msg ? ` ${msg}` : ''}`, status);
}

function authHeaders(token: string | undefined): Record<string, string> {
  return { 'user-agent': 'perception-lm', ...(token ? { authorization: `Bearer ${token}` } : {}) };
}

/**
 * Lists a repo's files at a revision (with sizes and LFS sha256 where the hub gives them).
 */
export async function listFiles(repo: string, opts: { revision?: string; token?: string; endpoint?: string; signal?: AbortSignal } = {}): Promise<{ files: HubFile[]; sha?: string }> {
  const endpoint = (opts.endpoint ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
  const revision = opts.revision ?? 'main';
  const token = opts.token ?? (process.env.HF_TOKEN || process.env.HUGGING_FACE_HUB_TOKEN || undefined);
  const urls = [`${endpoint}/api/models/${repo}/revision/${encodeURIComponent(revision)}?blobs=true`];
  if (revision === 'main') urls.push(`${endpoint}/api/models/${repo}?blobs=true`);
  let last: HubError | undefined;
  for (const url of urls) {
    let r: Response;
    try {
      r = await fetch(url, { headers: authHeaders(token), signal: opts.signal });
    } catch (e) {
      throw new HubError('ERR_NETWORK', `could not reach ${endpoint} (${(e as Error).message}); check the network or HF_ENDPOINT`, undefined, { cause: e });
    }
    if (r.ok) {
      const j = (await r.json()) as { sha?: string; siblings?: Array<{ rfilename?: string; size?: number; lfs?: { sha256?: string; size?: number } }> };
      if (!Array.isArray(j.siblings)) throw new HubError('ERR_HUB_HTTP', `${url} returned no file list (siblings)`);
      const files: HubFile[] = [];
      for (const s of j.siblings) {
        if (typeof s.rfilename !== 'string') continue;
        files.push({
          path: s.rfilename,
          size: typeof s.lfs?.size === 'number' ? s.lfs.size : typeof s.size === 'number' ? s.size : undefined,
          sha256: typeof s.lfs?.sha256 === 'string' ? s.lfs.sha256.toLowerCase() : undefined,
        });
      }
      return { files, sha: j.sha };
    }
    last = httpError(r.status, r.headers, `listing ${repo}@${revision}`, repo, Boolean(token), await r.text().catch(() => ''));
    if (r.status !== 404) throw last;
  }
  throw last as HubError;
}

function safeJoin(dir: string, rel: string): string {
  const out = path.resolve(dir, rel);
  if (out !== dir && !out.startsWith(dir + path.sep)) throw new HubError('ERR_INVALID_ARGUMENT', `refusing to write outside ${dir}: ${rel}`);
  return out;
}

function hashFile(file: string, hash: crypto.Hash): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.createReadStream(file)
      .on('data', (c) => hash.update(c))
      .on('end', () => resolve())
      .on('error', reject);
  });
}

function etagSha(headers: Headers): string | undefined {
  const v = headers.get('x-linked-etag') ?? headers.get('etag');
  if (!v) return undefined;
  const s = v.replace(/^W\//, '').replace(/"/g, '').toLowerCase();
  return /^[0-9a-f]{64}$/.test(s) ? s : undefined;
}

/**
 * Downloads `repo` at `revision` into a directory and resolves with it.
 *
 * @example
 * ```ts
 * const { dir } = await pull('facebook/Perception-LM-1B', { dir: './plm-1b' });
 * ```
 */
export async function pull(repo: string, options: PullOptions = {}): Promise<PullResult> {
  if (!/^[\w.-]+\/[\w.-]+$/.test(repo)) {
    throw new HubError('ERR_INVALID_ARGUMENT', `"${repo}" is not a hub repo id; use owner/name, e.g. facebook/Perception-LM-1B`);
  }
  const endpoint = (options.endpoint ?? process.env.HF_ENDPOINT ?? 'https://huggingface.co').replace(/\/+$/, '');
  const revision = options.revision ?? 'main';
  const token = options.token ?? (process.env.HF_TOKEN || process.env.HUGGING_FACE_HUB_TOKEN || undefined);
  const dir = path.resolve(options.dir ?? defaultPullDir(repo));
  const retries = options.retries ?? 5;
  const { files: listed } = await listFiles(repo, { revision, token, endpoint, signal: options.signal });
  const hasSafetensors = listed.some((f) => f.path.endsWith('.safetensors'));
  const filter = options.filter ?? ((f: string) => !(hasSafetensors && (OTHER_WEIGHTS.test(f) || f.startsWith('original/'))));
  const files = listed.filter((f) => filter(f.path));
  const total = files.every((f) => f.size !== undefined) ? files.reduce((a, f) => a + (f.size ?? 0), 0) : undefined;
  let bytesDone = 0;
  const results: PullResult['files'] = [];
  fs.mkdirSync(dir, { recursive: true });

  for (let i = 0; i < files.length; i++) {
    const f = files[i];
    const target = safeJoin(dir, f.path);
    const part = `${target}.part`;
    fs.mkdirSync(path.dirname(target), { recursive: true });
    const progress = (stage: PullProgress['stage'], fileBytes: number, fileTotal?: number): void =>
      options.onProgress?.({ file: f.path, index: i + 1, count: files.length, fileBytes, fileTotal, bytes: bytesDone + fileBytes, total, stage });

    // Complete already (same size): skip.
    if (f.size !== undefined && fs.existsSync(target) && fs.statSync(target).size === f.size) {
      progress('skip', f.size, f.size);
      bytesDone += f.size;
      results.push({ ...f, verified: false, skipped: true });
      continue;
    }

    const url = `${endpoint}/${repo}/resolve/${encodeURIComponent(revision)}/${encodePath(f.path)}`;
    let expected = f.sha256;
    let attempt = 0;
    let fileTotal = f.size;
    for (;;) {
      options.signal?.throwIfAborted();
      let have = fs.existsSync(part) ? fs.statSync(part).size : 0;
      if (fileTotal !== undefined && have > fileTotal) {
        fs.rmSync(part);
        have = 0;
      }
      const headers: Record<string, string> = authHeaders(token);
      if (have > 0) headers.range = `bytes=${have}-`;
      let r: Response;
      try {
        r = await fetch(url, { headers, redirect: 'follow', signal: options.signal });
      } catch (e) {
        if (options.signal?.aborted) throw e;
        if (++attempt > retries) throw new HubError('ERR_NETWORK', `downloading ${f.path} failed after ${retries} retries: ${(e as Error).message}`, undefined, { cause: e });
        await delay(Math.min(200 * 2 ** attempt, 5000));
        continue;
      }
      if (r.status === 416 && have > 0) {
        // The part file already holds everything (or is bogus): verify below / restart.
        await r.body?.cancel();
        if (fileTotal !== undefined && have === fileTotal) break;
        fs.rmSync(part);
        continue;
      }
      if (!r.ok) {
        const text = await r.text().catch(() => '');
        if (r.status >= 500 && ++attempt <= retries) {
          await delay(Math.min(200 * 2 ** attempt, 5000));
          continue;
        }
        throw httpError(r.status, r.headers, `downloading ${f.path}`, repo, Boolean(token), text);
      }
      expected = expected ?? etagSha(r.headers);
      const resumed = r.status === 206 && have > 0;
      if (!resumed) have = 0;
      const len = Number(r.headers.get('content-length'));
      if (Number.isFinite(len) && r.headers.get('content-length') !== null) fileTotal = fileTotal ?? have + len;
      if (resumed) progress('resume', have, fileTotal);
      const out = fs.createWriteStream(part, { flags: resumed ? 'a' : 'w' });
      let got = have;
      try {
        if (!r.body) throw new Error('empty body');
        const reader = r.body.getReader();
        for (;;) {
          const { done, value } = await reader.read();
          if (done) break;
          if (!out.write(value)) await new Promise<void>((res) => out.once('drain', () => res()));
          got += value.length;
          progress('download', got, fileTotal);
        }
        await new Promise<void>((res, rej) => out.end((e?: Error | null) => (e ? rej(e) : res())));
      } catch (e) {
        await new Promise<void>((res) => out.end(() => res()));
        if (options.signal?.aborted) throw e;
        if (++attempt > retries) throw new HubError('ERR_NETWORK', `downloading ${f.path} was interrupted ${retries + 1} times: ${(e as Error).message}`, undefined, { cause: e });
        await delay(Math.min(200 * 2 ** attempt, 5000));
        continue; // resume from the part file
      }
      if (fileTotal !== undefined && got < fileTotal) {
        if (++attempt > retries) throw new HubError('ERR_NETWORK', `downloading ${f.path} ended early (${got} of ${fileTotal} bytes)`);
        continue;
      }
      break;
    }

    let verified = false;
    if (expected) {
      const size = fs.statSync(part).size;
      progress('verify', size, fileTotal);
      const hash = crypto.createHash('sha256');
      await hashFile(part, hash);
      const actual = hash.digest('hex');
      if (actual !== expected) {
        fs.rmSync(part, { force: true });
        throw new HubError('ERR_CHECKSUM_MISMATCH', `${f.path}: sha256 ${actual} does not match the hub's ${expected}; the partial file was deleted, run the pull again`);
      }
      verified = true;
    }
    fs.renameSync(part, target);
    const size = fs.statSync(target).size;
    progress('done', size, size);
    bytesDone += size;
    results.push({ ...f, size, sha256: expected, verified, skipped: false });
  }
  return { dir, revision, files: results };
}

function delay(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
