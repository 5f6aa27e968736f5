/**
 * The JSON Schema string formats structured output can generate (`format: 'date' | 'time' | 'date-time' |
 * 'uuid' | 'ipv4'`), each as a deterministic automaton over the ASCII bytes of the string's content (between
 * the quotes). Built from a few regular-expression combinators by subset construction, once per format.
 *
 * The automata generate only values that JSON Schema validators accept (ajv-formats' full mode included):
 * dates never name a day their month lacks (February stops at 28: a 29th would need the year's leap rule),
 * times always carry a time zone (`Z` or `+hh:mm`).
 */

/** A deterministic automaton over ASCII: `next[state * 128 + byte]` (-1: no transition); start state 0. */
export interface FormatAutomaton {
  readonly name: string;
  readonly next: Int16Array;
  readonly accepting: Uint8Array;
}

type Re =
  | { t: 'set'; bytes: number[] }
  | { t: 'seq'; items: Re[] }
  | { t: 'alt'; items: Re[] }
  | { t: 'rep'; item: Re; min: number; max: number };

function set(spec: string): Re {
  const bytes: number[] = [];
  for (let i = 0; i < spec.length; i++) {
    if (spec[i + 1] === '-' && i + 2 < spec.length) {
      for (let c = spec.charCodeAt(i); c <= spec.charCodeAt(i + 2); c++) bytes.push(c);
      i += 2;
    } else bytes.push(spec.charCodeAt(i));
  }
  return { t: 'set', bytes };
}
const lit = (s: string): Re => ({ t: 'seq', items: [...s].map((ch) => ({ t: 'set', bytes: [ch.charCodeAt(0)] }) as Re) });
const seq = (...items: Re[]): Re => ({ t: 'seq', items });
const alt = (...items: Re[]): Re => ({ t: 'alt', items });
const rep = (item: Re, min: number, max = min): Re => ({ t: 'rep', item, min, max });
const D = set('0-9');
const HEX = set('0-9a-f');

/** A Thompson NFA: per state, byte edges and epsilon edges. */
class Nfa {
  readonly edges: Array<Array<[number[], number]>> = [];
  readonly eps: number[][] = [];
  state(): number {
    this.edges.push([]);
    this.eps.push([]);
    return this.edges.length - 1;
  }
  /** Adds `re` between a fresh start and end state. */
  build(re: Re): [number, number] {
    const s = this.state();
    switch (re.t) {
      case 'set': {
        const e = this.state();
        this.edges[s].push([re.bytes, e]);
        return [s, e];
      }
      case 'seq': {
        let end = s;
        for (const item of re.items) {
          const [a, b] = this.build(item);
          this.eps[end].push(a);
          end = b;
        }
        return [s, end];
      }
      case 'alt': {
        const e = this.state();
        for (const item of re.items) {
          const [a, b] = this.build(item);
          this.eps[s].push(a);
          this.eps[b].push(e);
        }
        return [s, e];
      }
      case 'rep': {
        let end = s;
        const skips: number[] = []; // states after the required copies: the optional rest may be skipped
        for (let i = 0; i < re.max; i++) {
          if (i >= re.min) skips.push(end);
          const [a, b] = this.build(re.item);
          this.eps[end].push(a);
          end = b;
        }
        const e = this.state();
        this.eps[end].push(e);
        for (const k of skips) this.eps[k].push(e);
        return [s, e];
      }
    }
  }
  closure(states: number[]): number[] {
    const seen = new Set(states);
    const stack = [...states];
    while (stack.length > 0) {
      const s = stack.pop() as number;
      for (const t of this.eps[s]) {
        if (!seen.has(t)) {
          seen.add(t);
          stack.push(t);
        }
      }
    }
    return [...seen].sort((a, b) => a - b);
  }
}

function compile(name: string, re: Re): FormatAutomaton {
  const nfa = new Nfa();
  const [start, end] = nfa.build(re);
  const sets: number[][] = [nfa.closure([start])];
  const index = new Map<string, number>([[sets[0].join(','), 0]]);
  const rows: Int16Array[] = [];
  for (let i = 0; i < sets.length; i++) {
    const row = new Int16Array(128).fill(-1);
    for (let byte = 0; byte < 128; byte++) {
      const targets: number[] = [];
      for (const s of sets[i]) for (const [bytes, t] of nfa.edges[s]) if (bytes.includes(byte)) targets.push(t);
      if (targets.length === 0) continue;
      const closed = nfa.closure(targets);
      const key = closed.join(',');
      let j = index.get(key);
      if (j === undefined) {
        j = sets.length;
        sets.push(closed);
        index.set(key, j);
      }
      row[byte] = j;
    }
    rows.push(row);
  }
  const next = new Int16Array(sets.length * 128);
  rows.forEach((row, i) => next.set(row, i * 128));
  const accepting = new Uint8Array(sets.length);
  sets.forEach((s, i) => (accepting[i] = s.includes(end) ? 1 : 0));
  return { name, next, accepting };
}

const YEAR = rep(D, 4);
const DATE = seq(
  YEAR,
  lit('-'),
  alt(
    seq(alt(seq(lit('0'), set('13578')), seq(lit('1'), set('02'))), lit('-'), alt(seq(lit('0'), set('1-9')), seq(set('12'), D), seq(lit('3'), set('01')))),
    seq(alt(seq(lit('0'), set('469')), lit('11')), lit('-'), alt(seq(lit('0'), set('1-9')), seq(set('12'), D), lit('30'))),
    seq(lit('02-'), alt(seq(lit('0'), set('1-9')), seq(lit('1'), D), seq(lit('2'), set('0-8')))),
  ),
);
const HOUR = alt(seq(set('01'), D), seq(lit('2'), set('0-3')));
const MINUTE = seq(set('0-5'), D);
const TIME = seq(
  HOUR, lit(':'), MINUTE, lit(':'), MINUTE,
  rep(seq(lit('.'), rep(D, 1, 6)), 0, 1),
  alt(lit('Z'), seq(set('+-'), HOUR, lit(':'), MINUTE)),
);
const OCTET = alt(seq(lit('25'), set('0-5')), seq(lit('2'), set('0-4'), D), seq(lit('1'), D, D), seq(set('1-9'), D), D);

const DEFINITIONS: Record<string, () => Re> = {
  date: () => DATE,
  time: () => TIME,
  'date-time': () => seq(DATE, lit('T'), TIME),
  uuid: () => seq(rep(HEX, 8), lit('-'), rep(HEX, 4), lit('-'), rep(HEX, 4), lit('-'), rep(HEX, 4), lit('-'), rep(HEX, 12)),
  ipv4: () => seq(OCTET, rep(seq(lit('.'), OCTET), 3)),
};

/** The formats structured output supports. */
export const SUPPORTED_FORMATS: readonly string[] = Object.keys(DEFINITIONS);

const built = new Map<string, FormatAutomaton>();

/** The automaton of a supported format (built on first use), or undefined. */
export function formatAutomaton(name: string): FormatAutomaton | undefined {
  if (!Object.prototype.hasOwnProperty.call(DEFINITIONS, name)) return undefined;
  let a = built.get(name);
  if (!a) {
    a = compile(name, DEFINITIONS[name]());
    built.set(name, a);
  }
  return a;
}
