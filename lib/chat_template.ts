/**
 * Chat messages and the checkpoint's Jinja chat template, rendered with `@huggingface/jinja` the way
 * transformers' `apply_chat_template` renders it.
 */
import * as fs from 'fs';
import * as path from 'path';
import { PlmError } from './errors';
import type { TokenizerConfigJson } from './tokenizer';
import { BudgetedTemplate, DEFAULT_TEMPLATE_BUDGET, TemplateBudget, TemplateBudgetError } from './template_budget';

export { DEFAULT_TEMPLATE_BUDGET, TemplateBudget };

/** A text part of a message. */
export interface TextContent {
  type: 'text';
  text: string;
}

/**
 * An image part. `image` holds the image itself (a path, bytes, ...: whatever `preprocessImage`
 * accepts); when omitted, the images given next to the messages (`options.images`) are used in
 * order of appearance.
 */
export interface ImageContent<I = unknown> {
  type: 'image';
  image?: I;
}

/** A video part; `video` as for {@link ImageContent} (`options.videos` when omitted). */
export interface VideoContent<V = unknown> {
  type: 'video';
  video?: V;
}

export type MessageContent<I = unknown, V = unknown> = TextContent | ImageContent<I> | VideoContent<V>;

/** One chat message in the transformers format. */
export interface ChatMessage<I = unknown, V = unknown> {
  role: 'system' | 'user' | 'assistant' | (string & {});
  content: string | Array<MessageContent<I, V>>;
}

/**
 * The PerceptionLM chat template, character for character as transformers' PerceptionLM conversion writes it
 * (`CHAT_TEMPLATE` in `models/perception_lm/convert_perception_lm_weights_to_hf.py`). Used when a checkpoint
 * carries no template of its own.
 * Within a message it writes all `<|image|>` placeholders, then all `<|video|>`, then the trimmed
 * texts; the default system prompt is used when the first message is not a system message.
 */
export const PLM_DEFAULT_SYSTEM_PROMPT =
  'You are a helpful language and vision assistant. You are able to understand the visual content ' +
  'that the user provides, and assist the user with a variety of tasks using natural language.';

export const PLM_CHAT_TEMPLATE =
  '{{- bos_token }}' +
  "{%- if messages[0]['role'] == 'system' -%}" +
  "    {%- set system_message = messages[0]['content']|trim %}\n" +
  '    {%- set messages = messages[1:] %}\n' +
  '{%- else %}' +
  "    {%- set system_message = '" +
  PLM_DEFAULT_SYSTEM_PROMPT +
  "' %}" +
  '{%- endif %}' +
  "{{- '<|start_header_id|>system<|end_header_id|>\\n\\n' }}" +
  '{{- system_message }}' +
  "{{- '<|eot_id|>' }}" +
  '{%- for message in messages %}' +
  "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}" +
  "{%- for content in message['content'] | selectattr('type', 'equalto', 'image') %}" +
  "{{ '<|image|>' }}" +
  '{%- endfor %}' +
  "{%- for content in message['content'] | selectattr('type', 'equalto', 'video') %}" +
  "{{ '<|video|>' }}" +
  '{%- endfor %}' +
  "{%- for content in message['content'] | selectattr('type', 'equalto', 'text') %}" +
  "{{- content['text'] | trim }}" +
  '{%- endfor %}' +
  "{{'<|eot_id|>' }}" +
  '{%- endfor %}' +
  '{%- if add_generation_prompt %}' +
  "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}" +
  '{%- endif %}';

/** Where a template came from. */
export type ChatTemplateSource = 'chat_template.jinja' | 'chat_template.json' | 'tokenizer_config.json' | 'builtin-plm' | 'string';

/** Options of {@link ChatTemplate.render}. */
export interface RenderOptions {
  /** Append the assistant header so the model answers. Default true. */
  addGenerationPrompt?: boolean;
  /** Extra variables for the template (e.g. `{ date_string: '...' }`). */
  extra?: Record<string, unknown>;
  /**
   * Limits of this render (the template is untrusted: it comes with the checkpoint). Defaults:
   * {@link DEFAULT_TEMPLATE_BUDGET} (1M steps, 250 ms, depth 400, 4 Mi characters per value, 64 Mi in
   * total, 100k list items). A render over budget throws `PlmError('ERR_TEMPLATE')` naming the limit.
   */
  budget?: Partial<TemplateBudget>;
}

function tokenContent(t: unknown): string | undefined {
  if (typeof t === 'string') return t;
  if (t && typeof t === 'object' && typeof (t as { content?: unknown }).content === 'string') {
    return (t as { content: string }).content;
  }
  return undefined;
}

