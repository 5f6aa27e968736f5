/**
 * Where models live on disk, and how a name such as `facebook/Perception-LM-1B` becomes a checkpoint folder.
 *
 * Two stores are read:
 * - **pulled**: the copies `plm pull` / {@link pull} makes, `$PLM_MODELS_DIR/owner--name` (default
 *   `~/.cache/perception-lm/models/owner--name`). Plain folders, owned by this package: `plm rm` deletes them.
 * - **hf-cache**: the Hugging Face hub cache that Python's `huggingface_hub` / transformers and
 *   transformers.js fill: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; a repo is
 *   `models--owner--name/` with `refs/main` (a commit hash), `snapshots/<hash>/` (the files, usually symlinks)
 *   and `blobs/` (the content). The native loader accepts a snapshot's symlinks into its own `blobs/`.
 *   This package never writes or deletes there.
 *
 * A path that exists as a directory always wins over a name.
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { PlmError } from './errors';
import { packageRoot } from './native';
import { QUANTIZED_FILE_SUFFIX } from './quantize';

/** Which store a model came from. `path`: the argument was a folder. */
export type ModelStoreSource = 'path' | 'pulled' | 'hf-cache';

/** A model argument resolved to a folder by {@link resolveModel}. */
export interface ResolvedModel {
  /** The checkpoint folder (absolute; for the HF cache, the snapshot folder). */
  dir: string;
  source: ModelStoreSource;
  /** `owner/name` when it came from a store. */
  name?: string;
  /** The HF cache snapshot's commit hash. */
  revision?: string;
}

/** One entry of {@link listModels}. */
export interface StoredModel {
  /** `owner/name`. */
  name: string;
  source: Exclude<ModelStoreSource, 'path'>;
  /** The checkpoint folder (for the HF cache, the snapshot that `refs/main` names). */
  dir: string;
  /** Bytes on disk of the files the folder holds (symlinks followed; `.part` files of an unfinished pull included). */
  bytes: number;
  /** Quantized files (`*.plmq.safetensors`, written by `plm quantize`) in the folder, by file name. */
  quantized: string[];
  /** False when the folder lacks config.json or every *.safetensors (an unfinished pull, a partial HF download). */
  complete: boolean;
  /** The HF cache snapshot's commit hash. */
  revision?: string;
}

const NAME_RE = /^[A-Za-z0-9][\w.-]*\/[A-Za-z0-9][\w.-]*$/;

/** True when `value` has the form of a hub repo id, `owner/name` (it may still be a relative path). */
export function isModelName(value: string): boolean {
  return NAME_RE.test(value) && !value.includes('..');
}

/** The folder of `plm pull` copies: `$PLM_MODELS_DIR`, else `~/.cache/perception-lm/models`. */
export function pulledModelsDir(): string {
  return process.env.PLM_MODELS_DIR || path.join(os.homedir(), '.cache', 'perception-lm', 'models');
}

/** The Hugging Face hub cache: `$HF_HUB_CACHE`, else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`. */
export function hfHubCacheDir(): string {
  if (process.env.HF_HUB_CACHE) return process.env.HF_HUB_CACHE;
  if (process.env.HF_HOME) return path.join(process.env.HF_HOME, 'hub');
  return path.join(os.homedir(), '.cache', 'huggingface', 'hub');
}

/**
 * The directory of the small random-weight test model, `models/plm-tiny-random`: in a git checkout only (the npm
 * package does not ship it; its default model is {@link defaultModelDir}). For smoke tests and benchmarks.
 */
export function bundledModelDir(): string {
  return path.join(packageRoot(), 'models', 'plm-tiny-random');
}

/**
 * The model `plm` uses when no `--model` is given: `models/plm-tiny`, a 19 MB PerceptionLM trained on a
 * synthetic world of coloured shapes (training/README.md), so that a fresh install shows real answers.
 * It knows nothing outside that world (the CLI says so on stderr on every run that uses it); use a
 * `facebook/Perception-LM-*` checkpoint for real images. Falls back to {@link bundledModelDir} in a checkout
 * without the trained model.
 *
 * @example
 * ```ts
 * const model = await loadModel(defaultModelDir());
 * const r = await model.complete({ prompt: 'Describe the image.', images: ['node_modules/perception-lm/samples/scene1.png'] });
 * ```
 */
export function defaultModelDir(): string {
  const trained = path.join(packageRoot(), 'models', 'plm-tiny');
  return fs.existsSync(path.join(trained, 'config.json')) ? trained : bundledModelDir();
}

