/**
 * lib/model_store.ts: `owner/name` resolves to a `plm pull` copy or to a Hugging Face cache snapshot (files as
 * symlinks into blobs/, as huggingface_hub writes them), a folder always wins, and a missing name says
 * `plm pull owner/name`. Also listModels / removeModel, and loadModel('owner/name') end to end.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadModel, PlmError } from '../lib';
import { hfHubCacheDir, listModels, pulledModelsDir, removeModel, resolveModel } from '../lib/model_store';

const root = path.resolve(__dirname, '..');
const TINY = path.join(root, 'models', 'plm-tiny');
let tmp: string;
let hfCache: string;
let modelsDir: string;
const saved: Record<string, string | undefined> = {};
const COMMIT = 'a'.repeat(40);

/** Lays out `src` as huggingface_hub does: blobs named by content hash, snapshot entries as relative symlinks. */
function makeHfCacheRepo(cache: string, name: string, src: string, commit: string, files?: string[]): string {
  const repo = path.join(cache, `models--${name.replace('/', '--')}`);
  const snap = path.join(repo, 'snapshots', commit);
  fs.mkdirSync(path.join(repo, 'blobs'), { recursive: true });
  fs.mkdirSync(snap, { recursive: true });
  fs.mkdirSync(path.join(repo, 'refs'), { recursive: true });
  fs.writeFileSync(path.join(repo, 'refs', 'main'), commit);
  for (const f of files ?? fs.readdirSync(src)) {
    const body = fs.readFileSync(path.join(src, f));
    const blob = crypto.createHash('sha256').update(body).digest('hex');
    fs.writeFileSync(path.join(repo, 'blobs', blob), body);
    fs.symlinkSync(path.join('..', '..', 'blobs', blob), path.join(snap, f));
  }
  return snap;
}

beforeAll(() => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-store-'));
  hfCache = path.join(tmp, 'hf', 'hub');
  modelsDir = path.join(tmp, 'plm-models');
  fs.mkdirSync(modelsDir, { recursive: true });
  for (const k of ['HF_HUB_CACHE', 'HF_HOME', 'PLM_MODELS_DIR']) saved[k] = process.env[k];
  process.env.HF_HUB_CACHE = hfCache;
  process.env.PLM_MODELS_DIR = modelsDir;
  makeHfCacheRepo(hfCache, 'acme/tiny', TINY, COMMIT);
  // A partial download (config only), as transformers' AutoConfig leaves it.
  makeHfCacheRepo(hfCache, 'acme/partial', TINY, 'b'.repeat(40), ['config.json']);
});

