/**
 * Validation of `POST /v1/chat/completions` bodies against what this server implements, and the
 * OpenAI response pieces that depend on engine features (logprobs, response_format).
 *
 * Every field OpenAI defines is either implemented or answered with a 400 that names it in `param`;
 * unknown fields are a 400 as well (as OpenAI does), so that nothing is silently ignored.
 */
import { HttpError } from './server_guard';

/** `image_url.detail`: 'low' = one tile (plus the thumbnail), 'high' / 'auto' = the server's tile limit. */
export type ImageDetail = 'auto' | 'low' | 'high';

/** A content part after validation; images are still URLs. */
export type ChatPart = { type: 'text'; text: string } | { type: 'image'; url: string; detail: ImageDetail; param: string };

/** A message after validation. */
export interface ChatRequestMessage {
  role: 'system' | 'user' | 'assistant';
  content: string | ChatPart[];
}

/** What the engine's constrained decoding receives (`GenerateOptions.responseFormat`). */
export type EngineResponseFormat = { type: 'json_object' } | { type: 'json_schema'; schema: object };

/** A validated chat completion request. */
export interface ChatRequest {
  model: string | undefined;
  messages: ChatRequestMessage[];
  stream: boolean;
  includeUsage: boolean;
  maxTokens: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
  seed?: number;
  stop?: string[];
  /** `logprobs: true`. */
  logprobs: boolean;
  /** `top_logprobs` (0..20). */
  topLogprobs: number;
  responseFormat?: EngineResponseFormat;
}

/** Limits that validation applies. */
export interface RequestLimits {
  maxTokensLimit: number;
  defaultMaxTokens: number;
}

/** Largest `top_logprobs` (OpenAI's limit, and the engine's). */
export const MAX_TOP_LOGPROBS = 20;

const bad = (param: string, message: string, code = 'invalid_value'): HttpError => new HttpError(400, message, 'invalid_request_error', code, param);
const unsupported = (param: string, message: string): HttpError => bad(param, message, 'unsupported_parameter');

const isNullish = (v: unknown): boolean => v === undefined || v === null;

function num(body: Record<string, unknown>, key: string, min: number, max: number, integer = false, minExclusive = false): number | undefined {
  const v = body[key];
  if (isNullish(v)) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || (minExclusive && v === min) || v > max || (integer && !Number.isInteger(v))) {
    throw bad(key, `${key} must be ${integer ? 'an integer' : 'a number'} in ${minExclusive ? '(' : '['}${min}, ${max}]`);
  }
  return v;
}

