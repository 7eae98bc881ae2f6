/**
 * Output comparison, on the host: the sandbox never sees expected outputs.
 *
 * stdin tests follow LiveCodeBench: strip the whole output, split on "\n",
 * strip each line, equal line counts; a line matches exactly or, token by token,
 * as decimal numbers (Python's Decimal: exact, so 1.0 = 1.00 but 0.1 ≠ 0.10000001),
 * with an optional tolerance. Functional results are JSON compared as data,
 * with integers of any size compared exactly (JS numbers would lose them
 * above 2^53).
 */

// Python's str.strip()/split() whitespace, which is not JavaScript's \s.
const PY_WS =
  "\\t\\n\\v\\f\\r\\x1c-\\x20\\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const PY_STRIP = new RegExp(`^[${PY_WS}]+|[${PY_WS}]+$`, "g");
const PY_SPLIT = new RegExp(`[${PY_WS}]+`);

export function pyStrip(s: string): string {
  return s.replace(PY_STRIP, "");
}

function pySplit(s: string): string[] {
  const t = pyStrip(s);
  return t === "" ? [] : t.split(PY_SPLIT);
}

/** A decimal as Python's Decimal reads it, normalised so equal values compare equal as objects. */
type Dec =
  | { kind: "finite"; neg: boolean; digits: string; exp: number }
  | { kind: "inf"; neg: boolean }
  | { kind: "nan" };

const DEC_RE =
  /^([+-]?)(?:(\d(?:_?\d)*)(?:\.((?:\d(?:_?\d)*)?))?|\.(\d(?:_?\d)*))(?:[eE]([+-]?\d(?:_?\d)*))?$/;

export function parseDecimal(token: string): Dec | null {
  const t = token.trim();
  const special = /^([+-]?)(inf|infinity|nan|snan)$/i.exec(t);
  if (special) {
    const name = special[2].toLowerCase();
    return name.endsWith("nan") ? { kind: "nan" } : { kind: "inf", neg: special[1] === "-" };
  }
  const m = DEC_RE.exec(t);
  if (!m) return null;
  const intPart = (m[2] ?? "").replace(/_/g, "");
  const fracPart = (m[3] ?? m[4] ?? "").replace(/_/g, "");
  let exp = Number((m[5] ?? "0").replace(/_/g, "")) - fracPart.length;
  let digits = (intPart + fracPart).replace(/^0+/, "");
  if (digits === "") return { kind: "finite", neg: false, digits: "0", exp: 0 };
  const trailing = /0+$/.exec(digits);
  if (trailing) {
    digits = digits.slice(0, -trailing[0].length);
    exp += trailing[0].length;
  }
  return { kind: "finite", neg: m[1] === "-", digits, exp };
}

function decEqual(a: Dec, b: Dec): boolean {
  if (a.kind === "nan" || b.kind === "nan") return false;
  if (a.kind === "inf" || b.kind === "inf") return a.kind === b.kind && a.neg === b.neg;
  return a.neg === b.neg && a.digits === b.digits && a.exp === b.exp;
}

function decToNumber(d: Dec): number {
  if (d.kind === "nan") return NaN;
  if (d.kind === "inf") return d.neg ? -Infinity : Infinity;
  return Number(`${d.neg ? "-" : ""}${d.digits}e${d.exp}`);
}

function withinTolerance(a: Dec, b: Dec, tol: number): boolean {
  const x = decToNumber(a);
  const y = decToNumber(b);
  if (!Number.isFinite(x) || !Number.isFinite(y)) return false;
  return Math.abs(x - y) <= tol * Math.max(1, Math.abs(y));
}

function lineToDecimals(line: string): Dec[] | null {
  const out: Dec[] = [];
  for (const tok of pySplit(line)) {
    const d = parseDecimal(tok);
    if (!d) return null;
    out.push(d);
  }
  return out;
}

function strippedLines(s: string): string[] {
  return pyStrip(s)
    .split("\n")
    .map((l) => pyStrip(l));
}

export interface CompareResult {
  ok: boolean;
  /** For a mismatch: where, for the user. */
  note?: string;
}

export function compareStdout(
  actual: string,
  expected: string,
  floatTolerance?: number,
): CompareResult {
  const got = strippedLines(actual);
  const want = strippedLines(expected);
  if (got.length !== want.length) {
    return { ok: false, note: `expected ${want.length} line(s), got ${got.length}` };
  }
  for (let i = 0; i < want.length; i++) {
    if (got[i] === want[i]) continue;
    const a = lineToDecimals(got[i]);
    const b = lineToDecimals(want[i]);
    const bad = { ok: false, note: `line ${i + 1} differs` };
    if (!a || !b || a.length !== b.length) return bad;
    for (let k = 0; k < a.length; k++) {
      if (decEqual(a[k], b[k])) continue;
      if (floatTolerance !== undefined && withinTolerance(a[k], b[k], floatTolerance)) continue;
      return bad;
    }
  }
  return { ok: true };
}

