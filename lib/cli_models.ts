/**
 * The model store commands of `plm` (registered by cli.ts): `plm pull` downloads a hub repo, `plm list` shows
 * the downloaded models (the `plm pull` copies and the Hugging Face cache), `plm rm` deletes a `plm pull` copy.
 */
import { PlmError } from './errors';
import { pull, PullProgress } from './hub';
import { hfHubCacheDir, listModels, pulledModelsDir, removeModel, StoredModel } from './model_store';

/** '1.2 GiB', '3.4 MiB', '5.0 KiB', '12 B'. */
export function humanBytes(n: number): string {
  if (n >= 1 << 30) return `${(n / (1 << 30)).toFixed(2)} GiB`;
  if (n >= 1 << 20) return `${(n / (1 << 20)).toFixed(1)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

/** Options of `plm pull` as commander parses them. */
export interface PullCliOpts {
  revision: string;
  dir?: string;
  json?: boolean;
  progressInterval: number;
}

/**
 * `plm pull`: a cli-progress bar on a TTY; otherwise plain lines: one per file event (resume, verify, done) and
 * one every `progressInterval` seconds while a file downloads, so that logs of long pulls show they move.
 */
export async function runPull(repo: string, opts: PullCliOpts): Promise<void> {
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
  // Plain-line progress: the time and bytes of the last line, per file.
  let lineFile = '';
  let lineAt = 0;
  let lineBytes = 0;
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
    const now = Date.now();
    if (p.file !== lineFile) {
      lineFile = p.file;
      lineAt = now;
      lineBytes = p.fileBytes;
    }
    if (p.stage === 'resume') log(`(${p.index}/${p.count}) ${p.file}: resuming at ${humanBytes(p.fileBytes)}`);
    else if (p.stage === 'verify') log(`(${p.index}/${p.count}) ${p.file}: verifying sha256`);
    else if (p.stage === 'skip') log(`(${p.index}/${p.count}) ${p.file}: already complete (${humanBytes(p.fileBytes)})`);
    else if (p.stage === 'done') log(`(${p.index}/${p.count}) ${p.file}: ${humanBytes(p.fileBytes)} done`);
    else if (p.stage === 'download' && now - lineAt >= opts.progressInterval * 1000) {
      const rate = (p.fileBytes - lineBytes) / Math.max(0.001, (now - lineAt) / 1000);
      const of = p.fileTotal !== undefined ? ` of ${humanBytes(p.fileTotal)} (${Math.floor((100 * p.fileBytes) / Math.max(1, p.fileTotal))}%)` : '';
      const all = p.total !== undefined ? `; all files ${Math.floor((100 * p.bytes) / Math.max(1, p.total))}%` : '';
      log(`(${p.index}/${p.count}) ${p.file}: ${humanBytes(p.fileBytes)}${of}, ${humanBytes(rate)}/s${all}`);
      lineAt = now;
      lineBytes = p.fileBytes;
    }
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
      log(`use it with: plm describe IMAGE --model ${opts.dir ? r.dir : repo}`);
    }
  } catch (e) {
    bar?.stop();
    if (ac.signal.aborted) throw new PlmError('ERR_CANCELLED', 'download interrupted; run the same command again to resume');
    throw e;
  }
}

/** `plm list`: one line per model (name, size, source, folder, quantized files), or JSON. */
export function runList(opts: { json?: boolean }): void {
  const models = listModels();
  if (opts.json) {
    process.stdout.write(JSON.stringify({ modelsDir: pulledModelsDir(), hfCacheDir: hfHubCacheDir(), models }) + '\n');
    return;
  }
  if (models.length === 0) {
    process.stdout.write(`no models in ${pulledModelsDir()} or the Hugging Face cache ${hfHubCacheDir()}; download one with: plm pull facebook/Perception-LM-1B\n`);
    return;
  }
  const rows = models.map((m: StoredModel) => [
    m.name,
    humanBytes(m.bytes),
    m.source === 'pulled' ? 'plm pull' : `hf cache${m.revision ? ` @${m.revision.slice(0, 8)}` : ''}`,
    m.quantized.length > 0 ? m.quantized.join(',') : '-',
    `${m.dir}${m.complete ? '' : '  (incomplete: plm pull ' + m.name + ')'}`,
  ]);
  const head = ['NAME', 'SIZE', 'SOURCE', 'QUANTIZED', 'PATH'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const fmt = (r: string[]): string => r.map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i]))).join('  ');
  process.stdout.write([fmt(head), ...rows.map(fmt)].join('\n') + '\n');
}

/** `plm rm NAME`: deletes a `plm pull` copy (the Hugging Face cache is refused: it is shared with other tools). */
export function runRm(name: string, opts: { json?: boolean }): void {
  const r = removeModel(name);
  if (opts.json) process.stdout.write(JSON.stringify({ name, ...r }) + '\n');
  else process.stdout.write(`removed ${name}: ${r.dir} (${humanBytes(r.bytes)})\n`);
}
