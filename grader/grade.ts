/**
 * Grading one answer against one problem: extract the program, run it on the
 * tests in the sandbox, judge each test on the host.
 */
import { compareFunctional, compareStdout } from "./compare.js";
import { extractCode } from "./extract.js";
import {
  LCB_ALARM_S,
  lcbExtract,
  semanticsFor,
  TACO_ALARM_S,
  tacoStdoutOk,
  type Semantics,
  type SemanticsChoice,
} from "./semantics.js";
import {
  DEFAULT_LIMITS,
  runSandboxed,
  SandboxProcess,
  type RawRun,
  type SandboxKind,
  type SandboxLimits,
  type SessionEnd,
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
  /** Whose verdicts: strict, lcb, taco, or auto (by each problem's source). */
  semantics: SemanticsChoice;
  /** Address-space cap under lcb and taco, whose harnesses have none: only the machine's safety. */
  memoryCapMb: number;
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

/** Grader options from a stage's grading params. */
export function gradeOptionsFrom(
  p: GradingParams,
  signal: AbortSignal,
  where: "verify" | "evaluate",
): Partial<GradeOptions> {
  return {
    semantics: p.semantics,
    memoryCapMb: p.memoryCapMb,
    where,
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
  /** Whose verdicts (see semantics.ts); `auto` picks by each problem's source. */
  semantics: SemanticsChoice;
  /** Which stage's `auto`: TACO problems get taco semantics only in verify. */
  where: "verify" | "evaluate";
  /** Address-space cap under lcb and taco (their harnesses have none). */
  memoryCapMb: number;
  /** Which fenced Python block is the program under strict and taco (lcb takes the last fenced block of the raw text). */
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
  semantics: "strict",
  where: "evaluate",
  memoryCapMb: 4096,
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
export function problemMode(p: Problem, semantics: Semantics = "strict"): TestType {
  if (!Array.isArray(p.tests) || p.tests.length === 0) {
    throw new ProblemError(`problem ${p.id} has no tests: zero tests would count as a pass`);
  }
  const types = new Set(p.tests.map((t) => t.type));
  if (types.size !== 1) throw new ProblemError(`problem ${p.id} mixes stdin and functional tests`);
  const mode = p.tests[0].type;
  if (mode !== "stdin" && mode !== "functional") {
    throw new ProblemError(`problem ${p.id}: unknown test type ${JSON.stringify(mode)}`);
  }
  // Under lcb this is the problem's own failure (LCB finds no method to call), not bad input.
  if (mode === "functional" && !p.fn_name && semantics !== "lcb") {
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
  const semantics = semanticsFor(problem, o.semantics, o.where);
  const mode = problemMode(problem, semantics);
  const policy: ExtractionPolicy = semantics === "lcb" ? "last" : o.policy;
  const code = semantics === "lcb" ? lcbExtract(text) : extractCode(text, o.policy);
  const base = { policy, semantics };
  if (code === null) {
    return {
      verdict: "NO_CODE",
      tests: [],
      ...base,
      message:
        semantics === "lcb"
          ? "fewer than two lines with ``` (LiveCodeBench grades an empty program)"
          : "no fenced Python block outside <think>",
    };
  }
  if (semantics === "lcb" && mode === "functional" && !problem.fn_name) {
    return {
      verdict: "RE",
      tests: [],
      ...base,
      message: `problem ${problem.id} has functional tests but no fn_name: LiveCodeBench finds no method to call`,
    };
  }
  if (semantics === "strict") return gradeStrict(problem, mode, code, o, takeSandbox);
  if (semantics === "lcb" || mode === "functional")
    return gradeInProcess(problem, mode, code, semantics, o, takeSandbox);
  return gradeTacoStdin(problem, code, o, takeSandbox);
}

const stub = (index: number, verdict: Verdict, note: string): TestResult => ({
  index,
  verdict,
  cpu_s: null,
  wall_s: 0,
  exit_code: null,
  signal: null,
  note,
});

function finalVerdict(
  tests: TestResult[],
  total: number,
  base: { policy: ExtractionPolicy; semantics: Semantics },
): SampleResult {
  const failed = tests.find((t) => t.verdict !== "AC");
  const verdict: Outcome = failed ? failed.verdict : tests.length === total ? "AC" : "IE";
  return {
    verdict,
    tests,
    ...base,
    ...(verdict === "IE" ? { message: `only ${tests.length} of ${total} tests ran` } : {}),
  };
}

/** A sample's verdict from how its sandbox session ended and the tests it judged. */
function sessionVerdict(
  end: SessionEnd,
  tests: TestResult[],
  total: number,
  base: { policy: ExtractionPolicy; semantics: Semantics },
): SampleResult {
  switch (end.kind) {
    case "infra":
      return { verdict: "IE", tests, ...base, message: end.message };
    case "compile-error":
      return { verdict: "CE", tests, ...base, message: end.message };
    case "crashed":
      tests.push(stub(end.index, "RE", end.message));
      break;
    case "timeout":
      tests.push(stub(end.index, "TLE", "the sandbox's overall wall clock ran out"));
      break;
    case "done":
      break;
  }
  return finalVerdict(tests, total, base);
}

async function gradeStrict(
  problem: Problem,
  mode: TestType,
  code: string,
  o: GradeOptions,
  takeSandbox?: () => SandboxProcess,
): Promise<SampleResult> {
  const base = { policy: o.policy, semantics: "strict" as const };
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
  return sessionVerdict(end, tests, problem.tests.length, base);
}

const STATUS_VERDICT: Record<string, Verdict> = {
  pass: "AC",
  wa: "WA",
  tle: "TLE",
  re: "RE",
  mle: "MLE",
  ce: "CE",
};

/**
 * lcb (stdin and functional) and taco functional: one process runs the tests
 * in turn and judges each itself, as those harnesses do; it stops at the first
 * failure. Time: the harnesses' wall-clock alarm per test, and LCB's overall
 * clock, (alarm + 1) × tests + 5 s, for the whole process.
 */
async function gradeInProcess(
  problem: Problem,
  mode: TestType,
  code: string,
  semantics: Semantics,
  o: GradeOptions,
  takeSandbox?: () => SandboxProcess,
): Promise<SampleResult> {
  const base = { policy: semantics === "lcb" ? ("last" as const) : o.policy, semantics };
  const alarmS = (semantics === "lcb" ? LCB_ALARM_S : TACO_ALARM_S) * o.timeoutScale;
  const overall = (alarmS + 1) * problem.tests.length + 5;
  const limits: SandboxLimits = {
    ...DEFAULT_LIMITS,
    ...o.limits,
    cpuS: overall,
    wallS: overall,
    memoryMb: o.memoryCapMb,
  };
  const tests: TestResult[] = [];
  const end = await runSandboxed(
    {
      code,
      mode,
      fnName: mode === "functional" ? problem.fn_name : undefined,
      inputs: problem.tests.map((t) => t.input),
      expected: problem.tests.map((t) => t.output),
      limits,
      semantics,
      alarmS,
    },
    (run) => {
      const verdict = STATUS_VERDICT[run.status ?? ""] ?? "RE";
      const r: TestResult = {
        index: run.index,
        verdict,
        cpu_s: null,
        wall_s: Math.round(run.wallS * 1e4) / 1e4,
        exit_code: null,
        signal: null,
        ...(verdict !== "AC" && run.note ? { note: run.note } : {}),
        ...(verdict !== "AC" && run.stderr.length > 0
          ? { stderr_tail: run.stderr.toString("utf8") }
          : {}),
      };
      tests.push(r);
      return verdict === "AC";
    },
    { sandbox: o.sandbox, bwrap: o.bwrap, signal: o.signal },
    takeSandbox?.(),
  );
  const r = sessionVerdict(end, tests, problem.tests.length, base);
  if (end.kind === "infra" || end.kind === "compile-error") return r;
  const ce = tests.find((t) => t.verdict === "CE");
  return ce?.note ? { ...r, message: ce.note } : r;
}

/** TACO's label of one stdin test: passed, false, timeout, runtime_error or returncode:N. */
function tacoLabel(run: RawRun, expected: string): { label: string; verdict: Verdict } {
  const text = (b: Buffer): string | null => {
    try {
      // subprocess.run(text=True): strict UTF-8, universal newlines.
      return new TextDecoder("utf-8", { fatal: true }).decode(b).replace(/\r\n?/g, "\n");
    } catch {
      return null;
    }
  };
  if (run.outputLimitExceeded) return { label: "output limit", verdict: "OLE" };
  if (run.timedOut) return { label: "timeout", verdict: "TLE" };
  const rc = run.exitCode ?? (run.signal !== null ? -run.signal : -1);
  if (rc === 0) {
    const out = text(run.stdout);
    if (out === null) return { label: "runtime_error", verdict: "RE" };
    return tacoStdoutOk(out, expected)
      ? { label: "passed", verdict: "AC" }
      : { label: "false", verdict: "WA" };
  }
  const f = run.fileRetry;
  if (!f || f.timedOut) return { label: `returncode:${rc}`, verdict: "RE" };
  if (f.exitCode !== 0) return { label: `returncode:${f.exitCode ?? -9}`, verdict: "RE" };
  if (f.output === null) return { label: "returncode:0", verdict: "RE" };
  const out = text(f.output);
  if (out === null) return { label: "returncode:0", verdict: "RE" };
  return tacoStdoutOk(out, expected)
    ? { label: "passed", verdict: "AC" }
    : { label: "false", verdict: "WA" };
}

/**
 * taco stdin: each test is a fresh run of the program with TACO's preamble
 * under a 4 s wall clock; a failed run is retried reading input.txt and
 * writing output.txt. When every test ends with exit code 1 TACO runs the
 * function-wrapped form instead, and that decides.
 */
async function gradeTacoStdin(
  problem: Problem,
  code: string,
  o: GradeOptions,
  takeSandbox?: () => SandboxProcess,
): Promise<SampleResult> {
  const base = { policy: o.policy, semantics: "taco" as const };
  const wallS = TACO_ALARM_S * o.timeoutScale;
  const limits: SandboxLimits = {
    ...DEFAULT_LIMITS,
    ...o.limits,
    cpuS: wallS + 1,
    wallS,
    memoryMb: o.memoryCapMb,
  };
  const n = problem.tests.length;
  const session = async (variant: "plain" | "wrapped", proc?: SandboxProcess) => {
    const tests: TestResult[] = [];
    const labels: string[] = [];
    const end = await runSandboxed(
      {
        code,
        mode: "stdin",
        inputs: problem.tests.map((t) => t.input),
        limits,
        semantics: "taco",
        variant,
        alarmS: wallS,
      },
      (run) => {
        const { label, verdict } = tacoLabel(run, problem.tests[run.index].output);
        labels.push(label);
        const r = judge(run, problem, "stdin", Infinity, undefined);
        tests.push({
          ...r,
          verdict,
          ...(verdict === "AC" ? { note: undefined } : { note: `TACO: ${label}` }),
        });
        // The plain run goes on while all pass or all end with exit code 1
        // (then the wrapped form is tried); the wrapped run stops at a failure.
        if (variant === "wrapped") return verdict === "AC";
        return labels.every((l) => l === "passed") || labels.every((l) => l === "returncode:1");
      },
      { sandbox: o.sandbox, bwrap: o.bwrap, signal: o.signal },
      proc,
    );
    return { tests, labels, end };
  };
  const first = await session("plain", takeSandbox?.());
  const allRc1 = first.labels.length === n && first.labels.every((l) => l === "returncode:1");
  const plainCe = first.end.kind === "compile-error" && !first.end.final;
  const { tests, end } = allRc1 || plainCe ? await session("wrapped") : first;
  return sessionVerdict(end, tests, n, base);
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
  // Bad input before any work.
  for (const j of jobs) problemMode(j.problem, semanticsFor(j.problem, o.semantics, o.where));
  const out = new Array<SampleResult>(jobs.length);
  // Sandboxes start with limits fixed per run (the size of /tmp, output caps).
  const spawnLimits: SandboxLimits = { ...DEFAULT_LIMITS, ...o.limits };
  // A sandbox started for job k imports what k's semantics need while it waits.
  const start = (k: number) =>
    new SandboxProcess({
      sandbox: o.sandbox,
      bwrap: o.bwrap,
      limits: spawnLimits,
      preload: k < jobs.length ? semanticsFor(jobs[k].problem, o.semantics, o.where) : undefined,
    });
  let next = 0;
  const worker = async () => {
    // Each worker keeps one sandbox started ahead, so its start-up overlaps
    // the previous candidate's run.
    let warm: SandboxProcess | undefined;
    const take = () => {
      const p = warm ?? start(next - 1);
      warm = next < jobs.length && !o.signal?.aborted ? start(next) : undefined;
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
