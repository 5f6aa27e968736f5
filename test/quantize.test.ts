/**
 * plm-quant files (quantizeModel, `plm quantize`, docs/quantized-format.md):
 *   - on the bundled model and every text fixture, for int8 and q4: a model loaded from the file gives logits
 *     bit-identical to converting at load (prefill rows and greedy decode steps), and says it was mapped;
 *   - damaged, truncated, foreign, wrong-version and stale files fail with their typed PlmError codes;
 *   - `plm quantize` round-trips through the CLI;
 *   - accuracy against the unquantized checkpoint (f32 activations): top-1 agreement and mean KL of the
 *     next-token distribution over 64 teacher-forced rows, with bounds set from measured values.
 */
import { spawnSync, execFileSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { defaultQuantizedPath, loadModel, PerceptionLM, PlmError, quantizeModel, QuantizeKind } from '../lib';
import { copyCheckpoint as copyInto } from './helpers/checkpoint';

const ROOT = path.join(__dirname, '..');
const TINY = path.join(ROOT, 'models', 'plm-tiny-random');
const TEXT = path.join(__dirname, 'fixtures', 'text');
const CASES: [string, string][] = [
  ['plm-tiny-random', TINY],
  ...fs
    .readdirSync(TEXT)
    .filter((c) => fs.existsSync(path.join(TEXT, c, 'config.json')))
    .map((c): [string, string] => [c, path.join(TEXT, c)]),
];
const KINDS: QuantizeKind[] = ['int8', 'q4'];
const ROWS = 64;

let scratch: string;
beforeAll(() => {
  scratch = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-quantize-'));
});
afterAll(() => fs.rmSync(scratch, { recursive: true, force: true }));

/** A copy of a checkpoint folder that a test may change or damage. */
const copyCheckpoint = (src: string, name: string): string => copyInto(src, scratch, name);

/** The fixture's prompt (golden.json) or a BOS, continued deterministically to ROWS ids; no media placeholders. */
function promptIds(dir: string, model: PerceptionLM): number[] {
  const golden = path.join(dir, 'golden.json');
  const V = model.config.text.vocab_size;
  const skip = new Set([model.config.image_token_id, model.config.video_token_id]);
  const ids: number[] = fs.existsSync(golden) ? (JSON.parse(fs.readFileSync(golden, 'utf8')) as { input_ids: number[] }).input_ids.slice() : [128000];
  while (ids.length < ROWS) {
    let next = (ids[ids.length - 1] * 31 + 17 + ids.length * 7) % V;
    while (skip.has(next)) next = (next + 1) % V;
    ids.push(next);
  }
  return ids.slice(0, ROWS);
}

function sameBytes(a: Float32Array, b: Float32Array): boolean {
  return a.length === b.length && Buffer.compare(Buffer.from(a.buffer, a.byteOffset, a.byteLength), Buffer.from(b.buffer, b.byteOffset, b.byteLength)) === 0;
}

async function expectCode(p: Promise<unknown>, code: string, messagePart?: RegExp): Promise<PlmError> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(PlmError);
  expect({ code: (err as PlmError).code, message: (err as PlmError).message }).toEqual({ code, message: expect.stringMatching(messagePart ?? /./) });
  return err as PlmError;
}

/** Rewrites the JSON header of a plm-quant file in place (same length, padded with spaces). */
function editHeader(file: string, edit: (h: Record<string, Record<string, unknown>>) => void): void {
  const buf = fs.readFileSync(file);
  const n = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8')) as Record<string, Record<string, unknown>>;
  edit(header);
  const text = JSON.stringify(header);
  if (text.length > n) throw new Error('edited header is longer than the original');
  buf.write(text.padEnd(n, ' '), 8, 'utf8');
  fs.writeFileSync(file, buf);
}

