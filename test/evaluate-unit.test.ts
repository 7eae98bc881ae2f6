/**
 * The evaluate stage without a model: the metrics of hand-made samples, the
 * grading path on canned answers, and bad input.
 */
import { kindParams } from "../engine/kinds.js";
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { BadStageInput } from "../engine/stage-api.js";
import evaluate, { type EvaluateParams } from "../stages/evaluate/index.js";
import { evaluationMetrics, type SampleStats } from "../stages/evaluate/metrics.js";
import { gradeAnswers } from "../stages/evaluate/grading.js";
import type { Problem } from "../grader/types.js";
import { artifact, makeCtx } from "./llama-fixture.js";

delete process.env.VALLEY_REQUEST_CACHE;

const s = (problem_id: string, passed: boolean, o: Partial<SampleStats> = {}): SampleStats => ({
  problem_id,
  difficulty: "easy",
  verdict: passed ? "AC" : "WA",
  passed,
  completed: true,
  think: false,
  completion_tokens: 10,
  ...o,
});

test("metrics of hand-made samples: pass@1, pass@k, by difficulty, rates", () => {
  // a: 2 of 4 pass; b: 0 of 4; c (hard): 4 of 4.
  const samples: SampleStats[] = [
    s("a", true, { think: true, completion_tokens: 20 }),
    s("a", false, { completed: false, verdict: "TLE" }),
    s("a", true),
    s("a", false, { think: true, completion_tokens: null }),
    s("b", false, { verdict: "NO_CODE", completed: false }),
    s("b", false),
    s("b", false),
    s("b", false),
    ...Array.from({ length: 4 }, () => s("c", true, { difficulty: "hard", think: true })),
  ];
  const m = evaluationMetrics(samples, { maxTokens: 64, extraction: "first" });
  assert.equal(m.problems, 3);
  assert.equal(m.samples, 12);
  assert.equal(m.samples_per_problem, 4);
  assert.ok(Math.abs(m.pass_at_1 - (0.5 + 0 + 1) / 3) < 1e-12);
  // pass@2 for a: 1 − C(2,2)/C(4,2) = 5/6; b: 0; c: 1.
  assert.ok(Math.abs(m.pass_at_k["2"] - (5 / 6 + 0 + 1) / 3) < 1e-12);
  assert.ok(Math.abs(m.pass_at_k["4"] - 2 / 3) < 1e-12, "pass@4: a and c");
  assert.deepEqual(Object.keys(m.pass_at_k), ["1", "2", "4"]);
  assert.equal(m.pass_at_k["1"], m.pass_at_1);
  assert.deepEqual(m.by_difficulty.easy, { problems: 2, samples: 8, pass_at_1: 0.25 });
  assert.deepEqual(m.by_difficulty.hard, { problems: 1, samples: 4, pass_at_1: 1 });
  assert.equal(m.completion_rate, 10 / 12);
  assert.equal(m.think_rate, 6 / 12);
  // 11 samples report tokens: 20 + 10×10.
  assert.ok(Math.abs((m.mean_completion_tokens ?? 0) - 120 / 11) < 1e-12);
  assert.deepEqual(m.by_verdict, { AC: 6, TLE: 1, WA: 4, NO_CODE: 1 });
  const [lo, hi] = m.pass_at_1_ci;
  assert.ok(lo <= m.pass_at_1 && m.pass_at_1 <= hi, `${lo} ≤ ${m.pass_at_1} ≤ ${hi}`);
  assert.ok(lo >= 0 && hi <= 1);
  assert.equal(m.extraction, "first");
  assert.equal(m.max_tokens, 64);
  // Seeded: the same samples give the same interval.
  assert.deepEqual(evaluationMetrics(samples, { maxTokens: 64, extraction: "first" }), m);
  assert.throws(
    () =>
      evaluationMetrics([s("a", false, { verdict: "IE" })], { maxTokens: 1, extraction: "first" }),
    /infrastructure/,
  );
});

const sum: Problem = {
  id: "sum",
  statement: "Add two numbers.",
  difficulty: "easy",
  time_limit_s: 2,
  tests: [
    { input: "1 2\n", output: "3\n", type: "stdin" },
    { input: "10 20\n", output: "30\n", type: "stdin" },
  ],
};