/** Where `plm pull owner/name` puts a repo: `pulledModelsDir()/owner--name`. */
export function pulledModelDir(name: string): string {
  return path.join(pulledModelsDir(), name.replace(/\//g, '--'));
}

function isDir(p: string): boolean {
  try {
    return fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

function isFile(p: string): boolean {
  try {
    return fs.statSync(p).isFile();
  } catch {
    return false;
  }
}

function hasCheckpoint(dir: string): boolean {
  if (!isFile(path.join(dir, 'config.json'))) return false;
  try {
    return fs.readdirSync(dir).some((f) => f.endsWith('.safetensors') && !f.endsWith(QUANTIZED_FILE_SUFFIX) && isFile(path.join(dir, f)));
  } catch {
    return false;
  }
}

/**
 * The snapshot folder of `name` in the HF cache: the one `refs/main` names, else (no refs, as after a download
 * by commit hash) the only snapshot. Undefined when the repo is not cached.
 */
export function hfCacheSnapshot(name: string, cacheDir = hfHubCacheDir()): { dir: string; revision: string } | undefined {
  const repo = path.join(cacheDir, `models--${name.replace(/\//g, '--')}`);
  const snapshots = path.join(repo, 'snapshots');
  if (!isDir(snapshots)) return undefined;
  let revision: string | undefined;
  try {
    revision = fs.readFileSync(path.join(repo, 'refs', 'main'), 'utf8').trim();
  } catch {
    /* no refs/main */
  }
  if (revision && /^[\w.-]+$/.test(revision) && isDir(path.join(snapshots, revision))) {
    return { dir: path.join(snapshots, revision), revision };
  }
  const all = fs.readdirSync(snapshots).filter((d) => /^[\w.-]+$/.test(d) && isDir(path.join(snapshots, d)));
  return all.length === 1 ? { dir: path.join(snapshots, all[0]), revision: all[0] } : undefined;
}

/**
 * Resolves a model argument (`--model`, `loadModel`'s first argument) to a checkpoint folder:
 * 1. a path that exists as a directory: that folder, whatever it holds (the loader checks it);
 * 2. `owner/name`: the `plm pull` copy (`$PLM_MODELS_DIR/owner--name`) when it holds a checkpoint;
 * 3. `owner/name`: the Hugging Face cache's snapshot (`refs/main`) when it holds a checkpoint.
 *
 * @param value a folder path or a hub repo id.
 * @returns `{ dir, source, name?, revision? }`.
 * @throws PlmError ERR_FILE_NOT_FOUND: no such folder, or a name found in neither store (the message says
 *   `plm pull owner/name`), or only an incomplete copy of it (the message says which and how to finish it).
 * @example
 * ```ts
 * const { dir, source } = resolveModel('facebook/Perception-LM-1B'); // e.g. source 'hf-cache'
 * const model = await loadModel(dir);
 * ```
 */
export function resolveModel(value: string): ResolvedModel {
  if (typeof value !== 'string' || value.length === 0) {
    throw new PlmError('ERR_INVALID_ARGUMENT', 'the model must be a folder path or a hub repo id (owner/name)');
  }
  const abs = path.resolve(value);
  if (isDir(abs)) return { dir: abs, source: 'path' };
  if (!isModelName(value)) {
    throw new PlmError(
      'ERR_FILE_NOT_FOUND',
      `${abs} is not a directory: pass the folder holding config.json and the *.safetensors files, or a hub repo id (owner/name) that plm pull downloaded`,
    );
  }
  const pulled = pulledModelDir(value);
  if (hasCheckpoint(pulled)) return { dir: pulled, source: 'pulled', name: value };
  const snap = hfCacheSnapshot(value);
  if (snap && hasCheckpoint(snap.dir)) return { dir: snap.dir, source: 'hf-cache', name: value, revision: snap.revision };
  const partial = isDir(pulled) ? pulled : snap?.dir;
  if (partial) {
    throw new PlmError(
      'ERR_FILE_NOT_FOUND',
      `${value}: ${partial} has no complete checkpoint (config.json and *.safetensors); finish the download with: plm pull ${value}`,
    );
  }
  throw new PlmError(
    'ERR_FILE_NOT_FOUND',
    `${value} is neither a folder nor a downloaded model (looked in ${pulled} and the Hugging Face cache ${hfHubCacheDir()}); ` +
      `download it with: plm pull ${value}`,
  );
}

function folderBytes(dir: string): number {
  let total = 0;
  const walk = (d: string, depth: number): void => {
    let entries: fs.Dirent[];
    try {
      entries = fs.readdirSync(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = path.join(d, e.name);
      try {
        const st = fs.statSync(p);
        if (st.isFile()) total += st.size;
        else if (st.isDirectory() && !e.isSymbolicLink() && depth < 8) walk(p, depth + 1);
      } catch {
        /* dangling symlink */
      }
    }
  };
  walk(dir, 0);
  return total;
}

function quantizedFiles(dir: string): string[] {
  try {
    return fs.readdirSync(dir).filter((f) => f.endsWith(QUANTIZED_FILE_SUFFIX)).sort();
  } catch {
    return [];
  }
}

function describeFolder(name: string, source: StoredModel['source'], dir: string, revision?: string): StoredModel {
  return { name, source, dir, bytes: folderBytes(dir), quantized: quantizedFiles(dir), complete: hasCheckpoint(dir), ...(revision ? { revision } : {}) };
}

/**
 * Every model in the two stores: the `plm pull` copies, then the Hugging Face cache's model repos (both sorted
 * by name). A name in both appears twice; {@link resolveModel} takes the pulled copy.
 *
 * @param options `modelsDir` (default {@link pulledModelsDir}), `hfCacheDir` (default {@link hfHubCacheDir}).
 * @example
 * ```ts
 * for (const m of listModels()) console.log(m.name, m.source, m.bytes, m.dir);
 * ```
 */
export function listModels(options: { modelsDir?: string; hfCacheDir?: string } = {}): StoredModel[] {
  const out: StoredModel[] = [];
  const modelsDir = options.modelsDir ?? pulledModelsDir();
  const cacheDir = options.hfCacheDir ?? hfHubCacheDir();
  const list = (d: string): string[] => {
    try {
      return fs.readdirSync(d).sort();
    } catch {
      return [];
    }
  };
  for (const entry of list(modelsDir)) {
    const dir = path.join(modelsDir, entry);
    const i = entry.indexOf('--');
    if (i <= 0 || !isDir(dir)) continue;
    out.push(describeFolder(`${entry.slice(0, i)}/${entry.slice(i + 2)}`, 'pulled', dir));
  }
  for (const entry of list(cacheDir)) {
    const m = /^models--([^-].*?)--(.+)$/.exec(entry);
    if (!m) continue;
    const name = `${m[1]}/${m[2]}`;
    const snap = hfCacheSnapshot(name, cacheDir);
    if (!snap) continue;
    // Bytes of the snapshot's files (its symlinks resolve into blobs/; other revisions' blobs are not counted).
    out.push(describeFolder(name, 'hf-cache', snap.dir, snap.revision));
  }
  return out;
}

/**
 * Deletes a model that `plm pull` downloaded (the folder `$PLM_MODELS_DIR/owner--name`, quantized files
 * included). The Hugging Face cache is shared with Python and transformers.js and is never touched: a name
 * found only there is refused with a message that says how to remove it with their tools.
 *
 * @returns the removed folder and the bytes it held.
 * @throws PlmError ERR_INVALID_ARGUMENT (not owner/name), ERR_FILE_NOT_FOUND (not pulled; the message names
 *   the HF cache folder when the model is there).
 * @example
 * ```ts
 * const { dir, bytes } = removeModel('facebook/Perception-LM-1B');
 * ```
 */
export function removeModel(name: string, options: { modelsDir?: string; hfCacheDir?: string } = {}): { dir: string; bytes: number } {
  if (!isModelName(name)) {
    throw new PlmError('ERR_INVALID_ARGUMENT', `"${name}" is not a model name; give owner/name as plm list shows it, e.g. plm rm facebook/Perception-LM-1B`);
  }
  const modelsDir = options.modelsDir ?? pulledModelsDir();
  const dir = path.join(modelsDir, name.replace(/\//g, '--'));
  if (isDir(dir)) {
    const bytes = folderBytes(dir);
    fs.rmSync(dir, { recursive: true, force: true });
    return { dir, bytes };
  }
  const snap = hfCacheSnapshot(name, options.hfCacheDir ?? hfHubCacheDir());
  if (snap) {
    const repo = path.dirname(path.dirname(snap.dir));
    throw new PlmError(
      'ERR_FILE_NOT_FOUND',
      `${name} is not a plm pull copy: it is in the Hugging Face cache (${repo}), which Python and transformers.js share, ` +
        `so plm leaves it alone. Remove it with: hf cache delete (huggingface-cli delete-cache), or rm -r ${repo}`,
    );
  }
  throw new PlmError('ERR_FILE_NOT_FOUND', `${name} is not downloaded (no ${dir}); plm list shows the downloaded models`);
}
