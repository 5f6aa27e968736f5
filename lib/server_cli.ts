/**
 * `plm serve`: binds the port first, then loads the model (or, with several models, loads each on
 * first use), and runs until SIGINT / SIGTERM.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PlmError } from './errors';
import type { PerceptionLM } from './model';
import { ModelSource, startServer } from './server';

/** The options of the `serve` command as commander parses them. */
export interface ServeCliOptions {
  /** --model, repeatable (a directory, or whatever the model opener resolves). */
  model?: string[];
  modelsDir?: string;
  alias?: string[];
  port: number;
  host: string;
  parallel?: number;
  maxQueue: number;
  /** max_tokens of a request that gives none (default DEFAULT_MAX_TOKENS, as the API and the other commands). */
  maxTokens?: number;
  maxTokensLimit: number;
  maxBody: number;
  maxImagePixels: number;
  maxTiles?: number;
  allowRemoteImages?: boolean;
  cors?: string[];
  apiKey?: string;
  allowHost?: string[];
  headersTimeout: number;
  requestTimeout: number;
  maxConnections: number;
  idleTimeout?: number;
  maxLoaded: number;
  quiet?: boolean;
}

/** The checkpoint folders of --models-dir: sub-folders holding a config.json, sorted by name. */
export function modelsInDir(dir: string): string[] {
  const abs = path.resolve(dir);
  let entries: fs.Dirent[];
  try {
    entries = fs.readdirSync(abs, { withFileTypes: true });
  } catch (e) {
    throw new PlmError('ERR_FILE_NOT_FOUND', `--models-dir ${abs} cannot be read: ${(e as Error).message}`, { cause: e });
  }
  const dirs = entries
    .filter((e) => (e.isDirectory() || e.isSymbolicLink()) && fs.existsSync(path.join(abs, e.name, 'config.json')))
    .map((e) => path.join(abs, e.name))
    .sort();
  if (dirs.length === 0) throw new PlmError('ERR_FILE_NOT_FOUND', `--models-dir ${abs} holds no checkpoint folder (a sub-folder with config.json)`);
  return dirs;
}

/** The model id of a --model value: its folder name when it is a folder, else the value itself (owner/name, resolved by the model opener). */
export function modelIdOfArg(value: string): string {
  const abs = path.resolve(value);
  return fs.existsSync(abs) && fs.statSync(abs).isDirectory() ? path.basename(abs) : value;
}

/**
 * Builds the server's model list from --model / --models-dir / --alias.
 *
 * @param open loads one model (`undefined` = the default model).
 */
export function serveSources(opts: Pick<ServeCliOptions, 'model' | 'modelsDir' | 'alias'>, open: (model: string | undefined) => Promise<PerceptionLM>, defaultId: () => string): ModelSource[] {
  const values = [...(opts.model ?? []), ...(opts.modelsDir ? modelsInDir(opts.modelsDir) : [])];
  const aliases = opts.alias ?? [];
  if (aliases.length > Math.max(1, values.length)) {
    throw new PlmError('ERR_INVALID_ARGUMENT', `${aliases.length} --alias given for ${Math.max(1, values.length)} model(s): give at most one --alias per model, in the order of the models`);
  }
  if (values.length === 0) return [{ id: aliases[0] ?? defaultId(), load: () => open(undefined), preload: true }];
  const single = values.length === 1;
  return values.map((v, i) => ({ id: aliases[i] ?? modelIdOfArg(v), load: () => open(v), preload: single }));
}

/**
 * Runs `plm serve` until SIGINT / SIGTERM (the returned promise only settles with an error).
 *
 * @param open loads a model for a --model value (`undefined`: the default model), with the command's
 *   model options (backend, threads, quantization, ...).
 */
export async function runServeCommand(opts: ServeCliOptions, open: (model: string | undefined) => Promise<PerceptionLM>, defaultId: () => string): Promise<void> {
  const sources = serveSources(opts, open, defaultId);
  const several = sources.length > 1;
  const log = opts.quiet ? undefined : (line: string): void => void process.stderr.write(`plm serve: ${line}\n`);
  const srv = await startServer({
    models: sources,
    host: opts.host,
    port: opts.port,
    parallel: opts.parallel,
    maxQueue: opts.maxQueue,
    maxTokensLimit: opts.maxTokensLimit,
    ...(opts.maxTokens !== undefined ? { defaultMaxTokens: opts.maxTokens } : {}),
    maxBodyBytes: opts.maxBody,
    maxImagePixels: opts.maxImagePixels,
    maxTiles: opts.maxTiles,
    allowRemoteImages: Boolean(opts.allowRemoteImages),
    cors: opts.cors,
    apiKey: opts.apiKey ?? (process.env.PLM_API_KEY || undefined),
    allowedHosts: opts.allowHost,
    headersTimeoutMs: Math.round(opts.headersTimeout * 1000),
    requestTimeoutMs: Math.round(opts.requestTimeout * 1000),
    maxConnections: opts.maxConnections,
    idleTimeoutMs: Math.round((opts.idleTimeout ?? (several ? 300 : 0)) * 1000),
    maxLoadedModels: opts.maxLoaded,
    log,
  });
  let stopping = false;
  const stop = (): void => {
    if (stopping) process.exit(1);
    stopping = true;
    process.stderr.write('plm serve: shutting down\n');
    void srv.close().then(() => process.exit(0));
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
  const ids = sources.map((s) => s.id).join(', ');
  if (several) {
    process.stdout.write(`plm serve: listening on ${srv.url} (models ${ids}; each loads on first use)\n`);
  } else {
    if (!opts.quiet) process.stderr.write(`plm serve: port bound at ${srv.url}; loading ${ids} (requests get 503 until it is ready)\n`);
    try {
      await srv.ready;
    } catch (e) {
      await srv.close();
      throw e;
    }
    // The machine-readable first line of stdout: tests and scripts read the URL from it once the model is ready.
    process.stdout.write(`plm serve: listening on ${srv.url} (model ${ids})\n`);
  }
  // Runs until a signal ends the process.
  await new Promise<never>(() => undefined);
}
