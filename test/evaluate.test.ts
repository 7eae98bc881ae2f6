/**
 * evaluate end to end against the real llama-server (the shared test build of
 * llama.cpp, see llama-fixture.ts) and a tiny random model: outputs with
 * consistent counts, the per-request cache (more samples send only the new
 * requests; all cached starts no server), and base + LoRA adapter.
 */
import { kindParams } from "../engine/kinds.js";
import { before, test } from "node:test";
import assert from "node:assert/strict";
import { mkdir, readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { InputArtifact, StageContext } from "../engine/stage-api.js";
import evaluate, { type EvaluateParams } from "../stages/evaluate/index.js";
import type { SampleRecord } from "../stages/evaluate/metrics.js";
import { RequestCache } from "../data/request-cache.js";
import { randomModel, resolveRandomParams } from "../llama/random-model.js";
import { kv, writeGguf, type TensorSpec } from "../llama/gguf-writer.js";
import { GGML_TYPE_F32 } from "../llama/gguf.js";
import { artifact, makeCtx, testLlama, waitGone, type BuiltLlama } from "./llama-fixture.js";

delete process.env.VALLEY_REQUEST_CACHE;

let llama: BuiltLlama;
let root: string;
let model: InputArtifact;
let problems: InputArtifact;

const problem = (id: string, split: "eval" | "train", difficulty: string) => ({
  id,
  source: "test",
  title: id,
  statement: `Print the sum of two numbers (${id}).`,
  starter_code: "",
  difficulty,
  difficulty_raw: difficulty,
  split,
  time_limit_s: 2,
  tests: [{ input: "1 2\n", output: "3\n", type: "stdin" }],
});

before(async () => {
  llama = await testLlama();
  const { tmp } = await makeCtx({});
  root = tmp;
  const m = join(root, "model");
  await mkdir(m);
  const rm = randomModel(resolveRandomParams({ preset: "tiny", seed: 3 }));
  await writeGguf(join(m, "model.gguf"), rm.kvs, rm.tensors);
  model = artifact(m, "model");
  const p = join(root, "problems");
  await mkdir(p);
  const records = [
    problem("a", "eval", "easy"),
    problem("b", "eval", "hard"),
    problem("t", "train", "easy"),
  ];
  await writeFile(join(p, "problems.jsonl"), records.map((r) => JSON.stringify(r)).join("\n"));
  problems = artifact(p, "problems");
});

const base: Partial<EvaluateParams> = {
  temperature: 0.8,
  top_p: 0.95,
  max_tokens: 12,
  seed: 5,
  prompt: { user: "{{statement}}" },
  parallel: 2,
  ctxSize: 256,
  threads: 2,
  jobs: 2,
};

async function runEval(
  params: Partial<EvaluateParams>,
  cacheFile: string,
  o: {
    withLlama?: boolean;
    adapter?: InputArtifact;
    signal?: AbortSignal;
    progress?: (done: number, total?: number, note?: string) => void;
  } = {},
): Promise<{ ctx: StageContext<EvaluateParams>; metrics: Record<string, unknown> }> {
  const { ctx } = await makeCtx(kindParams<EvaluateParams>("evaluate", { ...base, ...params }), {
    inputs: { model, problems, ...(o.adapter ? { adapter: o.adapter } : {}) },
    tools: o.withLlama === false ? {} : { llama },
    cpu: 2,
    signal: o.signal,
    progress: o.progress,
  });
  ctx.requestCache = cacheFile;
  const res = await evaluate.run(ctx);
  return { ctx, metrics: res?.metrics ?? {} };
}

async function samplesOf(out: string): Promise<SampleRecord[]> {
  const text = await readFile(join(out, "samples.jsonl"), "utf8");
  return text
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as SampleRecord);
}

