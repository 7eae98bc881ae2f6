/**
 * The evaluation's numbers from graded samples: pass@1 with a bootstrap 95%
 * interval, pass@k (unbiased), by difficulty, completion and think-tag rates,
 * mean completion tokens. Pure: the stage and the unit tests share it.
 */
import {
  bootstrapPassAt1,
  byDifficulty,
  meanPassAtK,
  passAt1,
  tally,
  type DifficultyRow,
} from "../../grader/metrics.js";
import type { Difficulty, ExtractionPolicy, Outcome, TestResult } from "../../grader/types.js";

/** One line of samples.jsonl. */
export interface SampleRecord {
  problem_id: string;
  sample: number;
  difficulty: Difficulty | null;
  /** The raw answer, reasoning included. */
  text: string;
  finish_reason: string | null;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  verdict: Outcome;
  /** Whose verdict: strict, lcb or taco (the semantics param, resolved for this problem). */
  semantics: "strict" | "lcb" | "taco";
  passed: boolean;
  /** Ended on its own (finish_reason "stop") rather than at max_tokens. */
  completed: boolean;
  /** Begins with `<think>` after leading whitespace. */
  think: boolean;
  tests: TestResult[];
  /** For CE and NO_CODE: what the grader saw. */
  message?: string;
}

/** What metrics need of a sample (the text is not kept). */
export type SampleStats = Pick<
  SampleRecord,
  "problem_id" | "difficulty" | "verdict" | "passed" | "completed" | "think" | "completion_tokens"
>;

export interface EvaluationMetrics {
  pass_at_1: number;
  pass_at_1_ci: [number, number];
  pass_at_1_ci_level: number;
  /** k → mean pass@k over problems, for k up to the samples per problem. */
  pass_at_k: Record<string, number>;
  by_difficulty: Partial<Record<Difficulty | "unknown", DifficultyRow>>;
  by_verdict: Record<string, number>;
  completion_rate: number;
  think_rate: number;
  /** Over samples that report usage; null when none does. */
  mean_completion_tokens: number | null;
  problems: number;
  samples: number;
  samples_per_problem: number;
  max_tokens: number;
  extraction: ExtractionPolicy;
}

// The usual k of the literature; the samples per problem is added when missing.
const KS = [1, 2, 5, 10, 16, 32, 64, 100];

/** JSON has no NaN: an empty set's rate is reported as 0, never dropped. */
const num = (x: number) => (Number.isFinite(x) ? x : 0);

export function evaluationMetrics(
  samples: SampleStats[],
  o: { maxTokens: number; extraction: ExtractionPolicy; bootstrapSeed?: number },
): EvaluationMetrics {
  if (samples.some((s) => s.verdict === "IE")) {
    // The stage fails before this; a caller that forgets must not get a biased pass@1.
    throw new Error("infrastructure errors cannot enter the metrics");
  }
  const difficulty = new Map(samples.map((s) => [s.problem_id, s.difficulty ?? undefined]));
  const tallies = tally(
    samples.map((s) => ({ id: s.problem_id, correct: s.passed })),
    (id) => difficulty.get(id),
  );
  const minN = tallies.length ? Math.min(...tallies.map((t) => t.n)) : 0;
  const maxN = tallies.length ? Math.max(...tallies.map((t) => t.n)) : 0;
  const pass_at_k: Record<string, number> = {};
  for (const k of [...new Set([...KS, minN])].sort((a, b) => a - b))
    if (k >= 1 && k <= minN) pass_at_k[String(k)] = meanPassAtK(tallies, k);
  const ci = bootstrapPassAt1(tallies, { seed: o.bootstrapSeed ?? 0 });
  const by_verdict: Record<string, number> = {};
  for (const s of samples) by_verdict[s.verdict] = (by_verdict[s.verdict] ?? 0) + 1;
  const tokens = samples
    .map((s) => s.completion_tokens)
    .filter((t): t is number => typeof t === "number");
  const rate = (f: (s: SampleStats) => boolean) =>
    samples.length ? samples.filter(f).length / samples.length : 0;
  const bd = byDifficulty(tallies);
  for (const row of Object.values(bd)) if (row) row.pass_at_1 = num(row.pass_at_1);
  return {
    pass_at_1: num(passAt1(tallies)),
    pass_at_1_ci: [num(ci.low), num(ci.high)],
    pass_at_1_ci_level: ci.level,
    pass_at_k,
    by_difficulty: bd,
    by_verdict,
    completion_rate: rate((s) => s.completed),
    think_rate: rate((s) => s.think),
    mean_completion_tokens: tokens.length
      ? tokens.reduce((a, b) => a + b, 0) / tokens.length
      : null,
    problems: tallies.length,
    samples: samples.length,
    // Equal for every problem when the stage wrote the samples; the larger one otherwise.
    samples_per_problem: maxN,
    max_tokens: o.maxTokens,
    extraction: o.extraction,
  };
}