/** Picks the template string out of a `chat_template` value (string, or list of {name, template}). */
function pickTemplate(value: unknown, file: string): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return value;
  if (Array.isArray(value)) {
    const named = value.filter(
      (v): v is { name: string; template: string } =>
        typeof v === 'object' && v !== null && typeof v.name === 'string' && typeof v.template === 'string',
    );
    const def = named.find((v) => v.name === 'default') ?? named[0];
    if (def) return def.template;
  }
  if (typeof value === 'object') {
    const rec = value as Record<string, unknown>;
    if (typeof rec.default === 'string') return rec.default;
  }
  throw new PlmError('ERR_CORRUPT_FILE', `${file}: chat_template must be a string or a list of {name, template}`);
}

/**
 * Keeps only what a template can look at: roles, text and the type of each part. Media payloads
 * (megabytes of pixels or bytes) never enter the Jinja runtime. String content stays a string
 * unless `typedContent` asks for the list form.
 */
function sanitizeMessages(messages: readonly ChatMessage[], typedContent: boolean): Record<string, unknown>[] {
  return messages.map((m, i) => {
    if (typeof m !== 'object' || m === null || typeof m.role !== 'string') {
      throw new PlmError('ERR_INVALID_ARGUMENT', `messages[${i}] must be an object with a string "role"`);
    }
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(m)) {
      if (k === 'content') continue;
      if (v === null || ['string', 'number', 'boolean'].includes(typeof v)) out[k] = v;
    }
    if (typeof m.content === 'string') {
      out.content = typedContent && m.role !== 'system' ? [{ type: 'text', text: m.content }] : m.content;
    } else if (Array.isArray(m.content)) {
      out.content = m.content.map((part, j) => {
        if (typeof part !== 'object' || part === null || typeof part.type !== 'string') {
          throw new PlmError('ERR_INVALID_ARGUMENT', `messages[${i}].content[${j}] must be an object with a "type"`);
        }
        if (part.type === 'text') {
          if (typeof (part as TextContent).text !== 'string') {
            throw new PlmError('ERR_INVALID_ARGUMENT', `messages[${i}].content[${j}] is a text part without a string "text"`);
          }
          return { type: 'text', text: (part as TextContent).text };
        }
        const p: Record<string, unknown> = { type: part.type };
        for (const [k, v] of Object.entries(part)) {
          if (k !== 'type' && typeof v === 'string' && v.length < 4096) p[k] = v;
        }
        return p;
      });
    } else {
      throw new PlmError('ERR_INVALID_ARGUMENT', `messages[${i}].content must be a string or an array of parts`);
    }
    return out;
  });
}

/**
 * A compiled chat template plus the special-token strings it may use.
 *
 * @example
 * ```ts
 * const t = ChatTemplate.fromDirectory('/models/Perception-LM-1B', tokenizer.config);
 * t.render([{ role: 'user', content: [{ type: 'image' }, { type: 'text', text: 'Describe the image.' }] }]);
 * // '<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nYou are a helpful ...'
 * ```
 */
export class ChatTemplate {
  /** The Jinja source. */
  readonly source: string;
  /** Where it was read from (`'builtin-plm'` when the checkpoint had none). */
  readonly origin: ChatTemplateSource;
  /** Special-token strings passed to the template (`bos_token`, `eos_token`, ...). */
  readonly specialTokens: Readonly<Record<string, string>>;
  /** True when the template treats message content as a list of typed parts (like PLM's). */
  readonly typedContent: boolean;
  private readonly compiled: BudgetedTemplate;

