/**
 * `verify`: labels each teacher trace correct or incorrect by grading the code
 * in its answer on its problem's tests, so `subsample` can filter by
 * correctness (the paper's Correct vs Incorrect runs).
 *
 * Inputs: `problems` (a folder with problems.jsonl), `traces` (a folder with
 * traces.jsonl). Output: traces.jsonl, each record plus `verdict`, `correct`
 * `verify_policy` and `verify_semantics`. An infrastructure error fails the stage: a trace is
 * never labelled because the grader broke.
 */
import { tracesInput } from "../../data/estimate.js";
import { createWriteStream } from "node:fs";
import { join } from "node:path";
import { finished } from "node:stream/promises";
import { BadStageInput, type StageContext, type StageKind } from "../../engine/stage-api.js";
import { gradeOptionsFrom, type GradingParams } from "../../grader/grade.js";

export type VerifyParams = GradingParams;

const verify: StageKind<VerifyParams> = {
  kind: "verify",
  // Bump when grading changes verdicts for the same code and tests.
  // 2: the semantics param (TACO's verdicts for TACO problems by default).
  version: "2",
  // Each sample has a sandbox of its own: how many run at once changes no verdict.
  unkeyedParams: ["jobs"],
  resources: (p) => ({ cpu: p.jobs, memory: p.jobs * 1024 }),
  async estimate(ctx) {
    // Each trace's code runs on its problem's tests in a sandbox: 0.2-5 s each, `jobs` at a time.
    const t = await tracesInput(ctx.inputs.traces, ctx.expected.traces);
    const jobs = ctx.params.jobs;
    const n = t?.records;
    return {
      hours: n ? [(n[0] * 0.2) / jobs / 3600, (n[1] * 5) / jobs / 3600] : [0, 0],
      device: "cpu",
      usd: null,
      basis: {
        hours: n
          ? `assumed: 0.2-5 s of sandboxed tests per trace (${t?.basis ?? "expected"}), ${jobs} at a time`
          : "unknown: the number of traces is unknown",
      },
      extra: n ? { cpu_hours: [(n[0] * 0.2) / 3600, (n[1] * 5) / 3600] } : undefined,
      output: (t ?? {}) as Record<string, unknown>,
    };
  },
  async run(ctx: StageContext<VerifyParams>) {
    // Imported here: module top-levels stay light for no-op runs.
    const { gradeMany, ProblemError } = await import("../../grader/grade.js");
    const { loadProblems, readJsonl, RecordError } = await import("../../grader/records.js");
    const { probeSandbox } = await import("../../grader/sandbox.js");

    const p = ctx.params;
    const problemsFile = join(ctx.input("problems").path, "problems.jsonl");
    const tracesFile = join(ctx.input("traces").path, "traces.jsonl");

    let problems;
    let traces;
    try {
      const { semanticsFor } = await import("../../grader/semantics.js");
      problems = await loadProblems(problemsFile, (q) => semanticsFor(q, p.semantics, "verify"));
      traces = await readJsonl(tracesFile);
    } catch (e) {
      if (e instanceof RecordError) throw new BadStageInput(e.message);
      throw e;
    }
    const jobs = traces.map(({ line, value }) => {
      const where = `${tracesFile}:${line}`;
      const id = value.problem_id;
      if (typeof id !== "string") throw new BadStageInput(`${where}: missing string "problem_id"`);
      const problem = problems.get(id);
      if (!problem)
        throw new BadStageInput(`${where}: trace for unknown problem ${JSON.stringify(id)}`);
      if (typeof value.text !== "string")
        throw new BadStageInput(`${where}: missing string "text"`);
      return { problem, text: value.text };
    });

    if (p.sandbox === "none") {
      ctx.log.warn("verify: sandbox none: untrusted code runs WITHOUT isolation on this host");
    } else {
      const why = await probeSandbox(p.sandbox, p.bwrap);
      if (why) throw new Error(`verify ${ctx.instanceId}: ${why}`);
    }

    const opts = gradeOptionsFrom(p, ctx.signal, "verify");
    let done = 0;
    let results;
    try {
      results = await gradeMany(jobs, opts, () => ctx.progress(++done, jobs.length));
    } catch (e) {
      if (e instanceof ProblemError) throw new BadStageInput(e.message);
      throw e;
    }
    if (ctx.signal.aborted) throw new Error(`verify ${ctx.instanceId}: aborted`);
    const ie = results.findIndex((r) => r.verdict === "IE");
    if (ie >= 0) {
      throw new Error(
        `verify ${ctx.instanceId}: the grader failed on ${tracesFile}:${traces[ie].line} ` +
          `(problem ${jobs[ie].problem.id}): ${results[ie].message ?? "infrastructure error"}`,
      );
    }

    const byVerdict: Record<string, number> = {};
    const semanticsUsed: Record<string, number> = {};
    const out = createWriteStream(join(ctx.out, "traces.jsonl"));
    traces.forEach(({ value }, k) => {
      const r = results[k];
      byVerdict[r.verdict] = (byVerdict[r.verdict] ?? 0) + 1;
      semanticsUsed[r.semantics] = (semanticsUsed[r.semantics] ?? 0) + 1;
      out.write(
        JSON.stringify({
          ...value,
          verdict: r.verdict,
          correct: r.verdict === "AC",
          verify_policy: r.policy,
          verify_semantics: r.semantics,
        }) + "\n",
      );
    });
    out.end();
    await finished(out);
    const correct = byVerdict.AC ?? 0;
    ctx.log.info({ total: traces.length, correct, byVerdict }, "verify: graded traces");
    return {
      metrics: {
        total: traces.length,
        correct,
        incorrect: traces.length - correct,
        by_verdict: byVerdict,
        policy: p.policy,
        semantics: p.semantics,
        semantics_used: semanticsUsed,
      },
    };
  },
};

export default verify;
