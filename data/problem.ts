/**
 * The normalised problem record every importer produces and every later stage
 * (traces, verify, evaluate, subsample) reads. Field names are a contract: the
 * JSON Schema is schemas/problem.schema.json.
 */
export type Difficulty = "easy" | "medium" | "hard";
export type TestType = "stdin" | "functional";

export interface TestCase {
  /** stdin text, or for functional tests one JSON argument per line. */
  input: string;
  /** expected stdout, or for functional tests the JSON of the return value. */
  output: string;
  type: TestType;
}

export interface Problem {
  id: string;
  source: string;
  title: string;
  statement: string;
  starter_code: string;
  tests: TestCase[];
  fn_name?: string;
  difficulty: Difficulty;
  /** The label as the dataset gave it (e.g. TACO's MEDIUM_HARD). */
  difficulty_raw: string;
  time_limit_s?: number;
  memory_limit_mb?: number;
  /** ISO date (contest date for LiveCodeBench). */
  date?: string;
  /** Related problems share a family (demo set); used to keep eval held out. */
  family?: string;
  split?: "train" | "eval";
  reference_solution?: string;
  reference_trace?: string;
  /** Dataset-specific fields kept for later stages (e.g. OCR2 generations). */
  extra?: Record<string, unknown>;
}

export const DIFFICULTIES: readonly Difficulty[] = ["easy", "medium", "hard"];

const TACO_LABELS: Record<string, Difficulty> = {
  EASY: "easy",
  MEDIUM: "medium",
  MEDIUM_HARD: "hard",
  HARD: "hard",
  VERY_HARD: "hard",
  // APPS (codeparrot/apps), whose labels OCR/OCR2 rows carry for APPS questions.
  INTRODUCTORY: "easy",
  INTERVIEW: "medium",
  COMPETITION: "hard",
};

/** CodeContests' difficulty enum 1..5 (EASY..HARDEST); 7..28 are Codeforces letters. */
const CODECONTESTS_LABELS: Record<string, Difficulty> = {
  "1": "easy",
  "2": "medium",
  "3": "hard",
  "4": "hard",
  "5": "hard",
};

/** Labels that mean "no label": handled by the `unknownDifficulty` policy. */
export const UNKNOWN_LABELS = new Set(["", "-", "UNKNOWN", "UNKNOWN_DIFFICULTY", "NONE", "0"]);

/**
 * Maps a raw label to the 3-level scale, or null if the label is not one we
 * know. TACO: EASY→easy, MEDIUM→medium, MEDIUM_HARD/HARD/VERY_HARD→hard.
 * Codeforces ratings (≥ 500): < 1400 easy, < 2000 medium, else hard.
 */
export function normaliseDifficulty(raw: unknown): Difficulty | null {
  if (raw === null || raw === undefined) return null;
  const s = String(raw).trim();
  const low = s.toLowerCase();
  if (low === "easy" || low === "medium" || low === "hard") return low;
  const up = s.toUpperCase().replace(/[\s-]+/g, "_");
  if (up in TACO_LABELS) return TACO_LABELS[up];
  if (/^\d+$/.test(s)) {
    const n = Number(s);
    if (s in CODECONTESTS_LABELS) return CODECONTESTS_LABELS[s];
    // CodeContests 7..28 are Codeforces letters A, B, …: A-B easy, C-D medium, later hard.
    if (n >= 7 && n <= 28) return n <= 8 ? "easy" : n <= 10 ? "medium" : "hard";
    if (n >= 500 && n <= 4000) return n < 1400 ? "easy" : n < 2000 ? "medium" : "hard";
  }
  return null;
}

export function isUnknownLabel(raw: unknown): boolean {
  if (raw === null || raw === undefined) return true;
  return UNKNOWN_LABELS.has(String(raw).trim().toUpperCase());
}

/**
 * The paper's 2-way grouping (He et al. 2025): TACO medium_hard/hard/very_hard
 * are "hard", easy/medium are "easy". Non-TACO labels fall back to the
 * normalised scale: hard → hard, easy/medium → easy.
 */
export function paperDifficulty(
  p: Pick<Problem, "difficulty" | "difficulty_raw">,
): "hard" | "easy" {
  const up = String(p.difficulty_raw ?? "")
    .trim()
    .toUpperCase();
  if (up === "MEDIUM_HARD" || up === "HARD" || up === "VERY_HARD") return "hard";
  if (up === "EASY" || up === "MEDIUM") return "easy";
  return p.difficulty === "hard" ? "hard" : "easy";
}

/** Checks a record has the required shape; returns the problems found, or []. */
export function problemIssues(p: Partial<Problem>, requireTests: boolean): string[] {
  const issues: string[] = [];
  for (const k of ["id", "source", "title", "statement"] as const) {
    if (typeof p[k] !== "string" || (k !== "title" && p[k] === ""))
      issues.push(`missing field "${k}"`);
  }
  if (typeof p.starter_code !== "string") issues.push(`"starter_code" must be a string`);
  if (!Array.isArray(p.tests)) issues.push(`missing field "tests"`);
  else {
    if (requireTests && p.tests.length === 0) issues.push("has zero tests");
    p.tests.forEach((t, i) => {
      if (typeof t?.input !== "string" || typeof t?.output !== "string")
        issues.push(`test ${i}: input and output must be strings`);
      if (t?.type !== "stdin" && t?.type !== "functional")
        issues.push(`test ${i}: type must be "stdin" or "functional"`);
    });
    if (p.tests.some((t) => t?.type === "functional") && !p.fn_name)
      issues.push(`functional tests need "fn_name"`);
  }
  if (!p.difficulty || !DIFFICULTIES.includes(p.difficulty))
    issues.push(`difficulty must be easy, medium or hard (got ${JSON.stringify(p.difficulty)})`);
  if (typeof p.difficulty_raw !== "string") issues.push(`missing field "difficulty_raw"`);
  if (p.split !== undefined && p.split !== "train" && p.split !== "eval")
    issues.push(`split must be "train" or "eval"`);
  return issues;
}
