/**
 * Grading a batch of generated answers into samples.jsonl records: the path the
 * evaluate stage takes, factored out so it can be tested without a model.
 */
import { BadStageInput } from "../../engine/stage-api.js";
import { gradeMany, ProblemError, type GradeOptions } from "../../grader/grade.js";
import { startsWithThink } from "../../grader/extract.js";
import type { Problem } from "../../grader/types.js";
import type { SampleRecord } from "./metrics.js";

/** One generated answer, as the chat client returns it. */
export interface GeneratedAnswer {
  problem: Problem;
  sample: number;
  text: string;
  finish_reason: string | null;
  prompt_tokens: number | null;
  completion_tokens: number | null;
}

/**
 * Grades answers (`opts.jobs` sandboxes at once) and builds their records, in
 * input order. A problem that cannot be graded is an BadStageInput; an
 * infrastructure error (the sandbox failed) throws: it is never a verdict.
 */
export async function gradeAnswers(
  answers: GeneratedAnswer[],
  opts: Partial<GradeOptions>,
  onDone?: () => void,
): Promise<SampleRecord[]> {
  let results;
  try {
    results = await gradeMany(
      answers.map((a) => ({ problem: a.problem, text: a.text })),
      opts,
      () => onDone?.(),
    );
  } catch (e) {
    if (e instanceof ProblemError) throw new BadStageInput(e.message);
    throw e;
  }
  if (opts.signal?.aborted) throw opts.signal.reason ?? new Error("aborted");
  const ie = results.findIndex((r) => r.verdict === "IE");
  if (ie >= 0) {
    const a = answers[ie];
    throw new Error(
      `the grader failed on problem ${a.problem.id}, sample ${a.sample}: ` +
        `${results[ie].message ?? "infrastructure error"}. Infrastructure errors are never counted; ` +
        "fix the sandbox (see grader/README.md) and run again: the answers are cached, so nothing is regenerated",
    );
  }
  return answers.map((a, k) => {
    const r = results[k];
    return {
      problem_id: a.problem.id,
      sample: a.sample,
      difficulty: a.problem.difficulty ?? null,
      text: a.text,
      finish_reason: a.finish_reason,
      prompt_tokens: a.prompt_tokens,
      completion_tokens: a.completion_tokens,
      verdict: r.verdict,
      semantics: r.semantics,
      passed: r.verdict === "AC",
      completed: a.finish_reason === "stop",
      think: startsWithThink(a.text),
      tests: r.tests,
      ...(r.message !== undefined ? { message: r.message } : {}),
    };
  });
}
