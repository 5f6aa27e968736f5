/**
 * JSON as a byte-level pushdown automaton, for constrained decoding (structured output).
 *
 * {@link compileResponseGrammar} turns `{ type: 'json_object' }` or a JSON Schema (the subset OpenAI's structured
 * outputs support, see {@link compileJsonSchema}) into a graph of {@link GrammarNode}s; {@link Frame}s walk it one
 * UTF-8 byte at a time ({@link step}). A configuration is a stack of immutable frames (the top frame links to its
 * parent), so stepping allocates one frame and branching (a trie walk over the vocabulary, `anyOf`) shares the
 * rest of the stack.
 *
 * What the automaton generates:
 * - exactly one JSON value (an object for `json_object`), valid UTF-8, parseable by `JSON.parse`;
 * - whitespace between tokens: nothing, one space, or one newline followed by at most {@link MAX_INDENT} spaces
 *   or tabs, so that a model can write compact or pretty-printed JSON but never endless whitespace; none before
 *   the document or after it;
 * - numbers of at most {@link MAX_INTEGER_DIGITS} integer digits, {@link MAX_FRACTION_DIGITS} fraction digits and
 *   {@link MAX_EXPONENT_DIGITS} exponent digits (finite, and no endless digit runs);
 * - strings: any Unicode text; escapes `\" \\ \/ \b \f \n \r \t \uXXXX` except surrogate code points (so a
 *   string is always well-formed UTF-16 after parsing); control characters only as escapes;
 * - objects of a schema: exactly the declared properties in declaration order, the required ones always, the
 *   optional ones possibly omitted, never any other key; objects of `json_object` (or a schema object without
 *   `properties`): any keys, any values.
 * Every state the automaton can reach can still be completed (no dead ends): nodes that admit no finite value
 * (`false` schemas, a required property that recurses forever) are pruned at compile time.
 */
import { PlmError } from './errors';
import { FormatAutomaton, formatAutomaton, SUPPORTED_FORMATS } from './json_formats';

/** Spaces or tabs allowed after the optional newline between two tokens of the document. */
export const MAX_INDENT = 20;
/** Digits of a number's integer part. */
export const MAX_INTEGER_DIGITS = 15;
/** Digits after the decimal point. */
export const MAX_FRACTION_DIGITS = 15;
/** Digits of the exponent. */
export const MAX_EXPONENT_DIGITS = 2;

// Node kinds.
export const N_ANY = 0;
export const N_OBJECT = 1;
export const N_ARRAY = 2;
export const N_STRING = 3;
export const N_NUMBER = 4;
export const N_INTEGER = 5;
export const N_LITERAL = 6;
export const N_ANYOF = 7;
export const N_NEVER = 8;

/** A node of a trie of literal byte strings (enum / const values, property keys). */
export class LiteralNode {
  readonly next = new Map<number, LiteralNode>();
  /** >= 0: a literal ends here (its result: the enum index, the property index). */
  result = -1;
  constructor(readonly id: number) {}
}

/** One declared property of an object node. */
export interface GrammarProperty {
  name: string;
  node: GrammarNode;
  required: boolean;
}

/** A node of the compiled grammar (one class for all kinds, so that the hot paths stay monomorphic). */
export class GrammarNode {
  // object
  props: GrammarProperty[] = [];
  /** Any keys and values (json_object, or a schema object without properties). */
  freeObject = false;
  /** keyTries[i]: the keys that may come next when properties from index i on are left (key bytes + '"'). */
  keyTries: Array<LiteralNode | null> = [];
  /** closable[i]: '}' may come when properties from index i on are left (no required one among them). */
  closable: boolean[] = [];
  // array
  items: GrammarNode | null = null;
  minItems = 0;
  maxItems = Infinity;
  // string
  minLength = 0;
  maxLength = Infinity;
  tracksLength = false;
  format: FormatAutomaton | null = null;
  // literal
  literal: LiteralNode | null = null;
  // anyOf
  options: GrammarNode[] = [];
  /** byFirstByte[b]: the non-anyOf alternatives (nested anyOfs flattened) whose value can begin with byte b. */
  byFirstByte: GrammarNode[][] = [];
  productive = false;
  constructor(
    readonly id: number,
    public kind: number,
  ) {}
}

/** A compiled grammar: the root node, and an id for caches. */
export interface ResponseGrammar {
  readonly root: GrammarNode;
  /** A canonical text of the request (the schema as JSON): equal keys mean equal grammars. */
  readonly key: string;
}

// ---------------------------------------------------------------------------------------------------------------
// Schema compilation

