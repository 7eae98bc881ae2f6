/**
 * Whose verdicts the grader gives. `strict` is valley's own judge (a fresh
 * process per test, CPU-time limits, exact comparison); `lcb` reproduces
 * LiveCodeBench's lcb_runner and `taco` TACO's metrics/testing_util.py, so that
 * a pass@1 can be set beside the leaderboard's and a trace labelled as the
 * paper did. The parts that run in the sandbox live in driver.py; this module
 * has the host's parts: the choice per problem, LCB's extraction, TACO's
 * stdout comparison.
 *
 * References matched (read, not copied):
 *   LiveCodeBench/LiveCodeBench 28fef95ea8c9f7a547c8329f2cd3d32b92c1fa24
 *   FlagOpen/TACO 245eba3beb2d23a07082307de303de2589e4321a
 */
import type { Problem } from "./types.js";

export const SEMANTICS = ["strict", "lcb", "taco"] as const;
export type Semantics = (typeof SEMANTICS)[number];
/** A stage's param: one semantics for every problem, or `auto` (by the problem's source). */
export type SemanticsChoice = Semantics | "auto";
export const SEMANTICS_CHOICES: readonly SemanticsChoice[] = ["auto", ...SEMANTICS];

export const LCB_COMMIT = "28fef95ea8c9f7a547c8329f2cd3d32b92c1fa24";
export const TACO_COMMIT = "245eba3beb2d23a07082307de303de2589e4321a";

/** LCB's per-test alarm: `timeout=6` in its runner, whatever the problem says. */
export const LCB_ALARM_S = 6;
/** TACO's TIMEOUT (testing_util.py). */
export const TACO_ALARM_S = 4;

export function isSemanticsChoice(v: unknown): v is SemanticsChoice {
  return typeof v === "string" && (SEMANTICS_CHOICES as readonly string[]).includes(v);
}

/**
 * The semantics for one problem. `auto`: LiveCodeBench problems get `lcb`;
 * TACO problems get `taco` where traces are labelled (`verify`), since the
 * paper labelled them with TACO's harness; everything else `strict`.
 */
export function semanticsFor(
  p: Problem,
  choice: SemanticsChoice,
  where: "verify" | "evaluate",
): Semantics {
  if (choice !== "auto") return choice;
  const src = String(p.source ?? "").toLowerCase();
  if (src === "lcb" || src === "livecodebench") return "lcb";
  if (src === "taco" && where === "verify") return "taco";
  return "strict";
}

/**
 * LCB's extract_code: the lines strictly between the last two lines that
 * contain ``` anywhere, of the raw answer (no <think> removal, any language
 * tag). Null when fewer than two such lines (LCB grades "" then, which fails).
 */
export function lcbExtract(text: string): string | null {
  const lines = text.split("\n");
  const fences: number[] = [];
  lines.forEach((l, i) => {
    if (l.includes("```")) fences.push(i);
  });
  if (fences.length < 2) return null;
  return lines.slice(fences[fences.length - 2] + 1, fences[fences.length - 1]).join("\n");
}

// ---------------------------------------------------------------- TACO stdout

// Python's str.isspace() set: what str.strip() and str.split() use.
const PY_WS =
  "\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000";
const STRIP = new RegExp(`^[${PY_WS}]+|[${PY_WS}]+$`, "g");
const SPLIT = new RegExp(`[${PY_WS}]+`);

const pyStrip = (s: string) => s.replace(STRIP, "");
const pySplit = (s: string) =>
  pyStrip(s)
    .split(SPLIT)
    .filter((t) => t !== "");

const DIGITS = "\\d(?:_?\\d)*";
const FLOAT = new RegExp(
  `^[+-]?(?:(?:${DIGITS}(?:\\.(?:${DIGITS})?)?|\\.${DIGITS})(?:[eE][+-]?${DIGITS})?|inf|infinity|nan)$`,
  "i",
);