describe.each(CASES)('%s', (name, dir) => {
  test.each(KINDS)('%s: loading the quantized file is bit-identical to quantizing at load', async (kind) => {
    const out = path.join(scratch, `${name}.${kind}.plmq.safetensors`);
    const r = await quantizeModel(dir, { kind, out });
    expect(r.path).toBe(out);
    expect(r.fileBytes).toBe(fs.statSync(out).size);
    expect(r.quantized + r.kept).toBeGreaterThan(0);
    const atLoad = await loadModel(dir, { backend: 'cpu', precision: 'f32', quantize: kind, quantizedFile: false });
    const mapped = await loadModel(dir, { backend: 'cpu', precision: 'f32', quantizedFile: out });
    try {
      expect(atLoad.quantization).toEqual({ kind, file: null });
      expect(mapped.quantization).toEqual({ kind, file: out });
      const ids = promptIds(dir, atLoad);
      const a = await atLoad.forward({ inputIds: ids });
      const b = await mapped.forward({ inputIds: ids });
      expect(sameBytes(a.logits, b.logits)).toBe(true);
      // Decode steps (one row at a time) run the quantized GEMV kernels rather than the prefill path.
      const ga = await atLoad.complete({ inputIds: ids.slice(0, 8), maxTokens: 6, temperature: 0, returnLogits: true });
      const gb = await mapped.complete({ inputIds: ids.slice(0, 8), maxTokens: 6, temperature: 0, returnLogits: true });
      expect(gb.tokenIds).toEqual(ga.tokenIds);
      expect(sameBytes(ga.logits!, gb.logits!)).toBe(true);
    } finally {
      atLoad.dispose();
      mapped.dispose();
    }
  });
});

