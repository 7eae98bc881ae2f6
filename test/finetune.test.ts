/**
 * The `finetune` stage and valley-lora, the project's LoRA trainer, on a tiny
 * random model on the CPU.
 *
 * Needs a llama.cpp build holding valley-lora: the demo's llama stage, built
 * once in the shared test cache ($VALLEY_LLAMA_BIN names another bin/ folder).
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { createServer } from "node:net";
import pino from "pino";
import finetune, { type FinetuneParams } from "../stages/finetune/index.js";
import { kindParams } from "../engine/kinds.js";
import {
  BadStageInput,
  inputAccess,
  type InstanceId,
  type StageContext,
} from "../engine/stage-api.js";
import type { Digest } from "../cache/digest.js";
import { kv, writeGguf } from "../llama/gguf-writer.js";
import { randomModel, resolveRandomParams } from "../llama/random-model.js";
import { testLlama } from "./llama-fixture.js";

/** The tiny random llama (64-dim, 2 layers, char-level vocabulary, ChatML, output std 0.15), F32. */
async function writeTinyModel(path: string, seed: number) {
  const m = randomModel(resolveRandomParams({ preset: "tiny", seed }));
  await writeGguf(path, m.kvs, m.tensors);
}

// The llama.cpp build with valley-lora: the demo's llama stage, built once by
// the engine in the shared test cache (see llama-fixture.ts).
let BIN = "";

let work = "";
let model = "";

before(async () => {
  BIN = (await testLlama()).bin;
  assert.ok(
    existsSync(join(BIN, "valley-lora")),
    `the llama.cpp build in ${BIN} lacks valley-lora`,
  );
  work = mkdtempSync(join(tmpdir(), "valley-finetune-"));
  mkdirSync(join(work, "model"));
  model = join(work, "model", "model.gguf");
  await writeTinyModel(model, 1);
});
after(() => {
  if (work && !process.env.VALLEY_KEEP_TEST_DIR) rmSync(work, { recursive: true, force: true });
});

// ---------------------------------------------------------------- data

function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
const PRINTABLE =
  "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+-*/=()[]{}<>!?.,;: ";
function noise(r: () => number, min: number, max: number): string {
  const n = min + Math.floor(r() * (max - min + 1));
  let s = "";
  for (let i = 0; i < n; i++) s += PRINTABLE[Math.floor(r() * PRINTABLE.length)];
  return s;
}
type Msg = { role: string; content: string };
function jsonl(rows: { messages: Msg[] }[]): string {
  return rows.map((r) => JSON.stringify(r)).join("\n") + "\n";
}
/** Three fixed answers picked by the question: learnable. */
function patternData(n: number, seed: number) {
  const r = rng(seed);
  const answers = [
    "def f(x): return x + 1",
    "print(sum(map(int, input().split())))",
    "for i in range(3): print(i)",
  ];
  return Array.from({ length: n }, (_, i) => ({
    messages: [
      { role: "user", content: `task ${i % 3}: ${noise(r, 5, 15)}` },
      { role: "assistant", content: answers[i % 3] },
    ],
  }));
}
/** User turns are noise, the answer is constant. */
function maskingData(n: number, seed: number) {
  const r = rng(seed);
  return Array.from({ length: n }, () => ({
    messages: [
      { role: "user", content: noise(r, 40, 80) },
      { role: "assistant", content: "print(42)" },
    ],
  }));
}
function dataDir(name: string, rows: { messages: Msg[] }[] | string): string {
  const d = join(work, name);
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, "train.jsonl"), typeof rows === "string" ? rows : jsonl(rows));
  return d;
}

// ---------------------------------------------------------------- helpers

function trainer(args: string[]) {
  const r = spawnSync(join(BIN, "valley-lora"), args, { encoding: "utf8" });
  return { code: r.status, stderr: r.stderr };
}
function readJson<T = Record<string, unknown>>(p: string): T {
  return JSON.parse(readFileSync(p, "utf8")) as T;
}
function rows(p: string): Record<string, number>[] {
  return readFileSync(p, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l));
}
const D = "sha256:0000000000000000000000000000000000000000000000000000000000000000" as Digest;
function makeCtx(
  name: string,
  params: Partial<FinetuneParams>,
  dataPath: string,
  signal?: AbortSignal,
): StageContext<FinetuneParams> {
  const base = join(work, name);
  const out = join(base, "out");
  rmSync(out, { recursive: true, force: true });
  mkdirSync(out, { recursive: true });
  mkdirSync(join(base, "scratch"), { recursive: true });
  const inputs = {
    from: { id: "model" as InstanceId, coords: {}, digest: D, path: dirname(model) },
    data: { id: "data" as InstanceId, coords: {}, digest: D, path: dataPath },
    llama: { id: "llama" as InstanceId, coords: {}, digest: D, path: dirname(BIN) },
  };
  return {
    instanceId: name as InstanceId,
    coords: {},
    params: kindParams<FinetuneParams>("finetune", { threads: 2, ...params }),
    inputs,
    ...inputAccess("finetune", inputs),
    out,
    scratch: join(base, "scratch"),
    log: pino({ level: "silent" }),
    progress: () => {},
    signal: signal ?? new AbortController().signal,
    tools: {},
    env: {},
    resources: { cpu: 2, gpu: 0, memory: 0 },
  };
}
function mean(xs: number[]): number {
  return xs.reduce((a, b) => a + b, 0) / xs.length;
}