const ANNOTATIONS = new Set(['title', 'description', 'default', 'examples', '$schema', '$id', '$comment', 'deprecated', 'readOnly', 'writeOnly']);
const TYPE_KEYWORDS: Record<string, readonly string[]> = {
  object: ['properties', 'required', 'additionalProperties'],
  array: ['items', 'minItems', 'maxItems'],
  string: ['minLength', 'maxLength', 'format'],
  number: [],
  integer: [],
  boolean: [],
  null: [],
};
const GENERAL_KEYWORDS = new Set(['type', 'enum', 'const', 'anyOf', '$ref', '$defs', 'definitions']);
const KEYWORD_TYPE = new Map<string, string>();
for (const [t, kws] of Object.entries(TYPE_KEYWORDS)) for (const k of kws) KEYWORD_TYPE.set(k, t);
const HINTS: Record<string, string> = {
  pattern: 'regular expressions are not supported; use enum, or format (' + SUPPORTED_FORMATS.join(', ') + ')',
  oneOf: 'use anyOf (alternatives are tried in parallel; make them distinct)',
  allOf: 'merge the schemas into one',
  nullable: "nullable is OpenAPI, not JSON Schema: use type: ['<type>', 'null']",
  prefixItems: 'tuples are not supported: use an object',
  patternProperties: 'declare the properties by name',
};

function invalid(message: string): PlmError {
  return new PlmError('ERR_INVALID_ARGUMENT', message);
}

function isPlainObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function utf8(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

function jsonTypeOf(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (typeof v === 'number') return Number.isInteger(v) ? 'integer' : 'number';
  return typeof v;
}

function nonNegativeInteger(v: unknown, where: string): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw invalid(`${where} must be an integer >= 0, got ${JSON.stringify(v)}`);
  return v;
}

class Compiler {
  private nextNodeId = 0;
  private nextLiteralId = 0;
  readonly nodes: GrammarNode[] = [];
  private readonly refs = new Map<string, GrammarNode>();
  constructor(private readonly rootSchema: unknown) {}

  node(kind: number): GrammarNode {
    const n = new GrammarNode(this.nextNodeId++, kind);
    this.nodes.push(n);
    return n;
  }

  literalTrie(values: Array<[Uint8Array, number]>): LiteralNode {
    const root = new LiteralNode(this.nextLiteralId++);
    for (const [bytes, result] of values) {
      let n = root;
      for (const b of bytes) {
        let c = n.next.get(b);
        if (!c) {
          c = new LiteralNode(this.nextLiteralId++);
          n.next.set(b, c);
        }
        n = c;
      }
      if (n.result < 0) n.result = result;
    }
    return root;
  }

  literalNode(values: unknown[], where: string): GrammarNode {
    const n = this.node(N_LITERAL);
    const seen = new Set<string>();
    const list: Array<[Uint8Array, number]> = [];
    values.forEach((v, i) => {
      const text = JSON.stringify(v);
      if (text === undefined) throw invalid(`${where} holds a value that is not JSON: ${String(v)}`);
      if (!seen.has(text)) {
        seen.add(text);
        list.push([utf8(text), i]);
      }
    });
    n.literal = this.literalTrie(list);
    return n;
  }

  compile(schema: unknown, where: string): GrammarNode {
    if (schema === true) return this.node(N_ANY);
    if (schema === false) return this.node(N_NEVER);
    if (!isPlainObject(schema)) throw invalid(`${where} must be a JSON Schema object (or true/false), got ${JSON.stringify(schema)}`);
    for (const key of Object.keys(schema)) {
      if (ANNOTATIONS.has(key) || GENERAL_KEYWORDS.has(key) || KEYWORD_TYPE.has(key)) continue;
      const hint = HINTS[key] ? `: ${HINTS[key]}` : '';
      throw invalid(`${where}.${key}: the JSON Schema keyword '${key}' is not supported by structured output${hint}`);
    }
    const keys = Object.keys(schema).filter((k) => !ANNOTATIONS.has(k) && k !== '$defs' && k !== 'definitions');
    const onlyWith = (kw: string, allowed: string[]): void => {
      const extra = keys.filter((k) => k !== kw && !allowed.includes(k));
      if (extra.length > 0) {
        throw invalid(`${where}: '${kw}' together with '${extra[0]}' is not supported: move '${extra[0]}' into the alternatives / values`);
      }
    };
    if (schema.$ref !== undefined) {
      onlyWith('$ref', []);
      return this.ref(schema.$ref, `${where}.$ref`);
    }
    if (schema.anyOf !== undefined) {
      onlyWith('anyOf', []);
      const alts = schema.anyOf;
      if (!Array.isArray(alts) || alts.length === 0) throw invalid(`${where}.anyOf must be a non-empty array of schemas`);
      const n = this.node(N_ANYOF);
      n.options = alts.map((s, i) => this.compile(s, `${where}.anyOf[${i}]`));
      return n;
    }
    const types = this.types(schema, where);
    if (schema.enum !== undefined || schema.const !== undefined) {
      if (schema.enum !== undefined && schema.const !== undefined) throw invalid(`${where}: use either enum or const, not both`);
      const kw = schema.enum !== undefined ? 'enum' : 'const';
      onlyWith(kw, ['type']);
      let values: unknown[];
      if (kw === 'enum') {
        if (!Array.isArray(schema.enum) || schema.enum.length === 0) throw invalid(`${where}.enum must be a non-empty array`);
        values = schema.enum;
      } else values = [schema.const];
      if (types) {
        const fits = (v: unknown): boolean => {
          const t = jsonTypeOf(v);
          return types.includes(t) || (t === 'integer' && types.includes('number'));
        };
        values = values.filter(fits);
        if (values.length === 0) throw invalid(`${where}: no ${kw} value is of type ${types.join(' or ')}`);
      }
      return this.literalNode(values, `${where}.${kw}`);
    }
    // Keywords that belong to a type the schema does not allow are mistakes: say so.
    for (const k of keys) {
      const t = KEYWORD_TYPE.get(k);
      if (t && types && !types.includes(t)) {
        throw invalid(`${where}.${k} applies to ${t} values, but type is ${types.join(' or ')}`);
      }
    }
    let effective = types;
    if (!effective) {
      const implied = [...new Set(keys.map((k) => KEYWORD_TYPE.get(k)).filter((t): t is string => t !== undefined))];
      if (implied.length === 0) return this.node(N_ANY);
      effective = implied;
    }
    const alternatives = effective.map((t) => this.typed(t, schema, where));
    if (alternatives.length === 1) return alternatives[0];
    const n = this.node(N_ANYOF);
    n.options = alternatives;
    return n;
  }