function bool(body: Record<string, unknown>, key: string): boolean | undefined {
  const v = body[key];
  if (isNullish(v)) return undefined;
  if (typeof v !== 'boolean') throw bad(key, `${key} must be a boolean`);
  return v;
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Top-level fields, each with the check that implements or refuses it. */
const FIELD_CHECKS: Record<string, (v: unknown, body: Record<string, unknown>) => void> = {
  // Implemented below.
  messages: () => undefined,
  model: (v) => {
    if (!isNullish(v) && typeof v !== 'string') throw bad('model', 'model must be a string');
  },
  stream: () => undefined,
  stream_options: (v) => {
    if (isNullish(v)) return;
    if (!isPlainObject(v)) throw bad('stream_options', 'stream_options must be an object');
    for (const k of Object.keys(v)) {
      if (k === 'include_usage' || k === 'include_obfuscation') {
        if (!isNullish(v[k]) && typeof v[k] !== 'boolean') throw bad(`stream_options.${k}`, `stream_options.${k} must be a boolean`);
      } else throw unsupported(`stream_options.${k}`, `stream_options.${k} is not supported (supported: include_usage)`);
    }
  },
  max_tokens: () => undefined,
  max_completion_tokens: () => undefined,
  temperature: () => undefined,
  top_p: () => undefined,
  top_k: () => undefined,
  min_p: () => undefined,
  repetition_penalty: () => undefined,
  seed: () => undefined,
  stop: () => undefined,
  logprobs: () => undefined,
  top_logprobs: () => undefined,
  response_format: () => undefined,
  // Accepted when they ask for what the server does anyway.
  n: (v) => {
    if (!isNullish(v) && v !== 1) throw unsupported('n', 'n must be 1: this server generates one choice per request (send several requests for several answers)');
  },
  frequency_penalty: (v) => {
    if (!isNullish(v) && v !== 0) throw unsupported('frequency_penalty', 'frequency_penalty is not supported (only 0); use repetition_penalty (> 1 penalizes repeats) instead');
  },
  presence_penalty: (v) => {
    if (!isNullish(v) && v !== 0) throw unsupported('presence_penalty', 'presence_penalty is not supported (only 0); use repetition_penalty (> 1 penalizes repeats) instead');
  },
  logit_bias: (v) => {
    if (!isNullish(v) && !(isPlainObject(v) && Object.keys(v).length === 0)) throw unsupported('logit_bias', 'logit_bias is not supported');
  },
  tools: (v) => {
    if (!isNullish(v) && !(Array.isArray(v) && v.length === 0)) throw unsupported('tools', 'tools (function calling) are not supported by PerceptionLM on this server');
  },
  tool_choice: (v) => {
    if (!isNullish(v) && v !== 'none') throw unsupported('tool_choice', "tool_choice is not supported (only 'none'): this server has no function calling");
  },
  parallel_tool_calls: (v) => {
    if (!isNullish(v) && typeof v !== 'boolean') throw bad('parallel_tool_calls', 'parallel_tool_calls must be a boolean');
  },
  functions: (v) => {
    if (!isNullish(v) && !(Array.isArray(v) && v.length === 0)) throw unsupported('functions', 'functions (function calling) are not supported by this server');
  },
  function_call: (v) => {
    if (!isNullish(v) && v !== 'none') throw unsupported('function_call', "function_call is not supported (only 'none')");
  },
  modalities: (v) => {
    if (!isNullish(v) && !(Array.isArray(v) && v.every((m) => m === 'text'))) throw unsupported('modalities', "modalities: only ['text'] output is supported");
  },
  audio: (v) => {
    if (!isNullish(v)) throw unsupported('audio', 'audio output is not supported');
  },
  prediction: (v) => {
    if (!isNullish(v)) throw unsupported('prediction', 'predicted outputs are not supported');
  },
  reasoning_effort: (v) => {
    if (!isNullish(v)) throw unsupported('reasoning_effort', 'reasoning_effort is not supported: PerceptionLM is not a reasoning model');
  },
  verbosity: (v) => {
    if (!isNullish(v)) throw unsupported('verbosity', 'verbosity is not supported');
  },
  web_search_options: (v) => {
    if (!isNullish(v)) throw unsupported('web_search_options', 'web search is not supported');
  },
  store: (v) => {
    if (v === true) throw unsupported('store', 'store is not supported: this server keeps no completions');
    if (!isNullish(v) && typeof v !== 'boolean') throw bad('store', 'store must be a boolean');
  },
  service_tier: (v) => {
    if (!isNullish(v) && v !== 'auto' && v !== 'default') throw unsupported('service_tier', "service_tier: only 'auto' and 'default' are supported");
  },
  // Identification and caching hints that do not change the output.
  user: (v) => {
    if (!isNullish(v) && typeof v !== 'string') throw bad('user', 'user must be a string');
  },
  safety_identifier: (v) => {
    if (!isNullish(v) && typeof v !== 'string') throw bad('safety_identifier', 'safety_identifier must be a string');
  },
  prompt_cache_key: (v) => {
    if (!isNullish(v) && typeof v !== 'string') throw bad('prompt_cache_key', 'prompt_cache_key must be a string');
  },
  metadata: (v) => {
    if (!isNullish(v) && !isPlainObject(v)) throw bad('metadata', 'metadata must be an object');
  },
};

const MESSAGE_KEYS = new Set(['role', 'content', 'name', 'refusal', 'tool_calls', 'function_call', 'audio']);

function parseMessages(raw: unknown): ChatRequestMessage[] {
  if (!Array.isArray(raw) || raw.length === 0) throw bad('messages', 'messages must be a non-empty array');
  const out: ChatRequestMessage[] = [];
  for (let i = 0; i < raw.length; i++) {
    const m = raw[i] as unknown;
    const param = `messages[${i}]`;
    if (!isPlainObject(m)) throw bad(param, `${param} must be an object`);
    let role = m.role;
    if (role === 'developer') role = 'system';
    if (role === 'tool' || role === 'function') throw unsupported(`${param}.role`, `${param}.role '${role}' is not supported: this server has no function calling`);
    if (role !== 'system' && role !== 'user' && role !== 'assistant') throw bad(`${param}.role`, `${param}.role must be system, developer, user or assistant`);
    for (const k of Object.keys(m)) {
      if (!MESSAGE_KEYS.has(k)) throw unsupported(`${param}.${k}`, `${param}.${k} is not supported`);
    }
    if (!isNullish(m.tool_calls) && !(Array.isArray(m.tool_calls) && m.tool_calls.length === 0)) throw unsupported(`${param}.tool_calls`, `${param}.tool_calls is not supported`);
    if (!isNullish(m.function_call)) throw unsupported(`${param}.function_call`, `${param}.function_call is not supported`);
    if (!isNullish(m.audio)) throw unsupported(`${param}.audio`, `${param}.audio is not supported`);
    if (!isNullish(m.name) && typeof m.name !== 'string') throw bad(`${param}.name`, `${param}.name must be a string`);
    if (typeof m.content === 'string') {
      out.push({ role, content: m.content });
      continue;
    }
    if (isNullish(m.content) && role === 'assistant') {
      out.push({ role, content: '' });
      continue;
    }
    if (!Array.isArray(m.content)) throw bad(`${param}.content`, `${param}.content must be a string or an array of content parts`);
    const parts: ChatPart[] = [];
    for (let j = 0; j < m.content.length; j++) {
      const p = m.content[j] as unknown;
      const pp = `${param}.content[${j}]`;
      if (!isPlainObject(p)) throw bad(pp, `${pp} must be an object`);
      if (p.type === 'text') {
        if (typeof p.text !== 'string') throw bad(`${pp}.text`, `${pp}.text must be a string`);
        parts.push({ type: 'text', text: p.text });
      } else if (p.type === 'image_url') {
        if (role !== 'user') throw bad(pp, `${pp}: images are accepted in user messages only`);
        const iu = p.image_url;
        const obj = typeof iu === 'string' ? { url: iu } : iu;
        if (!isPlainObject(obj) || typeof obj.url !== 'string') throw bad(`${pp}.image_url`, `${pp}.image_url.url must be a string`);
        for (const k of Object.keys(obj)) {
          if (k !== 'url' && k !== 'detail') throw unsupported(`${pp}.image_url.${k}`, `${pp}.image_url.${k} is not supported`);
        }
        const detail = isNullish(obj.detail) ? 'auto' : obj.detail;
        if (detail !== 'auto' && detail !== 'low' && detail !== 'high') throw bad(`${pp}.image_url.detail`, `${pp}.image_url.detail must be 'auto', 'low' or 'high'`);
        parts.push({ type: 'image', url: obj.url, detail, param: pp });
      } else {
        throw unsupported(pp, `${pp}: content part type ${JSON.stringify(p.type)} is not supported (supported: text, image_url)`);
      }
    }
    out.push({ role, content: parts });
  }
  return out;
}

const SCHEMA_NAME = /^[A-Za-z0-9_-]{1,64}$/;

function parseResponseFormat(v: unknown): EngineResponseFormat | undefined {
  if (isNullish(v)) return undefined;
  if (!isPlainObject(v)) throw bad('response_format', 'response_format must be an object');
  if (v.type === 'text') return undefined;
  if (v.type === 'json_object') return { type: 'json_object' };
  if (v.type === 'json_schema') {
    const js = v.json_schema;
    if (!isPlainObject(js)) throw bad('response_format.json_schema', "response_format.json_schema must be an object { name, schema, strict }");
    if (typeof js.name !== 'string' || !SCHEMA_NAME.test(js.name)) {
      throw bad('response_format.json_schema.name', 'response_format.json_schema.name must be 1 to 64 letters, digits, _ or -');
    }
    if (!isNullish(js.schema) && !isPlainObject(js.schema)) throw bad('response_format.json_schema.schema', 'response_format.json_schema.schema must be a JSON Schema object');
    if (!isNullish(js.strict) && typeof js.strict !== 'boolean') throw bad('response_format.json_schema.strict', 'response_format.json_schema.strict must be a boolean');
    if (!isNullish(js.description) && typeof js.description !== 'string') throw bad('response_format.json_schema.description', 'response_format.json_schema.description must be a string');
    return { type: 'json_schema', schema: (js.schema as object | undefined) ?? {} };
  }
  throw bad('response_format.type', "response_format.type must be 'text', 'json_object' or 'json_schema'");
}

/**
 * Validates a parsed request body. Throws {@link HttpError} 400 naming the first field that is
 * invalid or not supported.
 *
 * @example
 * ```ts
 * const req = parseChatRequest(JSON.parse(body), { maxTokensLimit: 4096, defaultMaxTokens: 256 });
 * ```
 */
export function parseChatRequest(body: unknown, limits: RequestLimits): ChatRequest {
  if (!isPlainObject(body)) throw new HttpError(400, 'the body must be a JSON object', 'invalid_request_error', 'invalid_value');
  for (const [k, v] of Object.entries(body)) {
    const check = FIELD_CHECKS[k];
    if (!check) throw new HttpError(400, `unrecognized request argument: ${k}`, 'invalid_request_error', 'unknown_parameter', k);
    check(v, body);
  }
  const stream = bool(body, 'stream') ?? false;
  const so = body.stream_options as { include_usage?: unknown } | null | undefined;
  const maxTokens =
    num(body, 'max_completion_tokens', 1, limits.maxTokensLimit, true) ??
    num(body, 'max_tokens', 1, limits.maxTokensLimit, true) ??
    Math.min(limits.defaultMaxTokens, limits.maxTokensLimit);
  const logprobs = bool(body, 'logprobs') ?? false;
  const topLogprobs = num(body, 'top_logprobs', 0, MAX_TOP_LOGPROBS, true) ?? 0;
  if (topLogprobs > 0 && !logprobs) throw bad('top_logprobs', 'top_logprobs requires logprobs: true');
  let stop: string[] | undefined;
  if (typeof body.stop === 'string') stop = [body.stop];
  else if (Array.isArray(body.stop) && body.stop.length <= 16 && body.stop.every((s) => typeof s === 'string')) stop = body.stop as string[];
  else if (!isNullish(body.stop)) throw bad('stop', 'stop must be a string or an array of at most 16 strings');
  return {
    model: typeof body.model === 'string' ? body.model : undefined,
    messages: parseMessages(body.messages),
    stream,
    includeUsage: so?.include_usage === true,
    maxTokens,
    temperature: num(body, 'temperature', 0, 2),
    topP: num(body, 'top_p', 0, 1, false, true),
    topK: num(body, 'top_k', 0, 1_000_000, true),
    minP: num(body, 'min_p', 0, 1),
    repetitionPenalty: num(body, 'repetition_penalty', 0, 10, false, true),
    seed: num(body, 'seed', 0, Number.MAX_SAFE_INTEGER, true),
    stop: stop && stop.some((s) => s.length > 0) ? stop.filter((s) => s.length > 0) : undefined,
    logprobs,
    topLogprobs,
    responseFormat: parseResponseFormat(body.response_format),
  };
}

/** One token's log-probabilities as the engine reports them (`GenerateChunk.logprob`). */
export interface EngineLogprob {
  tokenId: number;
  logprob: number;
  top: Array<{ tokenId: number; logprob: number }>;
}

/** One entry of OpenAI's `choices[].logprobs.content`. */
export interface OpenAILogprob {
  token: string;
  logprob: number;
  bytes: number[] | null;
  top_logprobs: Array<{ token: string; logprob: number; bytes: number[] | null }>;
}

// GPT-2 byte-level alphabet: byte -> printable char; inverted to get a token's bytes back.
const BYTE_OF_CHAR: Map<string, number> = (() => {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n++);
    }
  }
  const m = new Map<string, number>();
  bs.forEach((b, i) => m.set(String.fromCodePoint(cs[i]), b));
  return m;
})();

