/**
 * The tokenizer on adversarial text (issue 19) and loaded off the JS thread (issue 21):
 * - ids on long pathological strings equal Python tokenizers' (test/fixtures/tokenizer/adversarial_cases.json,
 *   reference/tokenizer_fixtures.py), through lib/bpe.ts's bounded merge loop;
 * - PlmTokenizer.load (worker) gives the same tokenizer as the synchronous constructor, with typed errors;
 * - loadModel keeps the event loop turning (monitorEventLoopDelay; the 50 ms figure itself is measured in
 *   benchmarks/tokenizer_adversarial.js, the test allows a generous margin for a loaded CI machine).
 */
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { monitorEventLoopDelay } from 'perf_hooks';
import { Tokenizer } from '@huggingface/tokenizers';
import { PlmError } from '../lib/errors';
import { loadModel } from '../lib/model';
import { PlmTokenizer } from '../lib/tokenizer';

const ROOT = path.resolve(__dirname, '..');
const TINY = path.join(ROOT, 'models', 'plm-tiny');
const FIX = path.join(ROOT, 'test', 'fixtures', 'tokenizer');
const adversarial = JSON.parse(fs.readFileSync(path.join(FIX, 'adversarial_cases.json'), 'utf8')) as Array<{ text: string; ids: number[] }>;
const plmCases = JSON.parse(fs.readFileSync(path.join(FIX, 'plm_cases.json'), 'utf8')) as Array<{ text: string; ids: number[] }>;

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'plm-tok-'));
}

