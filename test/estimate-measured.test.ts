/**
 * What a real run leaves for later estimates: the finetune and evaluate action
 * records keep the throughput they measured, with the model's shape and the
 * device (`valley show --json` → `measured`), and the next `plan --estimate`
 * of that shape is based on them ("measured: … on this shape").
 *
 * Needs the llama.cpp test build (llama-fixture.ts), through VALLEY_LLAMA_BIN.
 */
import { before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { cpus, tmpdir } from "node:os";
import { join } from "node:path";
import { project, valley, valleyChild, type Result } from "./helpers/valley.js";
import { testLlama } from "./llama-fixture.js";

const out = (r: Result) => r.stdout + r.stderr;
let dir = "";
let env: Record<string, string> = {};

const pipeline = (epochs: number, wideSeed = 5, extra = "") => `version: 1
stages:
  student:
    uses: model
    with:
      random: { preset: tiny, seed: 3 }
  tune:
    uses: finetune
    inputs: { from: student, data: ./data }
    with:
      method: lora
      lora: { rank: 2, alpha: 4 }
      epochs: ${epochs}
      maxSeqLen: 256
      threads: 1
  evaluate:
    uses: evaluate
    inputs: { model: student, problems: ./probs }
    with:
      samples: 1
      max_tokens: 16
      temperature: 0
      split: eval
      parallel: 1
      threads: 1
      jobs: 1
  # more threads than any test machine has cores: the trainer and the server get the cores
  widetune:
    uses: finetune
    inputs: { from: student, data: ./data }
    with:
      method: lora
      lora: { rank: 2, alpha: 4 }
      epochs: 1
      maxSeqLen: 256
      threads: 4096
  wide:
    uses: evaluate
    inputs: { model: student, problems: ./probs }
    with:
      samples: 1
      max_tokens: 16
      temperature: 0
      split: eval
      parallel: 1
      threads: 4096
      jobs: 1
      seed: ${wideSeed} # requests of its own: the request cache answers none of them
${extra}`;

before(async () => {
  const llama = await testLlama();
  dir = project({});
  mkdirSync(join(dir, "data"));
  writeFileSync(
    join(dir, "data", "train.jsonl"),
    Array.from({ length: 4 }, (_, i) =>
      JSON.stringify({
        messages: [
          { role: "user", content: `add ${i} and 1` },
          { role: "assistant", content: `print(${i} + 1)` },
        ],
      }),
    ).join("\n") + "\n",
  );
  mkdirSync(join(dir, "probs"));
  writeFileSync(
    join(dir, "probs", "problems.jsonl"),
    ["a", "b"]
      .map((id) =>
        JSON.stringify({
          id,
          source: "test",
          title: id,
          statement: `Print the sum of two numbers (${id}).`,
          starter_code: "",
          difficulty: "easy",
          split: "eval",
          tests: [{ input: "1 2\n", output: "3\n", type: "stdin" }],
        }),
      )
      .join("\n") + "\n",
  );
  writeFileSync(join(dir, "p.yaml"), pipeline(1));
  writeFileSync(
    join(dir, "p2.yaml"),
    pipeline(
      2,
      6,
      // the student with the (new) adapter: a trained model, whose answers may have code
      `  tuned:
    uses: evaluate
    inputs: { model: student, adapter: tune, problems: ./probs }
    with: { samples: 1, max_tokens: 16, temperature: 0, split: eval, parallel: 1, threads: 1, jobs: 1 }
`,
    ),
  );
  env = {
    VALLEY_CACHE: mkdtempSync(join(tmpdir(), "valley-measured-")),
    VALLEY_LLAMA_BIN: llama.bin,
    // the servers' own output in the instances' logs (their thread counts)
    VALLEY_LOG_LEVEL: "debug",
  };
});

test(
  "finetune and evaluate records keep measured throughput, shape and device; the next estimate uses them",
  { timeout: 20 * 60_000 },
  async () => {
    const run = await valleyChild(["run", "p.yaml"], { cwd: dir, env }).done;
    assert.equal(run.code, 0, out(run));
    const show = (id: string) => {
      const r = valley(["show", id, "-f", "p.yaml", "--json"], { cwd: dir, env });
      assert.equal(r.code, 0, out(r));
      return JSON.parse(r.stdout) as { measured: Record<string, unknown>[] };
    };
    // the tiny preset: 2 layers × 64, 4 heads (2 for K/V), F32
    const tinyShape = { nLayer: 2, nEmbd: 64, nHead: 4, nHeadKv: 2, nFf: 128, weightType: "f32" };

    const tune = show("tune").measured;
    const train = tune.find((m) => m.what === "train");
    assert.ok(train, JSON.stringify(tune));
    assert.ok((train.tokens_per_s as number) > 0, JSON.stringify(train));
    assert.equal(train.device, "cpu");
    assert.equal(train.threads, 1);
    assert.ok((train.window as number) >= 256, JSON.stringify(train));
    assert.ok((train.overhead_s as number) >= 0, JSON.stringify(train));
    assert.deepEqual(pick(train.shape, tinyShape), tinyShape);

    const ev = show("evaluate").measured;
    const gen = ev.find((m) => m.what === "generate");
    assert.ok(gen, JSON.stringify(ev));
    assert.ok((gen.tokens_per_s as number) > 0, JSON.stringify(gen));
    assert.equal(gen.device, "cpu");
    assert.equal(gen.parallel, 1);
    assert.deepEqual(pick(gen.shape, tinyShape), tinyShape);
    assert.ok(
      (gen.mean_completion_tokens as number) > 0 && (gen.mean_completion_tokens as number) <= 16,
    );
    const grade = ev.find((m) => m.what === "grade");
    assert.ok(grade && (grade.seconds_per_sample as number) > 0, JSON.stringify(ev));
    // how many of the answers had code the sandbox ran, as samples.jsonl says
    const ranCode = (id: string) => {
      const r = valley(["show", id, "-f", "p.yaml", "--json"], { cwd: dir, env });
      assert.equal(r.code, 0, out(r));
      const tree = (JSON.parse(r.stdout) as { tree: { path: string } }).tree.path;
      const v = readFileSync(join(tree, "samples.jsonl"), "utf8")
        .trim()
        .split("\n")
        .map((l) => JSON.parse(l).verdict as string);
      return v.filter((x) => x !== "NO_CODE").length / v.length;
    };
    const fraction = ranCode("evaluate");
    assert.equal(grade.code_fraction, fraction, JSON.stringify(grade));
    // the cost per sample with code only when some had code
    assert.equal(typeof grade.seconds_per_sample_with_code, fraction > 0 ? "number" : "undefined");

    // threads: 4096 ran valley-lora and llama-server with one thread per core of this machine
    const wideTune = show("widetune").measured.find((m) => m.what === "train");
    assert.equal(wideTune?.threads, cpus().length, JSON.stringify(wideTune));
    const wide = show("wide").measured.find((m) => m.what === "generate");
    assert.equal(wide?.threads, cpus().length, JSON.stringify(wide));
    // as llama-server itself reports it in the instance's log
    const log = valley(["logs", "wide", "-f", "p.yaml"], { cwd: dir, env });
    assert.equal(log.code, 0, out(log));
    const threads = [...log.stdout.matchAll(/n_threads = (\d+)/g)].map((m) => Number(m[1]));
    assert.ok(threads.length > 0, log.stdout.slice(0, 4000));
    assert.deepEqual([...new Set(threads)], [cpus().length], log.stdout.slice(0, 4000));

    // two epochs is another key: the fine-tune would run again, estimated from the record above
    const est = valley(["plan", "p2.yaml", "--estimate", "--json"], { cwd: dir, env });
    assert.equal(est.code, 0, out(est));
    const rows = (
      JSON.parse(est.stdout) as {
        instances: {
          id: string;
          cached: boolean;
          estimate: { basis: Record<string, string> } | null;
        }[];
      }
    ).instances;
    const t2 = rows.find((r) => r.id === "tune");
    assert.ok(t2 && !t2.cached && t2.estimate, JSON.stringify(rows));
    assert.match(
      t2.estimate.basis.hours,
      /^measured: [\d.]+ tokens\/s on this shape \(cpu, 1 threads; run tune\)/,
    );
    assert.equal(rows.find((r) => r.id === "evaluate")?.cached, true);
    // the random student again (cached; its model.json says so): greedy, it runs
    // to max_tokens and writes no code
    const w2 = rows.find((r) => r.id === "wide");
    assert.ok(w2 && !w2.cached && w2.estimate, JSON.stringify(rows));
    assert.match(w2.estimate.basis.generated_tokens, /^assumed: random weights, never trained/);
    assert.match(w2.estimate.basis.grading, /^assumed: random weights, never trained/);
    // a trained model's grading: from the sandbox's cost per sample with code,
    // never from a past model's share of answers with code (the random student
    // writes none, and its runs graded in ~0 s); nothing calibrated here
    const tuned = rows.find((r) => r.id === "tuned");
    assert.ok(tuned && !tuned.cached && tuned.estimate, JSON.stringify(rows));
    const hadCode = fraction > 0 || ranCode("wide") > 0;
    assert.match(
      tuned.estimate.basis.grading,
      hadCode ? /^measured: [\d.]+ s of sandbox per sample with code/ : /^assumed: 0.05-2 s/,
    );
  },
);

function pick(shape: unknown, like: Record<string, unknown>): Record<string, unknown> {
  const s = (shape ?? {}) as Record<string, unknown>;
  return Object.fromEntries(Object.keys(like).map((k) => [k, s[k]]));
}