  private types(schema: Record<string, unknown>, where: string): string[] | undefined {
    const t = schema.type;
    if (t === undefined) return undefined;
    const list = Array.isArray(t) ? t : [t];
    if (list.length === 0) throw invalid(`${where}.type must name at least one type`);
    for (const x of list) {
      if (typeof x !== 'string' || !Object.prototype.hasOwnProperty.call(TYPE_KEYWORDS, x)) {
        throw invalid(`${where}.type: unknown type ${JSON.stringify(x)} (object, array, string, number, integer, boolean or null)`);
      }
    }
    return [...new Set(list as string[])];
  }

  private typed(type: string, schema: Record<string, unknown>, where: string): GrammarNode {
    switch (type) {
      case 'object':
        return this.object(schema, where);
      case 'array': {
        const n = this.node(N_ARRAY);
        if (Array.isArray(schema.items)) throw invalid(`${where}.items: an array of schemas (a tuple) is not supported: use an object`);
        n.items = schema.items === undefined ? this.node(N_ANY) : this.compile(schema.items, `${where}.items`);
        if (schema.minItems !== undefined) n.minItems = nonNegativeInteger(schema.minItems, `${where}.minItems`);
        if (schema.maxItems !== undefined) n.maxItems = nonNegativeInteger(schema.maxItems, `${where}.maxItems`);
        if (n.minItems > n.maxItems) throw invalid(`${where}: minItems ${n.minItems} > maxItems ${n.maxItems}`);
        return n;
      }
      case 'string': {
        const n = this.node(N_STRING);
        if (schema.minLength !== undefined) n.minLength = nonNegativeInteger(schema.minLength, `${where}.minLength`);
        if (schema.maxLength !== undefined) n.maxLength = nonNegativeInteger(schema.maxLength, `${where}.maxLength`);
        if (n.minLength > n.maxLength) throw invalid(`${where}: minLength ${n.minLength} > maxLength ${n.maxLength}`);
        n.tracksLength = n.minLength > 0 || n.maxLength !== Infinity;
        if (schema.format !== undefined) {
          const f = typeof schema.format === 'string' ? formatAutomaton(schema.format) : undefined;
          if (!f) {
            throw invalid(`${where}.format: the format ${JSON.stringify(schema.format)} is not supported by structured output (supported: ${SUPPORTED_FORMATS.join(', ')})`);
          }
          if (n.tracksLength) throw invalid(`${where}: format together with minLength/maxLength is not supported`);
          n.format = f;
        }
        return n;
      }
      case 'number':
        return this.node(N_NUMBER);
      case 'integer':
        return this.node(N_INTEGER);
      case 'boolean':
        return this.literalNode([true, false], `${where}`);
      default:
        return this.literalNode([null], `${where}`);
    }
  }

  private object(schema: Record<string, unknown>, where: string): GrammarNode {
    const n = this.node(N_OBJECT);
    const ap = schema.additionalProperties;
    if (ap !== undefined && typeof ap !== 'boolean') {
      throw invalid(`${where}.additionalProperties: only true or false is supported (no schema for free keys): declare the properties`);
    }
    const props = schema.properties;
    const required = schema.required ?? [];
    if (!Array.isArray(required) || required.some((r) => typeof r !== 'string')) throw invalid(`${where}.required must be an array of property names`);
    if (props === undefined) {
      if (required.length > 0) throw invalid(`${where}.required names '${required[0]}', which is not in properties: declare it`);
      n.freeObject = ap !== false;
      return n;
    }
    if (!isPlainObject(props)) throw invalid(`${where}.properties must be an object of schemas`);
    for (const r of required) {
      if (!Object.prototype.hasOwnProperty.call(props, r)) throw invalid(`${where}.required names '${r}', which is not in properties: declare it`);
    }
    for (const [name, s] of Object.entries(props)) {
      n.props.push({ name, node: this.compile(s, `${where}.properties.${name}`), required: required.includes(name) });
    }
    return n;
  }

