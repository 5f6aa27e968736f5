/**
 * lib/hub.ts against a fake hub on loopback that serves api/models and resolve routes.
 */
import * as crypto from 'crypto';
import * as fs from 'fs';
import * as http from 'http';
import { AddressInfo } from 'net';
import * as os from 'os';
import * as path from 'path';
import { HubError, pull } from '../lib/hub';

const weights = crypto.randomBytes(300_000);
const config = Buffer.from('{"model_type":"perception_lm"}');
const sha = (b: Buffer) => crypto.createHash('sha256').update(b).digest('hex');

interface Repo {
  files: Record<string, Buffer>;
  lfs: Record<string, string>; // sha256 the API reports
  gated?: boolean;
}
const repos: Record<string, Repo> = {
  'acme/plm-test': { files: { 'config.json': config, 'model.safetensors': weights, 'pytorch_model.bin': Buffer.from('x') }, lfs: { 'model.safetensors': sha(weights) } },
  'acme/bad-sum': { files: { 'model.safetensors': weights }, lfs: { 'model.safetensors': 'f'.repeat(64) } },
  'acme/gated': { files: { 'config.json': config }, lfs: {}, gated: true },
};
let interruptNext = 0; // bytes after which the next big download is cut
const rangeRequests: string[] = [];
const authSeen: Array<string | undefined> = [];
let server: http.Server;
let endpoint: string;
let tmp: string;

beforeAll(async () => {
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-pull-'));
  server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    authSeen.push(req.headers.authorization);
    let m = /^\/api\/models\/([^/]+\/[^/]+)(?:\/revision\/([^/]+))?$/.exec(url.pathname);
    if (m) {
      const repo = repos[m[1]];
      if (!repo) return void res.writeHead(404, { 'x-error-code': 'RepoNotFound' }).end('{"error":"Repository not found"}');
      if (repo.gated && req.headers.authorization !== 'Bearer good') {
        return void res.writeHead(401, { 'x-error-code': 'GatedRepo', 'x-error-message': 'Access to model acme/gated is restricted.' }).end();
      }
      const siblings = Object.entries(repo.files).map(([name, b]) => ({
        rfilename: name,
        size: b.length,
        ...(repo.lfs[name] ? { lfs: { sha256: repo.lfs[name], size: b.length } } : {}),
      }));
      return void res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ id: m[1], sha: 'abc', siblings }));
    }
    m = /^\/([^/]+\/[^/]+)\/resolve\/([^/]+)\/(.+)$/.exec(url.pathname);
    if (m && !url.searchParams.has('cdn')) {
      // Like the hub: LFS files redirect to a CDN URL.
      return void res.writeHead(302, { location: `${url.pathname}?cdn=1` }).end();
    }
    if (m) {
      const repo = repos[m[1]];
      const body = repo?.files[decodeURIComponent(m[3])];
      if (!body) return void res.writeHead(404, { 'x-error-code': 'EntryNotFound' }).end();
      let start = 0;
      const range = req.headers.range;
      if (range) {
        rangeRequests.push(range);
        start = Number(/bytes=(\d+)-/.exec(range)?.[1] ?? 0);
        if (start >= body.length) return void res.writeHead(416).end();
      }
      const headers: Record<string, string | number> = { 'content-length': body.length - start, 'accept-ranges': 'bytes' };
      if (range) headers['content-range'] = `bytes ${start}-${body.length - 1}/${body.length}`;
      res.writeHead(range ? 206 : 200, headers);
      const slice = body.subarray(start);
      if (interruptNext > 0 && slice.length > interruptNext) {
        const cut = interruptNext;
        interruptNext = 0;
        res.write(slice.subarray(0, cut), () => setTimeout(() => res.socket?.destroy(), 20));
        return;
      }
      return void res.end(slice);
    }
    res.writeHead(404).end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((r) => server.close(r));
  fs.rmSync(tmp, { recursive: true, force: true });
});

test('downloads, verifies sha256, skips other weight formats, sends the token', async () => {
  const dir = path.join(tmp, 'a');
  const stages: string[] = [];
  const r = await pull('acme/plm-test', { endpoint, dir, token: 'tok', onProgress: (p) => stages.push(p.stage) });
  expect(fs.readFileSync(path.join(dir, 'model.safetensors')).equals(weights)).toBe(true);
  expect(fs.readFileSync(path.join(dir, 'config.json')).equals(config)).toBe(true);
  expect(fs.existsSync(path.join(dir, 'pytorch_model.bin'))).toBe(false);
  expect(fs.readdirSync(dir).some((f) => f.endsWith('.part'))).toBe(false);
  expect(r.files.find((f) => f.path === 'model.safetensors')?.verified).toBe(true);
  expect(stages).toContain('verify');
  expect(authSeen).toContain('Bearer tok');
  // Second pull: everything is complete already.
  const again = await pull('acme/plm-test', { endpoint, dir, token: 'tok' });
  expect(again.files.every((f) => f.skipped)).toBe(true);
});

