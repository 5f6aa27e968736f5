/**
 * Models of the server (issue 21): the port is bound before the model loads (503 and /health
 * `loading` meanwhile), a failed load, a busy port, several models each loaded on first use,
 * unloaded when idle and at most maxLoadedModels at once; and the `plm serve` command for all of it.
 */
import { execFileSync, spawn, ChildProcess } from 'child_process';
import * as fs from 'fs';
import * as net from 'net';
import * as os from 'os';
import * as path from 'path';
import { loadModel, PerceptionLM } from '../lib/model';
import { PlmError } from '../lib/errors';
import { startServer } from '../lib/server';

const root = path.resolve(__dirname, '..');
const tinyRandom = path.join(root, 'models', 'plm-tiny-random');
const tiny = path.join(root, 'models', 'plm-tiny');

const post = (base: string, body: unknown): Promise<Response> =>
  fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });
const say = (model?: string): unknown => ({ ...(model ? { model } : {}), messages: [{ role: 'user', content: 'Hi' }], max_tokens: 2, temperature: 0 });
type Health = { status: string; models: Array<{ id: string; status: string; error?: string }> };

test('the port is bound before the model loads: 503 and /health "loading" until it is ready', async () => {
  let resolveModel!: (m: PerceptionLM) => void;
  const pending = new Promise<PerceptionLM>((r) => (resolveModel = r));
  const srv = await startServer({ model: pending, modelId: 'later', port: 0 });
  let model: PerceptionLM | undefined;
  try {
    const h = await fetch(`${srv.url}/health`);
    expect(h.status).toBe(503);
    expect(((await h.json()) as Health).status).toBe('loading');
    const r = await post(srv.url, say());
    expect(r.status).toBe(503);
    expect(r.headers.get('retry-after')).toBe('2');
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe('model_loading');
    expect((await fetch(`${srv.url}/v1/models`)).status).toBe(200);
    model = await loadModel(tinyRandom, { backend: 'cpu', maxContext: 2048 });
    resolveModel(model);
    await srv.ready;
    expect((await fetch(`${srv.url}/health`)).status).toBe(200);
    expect((await post(srv.url, say('later'))).status).toBe(200);
  } finally {
    await srv.close();
    model?.dispose();
  }
});

test('a model that fails to load: 503 naming the error, /health "error"', async () => {
  const srv = await startServer({ models: [{ id: 'broken', load: () => loadModel(path.join(os.tmpdir(), 'no-such-model-dir')), preload: true }], port: 0 });
  try {
    await expect(srv.ready).rejects.toMatchObject({ code: 'ERR_FILE_NOT_FOUND' });
    const h = await fetch(`${srv.url}/health`);
    expect(h.status).toBe(503);
    const hj = (await h.json()) as Health;
    expect(hj.status).toBe('error');
    expect(hj.models[0].error).toMatch(/not a directory/);
    const r = await post(srv.url, say());
    expect(r.status).toBe(503);
    expect(((await r.json()) as { error: { code: string } }).error.code).toBe('model_load_failed');
  } finally {
    await srv.close();
  }
});