  private ref(ref: unknown, where: string): GrammarNode {
    if (typeof ref !== 'string' || !ref.startsWith('#')) {
      throw invalid(`${where}: only local references ('#/$defs/Name') are supported, got ${JSON.stringify(ref)}`);
    }
    const known = this.refs.get(ref);
    if (known) return known;
    let target: unknown = this.rootSchema;
    const pointer = decodeURIComponent(ref.slice(1));
    if (pointer !== '') {
      if (!pointer.startsWith('/')) throw invalid(`${where}: ${JSON.stringify(ref)} is not a JSON pointer ('#/$defs/Name')`);
      for (const raw of pointer.slice(1).split('/')) {
        const part = raw.replace(/~1/g, '/').replace(/~0/g, '~');
        if (!isPlainObject(target) || !Object.prototype.hasOwnProperty.call(target, part)) {
          throw invalid(`${where}: ${JSON.stringify(ref)} points to nothing in the schema`);
        }
        target = target[part];
      }
    }
    // A placeholder first, so that recursive references resolve to it; filled in below.
    const n = this.node(N_ANYOF);
    this.refs.set(ref, n);
    n.options = [this.compile(target, `${where}(${ref})`)];
    return n;
  }
}

/** The first bytes each kind of value can begin with. */
function firstBytesOf(n: GrammarNode): number[] {
  switch (n.kind) {
    case N_ANY:
      return [...'{["-0123456789tfn'].map((c) => c.charCodeAt(0));
    case N_OBJECT:
      return [0x7b];
    case N_ARRAY:
      return [0x5b];
    case N_STRING:
      return [0x22];
    case N_NUMBER:
    case N_INTEGER:
      return [...'-0123456789'].map((c) => c.charCodeAt(0));
    case N_LITERAL:
      return [...(n.literal as LiteralNode).next.keys()];
    default:
      return [];
  }
}

/** Productivity (admits a finite value), pruning, key tries and anyOf dispatch tables. */
function finish(c: Compiler, root: GrammarNode): void {
  const nodes = c.nodes;
  for (let changed = true; changed; ) {
    changed = false;
    for (const n of nodes) {
      if (n.productive) continue;
      let p: boolean;
      switch (n.kind) {
        case N_OBJECT:
          p = n.props.every((q) => !q.required || q.node.productive);
          break;
        case N_ARRAY:
          p = n.minItems === 0 || (n.items as GrammarNode).productive;
          break;
        case N_ANYOF:
          p = n.options.some((o) => o.productive);
          break;
        case N_NEVER:
          p = false;
          break;
        default:
          p = true;
      }
      if (p) {
        n.productive = true;
        changed = true;
      }
    }
  }
  if (!root.productive) throw invalid('the schema admits no finite JSON value (a false schema, or a required property that recurses forever)');
  for (const n of nodes) {
    if (!n.productive) continue;
    if (n.kind === N_OBJECT) {
      n.props = n.props.filter((q) => q.node.productive);
      n.keyTries = [];
      n.closable = [];
      for (let from = 0; from <= n.props.length; from++) {
        const keys: Array<[Uint8Array, number]> = [];
        for (let i = from; i < n.props.length; i++) {
          keys.push([utf8(JSON.stringify(n.props[i].name).slice(1)), i]);
          if (n.props[i].required) break;
        }
        n.keyTries.push(keys.length > 0 ? c.literalTrie(keys) : null);
        n.closable.push(n.props.slice(from).every((q) => !q.required));
      }
    } else if (n.kind === N_ARRAY && !(n.items as GrammarNode).productive) {
      n.maxItems = 0;
    } else if (n.kind === N_ANYOF) {
      n.options = n.options.filter((o) => o.productive);
      const leaves: GrammarNode[] = [];
      const seen = new Set<GrammarNode>();
      const flatten = (o: GrammarNode): void => {
        if (seen.has(o) || !o.productive) return;
        seen.add(o);
        if (o.kind === N_ANYOF) o.options.forEach(flatten);
        else leaves.push(o);
      };
      n.options.forEach(flatten);
      n.byFirstByte = Array.from({ length: 256 }, () => [] as GrammarNode[]);
      for (const leaf of leaves) for (const b of firstBytesOf(leaf)) n.byFirstByte[b].push(leaf);
    }
  }
}

/**
 * Compiles a JSON Schema into a grammar. Supported: `type` (object, array, string, number, integer, boolean,
 * null, or a list of them), `properties`, `required`, `additionalProperties` (true or false: either way only the
 * declared properties are generated), `items`, `minItems`, `maxItems`, `minLength`, `maxLength`, `format`
 * (date, time, date-time, uuid, ipv4), `enum`, `const`, `anyOf`, `$ref` to `#/$defs/...` / `#/definitions/...`
 * / `#` (recursion included), and annotations (`title`, `description`, `default`, `examples`, ...). Any other
 * keyword throws `ERR_INVALID_ARGUMENT` naming it.
 */
export function compileJsonSchema(schema: unknown): ResponseGrammar {
  if (!isPlainObject(schema) && typeof schema !== 'boolean') throw invalid('responseFormat.schema must be a JSON Schema object');
  const c = new Compiler(schema);
  const root = c.compile(schema, 'schema');
  finish(c, root);
  return { root, key: 'schema:' + JSON.stringify(schema) };
}

