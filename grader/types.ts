/**
 * The vocabulary of the grader: problems and tests as the normalised schema
 * gives them, verdicts, and what grading one sample produces.
 */

/** Verdicts a program can earn. `IE` (infrastructure error) is not among them. */
export const VERDICTS = ["AC", "WA", "TLE", "MLE", "OLE", "RE", "CE", "NO_CODE"] as const;
export type Verdict = (typeof VERDICTS)[number];

/** What a sample gets: a verdict, or `IE` when the grader itself could not run it. */
export type Outcome = Verdict | "IE";

export type TestType = "stdin" | "functional";

export interface TestCase {
  input: string;
  output: string;
  type: TestType;
}

export type Difficulty = "easy" | "medium" | "hard";

/** A record of problems.jsonl (the normalised schema shared with the importers). */
export interface Problem {
  id: string;
  source?: string;
  title?: string;
  statement?: string;
  starter_code?: string;
  tests: TestCase[];
  fn_name?: string;
  difficulty?: Difficulty;
  difficulty_raw?: unknown;
  time_limit_s?: number;
  memory_limit_mb?: number;
  /**
   * Grader extension: numbers in stdin outputs also match when within this
   * absolute-or-relative tolerance (|a−b| ≤ tol·max(1,|b|)). Absent: exact, as LCB.
   */
  float_tolerance?: number;
  date?: string;
  family?: string;
  split?: "train" | "eval";
  [extra: string]: unknown;
}

/** Which fenced block counts when an answer holds several. */
export type ExtractionPolicy = "first" | "last";

/** How one test went, as reported in results (expected outputs are not echoed). */
export interface TestResult {
  index: number;
  verdict: Verdict;
  /** CPU seconds of the program's main process. */
  cpu_s: number | null;
  wall_s: number;
  exit_code: number | null;
  signal: number | null;
  /** Why it failed, in a few words a user can act on. */
  note?: string;
  /** Up to 2 KiB of stderr, for failures. */
  stderr_tail?: string;
}

export interface SampleResult {
  verdict: Outcome;
  /** Per test, in order; stops at the first failure unless allTests. */
  tests: TestResult[];
  policy: ExtractionPolicy;
  /** Whose verdict this is: strict, lcb or taco (grader/semantics.ts). */
  semantics: "strict" | "lcb" | "taco";
  /** For `IE`, `CE` and `NO_CODE`: what happened. */
  message?: string;
}
