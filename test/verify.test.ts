/** The verify stage, driven by hand the way the engine will drive it. */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { pino } from "pino";
import type { Digest } from "../cache/digest.js";
import {
  BadStageInput,
  inputAccess,
  type InstanceId,
  type StageContext,
} from "../engine/stage-api.js";
import { projectFile } from "../grader/paths.js";
import verify, { type VerifyParams } from "../stages/verify/index.js";

const py = (code: string) => "<think>\nhmm\n</think>\n```python\n" + code.trim() + "\n```";

const problems = [
  {
    id: "sum",
    source: "demo",
    title: "Sum",
    statement: "Add two numbers.",
    starter_code: "",
    difficulty: "easy",
    difficulty_raw: "EASY",
    time_limit_s: 1,
    tests: [
      { input: "1 2\n", output: "3\n", type: "stdin" },
      { input: "10 20\n", output: "30\n", type: "stdin" },
    ],
  },
];

const trace = (sample: number, text: string) => ({
  problem_id: "sum",
  sample,
  messages: [{ role: "user", content: "Add two numbers." }],
  reasoning: "hmm",
  answer: text,
  text,
  finish_reason: "stop",
  prompt_tokens: 10,
  completion_tokens: 20,
  latency_ms: 5,
});

describe("verify stage", () => {
  const root = mkdtempSync(join(tmpdir(), "valley-verify-"));
  after(() => rmSync(root, { recursive: true, force: true }));

  function setup(name: string, traces: unknown[], probs: unknown[] = problems) {
    const base = join(root, name);
    for (const d of ["problems", "traces", "out", "scratch"])
      mkdirSync(join(base, d), { recursive: true });
    writeFileSync(
      join(base, "problems", "problems.jsonl"),
      probs.map((p) => JSON.stringify(p)).join("\n") + "\n",
    );
    writeFileSync(
      join(base, "traces", "traces.jsonl"),
      traces.map((t) => JSON.stringify(t)).join("\n") + "\n",
    );
    const digest = ("sha256:" + "0".repeat(64)) as Digest;
    const inputs = {
      problems: { id: "problems" as InstanceId, coords: {}, digest, path: join(base, "problems") },
      traces: { id: "traces" as InstanceId, coords: {}, digest, path: join(base, "traces") },
    };
    const ctx: StageContext<VerifyParams> = {
      instanceId: `verify@${name}` as InstanceId,
      coords: {},
      params: {
        semantics: "strict",
        memoryCapMb: 4096,
        policy: "first",
        allTests: false,
        timeoutScale: 1,
        wallFactor: 2,
        defaultTimeLimitS: 6,
        defaultMemoryMb: 1024,
        jobs: 2,
        sandbox: "bwrap",
        bwrap: "/usr/bin/bwrap",
      },
      inputs,
      ...inputAccess("verify", inputs),
      out: join(base, "out"),
      scratch: join(base, "scratch"),
      log: pino({ level: "silent" }),
      progress: () => {},
      signal: new AbortController().signal,
      tools: {},
      env: {},
      resources: { cpu: 2, gpu: 0, memory: 0 },
    };
    return ctx;
  }

  it("labels traces and reports metrics", async () => {
    const ctx = setup("ok", [
      trace(0, py("a, b = map(int, input().split())\nprint(a + b)")),
      trace(1, py("a, b = map(int, input().split())\nprint(a - b)")),
      trace(2, "I could not solve it."),
      trace(3, py("while True:\n    pass")),
    ]);
    const res = await verify.run(ctx);
    const out = readFileSync(join(ctx.out, "traces.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    assert.deepEqual(
      out.map((r) => [r.sample, r.verdict, r.correct]),
      [
        [0, "AC", true],
        [1, "WA", false],
        [2, "NO_CODE", false],
        [3, "TLE", false],
      ],
    );
    assert.equal(out[0].reasoning, "hmm", "the trace's fields are kept");
    assert.equal(out[0].verify_policy, "first");
    assert.deepEqual(res && res.metrics, {
      total: 4,
      correct: 1,
      incorrect: 3,
      by_verdict: { AC: 1, WA: 1, NO_CODE: 1, TLE: 1 },
      policy: "first",
      semantics: "strict",
      semantics_used: { strict: 4 },
    });
    assert.equal(out[0].verify_semantics, "strict");
  });

  it("labels TACO problems with TACO's semantics by default (auto)", async () => {
    const taco = [{ ...problems[0], source: "taco" }];
    // Correct output, then exit code 1: strict says RE; TACO retries reading
    // input.txt, the run fails again with 1 on every test, and the wrapped
    // form fails too: incorrect either way. Lines in another order: TACO's
    // set comparison accepts them, strict does not.
    const ctx = setup(
      "auto",
      [
        trace(0, py("a, b = map(int, input().split())\nprint(a + b)")),
        trace(1, py("a, b = map(int, input().split())\nprint(np.add(a, b))")),
      ],
      taco,
    );
    ctx.params.semantics = "auto";
    const res = await verify.run(ctx);
    const out = readFileSync(join(ctx.out, "traces.jsonl"), "utf8")
      .trim()
      .split("\n")
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    // np without an import: TACO's preamble imports numpy as np.
    assert.deepEqual(
      out.map((r) => [r.verdict, r.verify_semantics]),
      [
        ["AC", "taco"],
        ["AC", "taco"],
      ],
    );
    assert.deepEqual((res?.metrics as Record<string, unknown>).semantics_used, { taco: 2 });
  });

  it("rejects a trace for an unknown problem as bad input", async () => {
    const ctx = setup("unknown", [{ ...trace(0, "x"), problem_id: "nope" }]);
    await assert.rejects(
      verify.run(ctx),
      (e: Error) => e instanceof BadStageInput && /unknown problem "nope"/.test(e.message),
    );
  });

  it("rejects a problem with zero tests as bad input", async () => {
    const ctx = setup("zero", [trace(0, "x")], [{ ...problems[0], tests: [] }]);
    await assert.rejects(
      verify.run(ctx),
      (e: Error) => e instanceof BadStageInput && /no tests/.test(e.message),
    );
  });

  it("fails, rather than labels, when the sandbox cannot run", async () => {
    const ctx = setup("ie", [trace(0, py("print(3)"))]);
    ctx.params.bwrap = "/nonexistent/bwrap";
    await assert.rejects(
      verify.run(ctx),
      (e: Error) => !(e instanceof BadStageInput) && /sandbox/.test(e.message),
    );
    assert.throws(() => readFileSync(join(ctx.out, "traces.jsonl")), "no labels written");
  });

  it("ships a params schema whose defaults match the stage's", () => {
    const schema = JSON.parse(readFileSync(projectFile("stages/verify/schema.json"), "utf8")) as {
      properties: Record<string, { default?: unknown }>;
      additionalProperties: boolean;
    };
    assert.equal(schema.additionalProperties, false);
    assert.equal(schema.properties.policy.default, "first");
    assert.equal(schema.properties.sandbox.default, "bwrap");
    assert.equal(verify.kind, "verify");
  });
});