describe('finding the file, and typed errors', () => {
  let tiny: string; // a copy of the bundled model with both kinds quantized next to it
  beforeAll(async () => {
    tiny = copyCheckpoint(TINY, 'tiny');
    for (const kind of KINDS) await quantizeModel(tiny, { kind });
  });

  test('quantize: int8 maps DIR/model.int8.plmq.safetensors; false or none converts at load / not at all', async () => {
    const withFile = await loadModel(tiny, { backend: 'cpu', quantize: 'int8' });
    expect(withFile.quantization).toEqual({ kind: 'int8', file: defaultQuantizedPath(tiny, 'int8') });
    withFile.dispose();
    const atLoad = await loadModel(tiny, { backend: 'cpu', quantize: 'int8', quantizedFile: false });
    expect(atLoad.quantization).toEqual({ kind: 'int8', file: null });
    atLoad.dispose();
    const plain = await loadModel(tiny, { backend: 'cpu' });
    expect(plain.quantization).toEqual({ kind: 'none', file: null });
    plain.dispose();
  });

  test('a checkpoint found by globbing *.safetensors does not take the quantized file for a shard', async () => {
    const dir = copyCheckpoint(path.join(TEXT, 'untied_norope_gqa3_hd32_f32_v5'), 'globbed');
    fs.renameSync(path.join(dir, 'model.safetensors'), path.join(dir, 'weights.safetensors'));
    await quantizeModel(dir, { kind: 'int8' });
    const m = await loadModel(dir, { backend: 'cpu', quantize: 'int8' });
    expect(m.quantization.file).toBe(defaultQuantizedPath(dir, 'int8'));
    m.dispose();
  });

  test('a kind that disagrees with the file is ERR_INVALID_ARGUMENT', async () => {
    await expectCode(loadModel(tiny, { backend: 'cpu', quantize: 'q4', quantizedFile: defaultQuantizedPath(tiny, 'int8') }), 'ERR_INVALID_ARGUMENT', /holds int8/);
  });

  test('a missing file is ERR_FILE_NOT_FOUND and says how to make it', async () => {
    await expectCode(loadModel(tiny, { backend: 'cpu', quantizedFile: path.join(scratch, 'none.plmq.safetensors') }), 'ERR_FILE_NOT_FOUND', /plm quantize/);
  });

  test('a truncated file is ERR_FILE_READ', async () => {
    const f = path.join(scratch, 'truncated.plmq.safetensors');
    const bytes = fs.readFileSync(defaultQuantizedPath(tiny, 'q4'));
    fs.writeFileSync(f, bytes.subarray(0, bytes.length >> 1));
    await expectCode(loadModel(tiny, { backend: 'cpu', quantizedFile: f }), 'ERR_FILE_READ', /truncated.*plm quantize/);
  });

  test('a damaged header is ERR_CORRUPT_FILE', async () => {
    const f = path.join(scratch, 'garbled.plmq.safetensors');
    const bytes = fs.readFileSync(defaultQuantizedPath(tiny, 'q4'));
    bytes.fill(0x7a, 8, 40);
    fs.writeFileSync(f, bytes);
    await expectCode(loadModel(tiny, { backend: 'cpu', quantizedFile: f }), 'ERR_CORRUPT_FILE', /plm quantize/);
    const g = path.join(scratch, 'huge-header.plmq.safetensors');
    const b2 = fs.readFileSync(defaultQuantizedPath(tiny, 'q4'));
    b2.writeBigUInt64LE(1n << 40n, 0);
    fs.writeFileSync(g, b2);
    await expectCode(loadModel(tiny, { backend: 'cpu', quantizedFile: g }), 'ERR_CORRUPT_FILE', /plm quantize/);
  });

  test('a checkpoint shard passed as the quantized file is ERR_CORRUPT_FILE (not a plm-quant file)', async () => {
    await expectCode(loadModel(tiny, { backend: 'cpu', quantizedFile: path.join(tiny, 'model.safetensors') }), 'ERR_CORRUPT_FILE', /not a plm-quant file/);
  });

  test('a tensor whose dtype or shape disagrees with the checkpoint is ERR_CORRUPT_FILE', async () => {
    const f = path.join(scratch, 'bad-dtype.plmq.safetensors');
    fs.copyFileSync(defaultQuantizedPath(tiny, 'int8'), f);
    editHeader(f, (h) => {
      h['lm_head.qweight'].dtype = 'U8';
    });
    await expectCode(loadModel(tiny, { backend: 'cpu', quantizedFile: f }), 'ERR_CORRUPT_FILE', /lm_head/);
  });

  test('another major version is ERR_UNSUPPORTED_VERSION and says to re-run plm quantize; a newer minor loads', async () => {
    const f = path.join(scratch, 'v2.plmq.safetensors');
    fs.copyFileSync(defaultQuantizedPath(tiny, 'int8'), f);
    editHeader(f, (h) => {
      h.__metadata__.format_version = '2.0';
    });
    await expectCode(loadModel(tiny, { backend: 'cpu', quantizedFile: f }), 'ERR_UNSUPPORTED_VERSION', /version 2\.0.*reads 1\.x.*plm quantize/);
    editHeader(f, (h) => {
      h.__metadata__.format_version = '1.7';
      h.__metadata__.added_in_a_later_minor = 'ignored';
    });
    const m = await loadModel(tiny, { backend: 'cpu', quantizedFile: f });
    expect(m.quantization.kind).toBe('int8');
    m.dispose();
    editHeader(f, (h) => {
      h.__metadata__.format_version = '1.0';
      h.__metadata__.quant = 'q3';
    });
    await expectCode(loadModel(tiny, { backend: 'cpu', quantizedFile: f }), 'ERR_UNSUPPORTED_VERSION', /q3/);
  });

  test('a file made from another checkpoint is ERR_STALE_FILE (config or weights changed), also when found by itself', async () => {
    const dir = copyCheckpoint(TINY, 'stale');
    await quantizeModel(dir, { kind: 'q4' });
    const cfg = path.join(dir, 'config.json');
    const original = fs.readFileSync(cfg);
    fs.writeFileSync(cfg, Buffer.concat([original, Buffer.from('\n')]));
    await expectCode(loadModel(dir, { backend: 'cpu', quantize: 'q4' }), 'ERR_STALE_FILE', /config\.json.*plm quantize/);
    fs.writeFileSync(cfg, original);
    const weights = path.join(dir, 'model.safetensors');
    const w = fs.readFileSync(weights);
    w[w.length - 3] ^= 0x01; // one bit of the last tensor's data
    fs.writeFileSync(weights, w);
    await expectCode(loadModel(dir, { backend: 'cpu', quantize: 'q4' }), 'ERR_STALE_FILE', /contents of model\.safetensors differ/);
    // Without asking for quantization the file is not read, and the changed checkpoint loads.
    const m = await loadModel(dir, { backend: 'cpu' });
    m.dispose();
  });

  test('quantizeModel: bad arguments, a missing checkpoint, and an aborted run that leaves no file', async () => {
    await expectCode(quantizeModel(tiny, { kind: 'q5' as never }), 'ERR_INVALID_ARGUMENT', /kind/);
    await expectCode(quantizeModel(path.join(scratch, 'nope'), { kind: 'int8' }), 'ERR_FILE_NOT_FOUND');
    await expectCode(quantizeModel(tiny, { kind: 'int8', out: path.join(tiny, 'model.int8.safetensors') }), 'ERR_INVALID_ARGUMENT', /\.plmq\.safetensors/);
    const ac = new AbortController();
    ac.abort();
    await expectCode(quantizeModel(tiny, { kind: 'int8', signal: ac.signal, out: path.join(scratch, 'pre-aborted.plmq.safetensors') }), 'ERR_CANCELLED');
    const out = path.join(scratch, 'aborted', 'x.plmq.safetensors');
    fs.mkdirSync(path.dirname(out));
    const ac2 = new AbortController();
    const p = quantizeModel(tiny, { kind: 'int8', signal: ac2.signal, out });
    ac2.abort();
    await expectCode(p, 'ERR_CANCELLED');
    expect(fs.readdirSync(path.dirname(out))).toEqual([]);
  });

  test('progress goes from 0 to 1', async () => {
    const seen: number[] = [];
    await quantizeModel(tiny, { kind: 'q4', out: path.join(scratch, 'progress.plmq.safetensors'), onProgress: (p) => seen.push(p.fraction) });
    expect(seen.length).toBeGreaterThan(2);
    expect(seen[0]).toBe(0);
    expect(seen[seen.length - 1]).toBe(1);
  });
});