/** Python's float(s) for ASCII text; null where it raises ValueError. */
export function pyFloat(s: string): number | null {
  const t = pyStrip(s);
  if (!FLOAT.test(t)) return null;
  const neg = t.startsWith("-");
  const body = t.replace(/^[+-]/, "").toLowerCase();
  if (body === "nan") return NaN;
  if (body === "inf" || body === "infinity") return neg ? -Infinity : Infinity;
  return Number(t.replace(/_/g, ""));
}

/** Python's round(x, 3): correctly rounded, ties (only x = odd/16 can tie) to even. */
export function pyRound3(x: number): number {
  if (!Number.isFinite(x)) return x;
  const s = x * 16;
  if (Number.isInteger(s) && Math.abs(s) < 2 ** 50 && s % 2 !== 0) {
    const k = x * 1000; // exact: odd/16 × 1000 = odd × 62.5
    const f = Math.floor(k);
    const even = f % 2 === 0 ? f : f + 1;
    return Number(`${even}e-3`) + 0;
  }
  return Number(x.toFixed(3)) + 0;
}

/** np.allclose for equal-length lists (rtol 1e-5, atol 1e-8; equal infinities are close). */
function allclose(a: number[], b: number[]): boolean {
  return a.every((x, i) => {
    const y = b[i];
    if (Number.isNaN(x) || Number.isNaN(y)) return false;
    if (!Number.isFinite(x) || !Number.isFinite(y)) return x === y;
    return Math.abs(x - y) <= 1e-8 + 1e-5 * Math.abs(y);
  });
}

/** A Python frozenset as a comparable key (NaN never equals anything, as set members of distinct objects). */
function setKey(items: (string | number)[]): string | null {
  if (items.some((v) => typeof v === "number" && Number.isNaN(v))) return null;
  return [...new Set(items.map((v) => (typeof v === "number" ? String(v + 0) : `s${v}`)))]
    .sort()
    .join("\u0000");
}

function sameSets(a: (string | null)[], b: (string | null)[]): boolean {
  if (a.includes(null) || b.includes(null)) return false;
  const x = new Set(a);
  const y = new Set(b);
  return x.size === y.size && [...x].every((k) => y.has(k));
}

/**
 * TACO's compare_std_results for what a subprocess gives it: the program's
 * stdout as text (universal newlines) and the expected output as text. Only
 * the branches a string can reach: stripped equality; every character of
 * the output a number, close to the expected lines; the output's tokens, as
 * sets of characters, equal to the expected lines as sets of tokens; the same
 * after float(), rounded to 3 places.
 */
export function tacoStdoutOk(got: string, want: string): boolean {
  if (pyStrip(got) === pyStrip(want)) return true;
  // The expected lines, non-empty before stripping.
  const lines = want
    .split("\n")
    .filter((l) => l.length > 0)
    .map(pyStrip);
  // [float(c) for c in stdout] against [float(line) for line in lines].
  const chars = [...got].map(pyFloat);
  const gt = lines.map(pyFloat);
  if (
    chars.length > 0 &&
    !chars.includes(null) &&
    !gt.includes(null) &&
    chars.length === gt.length &&
    allclose(chars as number[], gt as number[])
  )
    return true;
  // The expected lines as sets of tokens; the output as a set of tokens.
  const wantSets = lines.map((l) => pySplit(l));
  const tokens = [...new Set(pySplit(got))];
  let ok = sameSets(
    tokens.map((t) => setKey([...t])),
    wantSets.map((s) => setKey(s)),
  );
  // Then every character of every output token, and every expected token, as float rounded to 3 places.
  const charFloats = tokens.map((t) => [...t].map(pyFloat));
  const tokFloats = wantSets.map((s) => s.map(pyFloat));
  if (!charFloats.some((f) => f.includes(null)) && !tokFloats.some((f) => f.includes(null))) {
    ok ||= sameSets(
      charFloats.map((f) => setKey((f as number[]).map(pyRound3))),
      tokFloats.map((f) => setKey((f as number[]).map(pyRound3))),
    );
  }
  return ok;
}