test("evaluate end to end; more samples send only the new requests; all cached needs no server", async () => {
  const cacheFile = join(root, "requests.sqlite");
  const first = await runEval({ samples: 2 }, cacheFile);
  const s1 = await samplesOf(first.ctx.out);
  // Default split eval: a and b, 2 samples each.
  assert.deepEqual(
    s1.map((r) => [r.problem_id, r.sample]),
    [
      ["a", 0],
      ["a", 1],
      ["b", 0],
      ["b", 1],
    ],
  );
  for (const r of s1) {
    assert.equal(typeof r.text, "string");
    assert.ok(
      r.finish_reason === "stop" || r.finish_reason === "length",
      r.finish_reason ?? "null",
    );
    assert.ok((r.completion_tokens ?? 0) > 0 && (r.completion_tokens ?? 0) <= 12);
    assert.ok((r.prompt_tokens ?? 0) > 0);
    assert.equal(r.completed, r.finish_reason === "stop");
    assert.equal(r.passed, r.verdict === "AC");
    assert.notEqual(r.verdict, "IE");
    assert.ok(Array.isArray(r.tests));
  }
  assert.equal(s1[2].difficulty, "hard");
  const m = JSON.parse(await readFile(join(first.ctx.out, "metrics.json"), "utf8"));
  assert.equal(m.problems, 2);
  assert.equal(m.samples, 4);
  assert.equal(m.max_tokens, 12);
  assert.equal(m.extraction, "first");
  assert.equal(m.split, "eval");
  assert.equal(m.pass_at_1, s1.filter((r) => r.passed).length / 4);
  assert.deepEqual(Object.keys(m.pass_at_k), ["1", "2"]);
  assert.equal(m.completion_rate, s1.filter((r) => r.completed).length / 4);
  assert.equal(m.think_rate, s1.filter((r) => r.think).length / 4);
  assert.equal(m.by_difficulty.easy.problems, 1);
  assert.equal(m.by_difficulty.hard.problems, 1);
  assert.equal(m.pass_at_1_ci.length, 2);
  // The stage's metrics carry the same headline numbers.
  for (const k of ["pass_at_1", "pass_at_1_ci", "pass_at_k", "completion_rate", "think_rate"])
    assert.deepEqual(first.metrics[k], m[k], k);
  assert.deepEqual(first.metrics.requests, { total: 4, cached: 0, sent: 4 });

  // Three samples: only the third of each problem is sent.
  const second = await runEval({ samples: 3 }, cacheFile);
  assert.deepEqual(second.metrics.requests, { total: 6, cached: 4, sent: 2 });
  const cache = await RequestCache.open(cacheFile);
  assert.equal(cache.count(), 6, "six answers in the cache, no more");
  cache.close();
  const s2 = await samplesOf(second.ctx.out);
  assert.equal(s2.length, 6);
  const old = s2.filter((r) => r.sample < 2);
  assert.deepEqual(
    old.map((r) => r.text),
    s1.map((r) => r.text),
    "cached answers are reused",
  );
  const m2 = JSON.parse(await readFile(join(second.ctx.out, "metrics.json"), "utf8"));
  assert.deepEqual(Object.keys(m2.pass_at_k), ["1", "2", "3"]);

  // Everything cached: no llama.cpp needed (none given), same outputs.
  const third = await runEval({ samples: 3 }, cacheFile, { withLlama: false });
  assert.deepEqual(third.metrics.requests, { total: 6, cached: 6, sent: 0 });
  assert.equal(
    await readFile(join(third.ctx.out, "samples.jsonl"), "utf8"),
    await readFile(join(second.ctx.out, "samples.jsonl"), "utf8"),
  );
  assert.deepEqual(await waitGone(join(model.path, "model.gguf")), [], "no server left");
});

test("an interrupted evaluate resumes: answered requests are not sent again", async () => {
  const cacheFile = join(root, "requests-abort.sqlite");
  const ac = new AbortController();
  // One slot: requests go one at a time, so the abort lands after exactly three answers.
  const params = { samples: 4, parallel: 1 };
  await assert.rejects(
    runEval(params, cacheFile, {
      signal: ac.signal,
      progress: (done, _total, note) => {
        if (note === "generate" && done === 3) ac.abort(new Error("interrupted"));
      },
    }),
    /interrupted/,
  );
  assert.deepEqual(
    await waitGone(join(model.path, "model.gguf")),
    [],
    "the abort stopped the server",
  );
  const cache = await RequestCache.open(cacheFile);
  assert.equal(cache.count(), 3);
  cache.close();
  const resumed = await runEval(params, cacheFile);
  assert.deepEqual(resumed.metrics.requests, { total: 8, cached: 3, sent: 5 });
  assert.equal((await samplesOf(resumed.ctx.out)).length, 8);
});

/** A LoRA adapter for the tiny model: random A and B on attn_q and ffn_up. */
async function writeAdapter(path: string): Promise<void> {
  let x = 11;
  const fill = (dst: Float32Array) => {
    for (let i = 0; i < dst.length; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      dst[i] = ((x >>> 8) / 2 ** 24 - 0.5) * 0.2;
    }
  };
  const r = 4;
  const t: TensorSpec[] = [];
  for (let l = 0; l < 2; l++) {
    for (const [w, ne0, ne1] of [
      ["attn_q", 64, 64],
      ["ffn_up", 64, 128],
    ] as const) {
      t.push({ name: `blk.${l}.${w}.weight.lora_a`, shape: [ne0, r], type: GGML_TYPE_F32, fill });
      t.push({ name: `blk.${l}.${w}.weight.lora_b`, shape: [r, ne1], type: GGML_TYPE_F32, fill });
    }
  }
  await writeGguf(
    path,
    [
      kv.str("general.architecture", "llama"),
      kv.str("general.type", "adapter"),
      kv.str("adapter.type", "lora"),
      kv.f32("adapter.lora.alpha", r),
    ],
    t,
  );
}

test("base + LoRA adapter at run time: its own cache entries", async () => {
  const dir = join(root, "adapter");
  await mkdir(dir);
  await writeAdapter(join(dir, "adapter.gguf"));
  const cacheFile = join(root, "requests-adapter.sqlite");
  const plain = await runEval({ samples: 1, limit: 1 }, cacheFile);
  assert.deepEqual(plain.metrics.requests, { total: 1, cached: 0, sent: 1 });
  const withAdapter = await runEval({ samples: 1, limit: 1 }, cacheFile, {
    adapter: artifact(dir, "tune"),
  });
  // The adapter's digest is part of the model identity: not answered from the base's entry.
  assert.deepEqual(withAdapter.metrics.requests, { total: 1, cached: 0, sent: 1 });
  const [r] = await samplesOf(withAdapter.ctx.out);
  assert.equal(r.problem_id, "a");
  assert.ok((r.completion_tokens ?? 0) > 0);
  const m = JSON.parse(await readFile(join(withAdapter.ctx.out, "metrics.json"), "utf8"));
  assert.equal(m.adapter, true);
  assert.equal(m.problems, 1);
});
