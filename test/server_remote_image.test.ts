/**
 * Remote images (`--allow-remote-images`, issue 19): the address filter against an independent oracle
 * (node's net.BlockList loaded with the IANA special-purpose ranges) on generated addresses, and the
 * fetch against a loopback server that redirects. The test hook permits exactly that server's address
 * and port; every other target is refused before a connection is made (a second loopback server counts
 * the connections it gets: none). No traffic leaves the machine: names resolve through an injected
 * resolver.
 */
import * as http from 'http';
import * as net from 'net';
import * as path from 'path';
import sharp from 'sharp';
import { fetchRemoteImage, isGlobalAddress, nonGlobalReason, parseIPv6, RemoteImageError } from '../lib/remote_image';
import { loadModel, PerceptionLM } from '../lib/model';
import { startServer } from '../lib/server';
import { Gen, prng } from './helpers/server_fuzz';

// The IANA IPv4 / IPv6 special-purpose registries (plus multicast and reserved space), written out here
// independently of lib/remote_image.ts.
const V4_SPECIAL = ['0.0.0.0/8', '10.0.0.0/8', '100.64.0.0/10', '127.0.0.0/8', '169.254.0.0/16', '172.16.0.0/12', '192.0.0.0/24', '192.0.2.0/24', '192.88.99.0/24', '192.168.0.0/16', '198.18.0.0/15', '198.51.100.0/24', '203.0.113.0/24', '224.0.0.0/4', '240.0.0.0/4'];
// Everything outside 2000::/3 (::/3, 4000::/2, 8000::/1) and the special blocks inside it.
const V6_SPECIAL = ['::/3', '4000::/2', '8000::/1', '2001::/23', '2001:db8::/32', '2002::/16', '3fff::/20'];

const v4List = new net.BlockList();
for (const c of V4_SPECIAL) v4List.addSubnet(c.split('/')[0], Number(c.split('/')[1]), 'ipv4');
const v6List = new net.BlockList();
for (const c of V6_SPECIAL) v6List.addSubnet(c.split('/')[0], Number(c.split('/')[1]), 'ipv6');

const v4 = (n: number): string => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255].join('.');
const v4num = (s: string): number => s.split('.').reduce((a, x) => a * 256 + Number(x), 0);

/** Oracle: is this IPv4 address global? */
const global4 = (a: string): boolean => !v4List.check(a, 'ipv4');
/** Oracle on eight groups: NAT64 (64:ff9b::/96) follows its IPv4; IPv4-mapped is refused outright. */
function global6(g: number[]): boolean {
  if (g.slice(0, 5).every((x) => x === 0) && g[5] === 0xffff) return false;
  if (g[0] === 0x64 && g[1] === 0xff9b && g.slice(2, 6).every((x) => x === 0)) return global4(v4(((g[6] << 16) >>> 0) + g[7]));
  return !v6List.check(g.map((x) => x.toString(16)).join(':'), 'ipv6');
}