test("grading canned answers the way the stage does: AC, WA, NO_CODE, think", async () => {
  const answer = (sample: number, text: string, finish_reason = "stop") => ({
    problem: sum,
    sample,
    text,
    finish_reason,
    prompt_tokens: 5,
    completion_tokens: 7,
  });
  const good = "```python\na, b = map(int, input().split())\nprint(a + b)\n```";
  const records = await gradeAnswers(
    [
      answer(0, `<think>\nadd them\n</think>\n${good}`),
      answer(1, "```python\nprint(4)\n```"),
      answer(2, "<think>\n" + good + "\nno closing tag", "length"),
    ],
    { jobs: 2 },
  );
  assert.deepEqual(
    records.map((r) => [r.verdict, r.passed, r.completed, r.think]),
    [
      ["AC", true, true, true],
      ["WA", false, true, false],
      ["NO_CODE", false, false, true],
    ],
  );
  assert.equal(records[0].tests.length, 2);
  assert.deepEqual(
    records[0].tests.map((t) => t.verdict),
    ["AC", "AC"],
  );
  assert.equal(records[1].tests.length, 1, "stops at the first failing test");
  assert.equal(records[0].problem_id, "sum");
  assert.equal(records[0].difficulty, "easy");

  // A sandbox that cannot start is an error, never a verdict.
  await assert.rejects(
    gradeAnswers([answer(0, good)], { bwrap: "/nonexistent/bwrap" }),
    (e: Error) => !(e instanceof BadStageInput) && /grader failed|bwrap|sandbox/i.test(e.message),
  );
});

async function problemsDir(records: unknown[]): Promise<string> {
  const { tmp } = await makeCtx({});
  const dir = join(tmp, "problems");
  await mkdir(dir, { recursive: true });
  await writeFile(
    join(dir, "problems.jsonl"),
    records.map((r) => JSON.stringify(r)).join("\n") + "\n",
  );
  return dir;
}

test("bad input: no problems after the filter, missing model.gguf, no statement", async () => {
  const train = { ...sum, id: "t", split: "train" };
  const problems = await problemsDir([train]);
  const { tmp } = await makeCtx({});
  const modelDir = join(tmp, "model");
  await mkdir(modelDir);
  await writeFile(join(modelDir, "model.gguf"), "not read before the problems are");
  const run = async (params: Partial<EvaluateParams>, model = modelDir, dir = problems) => {
    const { ctx } = await makeCtx(kindParams<EvaluateParams>("evaluate", params), {
      inputs: { model: artifact(model, "m"), problems: artifact(dir, "p") },
    });
    return evaluate.run(ctx);
  };
  // Default split "eval": the only record is train.
  await assert.rejects(
    run({}),
    (e: Error) =>
      e instanceof BadStageInput && /split "eval" matches none of the 1/.test(e.message),
  );
  // An explicit split on records without one says how to fix it.
  const noSplit = await problemsDir([sum]);
  await assert.rejects(
    run({ split: "eval" }, modelDir, noSplit),
    (e: Error) => e instanceof BadStageInput && /use split: all/.test(e.message),
  );
  const empty = await problemsDir([]);
  await assert.rejects(
    run({}, modelDir, empty),
    (e: Error) => e instanceof BadStageInput && /holds no problems/.test(e.message),
  );
  const { tmp: t2 } = await makeCtx({});
  await assert.rejects(
    run({ split: "all" }, t2),
    (e: Error) => e instanceof BadStageInput && /model\.gguf/.test(e.message),
  );
  const noStatement = await problemsDir([{ id: "x", tests: sum.tests }]);
  await assert.rejects(
    run({}, modelDir, noStatement),
    (e: Error) => e instanceof BadStageInput && /statement/.test(e.message),
  );
  const noTests = await problemsDir([{ ...sum, tests: [] }]);
  await assert.rejects(
    run({}, modelDir, noTests),
    (e: Error) => e instanceof BadStageInput && /no tests/.test(e.message),
  );
});

test("resources: cpu from threads (or grading jobs), a GPU only with gpuLayers", () => {
  const r = evaluate.resources!;
  assert.deepEqual(
    {
      cpu: r(kindParams<EvaluateParams>("evaluate", { threads: 6 })).cpu,
      gpu: r(kindParams<EvaluateParams>("evaluate", { threads: 6 })).gpu,
    },
    { cpu: 6, gpu: 0 },
  );
  assert.equal(r(kindParams<EvaluateParams>("evaluate", { threads: 2, gpuLayers: 99 })).gpu, 1);
  assert.deepEqual(evaluate.tools, ["llama"]);
  assert.deepEqual(
    evaluate.check!({ prompt: { user: "{{statement}} {{nope}}" } } as EvaluateParams),
    [{ path: ["prompt", "user"], message: "unknown field {{nope}}" }],
  );
});