describe('plm quantize (CLI)', () => {
  const cli = path.join(ROOT, 'dist', 'lib', 'cli.js');
  beforeAll(() => {
    if (!fs.existsSync(cli)) execFileSync('npm', ['run', 'build:ts'], { cwd: ROOT, stdio: 'inherit' });
  });
  function plm(args: string[]) {
    const r = spawnSync(process.execPath, [cli, ...args], { cwd: ROOT, encoding: 'utf8', timeout: 60000 });
    return { code: r.status, stdout: r.stdout, stderr: r.stderr };
  }

  test('quantize, then generate/info map the file; --no-quantized-file gives the same tokens; a stale file exits 1', () => {
    const dir = copyCheckpoint(TINY, 'cli');
    const q = plm(['quantize', '--model', dir, '--kind', 'q4', '--json']);
    expect(q.code).toBe(0);
    const r = JSON.parse(q.stdout) as { path: string; kind: string; quantized: number };
    expect(r).toMatchObject({ path: defaultQuantizedPath(dir, 'q4'), kind: 'q4', quantized: 15 });
    const info = JSON.parse(plm(['info', '--model', dir, '--backend', 'cpu', '--quantize', 'q4', '--json']).stdout) as { quantization: unknown };
    expect(info.quantization).toEqual({ kind: 'q4', file: r.path });
    const gen = (extra: string[]) => plm(['generate', '--model', dir, '--backend', 'cpu', '--quantize', 'q4', '-n', '5', '-t', '0', '--json', '-q', ...extra, 'Hello']);
    const mapped = gen([]);
    const atLoad = gen(['--no-quantized-file']);
    expect(mapped.code).toBe(0);
    expect((JSON.parse(mapped.stdout) as { tokenIds: number[] }).tokenIds).toEqual((JSON.parse(atLoad.stdout) as { tokenIds: number[] }).tokenIds);

    const out = path.join(scratch, 'cli-out.plmq.safetensors');
    const human = plm(['quantize', '--model', dir, '--kind', 'int8', '--out', out]);
    expect(human.code).toBe(0);
    expect(human.stdout).toMatch(/wrote .*cli-out\.plmq\.safetensors.*\n.*--quantized-file/);
    const info2 = JSON.parse(plm(['info', '--model', dir, '--backend', 'cpu', '--quantized-file', out, '--json']).stdout) as { quantization: unknown };
    expect(info2.quantization).toEqual({ kind: 'int8', file: out });

    fs.appendFileSync(path.join(dir, 'config.json'), '\n');
    const stale = plm(['info', '--model', dir, '--backend', 'cpu', '--quantize', 'q4']);
    expect(stale.code).toBe(1);
    expect(stale.stderr).toMatch(/^plm: ERR_STALE_FILE: .*plm quantize/m);
  });

  test('--help has examples; --kind is required', () => {
    const h = plm(['quantize', '--help']);
    expect(h.code).toBe(0);
    expect(h.stdout).toMatch(/Examples:/);
    const missing = plm(['quantize', '--model', TINY]);
    expect(missing.code).not.toBe(0);
    expect(missing.stderr).toMatch(/--kind/);
  });
});

// Jest's sandbox looks globals up through an interceptor, which makes Math.exp in a hot loop ~10x slower.
const { exp, log, max } = Math;

/** log-sum-exp of a row. */
function lse(row: Float32Array): number {
  let mx = -Infinity;
  for (let j = 0; j < row.length; j++) if (row[j] > mx) mx = row[j];
  let s = 0;
  for (let j = 0; j < row.length; j++) if (row[j] - mx > -700) s += exp(row[j] - mx);
  return mx + log(s);
}

