import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Writable } from "node:stream";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import traces, { type TracesParams } from "../stages/traces/index.js";
import type { Problem } from "../data/problem.js";
import { splitThink } from "../data/chat.js";
import { artifact, makeCtx, tempDir } from "./helpers/data-ctx.js";
import { startFakeServer, type Fault } from "./helpers/data-fake-openai.js";

delete process.env.VALLEY_REQUEST_CACHE;

function problemsDir(n: number): string {
  const dir = tempDir();
  const ps: Problem[] = Array.from({ length: n }, (_, i) => ({
    id: `p${i}`,
    source: "test",
    title: `P${i}`,
    statement: `Problem number ${i}: print ${"x".repeat(i)}`,
    starter_code: "",
    tests: [{ input: "", output: "1", type: "stdin" }],
    difficulty: "easy",
    difficulty_raw: "easy",
  }));
  writeFileSync(join(dir, "problems.jsonl"), ps.map((p) => JSON.stringify(p)).join("\n") + "\n");
  return dir;
}

function params(url: string, extra: Partial<TracesParams> = {}): TracesParams {
  return {
    backend: "openai",
    baseUrl: url,
    model: "teacher",
    samples: 2,
    temperature: 0.6,
    top_p: 0.95,
    max_tokens: 64,
    seed: 7,
    concurrency: 4,
    retries: 4,
    backoffMs: 5,
    backoffMaxMs: 50,
    timeoutS: 0.3,
    failureBudget: 0,
    ...extra,
  };
}

const readTraces = (out: string) =>
  readFileSync(join(out, "traces.jsonl"), "utf8")
    .trim()
    .split("\n")
    .map((l) => JSON.parse(l) as Record<string, unknown>);

test("think splitting: inline, unclosed, none", () => {
  assert.deepEqual(splitThink("<think>\na\n</think>\n\nb"), {
    reasoning: "a",
    answer: "b",
    hasThink: true,
  });
  assert.deepEqual(splitThink("<think>cut off"), {
    reasoning: "cut off",
    answer: "",
    hasThink: true,
  });
  assert.deepEqual(splitThink("r</think>b"), { reasoning: "r", answer: "b", hasThink: true });
  assert.deepEqual(splitThink("just b"), { reasoning: "", answer: "just b", hasThink: false });
});