/** The grammar of `json_object`: any JSON object. */
export function compileJsonObject(): ResponseGrammar {
  const c = new Compiler({ type: 'object' });
  const root = c.node(N_OBJECT);
  root.freeObject = true;
  finish(c, root);
  return { root, key: 'json_object' };
}

// ---------------------------------------------------------------------------------------------------------------
// The automaton

// Frame kinds.
export const K_VALUE = 0; // before a value (whitespace allowed); c: whitespace state
export const K_OBJECT = 1; // a: phase, b: property index, c: whitespace state
export const K_ARRAY = 2; // a: phase, b: item count, c: whitespace state
export const K_STRING = 3; // b: characters so far (when the node tracks length), c: escape / UTF-8 state
export const K_NUMBER = 4; // a: phase, b: digits in the current part
export const K_LITERAL = 5; // l: position in the literal trie
export const K_FORMAT = 6; // b: format automaton state
export const K_ROOT = 7; // waits for the document's value
export const K_DONE = 8; // the document is complete

// Object phases (O_WAIT_*: a child frame is running).
const O_START = 0; // after '{'
const O_KEY = 1; // after ','
const O_WAIT_KEY = 2;
const O_COLON = 3; // after the key, b: property index (-1: free key)
const O_WAIT_VALUE = 4;
const O_AFTER = 5; // after a value
// Array phases.
const A_START = 0; // after '['
const A_COMMA = 1; // after ','
const A_WAIT = 2;
const A_AFTER = 3;
// Number phases.
const M_MINUS = 0;
const M_ZERO = 1;
const M_INT = 2;
const M_DOT = 3;
const M_FRAC = 4;
const M_E = 5;
const M_ESIGN = 6;
const M_EXP = 7;
// String states (c): 0 plain; UTF-8 continuation bytes pending; escapes.
const S_PLAIN = 0;
const S_C1 = 1; // 1 continuation byte left, 80..BF
const S_C2 = 2; // 2 left, 80..BF
const S_C2_E0 = 3; // 2 left, first A0..BF
const S_C2_ED = 4; // 2 left, first 80..9F
const S_C3 = 5; // 3 left, 80..BF
const S_C3_F0 = 6; // 3 left, first 90..BF
const S_C3_F4 = 7; // 3 left, first 80..8F
const S_ESC = 8; // after '\'
const S_U4 = 9; // 4 hex digits left
const S_U3_D = 10; // 3 left, after a 'd': 0..7 next (no surrogates)
const S_U3 = 11;
const S_U2 = 12;
const S_U1 = 13;

/** One frame of a configuration: immutable; `p` is the parent frame waiting for this one's value. */
export class Frame {
  constructor(
    readonly k: number,
    readonly n: GrammarNode,
    readonly a: number,
    readonly b: number,
    readonly c: number,
    readonly l: LiteralNode | null,
    readonly p: Frame | null,
  ) {}
}

const DONE_NODE = new GrammarNode(-1, N_NEVER);
/** The completed document. */
export const DONE = new Frame(K_DONE, DONE_NODE, 0, 0, 0, null, null);

/** The configuration before the first byte. */
export function initialFrame(g: ResponseGrammar): Frame {
  return new Frame(K_VALUE, g.root, 0, 0, WS_NONE, null, new Frame(K_ROOT, g.root, 0, 0, 0, null, null));
}

function isWs(x: number): boolean {
  return x === 0x20 || x === 0x0a || x === 0x09 || x === 0x0d;
}

// Whitespace state of a gap between two tokens: 0 nothing yet; WS_SPACE after its one space; WS_NEWLINE + n after
// a newline and n spaces or tabs; WS_NONE where no whitespace may come (before the document).
const WS_NEWLINE = 32;
const WS_SPACE = 64;
const WS_NONE = 128;

/** The whitespace state after byte x (-1: not allowed). A gap is one space, or a newline and an indent. */
function wsNext(c: number, x: number): number {
  if (c === 0) return x === 0x20 ? WS_SPACE : x === 0x0a ? WS_NEWLINE : -1;
  if ((c & WS_NEWLINE) !== 0 && (x === 0x20 || x === 0x09) && c - WS_NEWLINE < MAX_INDENT) return c + 1;
  return -1;
}

function isDigit(x: number): boolean {
  return x >= 0x30 && x <= 0x39;
}

/** The parent's state once its child value (or key, with `result` the property index) is complete. */
function complete(p: Frame, result: number): Frame {
  switch (p.k) {
    case K_OBJECT:
      if (p.a === O_WAIT_KEY) return new Frame(K_OBJECT, p.n, O_COLON, result, 0, null, p.p);
      return new Frame(K_OBJECT, p.n, O_AFTER, p.b, 0, null, p.p);
    case K_ARRAY:
      return new Frame(K_ARRAY, p.n, A_AFTER, p.b, 0, null, p.p);
    default:
      return DONE;
  }
}

