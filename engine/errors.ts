/**
 * Errors as values. Each says what went wrong where, and the CLI maps its
 * class to an exit code: bad usage or input → 2, a stage failure → 1.
 */

/** A place in a pipeline file, 1-based like editors show it. */
export interface SourceLocation {
  file: string;
  line: number;
  col: number;
}

export interface Problem {
  loc?: SourceLocation;
  /** Dotted path of the offending key, e.g. `stages.tune.with.lr`. */
  path?: string;
  message: string;
}

export function formatProblem(p: Problem): string {
  const where = p.loc ? `${p.loc.file}:${p.loc.line}:${p.loc.col}: ` : "";
  const what = p.path ? `${p.path}: ` : "";
  return `${where}${what}${p.message}`;
}

/**
 * The pipeline file (or a -p override) is invalid, found before anything
 * runs: exit 2, nothing runs, nothing is cached. Not to be confused with
 * BadStageInput, which a stage throws while running when an artifact it
 * reads is unusable.
 */
export class InvalidPipeline extends Error {
  override name = "InvalidPipeline";
  constructor(readonly problems: Problem[]) {
    super(problems.map(formatProblem).join("\n"));
  }
}

/** The command line is wrong: exit 2. */
export class UsageError extends Error {
  override name = "UsageError";
}

/** Suggests the closest known name, for "did you mean …?" hints. */
export function closest(name: string, known: Iterable<string>): string | undefined {
  let best: string | undefined;
  let bestD = Infinity;
  for (const k of known) {
    const d = editDistance(name, k);
    if (d < bestD) {
      bestD = d;
      best = k;
    }
  }
  return best !== undefined && bestD <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  const dp = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = dp[0];
    dp[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = dp[j];
      dp[j] = Math.min(dp[j] + 1, dp[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return dp[b.length];
}

export function didYouMean(name: string, known: Iterable<string>): string {
  const c = closest(name, known);
  return c ? ` (did you mean "${c}"?)` : "";
}

/** Up to `n` known names nearest to `name` (edit distance), nearest first: for "not found" messages. */
export function nearest(name: string, known: Iterable<string>, n = 3): string[] {
  return [...known]
    .map((k) => ({ k, d: editDistance(name, k) }))
    .sort((a, b) => a.d - b.d || (a.k < b.k ? -1 : a.k > b.k ? 1 : 0))
    .slice(0, n)
    .map((x) => x.k);
}
