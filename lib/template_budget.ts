/**
 * A budgeted renderer for `@huggingface/jinja` templates. A chat template comes with the checkpoint
 * (untrusted), renders on the JS thread for every prompt, and Jinja can loop, recurse and build strings:
 * `{% for i in range(100000000) %}`, `{{ range(10000000)|join(',') }}`, self-calling macros. This renderer
 * runs the library's own interpreter with every evaluation step counted and checked against
 * {@link TemplateBudget}: steps, wall time, nesting depth, the length of any one value, the characters
 * produced in total, and the items `range()` may create. The size-amplifying operations (`range`, `join`,
 * `replace`, `indent`, `center`, `tojson(indent)`) are checked *before* they run, so no single step can
 * allocate more than the budget allows. Exceeding a limit throws {@link TemplateBudgetError}.
 *
 * A synchronous budget was chosen over a worker thread with a deadline: it keeps `ChatTemplate.render`
 * synchronous and costs ~no time on normal templates (benchmarks/template_render.js measures both).
 */
import { Environment, Interpreter, parse, tokenize } from '@huggingface/jinja';

/** Limits of one render. Every field is optional in {@link ChatTemplate.render}'s `budget`. */
export interface TemplateBudget {
  /** Evaluation steps (AST nodes evaluated, list items charged up front). Default 1,000,000. */
  maxSteps: number;
  /** Wall time in milliseconds, checked every 256 steps. Default 250. */
  maxMs: number;
  /** Nesting depth of evaluations (macro recursion). Default 400. */
  maxDepth: number;
  /** Length of any one string value, the output included. Default 4,194,304 (4 Mi characters). */
  maxChars: number;
  /** Characters produced over the whole render (every new string counted). Default 67,108,864 (64 Mi). */
  maxTotalChars: number;
  /** Items of any one list (`range()` results, loop items). Default 100,000. */
  maxItems: number;
}

/** The defaults of {@link TemplateBudget}. */
export const DEFAULT_TEMPLATE_BUDGET: Readonly<TemplateBudget> = Object.freeze({
  maxSteps: 1_000_000,
  maxMs: 250,
  maxDepth: 400,
  maxChars: 4 * 1024 * 1024,
  maxTotalChars: 64 * 1024 * 1024,
  maxItems: 100_000,
});

/** Which limit a render hit. */
export type TemplateLimit = keyof TemplateBudget;

/** Thrown when a render exceeds its budget; `limit` names the field of {@link TemplateBudget}. */
export class TemplateBudgetError extends Error {
  constructor(
    readonly limit: TemplateLimit,
    readonly value: number,
    message: string,
  ) {
    super(message);
    this.name = 'TemplateBudgetError';
  }
}

// The runtime value classes are not exported by name; they are told apart by their `type` tag.
type RV = { type: string; value: unknown };
type Node = { type: string; [k: string]: unknown };

function strLen(v: RV | undefined): number {
  return v && v.type === 'StringValue' ? (v.value as string).length : 0;
}

function countOccurrences(hay: string, needle: string, limit: number): number {
  if (needle.length === 0) return hay.length + 1;
  let n = 0;
  for (let i = hay.indexOf(needle); i !== -1 && n < limit; i = hay.indexOf(needle, i + needle.length)) n++;
  return n;
}

/** The library's `strftime_now` global (Y m d b B H M %), rewritten since the library does not export it. */
function strftimeNow(format: unknown): string {
  const date = new Date();
  const pad2 = (n: number): string => (n < 10 ? `0${n}` : String(n));
  return String(format).replace(/%[YmdbBHM%]/g, (t) => {
    switch (t) {
      case '%Y':
        return String(date.getFullYear());
      case '%m':
        return pad2(date.getMonth() + 1);
      case '%d':
        return pad2(date.getDate());
      case '%b':
        return new Intl.DateTimeFormat(undefined, { month: 'short' }).format(date);
      case '%B':
        return new Intl.DateTimeFormat(undefined, { month: 'long' }).format(date);
      case '%H':
        return pad2(date.getHours());
      case '%M':
        return pad2(date.getMinutes());
      default:
        return '%';
    }
  });
}

/** The interpreter's methods we wrap (private in the library's typings, plain methods at run time). */
interface InterpreterMethods {
  run(program: unknown): unknown;
  evaluate(node: unknown, env: unknown): unknown;
  evaluateCallExpression(node: unknown, env: unknown): unknown;
  evaluateFor(node: unknown, env: unknown): unknown;
  applyFilter(operand: unknown, filter: unknown, env: unknown): unknown;
}
const InterpreterBase = Interpreter as unknown as new (env: Environment) => InterpreterMethods;

class BudgetedInterpreter extends InterpreterBase {
  private steps = 0;
  private depth = 0;
  private totalChars = 0;
  private readonly deadline: number;

  constructor(
    env: Environment,
    private readonly b: TemplateBudget,
  ) {
    super(env);
    this.deadline = performance.now() + b.maxMs;
  }

  private fail(limit: TemplateLimit, value: number, what: string): never {
    throw new TemplateBudgetError(limit, value, `${what} (limit ${limit} = ${this.b[limit]})`);
  }