/** Writes eight groups in one of several textual forms (compressed, full, upper case, dotted tail). */
function format6(g: number[], gen: Gen): string {
  const form = gen.int(0, 3);
  const hex = g.map((x) => x.toString(16));
  if (form === 0) return hex.join(':');
  if (form === 1) return g.map((x) => x.toString(16).padStart(4, '0')).join(':').toUpperCase();
  if (form === 2) return `${hex.slice(0, 6).join(':')}:${g[6] >> 8}.${g[6] & 255}.${g[7] >> 8}.${g[7] & 255}`;
  // Compress the longest run of zeros.
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (g[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && g[j] === 0) j++;
    if (j - i > bestLen) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  if (bestLen < 2) return hex.join(':');
  return `${hex.slice(0, best).join(':')}::${hex.slice(best + bestLen).join(':')}`;
}

test('IPv4: 20000 generated addresses (uniform and at every range edge) agree with the oracle', () => {
  const gen = new Gen(prng(4));
  const samples: string[] = [];
  for (let i = 0; i < 16000; i++) samples.push(v4(gen.int(0, 0xffffffff)));
  for (const c of V4_SPECIAL) {
    const [base, bits] = c.split('/');
    const lo = v4num(base);
    const hi = lo + 2 ** (32 - Number(bits)) - 1;
    for (const n of [lo - 1, lo, lo + 1, hi - 1, hi, hi + 1]) if (n >= 0 && n <= 0xffffffff) samples.push(v4(n));
    for (let i = 0; i < 200; i++) samples.push(v4(gen.int(lo, hi)));
  }
  let refused = 0;
  for (const a of samples) {
    const want = global4(a);
    if (isGlobalAddress(a) !== want) throw new Error(`${a}: isGlobalAddress ${!want}, oracle ${want}`);
    if (!want) refused++;
  }
  expect(refused).toBeGreaterThan(3000);
  expect(samples.length - refused).toBeGreaterThan(10000);
});

test('IPv6: 20000 generated addresses in several textual forms agree with the oracle', () => {
  const gen = new Gen(prng(6));
  const firsts = [0, 0x64, 0x100, 0x2001, 0x2002, 0x2400, 0x2606, 0x2a00, 0x3fff, 0x3ffe, 0xfc00, 0xfdff, 0xfe80, 0xfebf, 0xfec0, 0xff02, 0x1fff, 0x4000];
  let checked = 0;
  let refused = 0;
  for (let i = 0; i < 20000; i++) {
    const g = Array.from({ length: 8 }, () => (gen.chance(0.4) ? 0 : gen.int(0, 0xffff)));
    const k = gen.int(0, 5);
    if (k <= 2) g[0] = gen.chance(0.5) ? gen.pick(firsts) : gen.int(0, 0xffff);
    if (k === 3) {
      // IPv4-mapped or NAT64 around an IPv4 address.
      g.fill(0, 0, 6);
      if (gen.chance(0.5)) g[5] = 0xffff;
      else [g[0], g[1]] = [0x64, 0xff9b];
    }
    if (k === 4 && gen.chance(0.5)) g[1] = gen.int(0, 0x200);
    const text = format6(g, gen);
    expect(net.isIPv6(text)).toBe(true);
    expect(parseIPv6(text)).toEqual(g);
    const want = global6(g);
    if (isGlobalAddress(text) !== want) throw new Error(`${text}: isGlobalAddress ${!want}, oracle ${want}`);
    checked++;
    if (!want) refused++;
  }
  expect(checked).toBe(20000);
  expect(refused).toBeGreaterThan(5000);
  expect(checked - refused).toBeGreaterThan(3000);
  // Forms that are never global whatever they wrap.
  for (const a of ['::ffff:127.0.0.1', '::ffff:8.8.8.8', '0:0:0:0:0:ffff:7f00:1', '::', '::1', 'fe80::1%eth0', '64:ff9b::10.0.0.1', '[::1]', 'localhost', '1.2.3', '']) {
    expect(isGlobalAddress(a)).toBe(false);
  }
  expect(nonGlobalReason('::ffff:8.8.8.8')).toBe('IPv4-mapped IPv6');
  expect(nonGlobalReason('100.64.1.1')).toMatch(/CGNAT/);
  expect(isGlobalAddress('64:ff9b::8.8.8.8')).toBe(true);
});

describe('fetching through a loopback server', () => {
  let png: Buffer;
  let main: http.Server;
  let other: http.Server;
  let mainPort = 0;
  let otherPort = 0;
  let otherConnections = 0;
  let mainHits: string[] = [];

  beforeAll(async () => {
    png = await sharp({ create: { width: 16, height: 12, channels: 3, background: { r: 0, g: 90, b: 200 } } }).png().toBuffer();
    other = http.createServer((_req, res) => res.end('never'));
    other.on('connection', () => otherConnections++);
    await new Promise<void>((r) => other.listen(0, '127.0.0.1', r));
    otherPort = (other.address() as net.AddressInfo).port;
    main = http.createServer((req, res) => {
      mainHits.push(req.url ?? '');
      const u = req.url ?? '/';
      const hop = /^\/hop(\d+)$/.exec(u);
      if (u === '/img.png') {
        res.writeHead(200, { 'content-type': 'image/png' });
        res.end(png);
      } else if (hop) {
        const n = Number(hop[1]);
        res.writeHead(302, { location: n > 1 ? `/hop${n - 1}` : '/img.png' });
        res.end();
      } else if (u === '/to-other-port') {
        res.writeHead(302, { location: `http://127.0.0.1:${otherPort}/img.png` });
        res.end();
      } else if (u === '/to-private') {
        res.writeHead(307, { location: 'http://10.11.12.13/img.png' });
        res.end();
      } else if (u === '/to-mapped') {
        res.writeHead(301, { location: `http://[::ffff:127.0.0.1]:${mainPort}/img.png` });
        res.end();
      } else if (u === '/to-name') {
        res.writeHead(302, { location: `http://images.internal.test:${mainPort}/img.png` });
        res.end();
      } else if (u === '/big') {
        res.writeHead(200, { 'content-type': 'image/png' });
        res.end(Buffer.alloc(300_000));
      } else if (u === '/big-chunked') {
        res.writeHead(200, { 'content-type': 'image/png' });
        for (let i = 0; i < 40; i++) res.write(Buffer.alloc(10_000));
        res.end();
      } else if (u === '/slow') {
        res.writeHead(200, { 'content-type': 'image/png' });
        res.write(png.subarray(0, 10)); // and never more
      } else {
        res.writeHead(404);
        res.end();
      }
    });
    await new Promise<void>((r) => main.listen(0, '127.0.0.1', r));
    mainPort = (main.address() as net.AddressInfo).port;
  });

  afterAll(async () => {
    main.closeAllConnections();
    other.closeAllConnections();
    await new Promise((r) => main.close(r));
    await new Promise((r) => other.close(r));
  });

  // Permits exactly the main test server; the default filter (no hook) refuses loopback.
  const onlyMain = (address: string, port: number): boolean => address === '127.0.0.1' && port === mainPort;
  const names = async (host: string): Promise<Array<{ address: string; family: number }>> => {
    if (host === 'images.internal.test') return [{ address: '10.0.0.7', family: 4 }];
    if (host === 'mixed.test') return [{ address: '127.0.0.1', family: 4 }, { address: '192.168.1.1', family: 4 }];
    throw new Error(`no such name in this test: ${host}`);
  };
  const reason = async (p: Promise<unknown>): Promise<string> => {
    try {
      await p;
      return 'ok';
    } catch (e) {
      if (e instanceof RemoteImageError) return e.reason;
      throw e;
    }
  };

  test('the default filter refuses the loopback server itself', async () => {
    mainHits = [];
    expect(await reason(fetchRemoteImage(`http://127.0.0.1:${mainPort}/img.png`))).toBe('refused');
    expect(await reason(fetchRemoteImage(`http://localhost:${mainPort}/img.png`, { lookup: async () => [{ address: '127.0.0.1', family: 4 }] }))).toBe('refused');
    expect(mainHits).toEqual([]);
  });

  test('with the hook: the image, three redirects, but not four', async () => {
    const ok = await fetchRemoteImage(`http://127.0.0.1:${mainPort}/img.png`, { allowAddress: onlyMain });
    expect(ok.equals(png)).toBe(true);
    expect((await fetchRemoteImage(`http://127.0.0.1:${mainPort}/hop3`, { allowAddress: onlyMain })).equals(png)).toBe(true);
    expect(await reason(fetchRemoteImage(`http://127.0.0.1:${mainPort}/hop4`, { allowAddress: onlyMain }))).toBe('too_many_redirects');
  });

  test('every redirect is checked again: other ports, private addresses, IPv4-mapped and names that resolve inward are refused without a connection', async () => {
    otherConnections = 0;
    for (const p of ['/to-other-port', '/to-private', '/to-mapped', '/to-name']) {
      expect(await reason(fetchRemoteImage(`http://127.0.0.1:${mainPort}${p}`, { allowAddress: onlyMain, lookup: names }))).toBe('refused');
    }
    // A name with one permitted and one private address is refused as a whole.
    expect(await reason(fetchRemoteImage(`http://mixed.test:${mainPort}/img.png`, { allowAddress: onlyMain, lookup: names }))).toBe('refused');
    expect(otherConnections).toBe(0);
    // Not http(s), or with credentials.
    expect(await reason(fetchRemoteImage('file:///etc/passwd', { allowAddress: onlyMain }))).toBe('bad_url');
    expect(await reason(fetchRemoteImage(`http://u:p@127.0.0.1:${mainPort}/img.png`, { allowAddress: onlyMain }))).toBe('bad_url');
  });

  test('the size and time caps', async () => {
    expect(await reason(fetchRemoteImage(`http://127.0.0.1:${mainPort}/big`, { allowAddress: onlyMain, maxBytes: 100_000 }))).toBe('too_large');
    expect(await reason(fetchRemoteImage(`http://127.0.0.1:${mainPort}/big-chunked`, { allowAddress: onlyMain, maxBytes: 100_000 }))).toBe('too_large');
    expect(await reason(fetchRemoteImage(`http://127.0.0.1:${mainPort}/slow`, { allowAddress: onlyMain, timeoutMs: 300 }))).toBe('timeout');
  });

  test('through the server: refused by default, fetched with the hook, a 400 naming the part otherwise', async () => {
    const model: PerceptionLM = await loadModel(path.join(__dirname, '..', 'models', 'plm-tiny-random'), { backend: 'cpu', maxContext: 4096 });
    const ask = (url: string, base: string): Promise<Response> =>
      fetch(`${base}/v1/chat/completions`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url } }, { type: 'text', text: 'x' }] }], max_tokens: 1 }),
      });
    const plain = await startServer({ model, port: 0, allowRemoteImages: true });
    const hooked = await startServer({ model, port: 0, allowRemoteImages: true, remoteImageHooks: { allowAddress: onlyMain, lookup: names } });
    try {
      const r1 = await ask(`http://127.0.0.1:${mainPort}/img.png`, plain.url);
      expect(r1.status).toBe(400);
      expect(((await r1.json()) as { error: { code: string; param: string } }).error).toMatchObject({ code: 'remote_image_refused', param: 'messages[0].content[0]' });
      expect((await ask(`http://127.0.0.1:${mainPort}/hop2`, hooked.url)).status).toBe(200);
      const r3 = await ask(`http://127.0.0.1:${mainPort}/to-name`, hooked.url);
      expect(r3.status).toBe(400);
      expect(((await r3.json()) as { error: { code: string; message: string } }).error.message).toMatch(/10\.0\.0\.7 \(private\)/);
    } finally {
      await plain.close();
      await hooked.close();
      model.dispose();
    }
  });
});
