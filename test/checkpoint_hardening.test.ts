/**
 * Hostile checkpoint folders (issue 19). Every input here is generated from a real fixture by a mutation
 * rule (header-length changes, truncations, appended tails, offset / shape / dtype rewrites of each tensor,
 * shard names, symlinks, FIFOs, out-of-range config values), none picked by hand to pass. Each must end in a
 * typed PlmError that names the problem, never a crash, a hang or a silent load.
 */
import { execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { loadModel, PlmError } from '../lib';
import { copyCheckpoint } from './helpers/checkpoint';

const FIX = path.join(__dirname, 'fixtures', 'text');
const SINGLE = path.join(FIX, 'untied_norope_gqa3_hd32_f32_v5');
const SHARDED = path.join(FIX, 'tied_llama3_gqa4_hd64_bf16_v5_sharded');
const VISION_CONFIG = path.join(__dirname, '..', 'models', 'plm-tiny', 'config.json');

let scratch: string;
let n = 0;
beforeAll(() => {
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-harden-'));
});
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

async function loadError(dir: string): Promise<PlmError | undefined> {
  try {
    const m = await loadModel(dir, { backend: 'cpu' });
    m.dispose();
    return undefined;
  } catch (e) {
    if (!(e instanceof PlmError)) throw e;
    return e;
  }
}

/** A folder with the single-file checkpoint's config and the given weights bytes. */
function folderWith(weights: Buffer): string {
  const dir = path.join(scratch, `case-${n++}`);
  fs.mkdirSync(dir);
  fs.copyFileSync(path.join(SINGLE, 'config.json'), path.join(dir, 'config.json'));
  fs.writeFileSync(path.join(dir, 'model.safetensors'), weights);
  return dir;
}

const original = fs.readFileSync(path.join(SINGLE, 'model.safetensors'));
const headerLen = Number(original.readBigUInt64LE(0));
type Entry = { dtype: string; shape: number[]; data_offsets: [number, number] };
const header = JSON.parse(original.subarray(8, 8 + headerLen).toString('utf8')) as Record<string, Entry | Record<string, string>>;
const data = original.subarray(8 + headerLen);
const tensorNames = Object.keys(header).filter((k) => k !== '__metadata__');

/** A file with `headerText` as its JSON header (raw text, so invalid numbers can be written) and the original data. */
function withHeader(headerText: string): Buffer {
  const h = Buffer.from(headerText, 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([len, h, data]);
}

/** The header with one tensor's entry replaced by raw JSON text. */
function headerWithEntry(name: string, entryJson: string): string {
  const parts = Object.entries(header).map(([k, v]) => `${JSON.stringify(k)}:${k === name ? entryJson : JSON.stringify(v)}`);
  return `{${parts.join(',')}}`;
}

describe('safetensors: every rule of the format', () => {
  test('control: the re-serialized header (space padded) loads', async () => {
    expect(await loadError(folderWith(withHeader(JSON.stringify(header) + '   ')))).toBeUndefined();
  });

  const lengthDeltas = [-8, -5, -4, -3, -2, -1, 1, 2, 3, 4, 8, 64];
  test.each(lengthDeltas)('declared header length changed by %i', async (delta) => {
    const buf = Buffer.from(original);
    buf.writeBigUInt64LE(BigInt(headerLen + delta));
    const err = await loadError(folderWith(buf));
    expect(err?.code).toBe('ERR_CORRUPT_FILE');
  });

  test.each([0n, 1n, BigInt(original.length - 7), 1n << 32n, (1n << 64n) - 1n])('declared header length %s', async (len) => {
    const buf = Buffer.from(original);
    buf.writeBigUInt64LE(len);
    expect((await loadError(folderWith(buf)))?.code).toBe('ERR_CORRUPT_FILE');
  });

  const cuts = Array.from({ length: 16 }, (_, i) => Math.floor((original.length * i) / 16)).concat([7, 8 + headerLen, original.length - 1]);
  test.each(cuts)('truncated to %i bytes', async (size) => {
    const err = await loadError(folderWith(original.subarray(0, size)));
    expect(['ERR_FILE_READ', 'ERR_CORRUPT_FILE']).toContain(err?.code);
  });

  test.each([1, 7, 4096])('%i bytes appended after the last tensor', async (extra) => {
    const err = await loadError(folderWith(Buffer.concat([original, Buffer.alloc(extra, 0x41)])));
    expect(err?.code).toBe('ERR_CORRUPT_FILE');
    expect(err?.message).toMatch(/follow the last tensor/);
  });

  // Offset mutations, generated per tensor: every rule that a single entry can break.
  const offsetMutations: Record<string, (e: Entry) => string> = {
    'begin + 1': (e) => `[${e.data_offsets[0] + 1},${e.data_offsets[1]}]`,
    'end - 1': (e) => `[${e.data_offsets[0]},${e.data_offsets[1] - 1}]`,
    'end + 1': (e) => `[${e.data_offsets[0]},${e.data_offsets[1] + 1}]`,
    'both + 4': (e) => `[${e.data_offsets[0] + 4},${e.data_offsets[1] + 4}]`,
    swapped: (e) => `[${e.data_offsets[1]},${e.data_offsets[0]}]`,
    'fractional begin': (e) => `[${e.data_offsets[0]}.5,${e.data_offsets[1]}]`,
    'exponent end': (e) => `[${e.data_offsets[0]},${e.data_offsets[1] / 4}e0]`,
    'NaN begin': (e) => `[NaN,${e.data_offsets[1]}]`,
    'string end': (e) => `[${e.data_offsets[0]},"${e.data_offsets[1]}"]`,
    'negative begin': (e) => `[-${e.data_offsets[0] + 4},${e.data_offsets[1]}]`,
    '2^64 end': (e) => `[${e.data_offsets[0]},18446744073709551616]`,
    'three offsets': (e) => `[${e.data_offsets[0]},${e.data_offsets[1]},${e.data_offsets[1]}]`,
    'zero-length at begin': (e) => `[${e.data_offsets[0]},${e.data_offsets[0]}]`,
  };
  const entryMutations: Record<string, (e: Entry) => string> = {
    'shape dim + 1': (e) => JSON.stringify({ ...e, shape: [e.shape[0] + 1, ...e.shape.slice(1)] }),
    'shape dim fractional': (e) => JSON.stringify(e).replace(/"shape":\[(\d+)/, '"shape":[$1.5'),
    'shape dim negative': (e) => JSON.stringify({ ...e, shape: [-e.shape[0], ...e.shape.slice(1)] }),
    'shape overflow': (e) => JSON.stringify({ ...e, shape: [4294967296, 4294967296, 16] }),
    'dtype F16': (e) => JSON.stringify({ ...e, dtype: 'F16' }),
    'no data_offsets': (e) => JSON.stringify({ dtype: e.dtype, shape: e.shape }),
    'entry not an object': () => '[1,2,3]',
  };
  const sample = tensorNames.filter((_, i) => i % Math.ceil(tensorNames.length / 6) === 0);
  const cases: Array<[string, string, string]> = [];
  for (const t of sample) {
    const e = header[t] as Entry;
    for (const [m, f] of Object.entries(offsetMutations)) cases.push([t, m, headerWithEntry(t, JSON.stringify({ ...e, data_offsets: '@' }).replace('"@"', f(e)))]);
    for (const [m, f] of Object.entries(entryMutations)) cases.push([t, m, headerWithEntry(t, f(e))]);
  }

  test(`${cases.length} generated offset / shape / dtype mutations all fail, typed`, async () => {
    expect(cases.length).toBeGreaterThanOrEqual(100);
    const bad: string[] = [];
    for (const [t, m, text] of cases) {
      const err = await loadError(folderWith(withHeader(text)));
      const ok =
        err !== undefined &&
        ['ERR_CORRUPT_FILE', 'ERR_FILE_READ', 'ERR_SHAPE_MISMATCH'].includes(err.code) &&
        // The message names the tensor, or the file-level rule that broke (tiling, truncation).
        (err.message.includes(t) || /tensor '|follow the last tensor|truncated|invalid JSON/.test(err.message));
      if (!ok) bad.push(`${t} ${m}: ${err ? `${err.code} ${err.message}` : 'loaded'}`);
    }
    expect(bad).toEqual([]);
  }, 300_000);

  test('header rules: not an object, not UTF-8, duplicate names, bad metadata', async () => {
    const body = JSON.stringify(header);
    const first = tensorNames[0];
    const dup = `{${JSON.stringify(first)}:${JSON.stringify(header[first])},${body.slice(1)}`;
    for (const [label, text, re] of [
      ['array', '[' + ' '.repeat(body.length - 2) + ']', /start with '\{'/],
      ['invalid UTF-8', body.replace(first, first + '\u0000'), /invalid JSON|control/],
      ['duplicate tensor', dup, /appears twice/],
      ['metadata not strings', body.replace('{', '{"__metadata__":{"format":1},'), /__metadata__/],
      ['trailing garbage', body + 'xx', /end with '\}'/],
    ] as const) {
      const err = await loadError(folderWith(withHeader(text)));
      expect([label, err?.code]).toEqual([label, 'ERR_CORRUPT_FILE']);
      expect(err?.message).toMatch(re);
    }
    const raw = withHeader(body);
    raw[8 + 20] = 0xff; // a byte that is never valid UTF-8, inside a tensor name
    expect((await loadError(folderWith(raw)))?.code).toBe('ERR_CORRUPT_FILE');
  });
});

describe('sharded index: shard names, symlinks, FIFOs', () => {
  function shardedCopy(): string {
    return copyCheckpoint(SHARDED, scratch, `sharded-${n++}`);
  }
  function setShard(dir: string, shard: string, to: string): void {
    const f = path.join(dir, 'model.safetensors.index.json');
    const idx = JSON.parse(fs.readFileSync(f, 'utf8')) as { weight_map: Record<string, string> };
    for (const k of Object.keys(idx.weight_map)) if (idx.weight_map[k] === shard) idx.weight_map[k] = to;
    fs.writeFileSync(f, JSON.stringify(idx));
  }
  const SHARD = 'model-00002-of-00005.safetensors';

  test('control: the sharded fixture loads', async () => {
    expect(await loadError(shardedCopy())).toBeUndefined();
  });

  test.each(['../outside/x.safetensors', '..', '.', 'sub/x.safetensors', '/etc/passwd', '', 'a\\b.safetensors', 'x\n.safetensors'])(
    'weight_map naming %j is refused before anything is opened',
    async (name) => {
      const dir = shardedCopy();
      // Something real to find at the outside path, so only the name rule can stop it.
      fs.mkdirSync(path.join(dir, '..', 'outside'), { recursive: true });
      fs.copyFileSync(path.join(dir, SHARD), path.join(dir, '..', 'outside', 'x.safetensors'));
      setShard(dir, SHARD, name);
      const err = await loadError(dir);
      expect(err?.code).toBe('ERR_CORRUPT_FILE');
      expect(err?.message).toMatch(/plain file name/);
    },
  );

  test('a symlink that leaves the folder is refused, one inside it is followed; no bytes of the target echo', async () => {
    const dir = shardedCopy();
    const outside = path.join(scratch, `secret-${n++}.safetensors`);
    fs.writeFileSync(outside, 'SECRET-CONTENT-' + 'x'.repeat(100));
    fs.rmSync(path.join(dir, SHARD));
    fs.symlinkSync(outside, path.join(dir, SHARD));
    const err = await loadError(dir);
    expect(err?.code).toBe('ERR_CORRUPT_FILE');
    expect(err?.message).toMatch(/leaves the checkpoint folder/);
    expect(err?.message).not.toMatch(/SECRET/);

    const ok = shardedCopy();
    fs.renameSync(path.join(ok, SHARD), path.join(ok, 'real.bin'));
    fs.symlinkSync('real.bin', path.join(ok, SHARD));
    expect(await loadError(ok)).toBeUndefined();
  });

  test('a FIFO shard or FIFO model.safetensors fails at once instead of hanging', async () => {
    const dir = shardedCopy();
    fs.rmSync(path.join(dir, SHARD));
    execFileSync('mkfifo', [path.join(dir, SHARD)]);
    const err = await loadError(dir);
    expect(err?.code).toBe('ERR_FILE_READ');
    expect(err?.message).toMatch(/not a regular file/);

    const single = folderWith(original);
    fs.rmSync(path.join(single, 'model.safetensors'));
    execFileSync('mkfifo', [path.join(single, 'model.safetensors')]);
    expect((await loadError(single))?.code).toBe('ERR_FILE_READ');

    const cfg = folderWith(original);
    fs.rmSync(path.join(cfg, 'config.json'));
    execFileSync('mkfifo', [path.join(cfg, 'config.json')]);
    expect(await loadError(cfg)).toBeInstanceOf(PlmError);
  });
});

describe('config.json: every numeric field validated', () => {
  const base = JSON.parse(fs.readFileSync(VISION_CONFIG, 'utf8')) as Record<string, unknown>;
  type Field = { path: string[]; kind: 'int' | 'id' | 'positive-real' };
  const FIELDS: Field[] = [
    ...['hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads', 'num_key_value_heads', 'vocab_size', 'head_dim', 'max_position_embeddings'].map(
      (k) => ({ path: ['text_config', k], kind: 'int' as const }),
    ),
    { path: ['text_config', 'rms_norm_eps'], kind: 'positive-real' },
    ...['rope_theta', 'factor', 'low_freq_factor', 'original_max_position_embeddings'].map((k) => ({
      path: ['text_config', 'rope_parameters', k],
      kind: 'positive-real' as const,
    })),
    ...['depth', 'embed_dim', 'num_heads', 'patch_size'].map((k) => ({ path: ['vision_config', 'model_args', k], kind: 'int' as const })),
    { path: ['vision_config', 'model_args', 'mlp_ratio'], kind: 'positive-real' },
    { path: ['projector_pooling_ratio'], kind: 'int' },
    { path: ['image_token_id'], kind: 'id' },
    { path: ['video_token_id'], kind: 'id' },
  ];
  const BAD: Record<Field['kind'], string[]> = {
    int: ['-1', '0', 'NaN', 'Infinity', '1.5', '2147483648', '"12"', '1e300'],
    'positive-real': ['-1', '0', 'NaN', 'Infinity', '-Infinity', '"12"', '1e300'],
    id: ['-1', 'NaN', '1.5', '128256', '"12"', '2147483648'],
  };

  function writeConfig(mutated: string): string {
    const dir = path.join(scratch, `cfg-${n++}`);
    fs.mkdirSync(dir);
    fs.writeFileSync(path.join(dir, 'config.json'), mutated);
    return dir; // no weights: config errors come first; a valid config fails later with ERR_FILE_NOT_FOUND
  }
  function mutate(f: Field, raw: string): string {
    const c = JSON.parse(JSON.stringify(base)) as Record<string, unknown>;
    let o = c;
    for (const k of f.path.slice(0, -1)) o = o[k] as Record<string, unknown>;
    o[f.path[f.path.length - 1]] = '@@VALUE@@';
    return JSON.stringify(c).replace('"@@VALUE@@"', raw);
  }

  test('control: the unmutated config passes (and the folder then lacks weights)', async () => {
    expect((await loadError(writeConfig(JSON.stringify(base))))?.code).toBe('ERR_FILE_NOT_FOUND');
  });

  const cases = FIELDS.flatMap((f) => BAD[f.kind].map((v) => [f.path.join('.'), v, f] as const));
  test(`${cases.length} out-of-range values: ERR_CORRUPT_FILE naming the field`, async () => {
    const bad: string[] = [];
    for (const [name, value, f] of cases) {
      const err = await loadError(writeConfig(mutate(f, value)));
      const key = f.path[f.path.length - 1];
      if (!err || err.code !== 'ERR_CORRUPT_FILE' || !err.message.includes(key)) {
        bad.push(`${name} = ${value}: ${err ? `${err.code} ${err.message}` : 'accepted'}`);
      }
    }
    expect(bad).toEqual([]);
  }, 120_000);

  test('head counts that do not divide, and rope factors out of order', async () => {
    const c = JSON.parse(JSON.stringify(base)) as { text_config: Record<string, unknown>; vision_config: { model_args: Record<string, unknown> } };
    c.text_config.num_key_value_heads = 3;
    expect((await loadError(writeConfig(JSON.stringify(c))))?.message).toMatch(/num_key_value_heads/);
    const d = JSON.parse(JSON.stringify(base)) as typeof c;
    d.vision_config.model_args.num_heads = 3;
    expect((await loadError(writeConfig(JSON.stringify(d))))?.message).toMatch(/num_heads/);
    const e = JSON.parse(JSON.stringify(base)) as typeof c;
    (e.text_config.rope_parameters as Record<string, unknown>).high_freq_factor = 1;
    expect((await loadError(writeConfig(JSON.stringify(e))))?.message).toMatch(/high_freq_factor/);
  });
});