describe('adversarial text: ids equal Python tokenizers', () => {
  const tok = PlmTokenizer.fromDirectory(TINY);

  test('the bundled tokenizer runs on the bounded BPE path', () => {
    expect(tok.implementation).toBe('bpe');
    expect(adversarial.length).toBeGreaterThanOrEqual(20);
    expect(adversarial.some((c) => c.text.length >= 20000)).toBe(true);
  });

  test.each(adversarial.map((c, i) => [i, c.text.slice(0, 24), c] as const))('case %d %j', (_i, _label, c) => {
    expect(tok.encode(c.text)).toEqual(c.ids);
  });

  test('decode(encode(x)) gives x back on adversarial text', () => {
    for (const c of adversarial) expect(tok.decode(c.ids, { skipSpecialTokens: false, cleanUpTokenizationSpaces: false })).toBe(c.text);
  });

  test('the library path (a tokenizer.json our BPE does not take) gives the same ids', () => {
    // Same tokenizer.json plus a no-op normalizer: unsupported by lib/bpe.ts, so @huggingface/tokenizers runs.
    const tj = JSON.parse(fs.readFileSync(path.join(TINY, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
    tj.normalizer = { type: 'Sequence', normalizers: [] };
    const lib = new PlmTokenizer(tj, {});
    expect(lib.implementation).toBe('library');
    for (const c of adversarial.filter((x) => x.text.length <= 6000)) expect(lib.encode(c.text)).toEqual(c.ids);
  });
});

test('an added token with an astral character splits as in the library', () => {
  const tj = JSON.parse(fs.readFileSync(path.join(TINY, 'tokenizer.json'), 'utf8')) as { added_tokens: Array<Record<string, unknown>>; normalizer: unknown };
  tj.added_tokens.push({ id: 128256, content: '<🙂x>', single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  const ours = new PlmTokenizer(tj, {});
  expect(ours.implementation).toBe('bpe');
  const text = 'a<🙂x>b <🙂 x> 🙂<🙂x><🙂x';
  const lib = new Tokenizer(tj, {}).encode(text, { add_special_tokens: false }).ids;
  expect(ours.encode(text)).toEqual(lib);
  expect(lib.filter((id) => id === 128256)).toHaveLength(2);
});

test('long words run in chunks: ids equal the library on generated periodic and random words', () => {
  // Generated, seeded: periods that do not divide the chunk size, runs of rare and common pairs, letters of
  // several scripts. Every word is longer than the chunking threshold (512 byte-level characters).
  let seed = 21;
  const rnd = (): number => ((seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0) / 4294967296);
  const pick = (alphabet: string): string => alphabet[Math.floor(rnd() * alphabet.length)];
  const gens: Array<() => string> = [
    () => 'abc'.repeat(700),
    () => 'aab'.repeat(650),
    () => 'a'.repeat(1000 + Math.floor(rnd() * 1000)) + 'b' + 'a'.repeat(777),
    () => Array.from({ length: 1500 }, () => pick('ab')).join(''),
    () => Array.from({ length: 1500 }, () => pick('etaoinshrdlu')).join(''),
    () => Array.from({ length: 900 }, () => pick('東京都中国語日本人大学生')).join(''),
    () => Array.from({ length: 900 }, () => String.fromCharCode(0x4e00 + Math.floor(rnd() * 0x5000))).join(''),
    () => Array.from({ length: 700 }, () => pick('абвгдежзийклмнопрст')).join(''),
    () => '!?'.repeat(600) + '.'.repeat(333),
    () => ' '.repeat(1500) + '\n'.repeat(700),
  ];
  const tj = JSON.parse(fs.readFileSync(path.join(TINY, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
  const ours = new PlmTokenizer(tj, {});
  tj.normalizer = { type: 'Sequence', normalizers: [] };
  const lib = new PlmTokenizer(tj, {});
  expect(lib.implementation).toBe('library');
  for (let k = 0; k < 30; k++) {
    const text = gens[k % gens.length]();
    expect([k, ours.encode(text)]).toEqual([k, lib.encode(text)]);
  }
});

describe('PlmTokenizer.load (worker thread)', () => {
  test('gives the same tokenizer as the synchronous constructor', async () => {
    const fractions: number[] = [];
    const tok = await PlmTokenizer.load(TINY, { onProgress: (f) => fractions.push(f) });
    const sync = PlmTokenizer.fromDirectory(TINY);
    expect(tok.implementation).toBe('bpe');
    for (const c of plmCases) expect(tok.encode(c.text)).toEqual(c.ids);
    expect(tok.special).toEqual(sync.special);
    expect(tok.config).toEqual(sync.config);
    expect(tok.decode(plmCases[5].ids)).toBe(sync.decode(plmCases[5].ids));
    expect(fractions[fractions.length - 1]).toBe(1);
    expect(fractions.every((f, i) => i === 0 || f >= fractions[i - 1])).toBe(true);
  });

  test('typed errors: missing file, bad JSON, not an object, cancelled', async () => {
    const dir = tmpDir();
    await expect(PlmTokenizer.load(dir)).rejects.toMatchObject({ code: 'ERR_FILE_NOT_FOUND' });
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), '{"model": ');
    await expect(PlmTokenizer.load(dir)).rejects.toMatchObject({ code: 'ERR_CORRUPT_FILE', message: expect.stringContaining('tokenizer.json') });
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), '[1, 2]');
    await expect(PlmTokenizer.load(dir)).rejects.toMatchObject({ code: 'ERR_CORRUPT_FILE' });
    const ac = new AbortController();
    ac.abort();
    await expect(PlmTokenizer.load(TINY, { signal: ac.signal })).rejects.toMatchObject({ code: 'ERR_CANCELLED' });
    const ac2 = new AbortController();
    const p = PlmTokenizer.load(TINY, { signal: ac2.signal });
    setTimeout(() => ac2.abort(), 5);
    await expect(p).rejects.toBeInstanceOf(PlmError);
    fs.rmSync(dir, { recursive: true, force: true });
  });

  test('a tokenizer.json of another shape loads through the library, same ids', async () => {
    const dir = tmpDir();
    const tj = JSON.parse(fs.readFileSync(path.join(TINY, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
    tj.normalizer = { type: 'Sequence', normalizers: [] };
    fs.writeFileSync(path.join(dir, 'tokenizer.json'), JSON.stringify(tj));
    const tok = await PlmTokenizer.load(dir);
    expect(tok.implementation).toBe('library');
    expect(tok.encode(plmCases[3].text)).toEqual(plmCases[3].ids);
    expect(new Tokenizer(tj, {}).encode('Hello world', { add_special_tokens: false }).ids).toEqual(tok.encode('Hello world'));
    fs.rmSync(dir, { recursive: true, force: true });
  });
});

describe('loadModel keeps the event loop turning', () => {
  /** The longest gap between ticks of a 1 ms interval while `fn` runs. */
  async function longestBlock<T>(fn: () => Promise<T>): Promise<[number, T]> {
    let last = performance.now();
    let max = 0;
    const iv = setInterval(() => {
      const now = performance.now();
      max = Math.max(max, now - last);
      last = now;
    }, 1);
    await new Promise((r) => setTimeout(r, 10));
    max = 0;
    last = performance.now();
    try {
      const v = await fn();
      await new Promise((r) => setTimeout(r, 10));
      return [max, v];
    } finally {
      clearInterval(iv);
    }
  }

  test('event-loop delay during loadModel stays bounded, and the tokenizer is a progress stage', async () => {
    // Warm the module-level caches of the JS libraries, as any earlier load in a process would.
    (await loadModel(TINY, { backend: 'cpu' })).dispose();
    const h = monitorEventLoopDelay({ resolution: 2 });
    const stages = new Set<string>();
    h.enable();
    const [block, m] = await longestBlock(() => loadModel(TINY, { backend: 'cpu', onProgress: (p) => stages.add(p.stage) }));
    h.disable();
    m.dispose();
    expect(stages.has('tokenizer')).toBe(true);
    // The reference: building the same tokenizer on this thread, measured the same way, in the same process.
    const [syncBlock] = await longestBlock(async () => PlmTokenizer.fromDirectory(TINY));
    // 50 ms is the target, measured in benchmarks/tokenizer_adversarial.js. A test on a shared 2-core machine
    // cannot hold wall-clock figures that tightly: it allows 250 ms, or a fifth of the synchronous build when
    // the machine is so loaded that even that takes longer than 1.25 s.
    const bound = Math.max(250, syncBlock / 5);
    expect({ block, monitorMaxMs: h.max / 1e6, syncBlock, ok: block < bound }).toMatchObject({ ok: true });
  });
});