// ---------------------------------------------------------------- tests

test("training loss decreases (mean of the last epoch at least 1.0 below the first)", async () => {
  const data = dataDir("pattern", patternData(24, 7));
  const ctx = makeCtx(
    "loss",
    {
      epochs: 4,
      batch: 2,
      lr: 3e-3,
      // targets: the schema's default (all seven).
      lora: { rank: 8, alpha: 16, seed: 1 } as FinetuneParams["lora"],
      checkpointEvery: 0,
    },
    data,
  );
  const res = await finetune.run(ctx);
  const m = rows(join(ctx.out, "metrics.jsonl"));
  assert.equal(m.length, 4 * 12);
  for (const r of m)
    for (const k of ["step", "epoch", "loss", "lr", "tokens", "seconds"]) assert.ok(k in r, k);
  const first = mean(m.filter((r) => r.epoch === 1).map((r) => r.loss));
  const last = mean(m.filter((r) => r.epoch === 4).map((r) => r.loss));
  console.log(`# loss: first epoch ${first.toFixed(3)}, last epoch ${last.toFixed(3)}`);
  assert.ok(last < first - 1.0, `last epoch ${last} not 1.0 below first ${first}`);
  const metrics = (res as { metrics: Record<string, number> }).metrics;
  assert.equal(metrics.steps, 48);
  assert.equal(metrics.resumed_from_step, 0);
  assert.ok(metrics.min_loss <= metrics.last_loss);
  assert.ok(existsSync(join(ctx.out, "adapter.gguf")));
});

test("masking is real: assistant-only loss goes near zero with masking, not without", () => {
  const data = join(dataDir("masking", maskingData(48, 3)), "train.jsonl");
  const run = (masking: "on" | "off") => {
    const dir = join(work, `mask-${masking}`);
    mkdirSync(dir, { recursive: true });
    const r = trainer([
      "--model", model, "--data", data, "--out", join(dir, "a.gguf"), "--summary", join(dir, "s.json"),
      "--masking", masking, "--epochs", "3", "--batch", "2", "--lr", "5e-3", "--rank", "8", "--alpha", "16",
      "--threads", "2", "--eval-assistant-loss",
    ]); // prettier-ignore
    assert.equal(r.code, 0, r.stderr);
    return readJson<{ assistant_loss: number; assistant_accuracy: number }>(join(dir, "s.json"));
  };
  const on = run("on");
  const off = run("off");
  console.log(
    `# assistant-token loss: masked ${on.assistant_loss.toFixed(3)}, unmasked ${off.assistant_loss.toFixed(3)}`,
  );
  // measured: masked 0.067 (accuracy 1.0), unmasked 0.68
  assert.ok(on.assistant_loss < 0.15, `masked assistant loss ${on.assistant_loss}`);
  assert.ok(
    off.assistant_loss > 0.4 && off.assistant_loss > 5 * on.assistant_loss,
    `unmasked assistant loss ${off.assistant_loss}`,
  );
});

// ---- run-time adapter vs merged model, through stock llama.cpp tools

