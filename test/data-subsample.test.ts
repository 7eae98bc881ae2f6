import { test } from "node:test";
import { kindParams } from "../engine/kinds.js";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import subsample, { type SubsampleParams } from "../stages/subsample/index.js";
import { BadStageInput } from "../engine/stage-api.js";
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

async function run(
  p: Partial<SubsampleParams>,
  extra: Record<string, ReturnType<typeof artifact>> = {},
) {
  const ctx = makeCtx(kindParams<SubsampleParams>("subsample", p), {
    problems: artifact(fx.problems),
    traces: artifact(fx.traces),
    ...extra,
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
    traces: readFileSync(join(ctx.out, "traces.txt"), "utf8").trim().split("\n").filter(Boolean),
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
  const all = await run({ perQuestion: "all", correct: false });
  assert.equal(all.ids.length, 400);
  assert.ok(all.ids.every((id) => id.endsWith("#1")));
  assert.equal((await run({ perQuestion: "all" })).ids.length, 800);
});

test("asking for more than available fails with the counts, unless allowFewer", async () => {
  await assert.rejects(run({ n: 1000, paperDifficulty: "easy" }), (e: Error) => {
    assert.ok(e instanceof BadStageInput);
    assert.match(e.message, /asked for 1000 questions but only 160 qualify/);
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
  const ctx = makeCtx(kindParams<SubsampleParams>("subsample", { correct: true }), {
    problems: artifact(fx.problems),
    traces: artifact(noCorrect),
  });
  await assert.rejects(subsample.run(ctx), /no "correct" field; run verify/);
});

test("exact sizes: length is filtered before drawing, so n holds n or fails with how many qualify; nesting holds", async () => {
  // p7's two traces are ~4,000 characters: over 100 tokens at 4 characters a token.
  const n399 = await run({ n: 399, maxTokens: 100 });
  assert.equal(n399.rows.length, 399);
  assert.equal(n399.ids.includes("p7"), false);
  await assert.rejects(
    run({ n: 400, maxTokens: 100 }),
    /asked for 400 questions but only 399 qualify/,
  );
  const n100 = await run({ n: 100, maxTokens: 100 });
  const n300 = await run({ n: 300, maxTokens: 100 });
  assert.deepEqual(n300.ids.slice(0, 100), n100.ids);
  assert.deepEqual(n399.ids.slice(0, 300), n300.ids);
  // Only what the walk reached was measured: n=100 measures about 100 questions.
  assert.ok((n100.metrics.measured as number) <= 101);
});

test("perQuestion: first takes the lowest sample that passes, random a seeded one, all every trace", async () => {
  const first = await run({ n: 50, seed: 3 });
  assert.ok(first.traces.every((t) => t.endsWith("#0")));
  // Filters apply before the pick: with correct: false the first passing sample is #1.
  const wrong = await run({ n: 50, seed: 3, correct: false });
  assert.ok(wrong.traces.every((t) => t.endsWith("#1")));
  const random = await run({ n: 200, seed: 3, perQuestion: "random" });
  assert.deepEqual(random.ids, (await run({ n: 200, seed: 3 })).ids, "same questions, same order");
  const picks = new Set(random.traces.map((t) => t.split("#")[1]));
  assert.deepEqual([...picks].sort(), ["0", "1"]);
  assert.deepEqual((await run({ n: 200, seed: 3, perQuestion: "random" })).traces, random.traces);
  const all = await run({ n: 7, perQuestion: "all" });
  assert.equal(all.rows.length, 7);
  assert.deepEqual(all.ids, all.traces);
});

test("ids: an explicit list, in its order, through the filters; its bytes are in the key", async () => {
  const dir = tempDir();
  const file = join(dir, "ids.txt");
  writeFileSync(file, "# the paper's split\np5\np3#1\n\np9\n");
  const r = await run({ ids: file });
  assert.deepEqual(r.ids, ["p5", "p3#1", "p9"]);
  assert.deepEqual(r.traces, ["p5#0", "p3#1", "p9#0"]);
  assert.equal(r.rows.length, 3);
  assert.deepEqual((await run({ ids: file, n: 2 })).ids, ["p5", "p3#1"]);
  // p3#1 is incorrect: with correct: true it does not qualify, and the error says which.
  await assert.rejects(
    run({ ids: file, correct: true }),
    /ids: "p3#1" .* is no problem or trace that passes the filters/,
  );
  writeFileSync(join(dir, "dup.txt"), "p1\np1\n");
  await assert.rejects(run({ ids: join(dir, "dup.txt") }), /dup\.txt:2: id "p1" repeated/);
  const { fingerprintTools } = await import("../engine/engine.js");
  const { StatCache } = await import("../cache/stat-cache.js");
  const fp = () =>
    JSON.stringify(
      subsample.fingerprint!(
        { ids: file } as SubsampleParams,
        fingerprintTools(new StatCache(join(dir, "s.json")), dir),
      ),
    );
  const before = fp();
  writeFileSync(file, "p5\np9\n");
  assert.notEqual(fp(), before);
});

test("length in the student's tokens: a real GGUF's vocabulary through llama.cpp's tokenizer", async () => {
  const model = (await import("../stages/model/index.js")).default;
  const mctx = makeCtx({ random: { preset: "tiny", seed: 1 } } as never);
  await model.run(mctx as never);
  // The tiny random model's vocabulary is character-level: 4,000 characters are > 4,000 tokens.
  const r = await run({ maxTokens: 1000, charsPerToken: 1000 }, { model: artifact(mctx.out) });
  assert.equal(r.metrics.length_in, "student tokens");
  assert.equal(r.ids.length, 399);
  assert.equal((r.metrics.dropped as Record<string, number>)["too long"], 2);
  // chars / 1000 would have kept p7: the student's tokens decided.
  assert.equal((await run({ maxTokens: 1000, charsPerToken: 1000 })).ids.length, 400);
});
