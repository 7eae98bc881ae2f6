import { test } from "node:test";
import assert from "node:assert/strict";
import { copyFileSync, mkdirSync, readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { PACKAGE_ROOT } from "../engine/root.js";
import { valley } from "./helpers/valley.js";
import { makeCtx, tempDir } from "./helpers/data-ctx.js";
import { writeValleyFixture } from "./helpers/valley-fixtures.js";
import model from "../stages/model/index.js";

/**
 * pipelines/valley.yaml itself, end to end through the real CLI, on data in
 * the published shapes of OCR2, TACO, APPS, CodeContests, open-r1/codeforces
 * and LiveCodeBench (test/helpers/valley-fixtures.ts), with tiny random
 * students in place of the 7B/8B ones. Only documented overrides:
 *   -p students_dir=…   two tiny random GGUFs under the paper's file names
 *   -p data_scale=0.001 1K/10K/30K → 1/10/30, 6K/4K → 6/4
 *   -p llama_backend=cpu -p llama_flags=[…]  the demo's CPU build (shared test cache)
 *   -p epochs=1 -p max_len=384 -p samples=1 -p eval_max_tokens=24 -p lcb_from/lcb_to
 * and VALLEY_GPUS=1, so the stages that reserve a GPU run here on the CPU build.
 */
const cache = process.env.VALLEY_TEST_CACHE ?? join(PACKAGE_ROOT, ".tmp", "test-cache");
const pipeline = join(PACKAGE_ROOT, "pipelines", "valley.yaml");
// The demo's llama stage params: the same key, so the shared build is reused.
const DEMO_FLAGS =
  "[-DGGML_NATIVE=OFF, -DGGML_AVX=ON, -DGGML_AVX2=ON, -DGGML_FMA=ON, -DGGML_F16C=ON, -DGGML_BMI2=ON]";

const lines = (file: string) => readFileSync(file, "utf8").split("\n").filter(Boolean);

test(
  "pipelines/valley.yaml runs end to end on data shaped like the published datasets, with tiny students",
  { timeout: 45 * 60_000 },
  async () => {
    mkdirSync(cache, { recursive: true });
    const dir = tempDir("valley-e2e-");
    const fx = writeValleyFixture(join(dir, "data"));
    const students = join(dir, "models");
    mkdirSync(students);
    for (const [name, seed] of [
      ["Qwen2.5-7B-Instruct", 1],
      ["Llama-3.1-8B-Instruct", 2],
    ] as const) {
      // 2,048 positions: the LCB prompt alone is ~640 of this character-level vocabulary.
      const ctx = makeCtx({ random: { preset: "tiny", seed, context_length: 2048 } } as never);
      await model.run(ctx as never);
      copyFileSync(join(ctx.out, "model.gguf"), join(students, `${name}-F32.gguf`));
    }
    const params = [
      `ocr2=${join(fx.ocr2, "train", "python")}`,
      `taco=${fx.taco}`,
      `apps=${fx.apps}`,
      `code_contests=${fx.code_contests}`,
      `codeforces=${fx.codeforces}`,
      `lcb=${fx.lcb}`,
      "lcb_from=2023-05-01",
      "lcb_to=2025-04-30",
      `students_dir=${students}`,
      "data_scale=0.001",
      "llama_backend=cpu",
      `llama_flags=${DEMO_FLAGS}`,
      "epochs=1",
      "max_len=384",
      "samples=1",
      "eval_max_tokens=24",
    ].flatMap((p) => ["-p", p]);
    const env = { VALLEY_CACHE: cache, VALLEY_GPUS: "1" };
    const run = valley(["run", pipeline, "--json", ...params], { env, timeoutMs: 40 * 60_000 });
    assert.equal(run.code, 0, run.stderr.slice(-4000));
    const summary = JSON.parse(run.stdout) as { instances: number; failed: number };
    assert.equal(summary.instances, 64);
    assert.equal(summary.failed, 0);

    const show = (id: string) => {
      const r = valley(["show", id, "-f", pipeline, "--json", ...params], { env });
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout) as { tree: { path: string }; metrics: Record<string, unknown> };
    };

    // OCR2: every question rebuilt from its source, but the rows pointing past TACO's end.
    const ocr2 = show("ocr2");
    assert.equal(ocr2.metrics.count, 42);
    assert.deepEqual(ocr2.metrics.by_dataset, fx.questions);
    assert.deepEqual(ocr2.metrics.unresolved, fx.unresolvedRows);
    assert.equal(ocr2.metrics.generations, 20 * 2 + 10 * 2 + 6 + 6 * 2);
    const cf = lines(join(ocr2.tree.path, "problems.jsonl"))
      .map((l) => JSON.parse(l) as { id: string; statement: string; tests: unknown[] })
      .find((p) => p.id === "qid-open-r1/codeforces-1")!;
    assert.equal(
      cf.statement,
      "Read a and b. Print a + b + 301.\n\nInput\n\nTwo integers a and b.\n\nOutput\n\nOne integer." +
        "\n\nExamples\n\nInput\n\n1 2\n\n\nOutput\n\n304\n\n\nNote\n\nEasy.",
    );
    assert.equal(cf.tests.length, 2);

    // Stage 2's pool: OCR2's taco rows with TACO's tests, labelled by verify.
    const pool = show("ocr2_taco");
    assert.equal(pool.metrics.count, 20);
    const verified = show("taco_verified");
    const labels = lines(join(verified.tree.path, "traces.jsonl")).map(
      (l) => JSON.parse(l) as { problem_id: string; sample: number; correct: boolean },
    );
    assert.equal(labels.length, 40);
    // The fixture's first generation of each TACO question is right, the second wrong.
    for (const t of labels) assert.equal(t.correct, t.sample === 0, `${t.problem_id}#${t.sample}`);

    // Exact sizes, nested, and nothing left for the trainer to drop.
    for (const student of ["Qwen2.5-7B-Instruct", "Llama-3.1-8B-Instruct"]) {
      const ids = (n: number) =>
        lines(join(show(`data1@student=${student},n=${n}`).tree.path, "ids.txt"));
      const [a, b, c] = [ids(1000), ids(10000), ids(30000)];
      assert.deepEqual([a.length, b.length, c.length], [1, 10, 30]);
      assert.deepEqual(c.slice(0, 10), b);
      assert.deepEqual(b.slice(0, 1), a);
      for (const n of [1000, 10000, 30000]) {
        const t = show(`tune1@student=${student},n=${n}`);
        assert.equal(t.metrics.dropped, 0, `tune1 ${student} ${n} dropped examples`);
      }
    }
    const big = show("data1@student=Qwen2.5-7B-Instruct,n=30000");
    assert.equal(big.metrics.length_in, "student tokens");
    for (const [subset, n, correct] of [
      ["correct", 6000, true],
      ["incorrect", 6000, false],
    ] as const) {
      const d = show(`data2@subset=${subset},n=${n}`);
      assert.equal(d.metrics.count, 6);
      const chosen = lines(join(d.tree.path, "traces.txt"));
      for (const id of chosen) assert.equal(id.endsWith("#0"), correct, `${subset}: ${id}`);
    }
    for (const subset of ["hard", "easy"]) {
      const d = show(`data2@subset=${subset},n=4000`);
      assert.equal(d.metrics.count, 4);
      const ids = lines(join(d.tree.path, "ids.txt"));
      const hard = (id: string) =>
        ["2", "3", "4"].includes(String(Number(id.split("-").pop()) % 5));
      for (const id of ids) assert.equal(hard(id), subset === "hard", `${subset}: ${id}`);
    }

    const report = show("report");
    for (const f of ["index.html", "table.csv"])
      assert.ok(existsSync(join(report.tree.path, f)), f);
  },
);
