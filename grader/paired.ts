/**
 * Paired statistics between two evaluations of the same problems: is B really
 * better (or worse) than A, or is the difference noise?
 *
 * Pairing is over problems: each problem contributes the difference of its two
 * pass rates, so the problem-to-problem spread (which dwarfs the effect of a
 * model change) cancels out. An unpaired interval on each side ignores that and
 * is far too wide (lm-evaluation-harness #3831: p 0.080 unpaired vs 0.008 paired).
 *
 * - Δ pass@1 = mean over problems of (rate_B − rate_A) = pass@1(B) − pass@1(A).
 * - Interval: percentile bootstrap over problems (resampling problems, with
 *   replacement, keeping each problem's pair together).
 * - p-value: the paired sign-flip permutation test. Under H0 (A and B exchangeable
 *   per problem) each non-zero difference is equally likely to carry either
 *   sign; p = P(|Σ ±d_i| ≥ |Σ d_i|). Exact (all 2^m sign vectors) when m ≤ 20,
 *   otherwise Monte-Carlo with the (1 + hits)/(1 + flips) estimate, which is
 *   never 0 (Phipson & Smyth 2010).
 * - With one sample per problem the differences are ±1 and the sign-flip test
 *   is McNemar's exact test: p = min(1, 2·P(Binomial(b + c, ½) ≤ min(b, c))),
 *   b and c the discordant counts; it is computed directly, exact at any size.
 */
import { rng } from "./metrics.js";

/** One graded sample, as samples.jsonl holds it (only what pairing needs). */
export interface PassRecord {
  problem_id: string;
  sample: number;
  passed: boolean;
}

/** problem id → [samples, passed], in first-seen order. */
export function rates(records: Iterable<PassRecord>): Map<string, [number, number]> {
  const m = new Map<string, [number, number]>();
  for (const r of records) {
    const t = m.get(r.problem_id) ?? [0, 0];
    t[0]++;
    if (r.passed) t[1]++;
    m.set(r.problem_id, t);
  }
  return m;
}

/** The two evaluations restricted to the problems both have, in A's order. */
export interface Paired {
  ids: string[];
  /** Pass rate per problem (c/n), aligned with ids. */
  a: number[];
  b: number[];
  /** True when every problem has exactly one sample on each side. */
  oneSample: boolean;
  /** Problems only one side evaluated (not in the comparison). */
  onlyInA: number;
  onlyInB: number;
}

export function pair(a: Map<string, [number, number]>, b: Map<string, [number, number]>): Paired {
  const ids: string[] = [];
  const ra: number[] = [];
  const rb: number[] = [];
  let oneSample = true;
  for (const [id, [na, ca]] of a) {
    const tb = b.get(id);
    if (!tb) continue;
    const [nb, cb] = tb;
    ids.push(id);
    ra.push(ca / na);
    rb.push(cb / nb);
    if (na !== 1 || nb !== 1) oneSample = false;
  }
  return {
    ids,
    a: ra,
    b: rb,
    oneSample,
    onlyInA: a.size - ids.length,
    onlyInB: b.size - ids.length,
  };
}

const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;

/** Percentile bootstrap interval of the mean paired difference, resampling problems. */
export function pairedBootstrap(
  diffs: number[],
  opts: { resamples?: number; seed?: number; level?: number } = {},
): [number, number] {
  const resamples = opts.resamples ?? 10_000;
  const level = opts.level ?? 0.95;
  const n = diffs.length;
  if (n === 0) return [NaN, NaN];
  const next = rng(opts.seed ?? 0);
  const stats = new Float64Array(resamples);
  for (let r = 0; r < resamples; r++) {
    let s = 0;
    for (let i = 0; i < n; i++) s += diffs[Math.floor(next() * n)];
    stats[r] = s / n;
  }
  stats.sort();
  const q = (p: number) => stats[Math.min(resamples - 1, Math.max(0, Math.floor(p * resamples)))];
  return [q((1 - level) / 2), q(1 - (1 - level) / 2)];
}

// Differences of pass rates are sums of fractions: compare sums with a tolerance
// so that a permuted sum equal to the observed one in exact arithmetic counts.
const TOL = 1e-9;

export interface TestResult {
  p: number;
  method: "sign-flip-exact" | "sign-flip-monte-carlo" | "mcnemar-exact" | "none";
  /** Sign vectors enumerated or drawn (0 for McNemar and when all differences are 0). */
  flips: number;
}

/** Non-zero differences at or below this count get the exact sign-flip test. */
export const EXACT_MAX = 20;