/**
 * The UTF-8 bytes a byte-level BPE token string stands for (`'Ġhello'` -> ' hello'). Characters outside
 * the byte alphabet (added tokens such as `<|eot_id|>` are written literally) are taken as UTF-8.
 */
export function tokenBytes(token: string): number[] {
  const out: number[] = [];
  for (const ch of token) {
    const b = BYTE_OF_CHAR.get(ch);
    if (b !== undefined) out.push(b);
    else out.push(...Buffer.from(ch, 'utf8'));
  }
  return out;
}

/**
 * Converts the engine's log-probabilities of one token into OpenAI's entry, keeping `topN` alternatives.
 *
 * @param idToToken the tokenizer's id -> token string (byte-level form).
 */
export function toOpenAILogprob(lp: EngineLogprob, idToToken: (id: number) => string | undefined, topN: number): OpenAILogprob {
  const one = (tokenId: number, logprob: number): { token: string; logprob: number; bytes: number[] | null } => {
    const t = idToToken(tokenId);
    if (t === undefined) return { token: '', logprob, bytes: null };
    const bytes = tokenBytes(t);
    return { token: Buffer.from(bytes).toString('utf8'), logprob, bytes };
  };
  const self = one(lp.tokenId, lp.logprob);
  return { ...self, top_logprobs: lp.top.slice(0, topN).map((t) => one(t.tokenId, t.logprob)) };
}