test("openai backend: 429, 500, resets and stalls are retried; every request answered once", async () => {
  const faults: Fault[] = ["429", "500", "reset", "stall", "ok"];
  const server = await startFakeServer({
    // First attempt: a fault picked by the request's hash; the second attempt of
    // every fourth request fails again; then it succeeds.
    plan: (key, attempt) => {
      const n = parseInt(key.slice(0, 4), 16);
      if (attempt === 0) return faults[n % faults.length];
      if (attempt === 1 && n % 4 === 0) return "500";
      return "ok";
    },
  });
  try {
    const ctx = makeCtx(params(server.url), { problems: artifact(problemsDir(12)) });
    const res = await traces.run(ctx);
    const ts = readTraces(ctx.out);
    assert.equal(ts.length, 24);
    assert.equal(server.answered.size, 24);
    assert.ok(
      [...server.answered.values()].every((n) => n === 1),
      "a request was answered twice",
    );
    assert.ok(server.maxInFlight <= 4, `max in flight ${server.maxInFlight}`);
    const m = res!.metrics as {
      attempt_errors: Record<string, number>;
      sent: number;
      cached: number;
    };
    for (const k of ["http_429", "http_500", "reset", "timeout"])
      assert.ok(m.attempt_errors[k] > 0, `no ${k} seen`);
    assert.equal(m.sent, 24);
    for (const t of ts) {
      assert.equal(
        t.reasoning,
        `thinking about ${(t.messages as { content: string }[])[0].content.length} chars`,
      );
      assert.equal(t.answer, "```python\nprint(1)\n```");
      assert.match(t.text as string, /^<think>\n.*\n<\/think>\n\n```python/);
      assert.equal(t.finish_reason, "stop");
      assert.equal(t.completion_tokens, 20);
    }
    // Each trace names its request in the per-request cache (for valley lineage).
    const { RequestCache } = await import("../data/request-cache.js");
    const rc = await RequestCache.open(join(ctx.scratch, "requests.sqlite"));
    try {
      const keys = ts.map((t) => t.request_key as string);
      assert.equal(new Set(keys).size, 24);
      for (const k of keys) assert.ok(rc.has(k), `request ${k} not in the cache`);
      const t0 = ts[0];
      assert.equal(rc.get<{ text: string }>(keys[0])?.text, t0.text);
    } finally {
      rc.close();
    }
    // More samples send only the new requests; the rest come from the cache.
    const before = server.received;
    const ctx2 = makeCtx(
      params(server.url, { samples: 3 }),
      { problems: artifact(problemsDir(12)) },
      { scratch: ctx.scratch },
    );
    const res2 = await traces.run(ctx2);
    assert.equal((res2!.metrics as { cached: number }).cached, 24);
    assert.equal(readTraces(ctx2.out).length, 36);
    assert.equal(server.answered.size, 36);
    assert.ok(server.received - before >= 12);
    assert.ok([...server.answered.values()].every((n) => n === 1));
  } finally {
    await server.close();
  }
});

test("openai backend: failure budget stops the stage with a summary; the API key never leaks", async () => {
  const secret = "sk-test-SECRET-0123456789";
  const server = await startFakeServer({
    plan: (key) => (parseInt(key.slice(0, 2), 16) % 3 === 0 ? "500" : "ok"),
    auth: secret,
  });
  const lines: string[] = [];
  const sink = new Writable({
    write(c, _e, cb) {
      lines.push(String(c));
      cb();
    },
  });
  try {
    const ctx = makeCtx(
      params(server.url, { apiKeyEnv: "VALLEY_TEST_KEY", retries: 2 }),
      { problems: artifact(problemsDir(12)) },
      {
        env: { VALLEY_TEST_KEY: secret },
      },
    );
    ctx.log = pino({ level: "trace" }, sink);
    let msg = "";
    await assert.rejects(traces.run(ctx), (e: Error) => {
      msg = e.message;
      return true;
    });
    assert.match(msg, /request\(s\) failed after 2 retries, over the failure budget of 0/);
    assert.match(msg, /p\d+#\d \(http_500\)/);
    assert.match(msg, /Last error: HTTP 500/);
    assert.ok(!msg.includes(secret), "the key is in the error message");
    assert.ok(lines.length > 0 && !lines.join("").includes(secret), "the key is in the logs");
    // With a budget large enough the stage finishes and leaves the failures out.
    const ctx2 = makeCtx(
      params(server.url, { apiKeyEnv: "VALLEY_TEST_KEY", retries: 1, failureBudget: 24 }),
      { problems: artifact(problemsDir(12)) },
      {
        env: { VALLEY_TEST_KEY: secret },
        scratch: ctx.scratch,
      },
    );
    ctx2.log = pino({ level: "trace" }, sink);
    const res = await traces.run(ctx2);
    const m = res!.metrics as { failed: number; traces: number };
    assert.ok(m.failed > 0 && m.traces === 24 - m.failed);
    for (const dir of [ctx.out, ctx2.out, ctx.scratch]) {
      for (const f of readdirSync(dir, { recursive: true }) as string[]) {
        const p = join(dir, f);
        if (statSync(p).isFile())
          assert.ok(!readFileSync(p).includes(secret), `the key is in ${p}`);
      }
    }
    assert.ok(!lines.join("").includes(secret), "the key is in the logs");
    assert.ok(!JSON.stringify(ctx2.params).includes(secret));
  } finally {
    await server.close();
  }
});

test("openai backend: SIGKILL mid-generation, re-run: no answered request is sent again", async () => {
  const total = 30;
  let answeredBeforeKill = 0;
  let stalling = false;
  const server = await startFakeServer({
    delayMs: 20,
    // After 10 answers the server stalls everything, so no answer is in flight when the child dies.
    plan: () => {
      if (stalling) return "stall";
      if (++answeredBeforeKill >= 10) stalling = true;
      return "ok";
    },
  });
  const scratch = tempDir();
  const problems = problemsDir(15);
  try {
    const here = fileURLToPath(new URL(".", import.meta.url));
    const child = spawn(
      process.execPath,
      [
        join(here, "helpers/data-traces-child.js"),
        JSON.stringify({ params: params(server.url, { timeoutS: 60 }), problems, scratch }),
      ],
      { stdio: ["ignore", "pipe", "pipe"], env: { ...process.env, VALLEY_REQUEST_CACHE: "" } },
    );
    let stderr = "";
    child.stderr.on("data", (d) => (stderr += d));
    const exited = new Promise<number | null>((r) =>
      child.on("exit", (code, sig) => r(code ?? (sig ? -1 : null))),
    );
    for (let i = 0; i < 400 && !(stalling && server.stalled >= 1); i++)
      await new Promise((r) => setTimeout(r, 10));
    assert.ok(stalling, `child made no progress: ${stderr}`);
    await new Promise((r) => setTimeout(r, 300)); // the last answers reach the cache
    child.kill("SIGKILL");
    assert.equal(await exited, -1, "the child was not killed mid-generation");
    const receivedBeforeRerun = server.received;
    const stalledAtKill = server.stalled;
    stalling = false;
    answeredBeforeKill = -1e9; // never stall again
    mkdirSync(scratch, { recursive: true });
    const ctx = makeCtx(
      params(server.url, { timeoutS: 60 }),
      { problems: artifact(problems) },
      { scratch },
    );
    const res = await traces.run(ctx);
    assert.equal(readTraces(ctx.out).length, total);
    assert.equal((res!.metrics as { cached: number }).cached, 10);
    // Every distinct request answered exactly once; the only repeats are those
    // the server never answered (stalled when the child died).
    assert.equal(server.answered.size, total);
    assert.ok(
      [...server.answered.values()].every((n) => n === 1),
      "an answered request was sent again",
    );
    assert.equal(server.received - stalledAtKill, total);
    assert.ok(receivedBeforeRerun >= 10);
  } finally {
    await server.close();
  }
});

test("import backend: demo reference traces and OCR2 generations", async () => {
  const { projectRoot } = await import("../data/root.js");
  const demo = join(projectRoot(), "pipelines/data/demo");
  const ctx = makeCtx({ backend: "import", samples: 1 } as TracesParams, {
    problems: artifact(demo),
  });
  const res = await traces.run(ctx);
  const ts = readTraces(ctx.out);
  assert.ok(ts.length >= 60);
  assert.equal((res!.metrics as { with_reasoning: number }).with_reasoning, ts.length);
  assert.match(ts[0].text as string, /^<think>\n.+\n<\/think>\n\n```python\nn = int\(input\(\)\)/);
  assert.equal(ts[0].prompt_tokens, null);

  const dir = tempDir();
  const p: Problem = {
    id: "q1",
    source: "taco",
    title: "",
    statement: "S",
    starter_code: "",
    tests: [],
    difficulty: "easy",
    difficulty_raw: "EASY",
    extra: {
      generations: [
        { r1_generation: "<think>\nA\n</think>\n\nB" },
        { r1_generation: "<think>\nC\n</think>\n\nD", judgement: "wrong" },
      ],
    },
  };
  writeFileSync(join(dir, "problems.jsonl"), JSON.stringify(p) + "\n");
  const ctx2 = makeCtx({ backend: "import", samples: 8 } as TracesParams, {
    problems: artifact(dir),
  });
  await traces.run(ctx2);
  const t2 = readTraces(ctx2.out);
  assert.deepEqual(
    t2.map((t) => [t.sample, t.reasoning, t.answer]),
    [
      [0, "A", "B"],
      [1, "C", "D"],
    ],
  );
});

test("llama and openai backends against the real llama-server (engine-managed) serving a tiny random model", async () => {
  const { testLlama, processesWith } = await import("./llama-fixture.js");
  const { randomModel, resolveRandomParams } = await import("../llama/random-model.js");
  const { writeGguf } = await import("../llama/gguf-writer.js");
  const llama = await testLlama();
  const modelDir = tempDir();
  const m = randomModel(resolveRandomParams({ preset: "tiny", seed: 3 }));
  await writeGguf(join(modelDir, "model.gguf"), m.kvs, m.tensors);
  const ctx = makeCtx(
    {
      ...params("unused"),
      backend: "llama",
      baseUrl: undefined,
      concurrency: 3,
      max_tokens: 16,
      timeoutS: 120,
    } as TracesParams,
    { problems: artifact(problemsDir(4)), model: artifact(modelDir) },
  );
  ctx.tools = { llama: { bin: llama.bin, lib: llama.lib, digest: llama.digest } };
  const res = await traces.run(ctx);
  const ts = readTraces(ctx.out);
  assert.equal(ts.length, 8, "4 problems × 2 samples");
  for (const t of ts) {
    const n = Number(t.completion_tokens);
    assert.ok(n > 0 && n <= 16, `completion tokens ${n}`);
    assert.ok(["stop", "length"].includes(String(t.finish_reason)), String(t.finish_reason));
  }
  assert.equal((res!.metrics as { sent: number }).sent, 8);
  assert.deepEqual(processesWith(join(modelDir, "model.gguf")), [], "llama-server left running");

  // The openai backend against the same real server, started by hand.
  const { withLlamaServer } = await import("../llama/server.js");
  await withLlamaServer(
    {
      llama: ctx.tools.llama,
      model: join(modelDir, "model.gguf"),
      parallel: 2,
      contextSize: 2048,
      threads: 2,
    },
    async (server) => {
      const c2 = makeCtx(
        { ...params(server.url + "/v1"), max_tokens: 8, concurrency: 2 } as TracesParams,
        { problems: artifact(problemsDir(3)) },
      );
      const r2 = await traces.run(c2);
      assert.equal(readTraces(c2.out).length, 6);
      assert.equal((r2!.metrics as { sent: number }).sent, 6);
    },
  );
  assert.deepEqual(processesWith(join(modelDir, "model.gguf")), [], "llama-server left running");
});