/** Two-sided paired sign-flip permutation test of mean difference 0. */
export function signFlipTest(
  diffs: number[],
  opts: { flips?: number; seed?: number; exactMax?: number } = {},
): TestResult {
  const d = diffs.filter((x) => Math.abs(x) > TOL);
  const m = d.length;
  if (m === 0) return { p: 1, method: "none", flips: 0 };
  const observed = Math.abs(d.reduce((s, x) => s + x, 0));
  const bar = observed - TOL * Math.max(1, observed);
  if (m <= (opts.exactMax ?? EXACT_MAX)) {
    // Gray code: consecutive sign vectors differ in one sign, so each sum is
    // the previous one ± 2·d_i.
    let sum = d.reduce((s, x) => s + x, 0);
    const sign = new Int8Array(m).fill(1);
    let hits = Math.abs(sum) >= bar ? 1 : 0;
    const total = 2 ** m;
    for (let k = 1; k < total; k++) {
      const i = 31 - Math.clz32(k & -k); // lowest set bit: the sign that flips
      sum -= 2 * sign[i] * d[i];
      sign[i] = -sign[i];
      if (Math.abs(sum) >= bar) hits++;
    }
    return { p: hits / total, method: "sign-flip-exact", flips: total };
  }
  const flips = opts.flips ?? 100_000;
  const next = rng(opts.seed ?? 0);
  let hits = 0;
  for (let r = 0; r < flips; r++) {
    let s = 0;
    let bits = 0;
    for (let i = 0; i < m; i++) {
      if (i % 32 === 0) bits = (next() * 4294967296) >>> 0;
      s += bits & 1 ? d[i] : -d[i];
      bits >>>= 1;
    }
    if (Math.abs(s) >= bar) hits++;
  }
  return { p: (1 + hits) / (1 + flips), method: "sign-flip-monte-carlo", flips };
}

/** log C(n, k), summed (n is a count of problems: at most a few thousand terms). */
function logChoose(n: number, k: number): number {
  let s = 0;
  for (let i = 1; i <= k; i++) s += Math.log(n - k + i) - Math.log(i);
  return s;
}

/** McNemar's exact test (two-sided, binomial): b and c are the discordant counts. */
export function mcnemarExact(b: number, c: number): number {
  const n = b + c;
  if (n === 0) return 1;
  const k = Math.min(b, c);
  // P(X ≤ k) for X ~ Binomial(n, ½), summed in log space (2^-n underflows at n > 1074).
  let tail = 0;
  for (let i = 0; i <= k; i++) tail += Math.exp(logChoose(n, i) - n * Math.LN2);
  return Math.min(1, 2 * tail);
}

/** Holm's step-down adjustment: adjusted p-values in the input order. */
export function holm(ps: number[]): number[] {
  const order = ps.map((p, i) => [p, i] as const).sort((x, y) => x[0] - y[0]);
  const out = new Array<number>(ps.length);
  let running = 0;
  order.forEach(([p, i], rank) => {
    running = Math.max(running, Math.min(1, (ps.length - rank) * p));
    out[i] = running;
  });
  return out;
}

/** The comparison as `valley compare --json` prints it (the shape). */
export interface Comparison {
  n_problems: number;
  pass_a: number;
  pass_b: number;
  delta: number;
  ci95: [number, number];
  p_value: number;
  method: TestResult["method"];
  discordant: { a_only: number; b_only: number };
  both: number;
  neither: number;
}

export interface CompareOptions {
  seed?: number;
  resamples?: number;
  flips?: number;
}

/** The comparison and both tests behind its p-value. */
export interface ComparisonDetail {
  result: Comparison;
  signFlip: TestResult;
  /** McNemar's exact p, with one sample per problem only. */
  mcnemar: number | null;
}

/**
 * Compares two paired evaluations. A problem counts as "passed" by a side when
 * at least one of its samples passed there (with one sample per problem: that
 * sample passed); the counts describe, the rates decide.
 *
 * The p-value is the sign-flip test's; with one sample per problem the
 * differences are ±1, the sign-flip distribution is Binomial(b + c, ½), and
 * McNemar's exact test is that test computed exactly (at any number of
 * discordant problems), so it is the one reported.
 */
export function compare(p: Paired, opts: CompareOptions = {}): Comparison {
  return compareDetail(p, opts).result;
}

export function compareDetail(p: Paired, opts: CompareOptions = {}): ComparisonDetail {
  const n = p.ids.length;
  if (n === 0) throw new RangeError("no problem in common");
  const diffs = p.b.map((x, i) => x - p.a[i]);
  let aOnly = 0;
  let bOnly = 0;
  let both = 0;
  let neither = 0;
  for (let i = 0; i < n; i++) {
    const pa = p.a[i] > 0;
    const pb = p.b[i] > 0;
    if (pa && pb) both++;
    else if (pa) aOnly++;
    else if (pb) bOnly++;
    else neither++;
  }
  const signFlip = signFlipTest(diffs, { seed: opts.seed, flips: opts.flips });
  const mcnemar = p.oneSample ? mcnemarExact(aOnly, bOnly) : null;
  const test: TestResult =
    mcnemar !== null ? { p: mcnemar, method: "mcnemar-exact", flips: 0 } : signFlip;
  const passA = mean(p.a);
  const passB = mean(p.b);
  const result: Comparison = {
    n_problems: n,
    pass_a: passA,
    pass_b: passB,
    delta: passB - passA,
    ci95: pairedBootstrap(diffs, { seed: opts.seed, resamples: opts.resamples }),
    p_value: test.p,
    method: test.method,
    discordant: { a_only: aOnly, b_only: bOnly },
    both,
    neither,
  };
  return { result, signFlip, mcnemar };
}
