import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { ChatMessage, ChatTemplate, PLM_CHAT_TEMPLATE } from '../lib/chat_template';
import { PlmTokenizer } from '../lib/tokenizer';

interface TemplateCase {
  name: string;
  messages: ChatMessage[];
  add_generation_prompt: boolean;
  bos_token: string;
  rendered: string;
  ids: number[];
}

const ROOT = path.resolve(__dirname, '..');
const FIX = path.join(ROOT, 'test', 'fixtures', 'chat_template');
const fixture = JSON.parse(fs.readFileSync(path.join(FIX, 'cases.json'), 'utf8')) as {
  chat_template: string;
  cases: TemplateCase[];
};

function plmTokenizer(): PlmTokenizer {
  const bundled = path.join(ROOT, 'models', 'plm-tiny-random');
  if (fs.existsSync(path.join(bundled, 'tokenizer.json'))) return PlmTokenizer.fromDirectory(bundled);
  const dir = path.join(ROOT, 'node_modules', '@lenml', 'tokenizer-llama3', 'models');
  const tj = JSON.parse(fs.readFileSync(path.join(dir, 'tokenizer.json'), 'utf8')) as {
    added_tokens: Array<{ id: number; content: string }>;
  };
  for (const t of tj.added_tokens) {
    if (t.id === 128002) t.content = '<|image|>';
    if (t.id === 128003) t.content = '<|video|>';
  }
  return new PlmTokenizer(tj, { bos_token: '<|begin_of_text|>', eos_token: '<|eot_id|>' });
}

describe('chat template parity with transformers', () => {
  const tok = plmTokenizer();

  test('the built-in template is the released one', () => {
    expect(PLM_CHAT_TEMPLATE).toBe(fixture.chat_template);
    expect(fs.readFileSync(path.join(FIX, 'chat_template.jinja'), 'utf8')).toBe(fixture.chat_template);
  });

  test.each(fixture.cases.map((c) => [c.name, c] as const))('%s', (_name, c) => {
    for (const t of [
      new ChatTemplate(fixture.chat_template, { bos_token: c.bos_token }),
      ChatTemplate.builtin({ bos_token: c.bos_token }),
    ]) {
      const rendered = t.render(c.messages, { addGenerationPrompt: c.add_generation_prompt });
      expect(rendered).toBe(c.rendered);
      expect(tok.encode(rendered)).toEqual(c.ids);
    }
  });

  test('string content of user turns is kept (typed-content templates)', () => {
    const t = ChatTemplate.builtin({ bos_token: '<|begin_of_text|>' });
    const a = t.render([{ role: 'user', content: ' Hello ' }]);
    const b = t.render([{ role: 'user', content: [{ type: 'text', text: 'Hello' }] }]);
    expect(a).toBe(b);
  });

  test('media payloads never reach the template', () => {
    const t = ChatTemplate.builtin({ bos_token: '<|begin_of_text|>' });
    const big = new Uint8Array(50_000_000);
    const r = t.render([{ role: 'user', content: [{ type: 'image', image: big }, { type: 'text', text: 'x' }] }]);
    expect(r).toContain('<|image|>x<|eot_id|>');
  });
});

describe('template discovery', () => {
  let dir: string;
  beforeEach(() => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'plm-tpl-'));
  });
  afterEach(() => fs.rmSync(dir, { recursive: true, force: true }));

  test('falls back to the built-in PLM template', () => {
    const t = ChatTemplate.fromDirectory(dir, {});
    expect(t.origin).toBe('builtin-plm');
    expect(t.render([{ role: 'user', content: 'Hi' }]).startsWith('<|begin_of_text|><|start_header_id|>system')).toBe(true);
  });

  test('tokenizer_config.json chat_template', () => {
    const t = ChatTemplate.fromDirectory(dir, { bos_token: 'B', chat_template: '{{ bos_token }}{{ messages[0].content }}' });
    expect(t.origin).toBe('tokenizer_config.json');
    expect(t.render([{ role: 'user', content: 'Hi' }])).toBe('BHi');
  });

  test('chat_template.json beats tokenizer_config.json, chat_template.jinja beats both', () => {
    fs.writeFileSync(path.join(dir, 'chat_template.json'), JSON.stringify({ chat_template: 'json' }));
    expect(ChatTemplate.fromDirectory(dir, { chat_template: 'cfg' }).render([{ role: 'user', content: 'x' }])).toBe('json');
    fs.writeFileSync(path.join(dir, 'chat_template.jinja'), 'jinja{{ add_generation_prompt }}');
    const t = ChatTemplate.fromDirectory(dir, { chat_template: 'cfg' });
    expect(t.origin).toBe('chat_template.jinja');
    expect(t.render([{ role: 'user', content: 'x' }], { addGenerationPrompt: false })).toBe('jinjafalse');
  });

  test('named template lists pick "default"', () => {
    const t = ChatTemplate.fromDirectory(dir, {
      chat_template: [
        { name: 'tool_use', template: 'tools' },
        { name: 'default', template: 'plain' },
      ],
    });
    expect(t.render([{ role: 'user', content: 'x' }])).toBe('plain');
  });

  test('bad messages are ERR_INVALID_ARGUMENT', () => {
    const t = ChatTemplate.builtin();
    expect(() => t.render([])).toThrow(expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }));
    expect(() => t.render([{ role: 'user', content: [{ type: 'text' } as never] }])).toThrow(
      expect.objectContaining({ code: 'ERR_INVALID_ARGUMENT' }),
    );
  });
});