async function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => (typeof a === "object" && a ? res(a.port) : rej(new Error("no port"))));
    });
  });
}
async function greedy(
  modelPath: string,
  lora: string | undefined,
  prompts: string[],
): Promise<number[][]> {
  const port = await freePort();
  const args = [
    "-m",
    modelPath,
    "--port",
    String(port),
    "--host",
    "127.0.0.1",
    "-c",
    "256",
    "-t",
    "2",
    "-np",
    "1",
  ];
  if (lora) args.push("--lora", lora);
  const srv = spawn(join(BIN, "llama-server"), args, { stdio: ["ignore", "ignore", "pipe"] });
  let log = "";
  srv.stderr.on("data", (b) => (log += String(b)));
  try {
    const url = `http://127.0.0.1:${port}`;
    for (let i = 0; ; i++) {
      try {
        const h = await fetch(`${url}/health`);
        if (h.ok) break;
      } catch {
        // not up yet
      }
      if (i > 100 || srv.exitCode !== null)
        throw new Error(`llama-server did not start:\n${log.slice(-2000)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const out: number[][] = [];
    for (const prompt of prompts) {
      const r = await fetch(`${url}/completion`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          prompt,
          n_predict: 12,
          temperature: 0,
          top_k: 1,
          cache_prompt: false,
          return_tokens: true,
        }),
      });
      const j = (await r.json()) as { tokens?: number[] };
      assert.ok(Array.isArray(j.tokens), JSON.stringify(j).slice(0, 300));
      out.push(j.tokens);
    }
    return out;
  } finally {
    srv.kill("SIGKILL");
  }
}

test("the adapter changes greedy output; base + adapter at run time = merged model", async () => {
  const data = join(dataDir("masking2", maskingData(32, 5)), "train.jsonl");
  const dir = join(work, "merge");
  mkdirSync(dir, { recursive: true });
  const adapter = join(dir, "adapter.gguf");
  const r = trainer([
    "--model", model, "--data", data, "--out", adapter, "--epochs", "4", "--batch", "2", "--lr", "5e-3", "--threads", "2",
  ]); // prettier-ignore
  assert.equal(r.code, 0, r.stderr);
  const merged = join(dir, "merged.gguf");
  const e = spawnSync(
    join(BIN, "llama-export-lora"),
    ["-m", model, "--lora", adapter, "-o", merged, "-t", "2"],
    { encoding: "utf8" },
  );
  assert.equal(e.status, 0, e.stderr);
  const prompts = [
    "<|im_start|>user\nabc xyz<|im_end|>\n<|im_start|>assistant\n",
    "<|im_start|>user\nQ: 7*6?<|im_end|>\n<|im_start|>assistant\n",
    "hello",
  ];
  const base = await greedy(model, undefined, prompts);
  const withLora = await greedy(model, adapter, prompts);
  const mergedOut = await greedy(merged, undefined, prompts);
  assert.notDeepEqual(withLora, base, "the adapter did not change the greedy output");
  assert.deepEqual(mergedOut, withLora, "merged model and base + adapter disagree");
});

test("a killed training resumes from its last checkpoint, to the same adapter", async () => {
  const data = dataDir("resume", patternData(40, 11));
  const params: Partial<FinetuneParams> = {
    epochs: 6,
    batch: 1,
    lr: 1e-3,
    checkpointEvery: 20,
    ctx: 256,
  };
  const ctx1 = makeCtx("resume", params, data);
  const run1 = finetune.run(ctx1).then(
    () => "finished",
    (e: Error) => e,
  );
  // wait for a checkpoint, then kill -9 the trainer (found by its unique checkpoint folder)
  const ckpt = join(ctx1.scratch, "checkpoints", "checkpoint.json");
  for (let i = 0; i < 600 && !existsSync(ckpt); i++) await new Promise((r) => setTimeout(r, 50));
  assert.ok(existsSync(ckpt), "no checkpoint was written");
  let killed = 0;
  for (const pid of readdirSync("/proc").filter((p) => /^\d+$/.test(p))) {
    try {
      const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
      if (cmd.includes("valley-lora") && cmd.includes(ctx1.scratch)) {
        process.kill(Number(pid), "SIGKILL");
        killed++;
      }
    } catch {
      // gone
    }
  }
  assert.equal(killed, 1, "the trainer was not running");
  const r1 = await run1;
  assert.ok(r1 instanceof Error, "the first run should fail once killed");
  const at = readJson<{ step: number }>(ckpt).step;
  assert.ok(at >= 20 && at < 240 && at % 20 === 0, `checkpoint step ${at}`);

  // the engine may hand the same (same-digest) input over at another path next time
  const dataCopy = dataDir("resume-copy", readFileSync(join(data, "train.jsonl"), "utf8"));
  const ctx2 = makeCtx("resume", params, dataCopy);
  const res = (await finetune.run(ctx2)) as { metrics: Record<string, number> };
  assert.ok(
    res.metrics.resumed_from_step >= at,
    `resumed from ${res.metrics.resumed_from_step}, checkpoint at ${at}`,
  );
  assert.equal(res.metrics.steps, 240);
  const m = rows(join(ctx2.out, "metrics.jsonl"));
  assert.deepEqual(
    m.map((r) => r.step),
    Array.from({ length: 240 }, (_, i) => i + 1),
  );
  // the checkpoint holds the adapter and AdamW's state: resuming changes nothing, bit for bit
  const ref = makeCtx("resume-ref", params, data);
  await finetune.run(ref);
  assert.ok(
    readFileSync(join(ctx2.out, "adapter.gguf")).equals(
      readFileSync(join(ref.out, "adapter.gguf")),
    ),
    "the resumed run's adapter differs from an uninterrupted run's",
  );
  console.log(
    `# killed after checkpoint at step ${at}; resumed from step ${res.metrics.resumed_from_step}; adapter identical`,
  );
});

test("node-llama-cpp loads the adapter", async () => {
  const adapter = join(work, "merge", "adapter.gguf"); // trained on "print(42)" answers above
  assert.ok(existsSync(adapter), "runs after the merge test");
  const { getLlama } = await import("node-llama-cpp");
  const llama = await getLlama({ gpu: false, build: "never" });
  const m = await llama.loadModel({ modelPath: model });
  try {
    const ctx = await m.createContext({
      contextSize: 256,
      lora: { adapters: [{ filePath: adapter }] },
    });
    const seq = ctx.getSequence();
    const prompt = m.tokenize("<|im_start|>user\nxyz 123<|im_end|>\n<|im_start|>assistant\n", true);
    const out = [];
    for await (const t of seq.evaluate(prompt, { temperature: 0 })) {
      out.push(t);
      if (out.length >= 9) break;
    }
    assert.equal(m.detokenize(out), "print(42)");
    await ctx.dispose();
  } finally {
    await m.dispose();
  }
});

test("bad input: exit 2 from the trainer and BadStageInput from the stage", async () => {
  const good = dataDir("bad-good", patternData(4, 1));
  const cases: [string, Partial<FinetuneParams>, string, RegExp][] = [
    ["empty", {}, dataDir("bad-empty", ""), /empty/],
    [
      "no-assistant",
      {},
      dataDir("bad-noasst", jsonl([{ messages: [{ role: "user", content: "hi" }] }])),
      /no assistant turn/,
    ],
    [
      "unknown-target",
      { lora: { rank: 4, alpha: 8, targets: ["attn_q", "ffn_nope"], seed: 1 } },
      good,
      /unknown target "ffn_nope"; allowed: attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down, output/,
    ],
    [
      "packing-example",
      { packing: true, lossNorm: "example" },
      good,
      /packing needs lossNorm: token/,
    ],
    [
      "rank-0",
      { lora: { rank: 0, alpha: 8, targets: ["attn_q"], seed: 1 } },
      good,
      /rank must be > 0/,
    ],
  ];
  for (const [name, params, data, re] of cases) {
    // Set after validation, as a caller that bypasses the schema would: the
    // stage checks what the schema already rules out (unknown targets, rank 0).
    const ctx = makeCtx(`bad-${name}`, {}, data);
    Object.assign(ctx.params, params);
    await assert.rejects(
      finetune.run(ctx),
      (e: Error) => e instanceof BadStageInput && re.test(e.message),
      name,
    );
    assert.deepEqual(readdirSync(ctx.out), [], `${name}: nothing written`);
  }
  // the trainer itself: exit 2 with a clear message
  // metadata-only GGUFs are enough for the trainer's architecture checks
  const moe = join(work, "moe.gguf");
  await writeGguf(
    moe,
    [
      kv.str("general.architecture", "qwen2moe"),
      kv.u32("qwen2moe.expert_count", 4),
      kv.u32("qwen2moe.block_count", 2),
    ],
    [],
  );
  const bert = join(work, "bert.gguf");
  await writeGguf(
    bert,
    [kv.str("general.architecture", "bert"), kv.u32("bert.block_count", 2)],
    [],
  );
  const d = join(good, "train.jsonl");
  const direct: [string[], RegExp][] = [
    [["--model", moe, "--data", d, "--out", join(work, "x.gguf")], /mixture of experts/],
    [["--model", bert, "--data", d, "--out", join(work, "x.gguf")], /cannot be trained/],
    [
      ["--model", model, "--data", d, "--out", join(work, "x.gguf"), "--rank", "-1"],
      /rank must be > 0/,
    ],
    [
      [
        "--model",
        model,
        "--data",
        join(work, "bad-empty", "train.jsonl"),
        "--out",
        join(work, "x.gguf"),
      ],
      /empty/,
    ],
    [
      ["--model", model, "--data", d, "--out", join(work, "x.gguf"), "--checkpointing", "yes"],
      /--checkpointing must be on, off or auto/,
    ],
    [
      ["--model", model, "--data", d, "--out", join(work, "x.gguf"), "--flash-attn", "1"],
      /--flash-attn must be on, off or auto/,
    ],
  ];
  for (const [args, re] of direct) {
    const r = trainer(args);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, re);
  }
});

test("method: full runs upstream llama-finetune on the rendered chats", async () => {
  const data = dataDir("full", patternData(12, 2));
  const ctx = makeCtx("full", { method: "full", epochs: 2, lr: 1e-4, ctx: 256 }, data);
  const res = (await finetune.run(ctx)) as { metrics: Record<string, number> };
  assert.ok(existsSync(join(ctx.out, "model.gguf")));
  assert.equal(res.metrics.steps, 2);
  assert.ok(Number.isFinite(res.metrics.first_loss));
});