/** Begins a value of node n with byte x (not whitespace); `parent` waits for it. */
function startValue(n: GrammarNode, x: number, parent: Frame, out: Frame[]): void {
  switch (n.kind) {
    case N_ANY:
      if (x === 0x7b) out.push(new Frame(K_OBJECT, ANY_OBJECT, O_START, 0, 0, null, parent));
      else if (x === 0x5b) out.push(new Frame(K_ARRAY, ANY_ARRAY, A_START, 0, 0, null, parent));
      else if (x === 0x22) out.push(new Frame(K_STRING, ANY_STRING, 0, 0, S_PLAIN, null, parent));
      else if (x === 0x2d || isDigit(x)) startValue(ANY_NUMBER, x, parent, out);
      else startValue(ANY_LITERAL, x, parent, out);
      return;
    case N_OBJECT:
      if (x === 0x7b) out.push(new Frame(K_OBJECT, n, O_START, 0, 0, null, parent));
      return;
    case N_ARRAY:
      if (x === 0x5b) out.push(new Frame(K_ARRAY, n, A_START, 0, 0, null, parent));
      return;
    case N_STRING:
      if (x === 0x22) out.push(n.format ? new Frame(K_FORMAT, n, 0, 0, 0, null, parent) : new Frame(K_STRING, n, 0, 0, S_PLAIN, null, parent));
      return;
    case N_NUMBER:
    case N_INTEGER:
      if (x === 0x2d) out.push(new Frame(K_NUMBER, n, M_MINUS, 0, 0, null, parent));
      else if (x === 0x30) out.push(new Frame(K_NUMBER, n, M_ZERO, 1, 0, null, parent));
      else if (isDigit(x)) out.push(new Frame(K_NUMBER, n, M_INT, 1, 0, null, parent));
      return;
    case N_LITERAL: {
      const next = (n.literal as LiteralNode).next.get(x);
      if (next) out.push(next.result >= 0 && next.next.size === 0 ? complete(parent, next.result) : new Frame(K_LITERAL, n, 0, 0, 0, next, parent));
      return;
    }
    case N_ANYOF: {
      const options = n.byFirstByte[x];
      for (let i = 0; i < options.length; i++) startValue(options[i], x, parent, out);
      return;
    }
    default:
      return;
  }
}

/** Whether a number in phase a may end here. */
function numberCanEnd(a: number): boolean {
  return a === M_ZERO || a === M_INT || a === M_FRAC || a === M_EXP;
}

/**
 * Feeds one byte to configuration f and pushes the resulting configurations to `out` (none: the byte is not
 * allowed; several: alternatives of an anyOf still open).
 */
export function step(f: Frame, x: number, out: Frame[]): void {
  switch (f.k) {
    case K_VALUE: {
      if (isWs(x)) {
        const w = wsNext(f.c, x);
        if (w >= 0) out.push(new Frame(K_VALUE, f.n, 0, 0, w, null, f.p));
        return;
      }
      startValue(f.n, x, f.p as Frame, out);
      return;
    }
    case K_STRING:
      stepString(f, x, out);
      return;
    case K_OBJECT:
      stepObject(f, x, out);
      return;
    case K_ARRAY:
      stepArray(f, x, out);
      return;
    case K_NUMBER:
      stepNumber(f, x, out);
      return;
    case K_LITERAL: {
      const l = f.l as LiteralNode;
      const next = l.next.get(x);
      if (next) out.push(next.result >= 0 && next.next.size === 0 ? complete(f.p as Frame, next.result) : new Frame(K_LITERAL, f.n, 0, 0, 0, next, f.p));
      else if (l.result >= 0) step(complete(f.p as Frame, l.result), x, out);
      return;
    }
    case K_FORMAT: {
      const fmt = f.n.format as FormatAutomaton;
      if (x === 0x22) {
        if (fmt.accepting[f.b]) out.push(complete(f.p as Frame, 0));
        return;
      }
      if (x >= 128) return;
      const t = fmt.next[f.b * 128 + x];
      if (t >= 0) out.push(new Frame(K_FORMAT, f.n, 0, t, 0, null, f.p));
      return;
    }
    default:
      return; // K_DONE, K_ROOT: nothing more
  }
}

