/**
 * The summary of a grading run, shared by `valley grade` and the verify stage:
 * counts per verdict, pass@1 and pass@k, an interval, a difficulty breakdown.
 * Infrastructure errors are counted apart and left out of every rate.
 */
import {
  bootstrapPassAt1,
  byDifficulty,
  meanPassAtK,
  passAt1,
  tally,
  type Interval,
} from "./metrics.js";
import { VERDICTS, type Difficulty, type Outcome } from "./types.js";

export interface GradeSummary {
  samples: number;
  /** Samples graded (not IE). */
  graded: number;
  problems: number;
  by_verdict: Record<Outcome, number>;
  infrastructure_errors: number;
  pass_at_1: number;
  pass_at_1_ci95: Interval;
  /** k → mean pass@k, for every k up to the fewest samples any problem has. */
  pass_at_k: Record<string, number>;
  by_difficulty: ReturnType<typeof byDifficulty>;
}

export function summarize(
  samples: { id: string; verdict: Outcome }[],
  difficultyOf: (id: string) => Difficulty | undefined,
  seed = 0,
): GradeSummary {
  const by_verdict = Object.fromEntries([...VERDICTS, "IE"].map((v) => [v, 0])) as Record<
    Outcome,
    number
  >;
  for (const s of samples) by_verdict[s.verdict]++;
  const graded = samples.filter((s) => s.verdict !== "IE");
  const tallies = tally(
    graded.map((s) => ({ id: s.id, correct: s.verdict === "AC" })),
    difficultyOf,
  );
  const minN = tallies.length ? Math.min(...tallies.map((t) => t.n)) : 0;
  const pass_at_k: Record<string, number> = {};
  for (const k of [1, 2, 5, 10, 16, 32, 64, 100])
    if (k <= minN) pass_at_k[String(k)] = meanPassAtK(tallies, k);
  return {
    samples: samples.length,
    graded: graded.length,
    problems: tallies.length,
    by_verdict,
    infrastructure_errors: by_verdict.IE,
    pass_at_1: passAt1(tallies),
    pass_at_1_ci95: bootstrapPassAt1(tallies, { seed }),
    pass_at_k,
    by_difficulty: byDifficulty(tallies),
  };
}