  /** Items that `range()` would create, checked before the list exists. */
  rangeItems(n: number): void {
    if (n > this.b.maxItems) this.fail('maxItems', n, `a list of ${n} items`);
    if (this.steps + n > this.b.maxSteps) this.fail('maxSteps', this.steps + n, `a list of ${n} items exceeds the step budget`);
    this.steps += n;
    if (performance.now() > this.deadline) this.fail('maxMs', this.b.maxMs, `the render ran over ${this.b.maxMs} ms`);
  }

  private checkSize(out: RV, node: Node): void {
    const len = strLen(out);
    if (len > 0) {
      if (len > this.b.maxChars) this.fail('maxChars', len, `a string of ${len} characters`);
      if (node.type === 'BinaryExpression' || node.type === 'FilterExpression' || node.type === 'CallExpression' || node.type === 'For') {
        this.totalChars += len;
        if (this.totalChars > this.b.maxTotalChars) this.fail('maxTotalChars', this.totalChars, `${this.totalChars} characters produced`);
      }
    } else if (out && (out.type === 'ArrayValue' || out.type === 'TupleValue')) {
      const n = (out.value as unknown[]).length;
      if (n > this.b.maxItems) this.fail('maxItems', n, `a list of ${n} items`);
    }
  }

  override evaluate(statement: unknown, environment: unknown): unknown {
    const node = statement as unknown as Node;
    if (node && node.type === '__Value') return node.value;
    if (++this.steps > this.b.maxSteps) this.fail('maxSteps', this.steps, `${this.steps} evaluation steps`);
    if ((this.steps & 255) === 0 && performance.now() > this.deadline) this.fail('maxMs', this.b.maxMs, `the render ran over ${this.b.maxMs} ms`);
    if (++this.depth > this.b.maxDepth) this.fail('maxDepth', this.depth, `nesting depth ${this.depth} (recursion?)`);
    try {
      const out = super.evaluate(statement, environment) as unknown as RV;
      this.checkSize(out, node);
      return out;
    } finally {
      this.depth--;
    }
  }

  /**
   * Loops: the library walks every item (a scope and a closure each) before the body runs, outside
   * `evaluate`; the iterable is evaluated here so its length is charged to the step budget first.
   */
  override evaluateFor(node: unknown, environment: unknown): unknown {
    const n = node as { iterable: Node & { lhs?: Node } };
    const it = n.iterable.type === 'SelectExpression' ? (n.iterable.lhs as Node) : n.iterable;
    const value = this.evaluate(it, environment) as RV;
    if (value && (value.type === 'ArrayValue' || value.type === 'ObjectValue')) {
      const len = value.type === 'ArrayValue' ? (value.value as unknown[]).length : (value.value as Map<unknown, unknown>).size;
      this.rangeItems(len);
    }
    const wrapped = { type: '__Value', value };
    const iterable = n.iterable.type === 'SelectExpression' ? { ...n.iterable, lhs: wrapped } : wrapped;
    return super.evaluateFor({ ...n, iterable }, environment);
  }

  /** Member calls: `s.replace(a, b)` is checked like the filter. */
  override evaluateCallExpression(expr: unknown, environment: unknown): unknown {
    const e = expr as unknown as { callee: Node; args: Node[] };
    if (e.callee?.type === 'MemberExpression' && !(e.callee as { computed?: boolean }).computed) {
      const prop = (e.callee as unknown as { property: { type: string; value: unknown } }).property;
      if (prop?.type === 'Identifier' && prop.value === 'replace') {
        const obj = this.evaluate(e.callee.object, environment) as unknown as RV;
        const args = e.args.map((a) => (a.type === 'KeywordArgumentExpression' ? a : (this.evaluate(a, environment) as unknown as RV)));
        if (obj.type === 'StringValue') this.checkReplace(obj.value as string, args as RV[]);
        const wrapped = {
          ...e,
          callee: { ...e.callee, object: { type: '__Value', value: obj } },
          args: args.map((a) => ('type' in a && (a as Node).type === 'KeywordArgumentExpression' ? a : { type: '__Value', value: a })),
        };
        return super.evaluateCallExpression(wrapped, environment);
      }
    }
    return super.evaluateCallExpression(expr, environment);
  }

  private checkReplace(s: string, args: RV[]): void {
    const [from, to, count] = args;
    if (!from || !to || from.type !== 'StringValue' || to.type !== 'StringValue') return;
    const toLen = (to.value as string).length;
    const fromLen = (from.value as string).length;
    if (toLen <= fromLen) return;
    const cap = count && count.type === 'IntegerValue' && (count.value as number) >= 0 ? (count.value as number) : Infinity;
    const maxN = Math.ceil((this.b.maxChars - s.length) / (toLen - fromLen)) + 1;
    const n = Math.min(cap, countOccurrences(s, from.value as string, maxN));
    const len = s.length + n * (toLen - fromLen);
    if (len > this.b.maxChars) this.fail('maxChars', len, `replace() would make a string of ${len} characters`);
  }

