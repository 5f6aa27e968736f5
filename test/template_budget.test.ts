/**
 * Hostile chat templates (issue 19): each is generated from building blocks (a payload that loops,
 * recurses or grows a string, inside a wrapper), none is picked to pass. Every one must end with
 * PlmError('ERR_TEMPLATE') naming a limit, with the event loop still turning between renders.
 */
import { Template } from '@huggingface/jinja';
import { ChatTemplate, DEFAULT_TEMPLATE_BUDGET, PLM_CHAT_TEMPLATE } from '../lib/chat_template';
import { PlmError } from '../lib/errors';

/** Payloads: each, unbounded, would hang or exhaust memory. `{{X}}` is a fresh identifier suffix. */
const PAYLOADS: Record<string, string> = {
  rangeLoop: '{% for i in range(100000000) %}x{% endfor %}',
  rangeJoin: "{{ range(10000000)|join(',') }}",
  rangeLength: '{{ range(50000000)|length }}',
  nestedLoops: '{% for i in range(5000) %}{% for j in range(5000) %}{{ j }}{% endfor %}{% endfor %}',
  tripleLoops: '{% for i in range(400) %}{% for j in range(400) %}{% for k in range(400) %}.{% endfor %}{% endfor %}{% endfor %}',
  linearRecursion: '{% macro f{{X}}(n) %}{{ f{{X}}(n + 1) }}{% endmacro %}{{ f{{X}}(0) }}',
  binaryRecursion: '{% macro g{{X}}(n) %}{% if n > 0 %}{{ g{{X}}(n - 1) }}{{ g{{X}}(n - 1) }}{% endif %}{% endmacro %}{{ g{{X}}(40) }}',
  doubling: "{% set ns{{X}} = namespace(s='ab') %}{% for i in range(64) %}{% set ns{{X}}.s = ns{{X}}.s ~ ns{{X}}.s %}{% endfor %}{{ ns{{X}}.s|length }}",
  replaceGrowth:
    "{% set ns{{X}} = namespace(s='aaaa') %}{% for i in range(40) %}{% set ns{{X}}.s = ns{{X}}.s|replace('a', 'aaaa') %}{% endfor %}{{ ns{{X}}.s|length }}",
  methodReplace:
    "{% set ns{{X}} = namespace(s='abababab') %}{% for i in range(40) %}{% set ns{{X}}.s = ns{{X}}.s.replace('a', 'aaaaaaaa') %}{% endfor %}{{ ns{{X}}.s|length }}",
  indentBomb: "{% set s{{X}} = range(200000)|join('\\n') %}{{ s{{X}}|indent(100000) }}",
  centerBomb: "{{ 'x'|center(900000000) }}",
  listGrowth: '{% set ns{{X}} = namespace(l=[1]) %}{% for i in range(64) %}{% set ns{{X}}.l = ns{{X}}.l + ns{{X}}.l %}{% endfor %}{{ ns{{X}}.l|length }}',
};

/** Wrappers: where the payload sits. `{{P}}` is the payload. */
const WRAPPERS: Record<string, string> = {
  top: '{{P}}',
  afterText: "{{ bos_token }}{% for m in messages %}{{ m['role'] }}{% endfor %}{{P}}",
  inMessageLoop: '{% for m in messages %}{{P}}{% endfor %}',
  inIf: '{% if messages|length > 0 %}{{P}}{% endif %}',
  inMacro: '{% macro wrap() %}{{P}}{% endmacro %}{{ wrap() }}',
  inSetBlock: '{% set captured %}{{P}}{% endset %}{{ captured|length }}',
};

function hostileTemplates(): Array<{ name: string; source: string }> {
  const out: Array<{ name: string; source: string }> = [];
  let n = 0;
  for (const [w, wrapper] of Object.entries(WRAPPERS)) {
    for (const [p, payload] of Object.entries(PAYLOADS)) {
      const body = payload.split('{{X}}').join(`_${n++}`);
      out.push({ name: `${p} in ${w}`, source: wrapper.split('{{P}}').join(body) });
    }
  }
  return out;
}

