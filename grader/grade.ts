/**
 * Grading one answer against one problem: extract the program, run it on the
 * tests in the sandbox, judge each test on the host.
 */
import { compareFunctional, compareStdout } from "./compare.js";
import { extractCode } from "./extract.js";
import {
  DEFAULT_LIMITS,
  runSandboxed,
  SandboxProcess,
  type RawRun,
  type SandboxKind,
  type SandboxLimits,
} from "./sandbox.js";
import type {
  ExtractionPolicy,
  Outcome,
  Problem,
  SampleResult,
  TestResult,
  TestType,
  Verdict,
} from "./types.js";

/**
 * The grading params `verify` and `evaluate` both take (their schema.json
 * files declare the same names and defaults).
 */
export interface GradingParams {
  policy: ExtractionPolicy;
  allTests: boolean;
  timeoutScale: number;
  wallFactor: number;
  defaultTimeLimitS: number;
  defaultMemoryMb: number;
  floatTolerance?: number;
  jobs: number;
  sandbox: "bwrap" | "none";
  bwrap: string;
}

export const GRADING_DEFAULTS: GradingParams = {
  policy: "first",
  allTests: false,
  timeoutScale: 1,
  wallFactor: 2,
  defaultTimeLimitS: 6,
  defaultMemoryMb: 1024,
  jobs: 2,
  sandbox: "bwrap",
  bwrap: "/usr/bin/bwrap",
};

/** Grader options from a stage's grading params. */
export function gradeOptionsFrom(p: GradingParams, signal: AbortSignal): Partial<GradeOptions> {
  return {
    policy: p.policy,
    allTests: p.allTests,
    timeoutScale: p.timeoutScale,
    wallFactor: p.wallFactor,
    defaultTimeLimitS: p.defaultTimeLimitS,
    defaultMemoryMb: p.defaultMemoryMb,
    floatTolerance: p.floatTolerance,
    jobs: p.jobs,
    sandbox: p.sandbox,
    bwrap: p.bwrap,
    signal,
  };
}

export interface GradeOptions {
  /** Which fenced block is the program (LCB: first). */
  policy: ExtractionPolicy;
  /** Run every test instead of stopping at the first failure. */
  allTests: boolean;
  /** Multiplies each problem's time limit (slow machines, contention). */
  timeoutScale: number;
  /** Wall clock per test = time limit × wallFactor + 1 s; CPU time is the main measure, so contention does not cause time-outs. */
  wallFactor: number;
  /** Time limit when the problem gives none (LCB: 6 s). */
  defaultTimeLimitS: number;
  /** Memory limit when the problem gives none. */
  defaultMemoryMb: number;
  /** Tolerance for numbers in stdin outputs when the problem gives none; undefined = exact. */
  floatTolerance?: number;
  sandbox: SandboxKind;
  /** bubblewrap's path, when not /usr/bin/bwrap. */
  bwrap?: string;
  /** Samples graded at once. */
  jobs: number;
  /** Limits not derived from the problem (files, processes, output caps). */
  limits: Partial<SandboxLimits>;
  signal?: AbortSignal;
}

export const DEFAULT_GRADE_OPTIONS: GradeOptions = {
  policy: "first",
  allTests: false,
  timeoutScale: 1,
  wallFactor: 2,
  defaultTimeLimitS: 6,
  defaultMemoryMb: 1024,
  sandbox: "bwrap",
  jobs: 2,
  limits: {},
};

/** A problem the grader cannot grade as given: bad input, not a verdict. */
export class ProblemError extends Error {
  override name = "ProblemError";
}

/** The test type of a problem, or why it cannot be graded. */
export function problemMode(p: Problem): TestType {
  if (!Array.isArray(p.tests) || p.tests.length === 0) {
    throw new ProblemError(`problem ${p.id} has no tests: zero tests would count as a pass`);
  }
  const types = new Set(p.tests.map((t) => t.type));
  if (types.size !== 1) throw new ProblemError(`problem ${p.id} mixes stdin and functional tests`);
  const mode = p.tests[0].type;
  if (mode !== "stdin" && mode !== "functional") {
    throw new ProblemError(`problem ${p.id}: unknown test type ${JSON.stringify(mode)}`);
  }
  if (mode === "functional" && !p.fn_name) {
    throw new ProblemError(`problem ${p.id} has functional tests but no fn_name`);
  }
  return mode;
}

const SIGKILL = 9;
const SIGXCPU = 24;

function tail(buf: Buffer, n = 2048): string | undefined {
  if (buf.length === 0) return undefined;
  return buf.subarray(Math.max(0, buf.length - n)).toString("utf8");
}