function stepString(f: Frame, x: number, out: Frame[]): void {
  const n = f.n;
  switch (f.c) {
    case S_PLAIN: {
      if (x === 0x22) {
        if (f.b >= n.minLength) out.push(complete(f.p as Frame, -1));
        return;
      }
      if (x < 0x20) return;
      let c: number;
      if (x < 0x80) c = x === 0x5c ? S_ESC : S_PLAIN;
      else if (x >= 0xc2 && x <= 0xdf) c = S_C1;
      else if (x >= 0xe1 && x <= 0xef) c = x === 0xed ? S_C2_ED : S_C2;
      else if (x === 0xe0) c = S_C2_E0;
      else if (x >= 0xf1 && x <= 0xf3) c = S_C3;
      else if (x === 0xf0) c = S_C3_F0;
      else if (x === 0xf4) c = S_C3_F4;
      else return; // a continuation byte without a lead, C0, C1, F5..FF
      if (!n.tracksLength) {
        out.push(c === S_PLAIN ? f : new Frame(K_STRING, n, 0, 0, c, null, f.p));
        return;
      }
      if (f.b + 1 > n.maxLength) return;
      out.push(new Frame(K_STRING, n, 0, f.b + 1, c, null, f.p));
      return;
    }
    case S_C1:
    case S_C2:
    case S_C3:
      if (x >= 0x80 && x <= 0xbf) out.push(new Frame(K_STRING, n, 0, f.b, f.c === S_C1 ? S_PLAIN : f.c === S_C2 ? S_C1 : S_C2, null, f.p));
      return;
    case S_C2_E0:
      if (x >= 0xa0 && x <= 0xbf) out.push(new Frame(K_STRING, n, 0, f.b, S_C1, null, f.p));
      return;
    case S_C2_ED:
      if (x >= 0x80 && x <= 0x9f) out.push(new Frame(K_STRING, n, 0, f.b, S_C1, null, f.p));
      return;
    case S_C3_F0:
      if (x >= 0x90 && x <= 0xbf) out.push(new Frame(K_STRING, n, 0, f.b, S_C2, null, f.p));
      return;
    case S_C3_F4:
      if (x >= 0x80 && x <= 0x8f) out.push(new Frame(K_STRING, n, 0, f.b, S_C2, null, f.p));
      return;
    case S_ESC:
      if (x === 0x22 || x === 0x5c || x === 0x2f || x === 0x62 || x === 0x66 || x === 0x6e || x === 0x72 || x === 0x74) {
        out.push(new Frame(K_STRING, n, 0, f.b, S_PLAIN, null, f.p));
      } else if (x === 0x75) out.push(new Frame(K_STRING, n, 0, f.b, S_U4, null, f.p));
      return;
    case S_U4:
      if (x === 0x64 || x === 0x44) out.push(new Frame(K_STRING, n, 0, f.b, S_U3_D, null, f.p));
      else if (isHex(x)) out.push(new Frame(K_STRING, n, 0, f.b, S_U3, null, f.p));
      return;
    case S_U3_D:
      if (x >= 0x30 && x <= 0x37) out.push(new Frame(K_STRING, n, 0, f.b, S_U2, null, f.p));
      return;
    default: // S_U3, S_U2, S_U1
      if (isHex(x)) out.push(new Frame(K_STRING, n, 0, f.b, f.c === S_U1 ? S_PLAIN : f.c + 1, null, f.p));
      return;
  }
}

function isHex(x: number): boolean {
  return isDigit(x) || (x >= 0x61 && x <= 0x66) || (x >= 0x41 && x <= 0x46);
}

function stepObject(f: Frame, x: number, out: Frame[]): void {
  const n = f.n;
  if (isWs(x)) {
    if (f.a === O_WAIT_KEY || f.a === O_WAIT_VALUE) return;
    const w = wsNext(f.c, x);
    if (w >= 0) out.push(new Frame(K_OBJECT, n, f.a, f.b, w, null, f.p));
    return;
  }
  switch (f.a) {
    case O_START:
    case O_KEY: {
      const from = f.a === O_START ? 0 : f.b;
      if (x === 0x7d) {
        if (f.a === O_START && (n.freeObject || n.closable[0])) out.push(complete(f.p as Frame, 0));
        return;
      }
      if (x !== 0x22) return;
      const waiting = new Frame(K_OBJECT, n, O_WAIT_KEY, from, 0, null, f.p);
      if (n.freeObject) out.push(new Frame(K_STRING, ANY_STRING, 0, 0, S_PLAIN, null, waiting));
      else {
        const keys = n.keyTries[from];
        if (keys) out.push(new Frame(K_LITERAL, n, 0, 0, 0, keys, waiting));
      }
      return;
    }
    case O_COLON:
      if (x === 0x3a) {
        const valueNode = n.freeObject ? ANY : n.props[f.b].node;
        out.push(new Frame(K_VALUE, valueNode, 0, 0, 0, null, new Frame(K_OBJECT, n, O_WAIT_VALUE, f.b, 0, null, f.p)));
      }
      return;
    case O_AFTER: {
      const next = f.b + 1; // the first property that may still come
      if (x === 0x2c) {
        if (n.freeObject || n.keyTries[next]) out.push(new Frame(K_OBJECT, n, O_KEY, next, 0, null, f.p));
      } else if (x === 0x7d) {
        if (n.freeObject || n.closable[next]) out.push(complete(f.p as Frame, 0));
      }
      return;
    }
    default:
      return;
  }
}

function stepArray(f: Frame, x: number, out: Frame[]): void {
  const n = f.n;
  if (isWs(x)) {
    if (f.a === A_WAIT) return;
    const w = wsNext(f.c, x);
    if (w >= 0) out.push(new Frame(K_ARRAY, n, f.a, f.b, w, null, f.p));
    return;
  }
  switch (f.a) {
    case A_START:
      if (x === 0x5d) {
        if (n.minItems === 0) out.push(complete(f.p as Frame, 0));
        return;
      }
      if (n.maxItems === 0) return;
      startValue(n.items as GrammarNode, x, new Frame(K_ARRAY, n, A_WAIT, 1, 0, null, f.p), out);
      return;
    case A_COMMA:
      startValue(n.items as GrammarNode, x, new Frame(K_ARRAY, n, A_WAIT, f.b + 1, 0, null, f.p), out);
      return;
    case A_AFTER:
      if (x === 0x2c) {
        if (f.b < n.maxItems) out.push(new Frame(K_ARRAY, n, A_COMMA, f.b, 0, null, f.p));
      } else if (x === 0x5d) {
        if (f.b >= n.minItems) out.push(complete(f.p as Frame, 0));
      }
      return;
    default:
      return;
  }
}

