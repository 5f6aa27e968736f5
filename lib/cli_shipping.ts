/**
 * The `plm chat` and `plm pull` commands (registered by cli.ts; `plm serve` is in server_cli.ts).
 */
import * as fs from 'fs';
import * as path from 'path';
import * as readline from 'readline';
import { PlmError } from './errors';
import { pull, PullProgress } from './hub';
import type { PerceptionLM } from './model';

let keepProcessAlive = false;

/** True when a command (serve, chat) keeps running after its action resolved. */
export function keepAlive(): boolean {
  return keepProcessAlive;
}

function humanBytes(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(2)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

/** `plm pull`: a cli-progress bar on a TTY, plain lines otherwise. */
export async function runPull(repo: string, opts: { revision: string; dir?: string; json?: boolean }): Promise<void> {
  const tty = Boolean(process.stdout.isTTY) && !opts.json;
  const ac = new AbortController();
  process.once('SIGINT', () => ac.abort());
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const cliProgress = tty ? (require('cli-progress') as typeof import('cli-progress')) : undefined;
  let bar: import('cli-progress').SingleBar | undefined;
  let barFile = '';
  const log = (line: string): void => {
    if (!opts.json) process.stdout.write(line + '\n');
  };
  const onProgress = (p: PullProgress): void => {
    if (tty && cliProgress) {
      if (p.stage === 'download' || p.stage === 'resume') {
        if (!bar || barFile !== p.file) {
          bar?.stop();
          barFile = p.file;
          bar = new cliProgress.SingleBar(
            {
              format: `{file} [{bar}] {percentage}% | {done}/{size} | {speed}`,
              hideCursor: true,
              clearOnComplete: false,
            },
            cliProgress.Presets.shades_classic,
          );
          bar.start(p.fileTotal ?? 0, p.fileBytes, { file: `(${p.index}/${p.count}) ${p.file}`, done: humanBytes(p.fileBytes), size: humanBytes(p.fileTotal ?? 0), speed: '' });
          (bar as unknown as { t0: number; b0: number }).t0 = Date.now();
          (bar as unknown as { t0: number; b0: number }).b0 = p.fileBytes;
        }
        const meta = bar as unknown as { t0: number; b0: number };
        const secs = (Date.now() - meta.t0) / 1000;
        const speed = secs > 0.5 ? `${humanBytes((p.fileBytes - meta.b0) / secs)}/s` : '';
        if (p.fileTotal !== undefined) bar.setTotal(p.fileTotal);
        bar.update(p.fileBytes, { done: humanBytes(p.fileBytes), size: humanBytes(p.fileTotal ?? p.fileBytes), speed });
      } else if (p.stage === 'done' || p.stage === 'skip') {
        if (bar && barFile === p.file) {
          bar.update(p.fileBytes);
          bar.stop();
          bar = undefined;
        } else {
          process.stdout.write(`(${p.index}/${p.count}) ${p.file} ${humanBytes(p.fileBytes)} ${p.stage === 'skip' ? 'already complete' : 'done'}\n`);
        }
      }
      return;
    }
    if (p.stage === 'resume') log(`(${p.index}/${p.count}) ${p.file}: resuming at ${humanBytes(p.fileBytes)}`);
    else if (p.stage === 'verify') log(`(${p.index}/${p.count}) ${p.file}: verifying sha256`);
    else if (p.stage === 'skip') log(`(${p.index}/${p.count}) ${p.file}: already complete (${humanBytes(p.fileBytes)})`);
    else if (p.stage === 'done') log(`(${p.index}/${p.count}) ${p.file}: ${humanBytes(p.fileBytes)} done`);
  };
  const t0 = Date.now();
  try {
    const r = await pull(repo, { revision: opts.revision, dir: opts.dir, signal: ac.signal, onProgress });
    bar?.stop();
    const total = r.files.reduce((a, f) => a + (f.size ?? 0), 0);
    if (opts.json) {
      process.stdout.write(JSON.stringify({ repo, ...r, bytes: total, ms: Date.now() - t0 }) + '\n');
    } else {
      log(`${repo}@${r.revision}: ${r.files.length} files, ${humanBytes(total)} in ${r.dir}`);
      log(`use it with: plm describe IMAGE --model ${r.dir}`);
    }
  } catch (e) {
    bar?.stop();
    if (ac.signal.aborted) throw new PlmError('ERR_CANCELLED', 'download interrupted; run the same command again to resume');
    throw e;
  }
}

/** `plm chat`: a REPL with history, /image PATH, /clear, /exit; Ctrl-C stops the answer. */
export async function runChat(
  opts: { system?: string; maxTokens: number; temperature?: number; topP?: number; topK?: number; seed?: number; maxTiles?: number },
  open: () => Promise<PerceptionLM>,
): Promise<void> {
  const model = await open();
  keepProcessAlive = true;
  const tty = Boolean(process.stdin.isTTY);
  const rl = readline.createInterface({ input: process.stdin, output: process.stdout, terminal: tty, historySize: 200 });
  // The chat keeps the conversation's context in the model's cache: a follow-up costs about its own length.
  const chat = model.createChat({
    ...(opts.system ? { system: opts.system } : {}),
    maxTokens: opts.maxTokens,
    temperature: opts.temperature,
    topP: opts.topP,
    topK: opts.topK,
    seed: opts.seed,
    maxNumTiles: opts.maxTiles,
  });
  let pendingImages: string[] = [];
  let current: AbortController | undefined;
  let lastSigint = 0;
  let closed = false;
  const out = (s: string): void => {
    process.stdout.write(s);
  };
  const quit = (): void => {
    if (closed) return;
    closed = true;
    current?.abort();
    rl.close();
    model.dispose();
    process.exit(0);
  };
  const onSigint = (): void => {
    if (current) {
      current.abort();
      out('\n[stopped]\n');
      lastSigint = Date.now();
      return;
    }
    if (Date.now() - lastSigint < 2000) quit();
    lastSigint = Date.now();
    out('\n(press Ctrl-C again or type /exit to quit)\n');
    rl.prompt();
  };
  rl.on('SIGINT', onSigint);
  process.on('SIGINT', onSigint);
  rl.on('close', () => {
    // stdin ended (Ctrl-D or end of a pipe): finish the current answer, then quit.
    if (!current) quit();
    else closed = true;
  });
  out(`plm chat: ${path.basename(model.dir)} on ${model.backend}. /image PATH attaches an image, /clear forgets, /exit quits, Ctrl-C stops an answer.\n`);
  rl.setPrompt('> ');

  const lines: string[] = [];
  let busy = false;
  const handle = async (line: string): Promise<void> => {
    const text = line.trim();
    if (text === '') return;
    if (text === '/exit' || text === '/quit') return quit();
    if (text === '/clear') {
      chat.reset();
      pendingImages = [];
      out('(history cleared)\n');
      return;
    }
    if (text.startsWith('/image')) {
      const file = path.resolve(text.slice('/image'.length).trim().replace(/^["']|["']$/g, ''));
      if (!fs.existsSync(file) || !fs.statSync(file).isFile()) {
        out(`plm: ERR_FILE_NOT_FOUND: ${file} does not exist\n`);
        return;
      }
      pendingImages.push(file);
      out(`(attached ${path.basename(file)}; it goes with your next message)\n`);
      return;
    }
    if (text.startsWith('/')) {
      out('commands: /image PATH, /clear, /exit\n');
      return;
    }
    const images = pendingImages;
    pendingImages = [];
    current = new AbortController();
    try {
      // An answer stopped with Ctrl-C stays in the history as far as it was shown.
      for await (const c of chat.stream({ text, images }, { signal: current.signal })) out(c.text);
      out('\n');
    } catch (e) {
      const err = e as { code?: string; message?: string };
      out(`\nplm: ${err.code ?? 'ERR_INTERNAL'}: ${err.message ?? String(e)}\n`);
    } finally {
      current = undefined;
    }
  };
  const pump = async (): Promise<void> => {
    if (busy) return;
    busy = true;
    while (lines.length > 0) await handle(lines.shift() as string);
    busy = false;
    if (closed) quit();
    else rl.prompt();
  };
  rl.on('line', (line) => {
    lines.push(line);
    void pump();
  });
  rl.prompt();
}