/** Per-row top-1 agreement and KL(p_ref || p_quant) of two [rows, V] logit arrays, and the squared error sums. */
function compareLogits(want: Float32Array, got: Float32Array, V: number, rows: number) {
  let agree = 0;
  let klSum = 0;
  let klMax = 0;
  let se = 0;
  let ss = 0;
  for (let r = 0; r < rows; r++) {
    const a = want.subarray(r * V, (r + 1) * V);
    const b = got.subarray(r * V, (r + 1) * V);
    const za = lse(a);
    const zb = lse(b);
    let kl = 0; // sum p_ref (log p_ref - log p_quant)
    let ia = 0;
    let ib = 0;
    for (let j = 0; j < V; j++) {
      const la = a[j] - za;
      if (la > -700) kl += exp(la) * (la - (b[j] - zb)); // p < 1e-304: adds nothing
      const d = a[j] - b[j];
      se += d * d;
      ss += a[j] * a[j];
      if (a[j] > a[ia]) ia = j;
      if (b[j] > b[ib]) ib = j;
    }
    if (ia === ib) agree++;
    klSum += kl;
    klMax = max(klMax, kl);
  }
  return { agree, klSum, klMax, se, ss };
}

/**
 * Accuracy against the unquantized checkpoint: the bundled model and the text fixtures all have random
 * weights (the worst case for quantization: nothing smooth to preserve), so these are loose upper bounds
 * of the error, not what trained PLM weights give. Teacher-forced next-token distributions over 64 rows,
 * f32 activations in both models. Bounds: the measured value with a margin (measured on the 2-core
 * dev VM, AVX-512; values in README.md, "Quantization").
 */
describe('accuracy against the unquantized checkpoint', () => {
  // name -> kind -> [min top-1 agreement of 64, max mean KL in nats]: the measured value (in the comment) with a
  // margin for other CPUs' summation order: int8 4 rows and 2x the KL, q4 6 rows and 1.5x the KL.
  const BOUNDS: Record<string, Record<QuantizeKind, [number, number]>> = {
    // Measured: int8 62/64, KL 0.0168; q4 27/64, KL 4.31.
    'plm-tiny-random': { int8: [58, 0.035], q4: [21, 6.5] },
    // Measured: int8 60/64, KL 0.0131; q4 64/64, KL 0 (hidden 16: no matrix has 32 inputs, nothing is quantized).
    realvocab_llama3_bf16_v4: { int8: [56, 0.027], q4: [64, 1e-9] },
    // Measured: int8 58/64, KL 0.0182; q4 16/64, KL 3.10.
    tied_llama3_gqa4_hd16_bf16_v4: { int8: [54, 0.037], q4: [10, 4.7] },
    // Measured: int8 63/64, KL 0.0188; q4 27/64, KL 2.56.
    tied_llama3_gqa4_hd64_bf16_v5_sharded: { int8: [59, 0.038], q4: [21, 3.9] },
    // Measured: int8 56/64, KL 0.00523; q4 28/64, KL 0.178 (hidden 48: only down_proj takes q4).
    untied_mha_hd24_theta1e4_f32_v4: { int8: [52, 0.011], q4: [22, 0.27] },
    // Measured: int8 62/64, KL 0.0102; q4 27/64, KL 1.76.
    untied_norope_gqa3_hd32_f32_v5: { int8: [58, 0.021], q4: [21, 2.7] },
  };
  const table: string[] = [];
  afterAll(() => {
    if (table.length) console.log(['case | kind | top-1 agreement | KL mean (nats) | KL max | logits rel. RMS err', ...table].join('\n'));
  });

  test.each(CASES)('%s', async (name, dir) => {
    const ref = await loadModel(dir, { backend: 'cpu', precision: 'f32' });
    const ids = promptIds(dir, ref);
    const want = (await ref.forward({ inputIds: ids })).logits;
    const V = ref.config.text.vocab_size;
    ref.dispose();
    for (const kind of KINDS) {
      const m = await loadModel(dir, { backend: 'cpu', precision: 'f32', quantize: kind, quantizedFile: false }); // = the file, bit for bit
      const got = (await m.forward({ inputIds: ids })).logits;
      m.dispose();
      const { agree, klSum, klMax, se, ss } = compareLogits(want, got, V, ids.length);
      const klMean = klSum / ids.length;
      table.push(`${name} | ${kind} | ${agree}/${ids.length} | ${klMean.toPrecision(3)} | ${klMax.toPrecision(3)} | ${(Math.sqrt(se / ss) * 100).toFixed(1)}%`);
      const [minAgree, maxKl] = BOUNDS[name][kind];
      expect({ name, kind, agree, klMean }).toEqual({ name, kind, agree: expect.any(Number), klMean: expect.any(Number) });
      expect(agree).toBeGreaterThanOrEqual(minAgree);
      expect(klMean).toBeLessThanOrEqual(maxKl);
    }
  });
});