const MESSAGES = [
  { role: 'system', content: 'sys' },
  { role: 'user', content: 'hi' },
];

describe('hostile chat templates render under a budget', () => {
  const cases = hostileTemplates();

  test('there are at least 50 generated templates', () => {
    expect(cases.length).toBeGreaterThanOrEqual(50);
  });

  test('each fails with ERR_TEMPLATE naming a limit, and the event loop keeps turning', async () => {
    let ticks = 0;
    const timer = setInterval(() => ticks++, 1);
    const failures: string[] = [];
    const limits = new Map<string, number>();
    try {
      for (const c of cases) {
        const before = ticks;
        // Let the timer run: it must fire between any two renders.
        await new Promise((r) => setTimeout(r, 5));
        if (ticks === before) failures.push(`${c.name}: the timer did not fire before the render`);
        let err: unknown;
        try {
          new ChatTemplate(c.source).render(MESSAGES);
        } catch (e) {
          err = e;
        }
        if (!(err instanceof PlmError) || err.code !== 'ERR_TEMPLATE') {
          failures.push(`${c.name}: expected ERR_TEMPLATE, got ${err instanceof PlmError ? err.code + ' ' + err.message : String(err)}`);
          continue;
        }
        const m = /limit (max\w+) =/.exec(err.message);
        if (!m) failures.push(`${c.name}: the message names no limit: ${err.message}`);
        else limits.set(m[1], (limits.get(m[1]) ?? 0) + 1);
      }
    } finally {
      clearInterval(timer);
    }
    expect(failures).toEqual([]);
    // Several different limits were exercised, not one catch-all.
    expect(limits.size).toBeGreaterThanOrEqual(3);
  }, 120_000);

  test('a small budget stops a loop that the default budget allows', () => {
    const t = new ChatTemplate('{% for i in range(1000) %}{{ i }}{% endfor %}');
    expect(t.render(MESSAGES)).toHaveLength(2890);
    expect(() => t.render(MESSAGES, { budget: { maxSteps: 500 } })).toThrow(/maxSteps/);
    expect(() => t.render(MESSAGES, { budget: { maxChars: 100 } })).toThrow(/maxChars/);
  });

  test('a time budget stops a render that stays under the step budget', () => {
    const t = new ChatTemplate('{% for i in range(900000) %}{% if i % 2 == 0 %}.{% endif %}{% endfor %}');
    let err: unknown;
    try {
      t.render(MESSAGES, { budget: { maxMs: 1, maxSteps: 1e9, maxItems: 1e7, maxTotalChars: 1e9 } });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PlmError);
    expect((err as PlmError).code).toBe('ERR_TEMPLATE');
    expect((err as PlmError).message).toMatch(/maxMs/);
  });

  test('normal templates render exactly as the unbudgeted library does', () => {
    const many = Array.from({ length: 300 }, (_, i) => ({
      role: i % 2 === 0 ? 'user' : 'assistant',
      content: [{ type: 'text' as const, text: `message ${i} `.repeat(20) }],
    }));
    for (const [src, msgs] of [
      [PLM_CHAT_TEMPLATE, many],
      ["{% for m in messages %}{{ m.role|upper }}: {{ m.content|replace('a', 'A')|indent(2) }}\n{% endfor %}", MESSAGES],
      ["{{ range(10)|join(', ') }} {{ 'abc'|upper }} {{ messages|tojson }}", MESSAGES],
    ] as const) {
      const ours = new ChatTemplate(src, { bos_token: '<s>' });
      const ctx = { bos_token: '<s>', add_generation_prompt: true, messages: msgs };
      expect(ours.render(msgs as never, { budget: { maxMs: 60_000 } })).toBe(new Template(src).render(ctx as never));
    }
  });

  test('the defaults are documented values', () => {
    expect(DEFAULT_TEMPLATE_BUDGET).toEqual({
      maxSteps: 1_000_000,
      maxMs: 250,
      maxDepth: 400,
      maxChars: 4 * 1024 * 1024,
      maxTotalChars: 64 * 1024 * 1024,
      maxItems: 100_000,
    });
  });
});