  /**
   * @param source Jinja source of the template.
   * @param tokenizerConfig tokenizer_config.json (for `bos_token`, `eos_token`, `pad_token`, `unk_token`).
   * @param origin where the source came from (for messages).
   */
  constructor(source: string, tokenizerConfig: TokenizerConfigJson = {}, origin: ChatTemplateSource = 'string') {
    this.source = source;
    this.origin = origin;
    try {
      this.compiled = new BudgetedTemplate(source);
    } catch (e) {
      throw new PlmError('ERR_CORRUPT_FILE', `the chat template (${origin}) does not parse: ${(e as Error).message}`, {
        cause: e,
      });
    }
    const st: Record<string, string> = {};
    for (const key of ['bos_token', 'eos_token', 'pad_token', 'unk_token', 'sep_token', 'cls_token', 'mask_token']) {
      const v = tokenContent(tokenizerConfig[key]);
      if (v !== undefined) st[key] = v;
    }
    // The PLM template writes bos_token; checkpoints without a tokenizer_config still need it.
    if (st.bos_token === undefined && origin === 'builtin-plm') st.bos_token = '<|begin_of_text|>';
    this.specialTokens = st;
    this.typedContent = /selectattr\(\s*['"]type['"]|\[\s*['"]type['"]\s*\]|\.type\b/.test(source);
  }

  /**
   * Finds the checkpoint's template, in transformers' order of precedence: `chat_template.jinja`,
   * then `chat_template.json` (`{"chat_template": ...}`), then `chat_template` in
   * tokenizer_config.json. **When none exists, falls back to the built-in PerceptionLM template
   * ({@link PLM_CHAT_TEMPLATE}, transformers' PerceptionLM conversion script)** and reports `origin: 'builtin-plm'`.
   *
   * @param dir checkpoint directory.
   * @param tokenizerConfig the parsed tokenizer_config.json (`{}` when absent).
   * @example
   * ```ts
   * const t = ChatTemplate.fromDirectory(dir, tok.config);
   * console.log(t.origin); // 'chat_template.jinja'
   * ```
   */
  static fromDirectory(dir: string, tokenizerConfig: TokenizerConfigJson = {}): ChatTemplate {
    const jinjaPath = path.join(dir, 'chat_template.jinja');
    if (fs.existsSync(jinjaPath)) {
      return new ChatTemplate(fs.readFileSync(jinjaPath, 'utf8'), tokenizerConfig, 'chat_template.jinja');
    }
    const jsonPath = path.join(dir, 'chat_template.json');
    if (fs.existsSync(jsonPath)) {
      let parsed: unknown;
      try {
        parsed = JSON.parse(fs.readFileSync(jsonPath, 'utf8')) as unknown;
      } catch (e) {
        throw new PlmError('ERR_CORRUPT_FILE', `${jsonPath} is not valid JSON: ${(e as Error).message}`, { cause: e });
      }
      const src =
        typeof parsed === 'object' && parsed !== null
          ? pickTemplate((parsed as Record<string, unknown>).chat_template, jsonPath)
          : undefined;
      if (src !== undefined) return new ChatTemplate(src, tokenizerConfig, 'chat_template.json');
    }
    const fromConfig = pickTemplate(tokenizerConfig.chat_template, path.join(dir, 'tokenizer_config.json'));
    if (fromConfig !== undefined) return new ChatTemplate(fromConfig, tokenizerConfig, 'tokenizer_config.json');
    return ChatTemplate.builtin(tokenizerConfig);
  }

  /** The built-in PerceptionLM template (transformers' PerceptionLM conversion script). */
  static builtin(tokenizerConfig: TokenizerConfigJson = {}): ChatTemplate {
    return new ChatTemplate(PLM_CHAT_TEMPLATE, tokenizerConfig, 'builtin-plm');
  }

  /**
   * Renders messages to the prompt string (placeholders not yet expanded).
   *
   * String content is passed as a string; for templates that iterate typed parts (PLM's), the string
   * content of user/assistant messages is first turned into `[{ type: 'text', text }]` so it is not
   * silently dropped. Media payloads are stripped before rendering.
   *
   * @param messages chat messages in the transformers format.
   * @param options `addGenerationPrompt` (default true), `extra` template variables, `budget` (render limits,
   *   default {@link DEFAULT_TEMPLATE_BUDGET}).
   * @throws PlmError ERR_INVALID_ARGUMENT (bad messages, the template raised), ERR_TEMPLATE (over budget).
   * @example
   * ```ts
   * t.render([{ role: 'user', content: 'Hi' }]);
   * ```
   */
  render(messages: readonly ChatMessage[], options: RenderOptions = {}): string {
    if (!Array.isArray(messages) || messages.length === 0) {
      throw new PlmError('ERR_INVALID_ARGUMENT', 'messages must be a non-empty array of {role, content}');
    }
    const ctx: Record<string, unknown> = {
      ...this.specialTokens,
      ...(options.extra ?? {}),
      messages: sanitizeMessages(messages, this.typedContent),
      add_generation_prompt: options.addGenerationPrompt ?? true,
    };
    try {
      return this.compiled.render(ctx, options.budget);
    } catch (e) {
      if (e instanceof TemplateBudgetError) {
        throw new PlmError(
          'ERR_TEMPLATE',
          `the chat template (${this.origin}) exceeded its render budget: ${e.message}. The template is probably hostile or ` +
            `broken: fix or replace the checkpoint's chat template, or raise the limit with render(..., { budget: { ${e.limit}: ... } })`,
          { cause: e },
        );
      }
      if (e instanceof RangeError) {
        // Stack overflow or an oversized string that slipped past the budget: still the template's fault.
        throw new PlmError('ERR_TEMPLATE', `the chat template (${this.origin}) failed: ${e.message}`, { cause: e });
      }
      throw new PlmError('ERR_INVALID_ARGUMENT', `the chat template (${this.origin}) failed to render these messages: ${(e as Error).message}`, {
        cause: e,
      });
    }
  }
}
