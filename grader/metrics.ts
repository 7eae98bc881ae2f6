/**
 * The evaluation's numbers: pass@k (Chen et al. 2021, unbiased), pass@1 with a
 * bootstrap interval over problems, a breakdown by difficulty, completion and
 * think-tag rates.
 */
import { startsWithThink } from "./extract.js";
import type { Difficulty } from "./types.js";

/** Samples and correct samples of one problem. */
export interface ProblemTally {
  id: string;
  n: number;
  c: number;
  difficulty?: Difficulty;
}

/**
 * Unbiased pass@k for one problem: 1 − C(n−c, k)/C(n, k), computed as the
 * product ∏_{i=n−c+1..n} (1 − k/i), which neither overflows nor cancels.
 */
export function passAtK(n: number, c: number, k: number): number {
  if (
    !Number.isInteger(n) ||
    !Number.isInteger(c) ||
    !Number.isInteger(k) ||
    n < 0 ||
    c < 0 ||
    c > n ||
    k < 1
  ) {
    throw new RangeError(`pass@k needs integers 0 ≤ c ≤ n and k ≥ 1, got n=${n} c=${c} k=${k}`);
  }
  if (k > n) throw new RangeError(`pass@${k} needs at least ${k} samples per problem, got ${n}`);
  if (n - c < k) return 1;
  let prod = 1;
  for (let i = n - c + 1; i <= n; i++) prod *= 1 - k / i;
  return 1 - prod;
}

function mean(xs: number[]): number {
  return xs.length === 0 ? NaN : xs.reduce((a, b) => a + b, 0) / xs.length;
}

/** pass@k averaged over problems (problems with n < k are an error, not skipped). */
export function meanPassAtK(tallies: ProblemTally[], k: number): number {
  return mean(tallies.map((t) => passAtK(t.n, t.c, k)));
}

/** pass@1 = c/n per problem, averaged over problems. */
export function passAt1(tallies: ProblemTally[]): number {
  return mean(tallies.filter((t) => t.n > 0).map((t) => t.c / t.n));
}

/** mulberry32: a small seeded generator, so intervals are reproducible. */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface Interval {
  low: number;
  high: number;
  /** Confidence level, e.g. 0.95. */
  level: number;
  resamples: number;
  seed: number;
}

/** Percentile bootstrap interval for pass@1, resampling problems with replacement. */
export function bootstrapPassAt1(
  tallies: ProblemTally[],
  opts: { resamples?: number; seed?: number; level?: number } = {},
): Interval {
  const resamples = opts.resamples ?? 1000;
  const seed = opts.seed ?? 0;
  const level = opts.level ?? 0.95;
  const per = tallies.filter((t) => t.n > 0).map((t) => t.c / t.n);
  if (per.length === 0) return { low: NaN, high: NaN, level, resamples, seed };
  const next = rng(seed);
  const stats: number[] = [];
  for (let r = 0; r < resamples; r++) {
    let s = 0;
    for (let i = 0; i < per.length; i++) s += per[Math.floor(next() * per.length)];
    stats.push(s / per.length);
  }
  stats.sort((a, b) => a - b);
  const q = (p: number) =>
    stats[Math.min(stats.length - 1, Math.max(0, Math.floor(p * stats.length)))];
  return { low: q((1 - level) / 2), high: q(1 - (1 - level) / 2), level, resamples, seed };
}

export interface DifficultyRow {
  problems: number;
  samples: number;
  pass_at_1: number;
}

export function byDifficulty(
  tallies: ProblemTally[],
): Partial<Record<Difficulty | "unknown", DifficultyRow>> {
  const groups = new Map<Difficulty | "unknown", ProblemTally[]>();
  for (const t of tallies) {
    const d = t.difficulty ?? "unknown";
    groups.set(d, [...(groups.get(d) ?? []), t]);
  }
  const out: Partial<Record<Difficulty | "unknown", DifficultyRow>> = {};
  for (const d of ["easy", "medium", "hard", "unknown"] as const) {
    const g = groups.get(d);
    if (!g) continue;
    out[d] = { problems: g.length, samples: g.reduce((a, t) => a + t.n, 0), pass_at_1: passAt1(g) };
  }
  return out;
}

/** Share of samples that ended on their own (finish_reason "stop") rather than at the token budget. */
export function completionRate(samples: { finish_reason?: string | null }[]): number {
  return samples.length === 0
    ? NaN
    : samples.filter((s) => s.finish_reason === "stop").length / samples.length;
}

/** Share of answers that begin with `<think>` (after leading whitespace). */
export function thinkTagRate(samples: { text: string }[]): number {
  return samples.length === 0
    ? NaN
    : samples.filter((s) => startsWithThink(s.text)).length / samples.length;
}

/** Tallies per problem from graded samples; problems keep first-seen order. */
export function tally(
  samples: { id: string; correct: boolean }[],
  difficultyOf: (id: string) => Difficulty | undefined = () => undefined,
): ProblemTally[] {
  const m = new Map<string, ProblemTally>();
  for (const s of samples) {
    let t = m.get(s.id);
    if (!t) {
      const d = difficultyOf(s.id);
      t = { id: s.id, n: 0, c: 0, ...(d ? { difficulty: d } : {}) };
      m.set(s.id, t);
    }
    t.n++;
    if (s.correct) t.c++;
  }
  return [...m.values()];
}