test('an interrupted transfer is resumed with Range', async () => {
  const dir = path.join(tmp, 'b');
  interruptNext = 100_000;
  rangeRequests.length = 0;
  const stages: string[] = [];
  await pull('acme/plm-test', { endpoint, dir, onProgress: (p) => stages.push(p.stage) });
  // The server cuts the connection after writing 100000 bytes; how many of them reach the client before the
  // reset depends on socket buffering (under load, 65387 did), and the client resumes from what it saved.
  expect(rangeRequests).toHaveLength(1);
  const from = Number(/^bytes=(\d+)-$/.exec(rangeRequests[0])?.[1]);
  expect(from).toBeGreaterThan(0);
  expect(from).toBeLessThanOrEqual(100_000);
  expect(stages).toContain('resume');
  expect(fs.readFileSync(path.join(dir, 'model.safetensors')).equals(weights)).toBe(true);
});

test('a .part file left by an earlier run is resumed', async () => {
  const dir = path.join(tmp, 'c');
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(path.join(dir, 'model.safetensors.part'), weights.subarray(0, 123_456));
  rangeRequests.length = 0;
  await pull('acme/plm-test', { endpoint, dir });
  expect(rangeRequests).toEqual(['bytes=123456-']);
  expect(fs.readFileSync(path.join(dir, 'model.safetensors')).equals(weights)).toBe(true);
});

test('a checksum mismatch is a typed error and the partial file is deleted', async () => {
  const dir = path.join(tmp, 'd');
  const e = await pull('acme/bad-sum', { endpoint, dir }).catch((x: unknown) => x);
  expect(e).toBeInstanceOf(HubError);
  expect((e as HubError).code).toBe('ERR_CHECKSUM_MISMATCH');
  expect(fs.existsSync(path.join(dir, 'model.safetensors'))).toBe(false);
  expect(fs.existsSync(path.join(dir, 'model.safetensors.part'))).toBe(false);
});

test('a gated repo gives 401 -> ERR_HUB_GATED with what to do; a good token works', async () => {
  const e = (await pull('acme/gated', { endpoint, dir: path.join(tmp, 'e'), token: '' }).catch((x: unknown) => x)) as HubError;
  expect(e).toBeInstanceOf(HubError);
  expect(e.code).toBe('ERR_HUB_GATED');
  expect(e.status).toBe(401);
  expect(e.message).toMatch(/license/);
  expect(e.message).toMatch(/HF_TOKEN/);
  const ok = await pull('acme/gated', { endpoint, dir: path.join(tmp, 'e'), token: 'good' });
  expect(ok.files).toHaveLength(1);
});

test('a missing repo gives ERR_HUB_NOT_FOUND; a bad repo id ERR_INVALID_ARGUMENT', async () => {
  const e = (await pull('acme/nope', { endpoint, dir: path.join(tmp, 'f') }).catch((x: unknown) => x)) as HubError;
  expect(e.code).toBe('ERR_HUB_NOT_FOUND');
  const bad = (await pull('../../etc', { endpoint }).catch((x: unknown) => x)) as HubError;
  expect(bad.code).toBe('ERR_INVALID_ARGUMENT');
});

test('HF_ENDPOINT is honoured', async () => {
  const old = process.env.HF_ENDPOINT;
  process.env.HF_ENDPOINT = endpoint;
  try {
    const r = await pull('acme/plm-test', { dir: path.join(tmp, 'g') });
    expect(r.files.length).toBe(2);
  } finally {
    if (old === undefined) delete process.env.HF_ENDPOINT;
    else process.env.HF_ENDPOINT = old;
  }
});

test('plm pull without a TTY prints plain progress lines, into $PLM_MODELS_DIR where --model owner/name finds it', async () => {
  const { spawn } = await import('child_process');
  const root = path.resolve(__dirname, '..');
  const modelsDir = path.join(tmp, 'store');
  // Async spawn: the fake hub runs in this process and must keep answering while the CLI downloads.
  const child = spawn(process.execPath, [path.join(root, 'dist', 'lib', 'cli.js'), 'pull', 'acme/plm-test', '--progress-interval', '0'], {
    cwd: root,
    env: { ...process.env, HF_ENDPOINT: endpoint, PLM_MODELS_DIR: modelsDir, HF_TOKEN: '' },
  });
  let out = '';
  child.stdout.on('data', (d: Buffer) => (out += d.toString()));
  const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  expect(code).toBe(0);
  const lines = out.trim().split('\n');
  // Progress while bytes flow ("of N (p%)", a rate, the share of all files), then the file events and the summary.
  expect(lines.some((l) => /^\(\d\/2\) model\.safetensors: \d[\d.]* (B|KiB) of 293\.0 KiB \(\d+%\), [\d.]+ (B|KiB|MiB|GiB)\/s; all files \d+%$/.test(l))).toBe(true);
  expect(lines).toContain('(2/2) model.safetensors: verifying sha256');
  expect(lines).toContain('(2/2) model.safetensors: 293.0 KiB done');
  expect(lines[lines.length - 1]).toBe('use it with: plm describe IMAGE --model acme/plm-test');
  expect(out).not.toMatch(/\u001b\[/); // no terminal control codes in a log
  const { resolveModel } = await import('../lib/model_store');
  const old = process.env.PLM_MODELS_DIR;
  process.env.PLM_MODELS_DIR = modelsDir;
  try {
    expect(resolveModel('acme/plm-test')).toEqual({ dir: path.join(modelsDir, 'acme--plm-test'), source: 'pulled', name: 'acme/plm-test' });
  } finally {
    if (old === undefined) delete process.env.PLM_MODELS_DIR;
    else process.env.PLM_MODELS_DIR = old;
  }
});