/**
 * JSON as data, numbers kept as their text: a JSON value parsed without ever
 * going through a JS number, so 2^64+1 stays 2^64+1.
 */
export type ExactJson =
  null | boolean | string | { num: string } | ExactJson[] | { obj: Map<string, ExactJson> };

// Sticky: matched in place at an offset, never on a copied tail (large outputs).
const NUM = /-?(?:\d+(?:\.\d+)?(?:[eE][+-]?\d+)?|Infinity)|NaN/y;
// eslint-disable-next-line no-control-regex -- JSON forbids raw control characters in strings
const STR = /"(?:[^"\\\u0000-\u001f]|\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4}))*"/y;

export function parseExactJson(text: string): ExactJson {
  let i = 0;
  const fail = (what: string): never => {
    throw new Error(`invalid JSON at offset ${i}: ${what}`);
  };
  const ws = () => {
    while (i < text.length && " \t\n\r".includes(text[i])) i++;
  };
  const value = (): ExactJson => {
    ws();
    const c = text[i];
    if (c === "{") {
      i++;
      const obj = new Map<string, ExactJson>();
      ws();
      if (text[i] === "}") {
        i++;
        return { obj };
      }
      for (;;) {
        ws();
        if (text[i] !== '"') fail("expected a key");
        const k = str();
        ws();
        if (text[i] !== ":") fail("expected ':'");
        i++;
        obj.set(k, value());
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "}") {
          i++;
          return { obj };
        }
        fail("expected ',' or '}'");
      }
    }
    if (c === "[") {
      i++;
      const arr: ExactJson[] = [];
      ws();
      if (text[i] === "]") {
        i++;
        return arr;
      }
      for (;;) {
        arr.push(value());
        ws();
        if (text[i] === ",") {
          i++;
          continue;
        }
        if (text[i] === "]") {
          i++;
          return arr;
        }
        fail("expected ',' or ']'");
      }
    }
    if (c === '"') return str();
    for (const [word, v] of [
      ["true", true],
      ["false", false],
      ["null", null],
    ] as const) {
      if (text.startsWith(word, i)) {
        i += word.length;
        return v;
      }
    }
    // Python's json.dumps writes NaN, Infinity and -Infinity.
    NUM.lastIndex = i;
    const m = NUM.exec(text);
    if (!m) fail("unexpected character");
    i += m![0].length;
    return { num: m![0] };
  };
  const str = (): string => {
    STR.lastIndex = i;
    const m = STR.exec(text);
    if (!m) fail("bad string");
    i += m![0].length;
    return JSON.parse(m![0]) as string;
  };
  const v = value();
  ws();
  if (i !== text.length) fail("trailing characters");
  return v;
}

function isNum(v: ExactJson): v is { num: string } {
  return typeof v === "object" && v !== null && !Array.isArray(v) && "num" in v;
}

function numEqual(a: string, b: string): boolean {
  const intRe = /^-?\d+$/;
  if (intRe.test(a) && intRe.test(b)) return BigInt(a) === BigInt(b);
  // Python compares int and float by value; both decimal texts are exact.
  const da = parseDecimal(a.replace(/^(-?)Infinity$/, "$1inf"));
  const db = parseDecimal(b.replace(/^(-?)Infinity$/, "$1inf"));
  return da !== null && db !== null && decEqual(da, db);
}

/** Equality of two JSON values as Python's == would see them after json.loads (tuple = list). */
export function exactJsonEqual(a: ExactJson, b: ExactJson): boolean {
  if (a === null || b === null || typeof a !== "object" || typeof b !== "object") return a === b;
  if (Array.isArray(a) || Array.isArray(b)) {
    if (!Array.isArray(a) || !Array.isArray(b) || a.length !== b.length) return false;
    return a.every((x, k) => exactJsonEqual(x, b[k]));
  }
  if (isNum(a) || isNum(b)) return isNum(a) && isNum(b) && numEqual(a.num, b.num);
  if (a.obj.size !== b.obj.size) return false;
  for (const [k, v] of a.obj) {
    const w = b.obj.get(k);
    if (w === undefined || !exactJsonEqual(v, w)) return false;
  }
  return true;
}

export function compareFunctional(actualJson: string, expectedJson: string): CompareResult {
  let want: ExactJson;
  try {
    want = parseExactJson(expectedJson);
  } catch (e) {
    return { ok: false, note: `the expected output is not JSON (${(e as Error).message})` };
  }
  let got: ExactJson;
  try {
    got = parseExactJson(actualJson);
  } catch {
    return { ok: false, note: "the result is not JSON" };
  }
  return exactJsonEqual(got, want) ? { ok: true } : { ok: false, note: "returned value differs" };
}