function stepNumber(f: Frame, x: number, out: Frame[]): void {
  const n = f.n;
  const integer = n.kind === N_INTEGER;
  let a = -1;
  let b = 0;
  switch (f.a) {
    case M_MINUS:
      if (x === 0x30) (a = M_ZERO), (b = 1);
      else if (isDigit(x)) (a = M_INT), (b = 1);
      break;
    case M_ZERO:
    case M_INT:
      if (isDigit(x)) {
        if (f.a === M_INT && f.b < MAX_INTEGER_DIGITS) (a = M_INT), (b = f.b + 1);
      } else if (x === 0x2e && !integer) a = M_DOT;
      else if ((x === 0x65 || x === 0x45) && !integer) a = M_E;
      break;
    case M_DOT:
      if (isDigit(x)) (a = M_FRAC), (b = 1);
      break;
    case M_FRAC:
      if (isDigit(x)) {
        if (f.b < MAX_FRACTION_DIGITS) (a = M_FRAC), (b = f.b + 1);
      } else if (x === 0x65 || x === 0x45) a = M_E;
      break;
    case M_E:
      if (x === 0x2b || x === 0x2d) a = M_ESIGN;
      else if (isDigit(x)) (a = M_EXP), (b = 1);
      break;
    case M_ESIGN:
      if (isDigit(x)) (a = M_EXP), (b = 1);
      break;
    default: // M_EXP
      if (isDigit(x) && f.b < MAX_EXPONENT_DIGITS) (a = M_EXP), (b = f.b + 1);
      break;
  }
  if (a >= 0) {
    out.push(new Frame(K_NUMBER, n, a, b, 0, null, f.p));
    return;
  }
  // Not part of the number: it ends here, and the byte goes to the enclosing value.
  if (numberCanEnd(f.a) && !isDigit(x) && x !== 0x2e && x !== 0x65 && x !== 0x45) step(complete(f.p as Frame, 0), x, out);
}

/** Whether the document may end after configuration f (a complete value; a number or literal may end here). */
export function canEnd(f: Frame): boolean {
  for (;;) {
    if (f.k === K_DONE) return true;
    if (f.k === K_NUMBER && numberCanEnd(f.a)) f = complete(f.p as Frame, 0);
    else if (f.k === K_LITERAL && (f.l as LiteralNode).result >= 0) f = complete(f.p as Frame, (f.l as LiteralNode).result);
    else return false;
  }
}

/**
 * A key that identifies a configuration for the mask cache: equal keys allow the same continuations. Counters
 * that cannot matter are left out (string length without length limits, item counts without item limits).
 */
export function frameKey(f: Frame): string {
  let key = '';
  for (let x: Frame | null = f; x; x = x.p) {
    let b = x.b;
    if (x.k === K_STRING && !x.n.tracksLength) b = 0;
    else if (x.k === K_ARRAY) b = Math.min(b, Math.max(x.n.minItems, x.n.maxItems === Infinity ? 0 : x.n.maxItems));
    else if (x.k === K_NUMBER && x.a !== M_INT && x.a !== M_FRAC && x.a !== M_EXP) b = 0;
    key += `${x.k}.${x.n.id}.${x.a}.${b}.${x.c}${x.l ? '.' + x.l.id : ''}/`;
  }
  return key;
}

/** The string frame's state when it may take any plain text (no pending escape or UTF-8 byte). */
export function isPlainString(f: Frame): boolean {
  return f.k === K_STRING && f.c === S_PLAIN;
}

// Shared nodes of json_object's free values (their ids are negative: never equal to a compiled node's).
const ANY = new GrammarNode(-2, N_ANY);
const ANY_OBJECT = new GrammarNode(-3, N_OBJECT);
ANY_OBJECT.freeObject = true;
const ANY_ARRAY = new GrammarNode(-4, N_ARRAY);
ANY_ARRAY.items = ANY;
const ANY_STRING = new GrammarNode(-5, N_STRING);
const ANY_NUMBER = new GrammarNode(-6, N_NUMBER);
const ANY_LITERAL = new GrammarNode(-7, N_LITERAL);
{
  let id = -100;
  const root = new LiteralNode(id--);
  for (const word of ['true', 'false', 'null']) {
    let n = root;
    for (const ch of word) {
      let c = n.next.get(ch.charCodeAt(0));
      if (!c) {
        c = new LiteralNode(id--);
        n.next.set(ch.charCodeAt(0), c);
      }
      n = c;
    }
    n.result = 0;
  }
  ANY_LITERAL.literal = root;
}
for (const n of [ANY, ANY_OBJECT, ANY_ARRAY, ANY_STRING, ANY_NUMBER, ANY_LITERAL]) n.productive = true;