afterAll(() => {
  for (const [k, v] of Object.entries(saved)) {
    if (v === undefined) delete process.env[k];
    else process.env[k] = v;
  }
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('the HF cache folder follows HF_HUB_CACHE, then HF_HOME/hub, then ~/.cache/huggingface/hub', () => {
  expect(hfHubCacheDir()).toBe(hfCache);
  delete process.env.HF_HUB_CACHE;
  process.env.HF_HOME = path.join(tmp, 'home-hf');
  try {
    expect(hfHubCacheDir()).toBe(path.join(tmp, 'home-hf', 'hub'));
    delete process.env.HF_HOME;
    expect(hfHubCacheDir()).toBe(path.join(os.homedir(), '.cache', 'huggingface', 'hub'));
  } finally {
    process.env.HF_HUB_CACHE = hfCache;
    delete process.env.HF_HOME;
  }
  expect(pulledModelsDir()).toBe(modelsDir);
});

test('owner/name resolves to the HF cache snapshot that refs/main names', () => {
  const r = resolveModel('acme/tiny');
  expect(r).toEqual({ dir: path.join(hfCache, 'models--acme--tiny', 'snapshots', COMMIT), source: 'hf-cache', name: 'acme/tiny', revision: COMMIT });
});

test('loadModel("owner/name") loads an HF cache snapshot (symlinks into blobs/) and answers as the folder does', async () => {
  const image = path.join(root, 'samples', 'scene1.png');
  const ask = { prompt: 'Describe the image.', images: [image], maxTokens: 24, temperature: 0 };
  const fromCache = await loadModel('acme/tiny', { backend: 'cpu', threads: 1 });
  const direct = await loadModel(TINY, { backend: 'cpu', threads: 1 });
  try {
    expect(fromCache.dir).toBe(path.join(hfCache, 'models--acme--tiny', 'snapshots', COMMIT));
    const a = await fromCache.complete(ask);
    const b = await direct.complete(ask);
    expect(a.text.length).toBeGreaterThan(0);
    expect(a.tokenIds).toEqual(b.tokenIds);
  } finally {
    fromCache.dispose();
    direct.dispose();
  }
}, 120_000);

test('a sharded checkpoint in the HF cache (index and shards all symlinks into blobs/) loads and matches the folder', async () => {
  const src = path.join(__dirname, 'fixtures', 'text', 'tied_llama3_gqa4_hd64_bf16_v5_sharded');
  makeHfCacheRepo(hfCache, 'acme/sharded', src, 'c'.repeat(40));
  const ids = [1, 2, 3, 4]; // the fixture's vocabulary is small
  const a = await loadModel('acme/sharded', { backend: 'cpu', threads: 1 });
  const b = await loadModel(src, { backend: 'cpu', threads: 1 });
  try {
    const x = await a.forward({ inputIds: ids, logitsRows: 'last' });
    const y = await b.forward({ inputIds: ids, logitsRows: 'last' });
    expect(Array.from(x.logits)).toEqual(Array.from(y.logits));
  } finally {
    a.dispose();
    b.dispose();
  }
});

test('a snapshot symlink that leaves the repo (not into its blobs/) is still refused by the loader', async () => {
  const snap = makeHfCacheRepo(hfCache, 'acme/escape', TINY, 'd'.repeat(40));
  fs.unlinkSync(path.join(snap, 'model.safetensors'));
  fs.symlinkSync(path.join(TINY, 'model.safetensors'), path.join(snap, 'model.safetensors'));
  const e = (await loadModel('acme/escape', { backend: 'cpu' }).catch((x: unknown) => x)) as PlmError;
  expect(e).toBeInstanceOf(PlmError);
  expect(e.code).toBe('ERR_CORRUPT_FILE');
  expect(e.message).toMatch(/symlink that leaves the checkpoint folder/);
});

test('a plm pull copy wins over the HF cache, and an existing folder wins over a name', () => {
  const pulled = path.join(modelsDir, 'acme--tiny');
  fs.cpSync(TINY, pulled, { recursive: true });
  try {
    expect(resolveModel('acme/tiny')).toEqual({ dir: pulled, source: 'pulled', name: 'acme/tiny' });
    // A relative folder named like a repo id is a path first.
    const cwd = process.cwd();
    process.chdir(tmp);
    try {
      fs.mkdirSync(path.join(tmp, 'acme', 'tiny'), { recursive: true });
      expect(resolveModel('acme/tiny')).toEqual({ dir: path.join(fs.realpathSync(tmp), 'acme', 'tiny'), source: 'path' });
    } finally {
      process.chdir(cwd);
    }
  } finally {
    fs.rmSync(pulled, { recursive: true, force: true });
  }
});

test('a name that is not downloaded is ERR_FILE_NOT_FOUND saying plm pull owner/name', async () => {
  const e = (await loadModel('acme/nowhere').catch((x: unknown) => x)) as PlmError;
  expect(e).toBeInstanceOf(PlmError);
  expect(e.code).toBe('ERR_FILE_NOT_FOUND');
  expect(e.message).toMatch(/plm pull acme\/nowhere/);
  const partial = (() => {
    try {
      resolveModel('acme/partial');
    } catch (x) {
      return x as PlmError;
    }
    throw new Error('resolved a partial download');
  })();
  expect(partial.code).toBe('ERR_FILE_NOT_FOUND');
  expect(partial.message).toMatch(/no complete checkpoint.*plm pull acme\/partial/);
  // Not a name, not a folder: the old message.
  expect(() => resolveModel('/no/such/dir')).toThrow(/is not a directory/);
});

test('listModels shows pulled copies and HF cache repos with size, folder and quantized files', () => {
  const pulled = path.join(modelsDir, 'acme--copy');
  fs.cpSync(TINY, pulled, { recursive: true });
  fs.writeFileSync(path.join(pulled, 'model.int8.plmq.safetensors'), Buffer.alloc(1000));
  try {
    const list = listModels();
    const copy = list.find((m) => m.name === 'acme/copy');
    expect(copy).toMatchObject({ source: 'pulled', dir: pulled, quantized: ['model.int8.plmq.safetensors'], complete: true });
    const tinyBytes = fs.readdirSync(TINY).reduce((n, f) => n + fs.statSync(path.join(TINY, f)).size, 0);
    expect(copy?.bytes).toBe(tinyBytes + 1000);
    const cached = list.find((m) => m.name === 'acme/tiny');
    expect(cached).toMatchObject({ source: 'hf-cache', revision: COMMIT, quantized: [], complete: true, bytes: tinyBytes });
    expect(list.find((m) => m.name === 'acme/partial')).toMatchObject({ source: 'hf-cache', complete: false });
  } finally {
    fs.rmSync(pulled, { recursive: true, force: true });
  }
});

test('removeModel deletes a pulled copy and refuses the shared HF cache', () => {
  const pulled = path.join(modelsDir, 'acme--gone');
  fs.cpSync(TINY, pulled, { recursive: true });
  const r = removeModel('acme/gone');
  expect(r.dir).toBe(pulled);
  expect(r.bytes).toBeGreaterThan(1_000_000);
  expect(fs.existsSync(pulled)).toBe(false);
  expect(() => removeModel('acme/tiny')).toThrow(/Hugging Face cache.*leaves it alone/);
  expect(fs.existsSync(path.join(hfCache, 'models--acme--tiny', 'snapshots', COMMIT, 'model.safetensors'))).toBe(true);
  expect(() => removeModel('acme/gone')).toThrow(/not downloaded/);
  expect(() => removeModel('../etc')).toThrow(/not a model name/);
});