  /** Filters that can multiply sizes are checked before they run. */
  override applyFilter(operand: unknown, filterNode: unknown, environment: unknown): unknown {
    const op = operand as unknown as RV;
    const f = filterNode as unknown as { type: string; value?: string; name?: { value: string }; args?: Node[] };
    const name = f.type === 'Identifier' ? f.value : f.type === 'CallExpression' ? (f as unknown as { callee: { value: string } }).callee?.value : undefined;
    const args = f.type === 'CallExpression' ? [...((f as unknown as { args: Node[] }).args ?? [])] : [];
    if (name === 'join' && op.type === 'ArrayValue') {
      const items = op.value as RV[];
      let sepLen = 0;
      if (args.length > 0 && args[0].type !== 'KeywordArgumentExpression') {
        const sep = this.evaluate(args[0], environment) as unknown as RV;
        sepLen = strLen(sep);
        args[0] = { type: '__Value', value: sep };
      }
      let len = Math.max(0, items.length - 1) * sepLen;
      for (const it of items) len += it && typeof it.value === 'string' ? it.value.length : 24;
      if (len > this.b.maxChars) this.fail('maxChars', len, `join() would make a string of ${len} characters`);
    } else if ((name === 'indent' || name === 'center') && op.type === 'StringValue' && args.length > 0) {
      const w = this.evaluate(args[0], environment) as unknown as RV;
      const width = typeof w.value === 'number' ? w.value : 0;
      const s = op.value as string;
      const lines = name === 'indent' ? countOccurrences(s, '\n', Infinity) + 1 : 1;
      const len = s.length + Math.max(0, width) * lines;
      if (len > this.b.maxChars) this.fail('maxChars', len, `${name}(${width}) would make a string of ${len} characters`);
      args[0] = { type: '__Value', value: w };
    } else if (name === 'replace' && op.type === 'StringValue') {
      const vals = args.map((a) => (a.type === 'KeywordArgumentExpression' ? a : (this.evaluate(a, environment) as unknown as RV)));
      this.checkReplace(op.value as string, vals as RV[]);
      vals.forEach((v, i) => {
        if ((v as Node).type !== 'KeywordArgumentExpression') args[i] = { type: '__Value', value: v };
      });
    } else if (name === 'tojson' && args.length > 0) {
      // Output grows with depth x indent: allow small indents only.
      for (const a of args) {
        const v = a.type === 'KeywordArgumentExpression' ? (a as unknown as { value: Node }).value : a;
        if (v.type === 'IntegerLiteral' && typeof v.value === 'number' && v.value > 64) this.fail('maxChars', v.value, `tojson(indent=${v.value})`);
      }
    }
    if (args.length > 0 && f.type === 'CallExpression') {
      // Re-evaluated arguments were replaced by their values on a copy of the node, never on the parsed tree.
      return super.applyFilter(operand, { ...f, args }, environment);
    }
    return super.applyFilter(operand, filterNode, environment);
  }
}

/**
 * A parsed template that renders under a budget.
 *
 * @example
 * ```ts
 * const t = new BudgetedTemplate("{% for m in messages %}{{ m.content }}{% endfor %}");
 * t.render({ messages: [{ role: 'user', content: 'hi' }] }, { maxSteps: 1e5 }); // 'hi'
 * ```
 */
export class BudgetedTemplate {
  private readonly program: unknown;

  /** Parses `source` (throws the library's syntax errors). */
  constructor(source: string) {
    this.program = parse(tokenize(source, { lstrip_blocks: true, trim_blocks: true }));
  }

  /**
   * Renders with the library's globals and `items`, under `budget` (defaults: {@link DEFAULT_TEMPLATE_BUDGET}).
   * Throws {@link TemplateBudgetError} when a limit is hit, the library's errors otherwise.
   */
  render(items: Record<string, unknown>, budget: Partial<TemplateBudget> = {}): string {
    const b: TemplateBudget = { ...DEFAULT_TEMPLATE_BUDGET, ...budget };
    const env = new Environment();
    let interp: BudgetedInterpreter | undefined;
    const range = (start: number, stop?: number, step = 1): number[] => {
      if (stop === undefined) {
        stop = start;
        start = 0;
      }
      if (step === 0) throw new Error('range() step must not be zero');
      const n = Math.max(0, Math.ceil((stop - start) / step));
      if (!Number.isFinite(n)) throw new Error('range() arguments must be finite');
      interp!.rangeItems(n);
      const out = new Array<number>(n);
      for (let i = 0; i < n; i++) out[i] = start + i * step;
      return out;
    };
    const globals: Record<string, unknown> = {
      false: false,
      true: true,
      none: null,
      raise_exception: (args: unknown) => {
        throw new Error(String(args));
      },
      range,
      strftime_now: strftimeNow,
      True: true,
      False: false,
      None: null,
    };
    for (const [k, v] of Object.entries(globals)) env.set(k, v);
    for (const [k, v] of Object.entries(items)) env.set(k, v);
    interp = new BudgetedInterpreter(env, b);
    const result = interp.run(this.program) as unknown as RV;
    return result.value as string;
  }
}