test('a busy port is a clear error that names --port', async () => {
  const blocker = net.createServer();
  await new Promise<void>((r) => blocker.listen(0, '127.0.0.1', r));
  const port = (blocker.address() as net.AddressInfo).port;
  let loads = 0;
  try {
    const err = await startServer({ models: [{ id: 'x', load: async () => { loads++; throw new Error('never'); }, preload: true }], port }).then(
      () => null,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(PlmError);
    expect((err as PlmError).message).toMatch(new RegExp(`port ${port} on 127\\.0\\.0\\.1 is already in use.*--port`));
    // Nothing was loaded for a server that could not bind.
    expect(loads).toBe(0);
  } finally {
    await new Promise((r) => blocker.close(r));
  }
});

test('several models: listed, each loaded on first use, unloaded when idle, at most maxLoadedModels at once', async () => {
  const loaded: string[] = [];
  const disposed: string[] = [];
  const source = (id: string, dir: string) => ({
    id,
    load: async (): Promise<PerceptionLM> => {
      loaded.push(id);
      const m = await loadModel(dir, { backend: 'cpu', maxContext: 2048 });
      const dispose = m.dispose.bind(m);
      m.dispose = () => {
        disposed.push(id);
        dispose();
      };
      return m;
    },
  });
  const srv = await startServer({ models: [source('a', tinyRandom), source('b', tiny)], port: 0, maxLoadedModels: 1, idleTimeoutMs: 1500 });
  try {
    const list = (await (await fetch(`${srv.url}/v1/models`)).json()) as { data: Array<{ id: string; status: string }> };
    expect(list.data).toEqual([expect.objectContaining({ id: 'a', status: 'unloaded' }), expect.objectContaining({ id: 'b', status: 'unloaded' })]);
    expect(loaded).toEqual([]);
    expect((await fetch(`${srv.url}/health`)).status).toBe(200);
    // Several models: the request must say which.
    const none = await post(srv.url, say());
    expect(none.status).toBe(400);
    expect(((await none.json()) as { error: { param: string } }).error.param).toBe('model');
    const ra = await post(srv.url, say('a'));
    expect(ra.status).toBe(200);
    expect(((await ra.json()) as { model: string }).model).toBe('a');
    expect(loaded).toEqual(['a']);
    // Room for one: asking for b unloads a (idle) first.
    expect((await post(srv.url, say('b'))).status).toBe(200);
    expect(loaded).toEqual(['a', 'b']);
    expect(disposed).toEqual(['a']);
    const h = (await (await fetch(`${srv.url}/health`)).json()) as Health;
    expect(h.models.map((m) => `${m.id}:${m.status}`)).toEqual(['a:unloaded', 'b:ready']);
    // Idle for longer than idleTimeoutMs: b is unloaded too.
    for (let i = 0; i < 100 && disposed.length < 2; i++) await new Promise((r) => setTimeout(r, 100));
    expect(disposed).toEqual(['a', 'b']);
    // And loads again on the next request.
    expect((await post(srv.url, say('b'))).status).toBe(200);
    expect(loaded).toEqual(['a', 'b', 'b']);
  } finally {
    await srv.close();
  }
  expect(disposed).toEqual(['a', 'b', 'b']);
});

describe('plm serve (the built CLI)', () => {
  const cli = path.join(root, 'dist', 'lib', 'cli.js');
  const children: ChildProcess[] = [];

  beforeAll(() => {
    // dist/ must hold this tree's server; rebuild when a source is newer.
    const stale = !fs.existsSync(path.join(root, 'dist', 'lib', 'server_cli.js')) ||
      ['server.ts', 'server_cli.ts', 'server_models.ts', 'cli.ts'].some((f) => fs.statSync(path.join(root, 'lib', f)).mtimeMs > fs.statSync(cli).mtimeMs);
    if (stale) execFileSync('npm', ['run', 'build:ts'], { cwd: root, stdio: 'inherit' });
  });

  afterAll(() => {
    for (const c of children) if (c.exitCode === null) c.kill('SIGKILL');
  });

  function serve(args: string[]): { child: ChildProcess; url: Promise<string>; stderr: () => string; exit: Promise<number | null> } {
    const child = spawn(process.execPath, [cli, 'serve', '--port', '0', ...args], { cwd: root });
    children.push(child);
    let out = '';
    let err = '';
    child.stderr?.on('data', (d: Buffer) => (err += d.toString()));
    const exit = new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
    const url = new Promise<string>((resolve, reject) => {
      child.stdout?.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /listening on (http:\/\/\S+)/.exec(out);
        if (m) resolve(m[1]);
      });
      void exit.then((c) => reject(new Error(`serve exited ${c}: ${err}`)));
    });
    url.catch(() => undefined);
    return { child, url, stderr: () => err, exit };
  }

  test('--model twice with --alias, and --models-dir: /v1/models lists them; a busy --port exits 2 naming --port', async () => {
    const a = serve(['--model', tinyRandom, '--alias', 'rnd', '--model', tiny, '-q']);
    const url = await a.url;
    const ids = ((await (await fetch(`${url}/v1/models`)).json()) as { data: Array<{ id: string }> }).data.map((m) => m.id);
    expect(ids).toEqual(['rnd', 'plm-tiny']);
    expect((await post(url, say('plm-tiny'))).status).toBe(200);
    // The same port again (the last --port wins).
    const busy = serve(['--port', new URL(url).port, '-q']);
    expect(await busy.exit).toBe(2); // ERR_INVALID_ARGUMENT (naming --port): an argument error, status 2
    expect(busy.stderr()).toMatch(/plm: ERR_INVALID_ARGUMENT: port \d+ on 127\.0\.0\.1 is already in use.*--port/);
    a.child.kill('SIGTERM');
    expect(await a.exit).toBe(0);

    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-models-'));
    try {
      fs.symlinkSync(tinyRandom, path.join(dir, 'one'));
      fs.symlinkSync(tiny, path.join(dir, 'two'));
      fs.mkdirSync(path.join(dir, 'not-a-model'));
      const b = serve(['--models-dir', dir, '-q', '--api-key', 'k']);
      const u = await b.url;
      const r = await fetch(`${u}/v1/models`, { headers: { authorization: 'Bearer k' } });
      expect(((await r.json()) as { data: Array<{ id: string; status: string }> }).data.map((m) => `${m.id}:${m.status}`)).toEqual(['one:unloaded', 'two:unloaded']);
      expect((await fetch(`${u}/v1/models`)).status).toBe(401);
      b.child.kill('SIGTERM');
      expect(await b.exit).toBe(0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});
