/**
 * `valley grade <problems.jsonl> <answers.jsonl> [--json]`: the sandboxed
 * grader without a pipeline, for answers produced elsewhere.
 *
 * Exit codes: 0 grading ran (whatever the verdicts; infrastructure errors are
 * counted in the summary), 1 the sandbox cannot start at all, 2 bad usage or
 * bad input (unreadable file, bad JSON at file:line, missing id, an answer for
 * an unknown problem, a problem with zero tests).
 */
import { gradeMany, type GradeOptions } from "../../grader/grade.js";
import { loadAnswers, loadProblems, RecordError } from "../../grader/records.js";
import { isSemanticsChoice, SEMANTICS_CHOICES, semanticsFor } from "../../grader/semantics.js";
import { probeSandbox } from "../../grader/sandbox.js";
import { summarize } from "../../grader/summary.js";
import type { SampleResult } from "../../grader/types.js";

/** Where the command writes; tests swap these to capture output without touching process.stdout. */
export const io = {
  stdout: (s: string): void => void process.stdout.write(s),
  stderr: (s: string): void => void process.stderr.write(s),
};

const USAGE = `usage: valley grade <problems.jsonl> <answers.jsonl> [--json] [--policy first|last]
       [--semantics auto|lcb|taco|strict] [--all-tests] [--jobs N] [--timeout-scale X]
       [--sandbox bwrap|none]
  --semantics  whose verdicts (default auto: lcb for LiveCodeBench problems, strict otherwise)`;

interface Args {
  problems: string;
  answers: string;
  json: boolean;
  opts: Partial<GradeOptions>;
}

function parseArgs(argv: string[]): Args | string {
  const pos: string[] = [];
  const opts: Partial<GradeOptions> = { semantics: "auto" };
  let json = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    const value = () => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${a} needs a value`);
      return v;
    };
    try {
      if (a === "--json") json = true;
      else if (a === "--all-tests") opts.allTests = true;
      else if (a === "--semantics") {
        const v = value();
        if (!isSemanticsChoice(v))
          return `--semantics must be one of ${SEMANTICS_CHOICES.join(", ")}, got ${JSON.stringify(v)}`;
        opts.semantics = v;
      } else if (a === "--policy") {
        const v = value();
        if (v !== "first" && v !== "last") return `--policy must be first or last, got ${v}`;
        opts.policy = v;
      } else if (a === "--sandbox") {
        const v = value();
        if (v !== "bwrap" && v !== "none") return `--sandbox must be bwrap or none, got ${v}`;
        opts.sandbox = v;
      } else if (a === "--jobs") {
        const n = Number(value());
        if (!Number.isInteger(n) || n < 1) return "--jobs must be a positive integer";
        opts.jobs = n;
      } else if (a === "--timeout-scale") {
        const x = Number(value());
        if (!(x > 0)) return "--timeout-scale must be a positive number";
        opts.timeoutScale = x;
      } else if (a === "-h" || a === "--help") return USAGE;
      else if (a.startsWith("-")) return `unknown option ${a}`;
      else pos.push(a);
    } catch (e) {
      return (e as Error).message;
    }
  }
  if (pos.length !== 2) return `expected 2 files, got ${pos.length}`;
  return { problems: pos[0], answers: pos[1], json, opts };
}

function table(rows: { id: string; sample: number; r: SampleResult }[]): string {
  const w = Math.max(7, ...rows.map((x) => x.id.length));
  const lines = [`${"problem".padEnd(w)}  sample  verdict  tests  note`];
  for (const { id, sample, r } of rows) {
    const failed = r.tests.find((t) => t.verdict !== "AC");
    const note = (r.message ?? failed?.note ?? "").split("\n")[0].slice(0, 80);
    const passed = r.tests.filter((t) => t.verdict === "AC").length;
    lines.push(
      `${id.padEnd(w)}  ${String(sample).padStart(6)}  ${r.verdict.padEnd(7)}  ${String(passed).padStart(5)}  ${note}`,
    );
  }
  return lines.join("\n");
}

export async function main(argv: string[]): Promise<number> {
  const args = parseArgs(argv);
  if (typeof args === "string") {
    io.stderr(`valley grade: ${args}\n${USAGE}\n`);
    return 2;
  }
  let problems, answers;
  try {
    const choice = args.opts.semantics ?? "auto";
    problems = await loadProblems(args.problems, (p) => semanticsFor(p, choice, "evaluate"));
    answers = await loadAnswers(args.answers, problems);
  } catch (e) {
    if (e instanceof RecordError) {
      io.stderr(`valley grade: ${e.message}\n`);
      return 2;
    }
    throw e;
  }
  const sandbox = args.opts.sandbox ?? "bwrap";
  if (sandbox === "none") {
    io.stderr("valley grade: warning: --sandbox none runs untrusted code without isolation\n");
  } else {
    const why = await probeSandbox(sandbox);
    if (why) {
      io.stderr(`valley grade: ${why}\n`);
      return 1;
    }
  }
  const results = await gradeMany(
    answers.map((a) => ({ problem: problems.get(a.id)!, text: a.text })),
    args.opts,
  );
  const rows = answers.map((a, k) => ({ id: a.id, sample: a.sample, r: results[k] }));
  const summary = {
    ...summarize(
      rows.map((x) => ({ id: x.id, verdict: x.r.verdict })),
      (id) => problems.get(id)?.difficulty,
    ),
    policy: args.opts.policy ?? "first",
    semantics: args.opts.semantics ?? "auto",
  };
  if (args.json) {
    const out = {
      results: rows.map(({ id, sample, r }) => ({
        id,
        sample,
        verdict: r.verdict,
        policy: r.policy,
        semantics: r.semantics,
        ...(r.message !== undefined ? { message: r.message } : {}),
        tests: r.tests,
      })),
      summary,
    };
    io.stdout(JSON.stringify(out) + "\n");
  } else {
    const counts = Object.entries(summary.by_verdict)
      .filter(([, n]) => n > 0)
      .map(([v, n]) => `${v} ${n}`)
      .join(", ");
    const ci = summary.pass_at_1_ci95;
    io.stdout(
      `${table(rows)}\n\n${summary.samples} samples, ${summary.problems} problems: ${counts}\n` +
        `pass@1 ${summary.pass_at_1.toFixed(4)} (95% CI ${ci.low.toFixed(4)}–${ci.high.toFixed(4)}), extraction: ${summary.policy} block\n` +
        (summary.infrastructure_errors > 0
          ? `${summary.infrastructure_errors} infrastructure error(s), left out of pass@1\n`
          : ""),
    );
  }
  return 0;
}
