/**
 * `plm chat`: an interactive conversation on stdin/stdout (registered by cli.ts; `plm pull`, `plm list` and
 * `plm rm` are in cli_models.ts, `plm serve` in server_cli.ts).
 */
import * as fs from 'fs';
import * as path from 'path';
import * as readline from 'readline';
import type { PerceptionLM } from './model';

let keepProcessAlive = false;

/** True when a command (serve, chat) keeps running after its action resolved. */
export function keepAlive(): boolean {
  return keepProcessAlive;
}

/** The sampling flags every generating command shares (--max-tokens, --temperature, --top-p, --top-k, --seed). */
export interface SamplingFlags {
  maxTokens: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
}

/** Those flags as generate options. */
export function samplingOptions(opts: SamplingFlags): SamplingFlags {
  return { maxTokens: opts.maxTokens, temperature: opts.temperature, topP: opts.topP, topK: opts.topK, seed: opts.seed };
}

/** `plm chat`: a REPL with history, /image PATH, /clear, /exit; Ctrl-C stops the answer. */
export async function runChat(
  opts: SamplingFlags & { system?: string; maxTiles?: number },
  open: () => Promise<PerceptionLM>,
): Promise<void> {
  const model = await open();
  keepProcessAlive = true;
  const tty = Boolean(process.stdin.isTTY);
  const rl = readline.createInterface({ input: process.stdin, output: process.stdout, terminal: tty, historySize: 200 });
  // The chat keeps the conversation's context in the model's cache: a follow-up costs about its own length.
  const chat = model.createChat({
    ...(opts.system ? { system: opts.system } : {}),
    ...samplingOptions(opts),
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