function judge(
  run: RawRun,
  p: Problem,
  mode: TestType,
  cpuLimit: number,
  tolerance: number | undefined,
): TestResult {
  const round = (x: number) => Math.round(x * 1e4) / 1e4;
  const base = {
    index: run.index,
    cpu_s: run.cpuS === null ? null : round(run.cpuS),
    wall_s: round(run.wallS),
    exit_code: run.exitCode,
    signal: run.signal,
  };
  const fail = (verdict: Verdict, note: string): TestResult => ({
    ...base,
    verdict,
    note,
    ...(tail(run.stderr) !== undefined ? { stderr_tail: tail(run.stderr) } : {}),
  });
  if (run.outputLimitExceeded) return fail("OLE", "stdout exceeded the output cap");
  const cpu = run.cpuS ?? 0;
  if (run.timedOut) return fail("TLE", "wall-clock limit reached");
  if (
    cpu > cpuLimit ||
    run.signal === SIGXCPU ||
    (run.signal === SIGKILL && cpu >= Math.floor(cpuLimit))
  ) {
    return fail("TLE", `CPU-time limit of ${cpuLimit} s reached (${cpu.toFixed(2)} s measured)`);
  }
  if (run.exception === "MemoryError")
    return fail("MLE", "MemoryError: the address-space limit was reached");
  if (run.signal !== null) return fail("RE", `killed by signal ${run.signal}`);
  if (run.exitCode !== 0) {
    return fail(
      "RE",
      run.exception ? `${run.exception} (exit ${run.exitCode})` : `exit code ${run.exitCode}`,
    );
  }
  const test = p.tests[run.index];
  if (mode === "functional") {
    if (run.exception === "Unserializable")
      return fail("WA", "the returned value is not JSON-serialisable");
    if (run.result === null) return fail("RE", "the function returned no result");
    const c = compareFunctional(run.result, test.output);
    return c.ok ? { ...base, verdict: "AC" } : fail("WA", c.note ?? "wrong answer");
  }
  const c = compareStdout(run.stdout.toString("utf8"), test.output, tolerance);
  return c.ok ? { ...base, verdict: "AC" } : fail("WA", c.note ?? "wrong answer");
}

function options(o: Partial<GradeOptions>): GradeOptions {
  return {
    ...DEFAULT_GRADE_OPTIONS,
    ...o,
    limits: { ...DEFAULT_GRADE_OPTIONS.limits, ...o.limits },
  };
}

/**
 * Grades one answer. Throws ProblemError for a problem that cannot be graded;
 * everything the program does, and a sandbox that fails, ends in the result.
 */
export async function gradeSample(
  problem: Problem,
  text: string,
  opts: Partial<GradeOptions> = {},
  takeSandbox?: () => SandboxProcess,
): Promise<SampleResult> {
  const o = options(opts);
  const mode = problemMode(problem);
  const code = extractCode(text, o.policy);
  if (code === null) {
    return {
      verdict: "NO_CODE",
      tests: [],
      policy: o.policy,
      message: "no fenced Python block outside <think>",
    };
  }
  const cpuLimit = (problem.time_limit_s ?? o.defaultTimeLimitS) * o.timeoutScale;
  const limits: SandboxLimits = {
    ...DEFAULT_LIMITS,
    ...o.limits,
    cpuS: cpuLimit,
    wallS: cpuLimit * o.wallFactor + 1,
    memoryMb: problem.memory_limit_mb ?? o.defaultMemoryMb,
  };
  const tolerance = problem.float_tolerance ?? o.floatTolerance;
  const tests: TestResult[] = [];
  const end = await runSandboxed(
    {
      code,
      mode,
      fnName: mode === "functional" ? problem.fn_name : undefined,
      inputs: problem.tests.map((t) => t.input),
      limits,
    },
    (run) => {
      const r = judge(run, problem, mode, cpuLimit, tolerance);
      tests.push(r);
      return o.allTests || r.verdict === "AC";
    },
    { sandbox: o.sandbox, bwrap: o.bwrap, signal: o.signal },
    takeSandbox?.(),
  );
  const stub = (index: number, verdict: Verdict, note: string): TestResult => ({
    index,
    verdict,
    cpu_s: null,
    wall_s: 0,
    exit_code: null,
    signal: null,
    note,
  });
  switch (end.kind) {
    case "infra":
      return { verdict: "IE", tests, policy: o.policy, message: end.message };
    case "compile-error":
      return { verdict: "CE", tests, policy: o.policy, message: end.message };
    case "crashed":
      tests.push(stub(end.index, "RE", end.message));
      break;
    case "timeout":
      tests.push(stub(end.index, "TLE", "the sandbox's overall wall clock ran out"));
      break;
    case "done":
      break;
  }
  const failed = tests.find((t) => t.verdict !== "AC");
  const verdict: Outcome = failed
    ? failed.verdict
    : tests.length === problem.tests.length
      ? "AC"
      : "IE";
  return {
    verdict,
    tests,
    policy: o.policy,
    ...(verdict === "IE"
      ? { message: `only ${tests.length} of ${problem.tests.length} tests ran` }
      : {}),
  };
}

export interface Job {
  problem: Problem;
  text: string;
}

/**
 * Grades many answers, `jobs` at a time, keeping input order. `onDone` sees
 * each result as it lands (progress).
 */
export async function gradeMany(
  jobs: Job[],
  opts: Partial<GradeOptions> = {},
  onDone?: (index: number, r: SampleResult) => void,
): Promise<SampleResult[]> {
  const o = options(opts);
  for (const j of jobs) problemMode(j.problem); // bad input before any work
  const out = new Array<SampleResult>(jobs.length);
  // Sandboxes start with limits fixed per run (the size of /tmp, output caps).
  const spawnLimits: SandboxLimits = { ...DEFAULT_LIMITS, ...o.limits };
  const start = () =>
    new SandboxProcess({ sandbox: o.sandbox, bwrap: o.bwrap, limits: spawnLimits });
  let next = 0;
  const worker = async () => {
    // Each worker keeps one sandbox started ahead, so its start-up overlaps
    // the previous candidate's run.
    let warm: SandboxProcess | undefined;
    const take = () => {
      const p = warm ?? start();
      warm = next < jobs.length && !o.signal?.aborted ? start() : undefined;
      return p;
    };
    try {
      while (next < jobs.length && !o.signal?.aborted) {
        const k = next++;
        out[k] = await gradeSample(jobs[k].problem, jobs[k].text, o, take);
        onDone?.(k, out[k]);
      }
    } finally {
      await warm?.dispose();
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, Math.min(o.jobs, jobs.length)) }, worker));
  return out;
}
