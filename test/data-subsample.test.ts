import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import subsample, { type SubsampleParams } from "../stages/subsample/index.js";
import { InputError } from "../engine/stage-api.js";
import type { Problem } from "../data/problem.js";
import { artifact, makeCtx, tempDir } from "./helpers/data-ctx.js";

const LABELS = ["EASY", "MEDIUM", "MEDIUM_HARD", "HARD", "VERY_HARD"];
const NORM: Record<string, Problem["difficulty"]> = {
  EASY: "easy",
  MEDIUM: "medium",
  MEDIUM_HARD: "hard",
  HARD: "hard",
  VERY_HARD: "hard",
};

/** 400 problems with 2 traces each; odd samples are incorrect. */
function fixture(): { problems: string; traces: string } {
  const problems = tempDir();
  const traces = tempDir();
  const ps: Problem[] = [];
  const ts: unknown[] = [];
  for (let i = 0; i < 400; i++) {
    const raw = LABELS[i % 5];
    ps.push({
      id: `p${i}`,
      source: i % 10 === 0 ? "other" : "taco",
      title: "",
      statement: `s${i}`,
      starter_code: "",
      tests: [],
      difficulty: NORM[raw],
      difficulty_raw: raw,
      split: i % 3 === 0 ? "eval" : "train",
    });
    for (let s = 0; s < 2; s++)
      ts.push({
        problem_id: `p${i}`,
        sample: s,
        messages: [
          { role: "system", content: "sys" },
          { role: "user", content: `solve ${i}` },
        ],
        reasoning: "r".repeat(i === 7 ? 4000 : 10),
        answer: "```python\nprint(1)\n```",
        text: "",
        correct: s === 0,
      });
  }
  writeFileSync(
    join(problems, "problems.jsonl"),
    ps.map((p) => JSON.stringify(p)).join("\n") + "\n",
  );
  writeFileSync(join(traces, "traces.jsonl"), ts.map((t) => JSON.stringify(t)).join("\n") + "\n");
  return { problems, traces };
}

const fx = fixture();

async function run(p: Partial<SubsampleParams>) {
  const ctx = makeCtx(p as SubsampleParams, {
    problems: artifact(fx.problems),
    traces: artifact(fx.traces),
  });
  const res = await subsample.run(ctx);
  const bytes = readFileSync(join(ctx.out, "train.jsonl"));
  return {
    ids: readFileSync(join(ctx.out, "ids.txt"), "utf8").trim().split("\n").filter(Boolean),
    rows: bytes
      .toString()
      .trim()
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l) as { messages: { role: string; content: string }[] }),
    digest: createHash("sha256").update(bytes).digest("hex"),
    metrics: res!.metrics as Record<string, unknown>,
  };
}

test("nested: the 100-subset is inside the 300-subset; same seed same bytes; other seed differs", async () => {
  const a100 = await run({ n: 100, seed: 1 });
  const a300 = await run({ n: 300, seed: 1 });
  const again = await run({ n: 100, seed: 1 });
  const b100 = await run({ n: 100, seed: 2 });
  assert.equal(a100.ids.length, 100);
  const big = new Set(a300.ids);
  assert.ok(a100.ids.every((id) => big.has(id)));
  assert.deepEqual(a300.ids.slice(0, 100), a100.ids);
  assert.equal(again.digest, a100.digest);
  assert.notDeepEqual(new Set(b100.ids), new Set(a100.ids));
  // stratified prefixes are nested too, and keep the proportions
  const s100 = await run({ n: 100, seed: 1, stratify: true });
  const s300 = await run({ n: 300, seed: 1, stratify: true });
  assert.deepEqual(s300.ids.slice(0, 100), s100.ids);
  assert.deepEqual(s100.metrics.by_difficulty, { easy: 20, medium: 20, hard: 60 });
});

test("SFT shape: system?, user, assistant with <think> and the answer", async () => {
  const { rows } = await run({ n: 5, seed: 0 });
  const m = rows[0].messages;
  assert.deepEqual(
    m.map((x) => x.role),
    ["system", "user", "assistant"],
  );
  assert.match(m[2].content, /^<think>\nr+\n<\/think>\n\n```python\nprint\(1\)\n```$/);
  const dropped = await run({ n: 5, seed: 0, system: "" });
  assert.deepEqual(
    dropped.rows[0].messages.map((x) => x.role),
    ["user", "assistant"],
  );
});

test("filters: correctness, paper's hard/easy, difficulty, source, split, length, per trace", async () => {
  const correct = await run({ correct: true });
  assert.equal(correct.ids.length, 400);
  const hard = await run({ paperDifficulty: "hard" });
  assert.equal(hard.ids.length, 240);
  const easy = await run({ paperDifficulty: "easy" });
  assert.equal(easy.ids.length, 160);
  const medium = await run({ difficulty: ["medium"] });
  assert.equal(medium.ids.length, 80);
  assert.equal((await run({ source: ["other"] })).ids.length, 40);
  assert.equal((await run({ split: "eval" })).ids.length, 134);
  const short = await run({ maxTokens: 100 });
  assert.equal(short.ids.length, 399);
  assert.equal((short.metrics.dropped as Record<string, number>)["too long"], 2);
  const all = await run({ per: "trace", correct: false });
  assert.equal(all.ids.length, 400);
  assert.ok(all.ids.every((id) => id.endsWith("#1")));
  assert.equal((await run({ per: "trace" })).ids.length, 800);
});

test("asking for more than available fails with the counts, unless allowFewer", async () => {
  await assert.rejects(run({ n: 1000, paperDifficulty: "easy" }), (e: Error) => {
    assert.ok(e instanceof InputError);
    assert.match(e.message, /asked for 1000 problems but only 160 pass the filters/);
    assert.match(e.message, /allowFewer/);
    return true;
  });
  assert.equal((await run({ n: 1000, paperDifficulty: "easy", allowFewer: true })).ids.length, 160);
  const noCorrect = tempDir();
  writeFileSync(
    join(noCorrect, "traces.jsonl"),
    JSON.stringify({ problem_id: "p1", sample: 0, messages: [], reasoning: "", answer: "a" }) +
      "\n",
  );
  const ctx = makeCtx({ correct: true } as SubsampleParams, {
    problems: artifact(fx.problems),
    traces: artifact(noCorrect),
  });
  await assert.rejects(subsample.run(ctx), /no "correct" field; run verify/);
});
