/**
 * valley-lora's gradients against llama.cpp's own forward pass.
 *
 * `--grad-out` writes d(loss)/d(tensor) of every LoRA tensor (one forward +
 * backward over the whole data file, no optimizer step); `--eval-only` writes
 * the loss. A central difference of the loss along random directions of the
 * adapter, through the same forward pass, is the oracle: if any path from a
 * LoRA tensor to the loss is cut (the KV-cache round trip of K and V was one),
 * the analytic directional derivative disagrees with it.
 *
 * Models: small random qwen2 and llama made by the `model` stage (3 layers,
 * grouped-query attention: n_head_kv < n_head, F32), all seven targets in every
 * layer, CPU, flash attention on (valley-lora's default on the CPU). Also
 * here: flash attention against the materialised softmax, packing, sparse
 * labels and lossNorm, checked through the same flags, and the bad input of
 * --grad-out.
 */
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import modelStage, { type ModelParams } from "../stages/model/index.js";
import { kv, writeGguf, type TensorSpec } from "../llama/gguf-writer.js";
import { GGML_TYPE_F32, inspectGguf } from "../llama/gguf.js";
import { makeCtx, testLlama } from "./llama-fixture.js";

const TARGETS = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"];
const N_LAYER = 3;
const RANK = 2;
const DIRECTIONS = 8; // per layer
const EPS = 0.05; // step of the central difference along a unit direction

let BIN = "";
let work = "";

before(async () => {
  BIN = (await testLlama()).bin;
  assert.ok(
    existsSync(join(BIN, "valley-lora")),
    `the llama.cpp build in ${BIN} lacks valley-lora`,
  );
  work = mkdtempSync(join(tmpdir(), "valley-gradcheck-"));
});
after(() => {
  if (work && !process.env.VALLEY_KEEP_TEST_DIR) rmSync(work, { recursive: true, force: true });
});

// ---------------------------------------------------------------- helpers

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
function gaussian(r: () => number): number {
  return Math.sqrt(-2 * Math.log(1 - r())) * Math.cos(2 * Math.PI * r());
}

/** A random model through the `model` stage, as a pipeline would make it. */
async function makeModel(architecture: "qwen2" | "llama", seed: number): Promise<string> {
  const params: ModelParams = {
    random: { preset: "tiny", architecture, n_layer: N_LAYER, n_head: 4, n_head_kv: 2, seed },
  } as ModelParams;
  const { ctx } = await makeCtx(params, { out: join(work, `model-${architecture}`) });
  await modelStage.run(ctx);
  return join(ctx.out, "model.gguf");
}

/** Short chats of varied lengths: a few windows, fast. */
function writeData(name: string, seed: number, n: number): string {
  const r = rng(seed);
  const chars = "abcdefghijklmnopqrstuvwxyz0123456789 +-*=";
  const text = (lo: number, hi: number) =>
    Array.from(
      { length: lo + Math.floor(r() * (hi - lo)) },
      () => chars[Math.floor(r() * chars.length)],
    ).join("");
  const rows = Array.from({ length: n }, () => ({
    messages: [
      { role: "user", content: text(4, 30) },
      { role: "assistant", content: text(3, 25) },
    ],
  }));
  const p = join(work, `${name}.jsonl`);
  writeFileSync(p, rows.map((x) => JSON.stringify(x)).join("\n") + "\n");
  return p;
}

type Tensors = Map<string, { shape: number[]; data: Float32Array }>;

async function readTensors(path: string): Promise<Tensors> {
  const g = await inspectGguf(path);
  const buf = readFileSync(path);
  const out: Tensors = new Map();
  for (const t of g.tensors) {
    assert.equal(t.type, GGML_TYPE_F32, `${path}: ${t.name} is not F32`);
    const start = g.dataOffset + t.offset;
    const data = new Float32Array(
      buf.buffer.slice(buf.byteOffset + start, buf.byteOffset + start + t.bytes),
    );
    out.set(t.name, { shape: t.shape, data });
  }
  return out;
}

async function writeAdapter(path: string, arch: string, tensors: Tensors): Promise<void> {
  const specs: TensorSpec[] = [...tensors].map(([name, t]) => ({
    name,
    shape: t.shape,
    type: GGML_TYPE_F32,
    fill: (dst, start) => dst.set(t.data.subarray(start, start + dst.length)),
  }));
  await writeGguf(
    path,
    [
      kv.str("general.architecture", arch),
      kv.str("general.type", "adapter"),
      kv.str("adapter.type", "lora"),
      kv.f32("adapter.lora.alpha", 2 * RANK),
    ],
    specs,
  );
}

/** A LoRA on every target of every layer, A and B both random (B = 0 would zero A's gradient). */
async function randomAdapter(model: string, seed: number): Promise<Tensors> {
  const base = await inspectGguf(model);
  const r = rng(seed);
  const out: Tensors = new Map();
  for (let il = 0; il < N_LAYER; il++) {
    for (const t of TARGETS) {
      const w = base.tensors.find((x) => x.name === `blk.${il}.${t}.weight`);
      assert.ok(w, `the model lacks blk.${il}.${t}.weight`);
      const [nIn, nOut] = w.shape;
      const a = Float32Array.from({ length: nIn * RANK }, () => 0.1 * gaussian(r));
      const b = Float32Array.from({ length: RANK * nOut }, () => 0.1 * gaussian(r));
      out.set(`blk.${il}.${t}.weight.lora_a`, { shape: [nIn, RANK], data: a });
      out.set(`blk.${il}.${t}.weight.lora_b`, { shape: [RANK, nOut], data: b });
    }
  }
  return out;
}

function trainer(args: string[]): { code: number | null; stderr: string } {
  const r = spawnSync(join(BIN, "valley-lora"), [...args, "--threads", "2"], { encoding: "utf8" });
  return { code: r.status, stderr: r.stderr };
}

/** The loss (and the gradient file) of one pass over the data. */
async function gradOf(
  model: string,
  data: string,
  adapter: string,
  extra: string[] = [],
): Promise<{ loss: number; grad: Tensors; tokens: number }> {
  const g = `${adapter}.grad.gguf`;
  const s = `${adapter}.grad.json`;
  const r = trainer([
    "--model",
    model,
    "--data",
    data,
    "--adapter-in",
    adapter,
    "--grad-out",
    g,
    "--summary",
    s,
    ...extra,
  ]);
  assert.equal(r.code, 0, r.stderr);
  const sum = JSON.parse(readFileSync(s, "utf8")) as { loss: number; tokens: number };
  return { loss: sum.loss, grad: await readTensors(g), tokens: sum.tokens };
}

function lossOf(model: string, data: string, adapter: string, extra: string[] = []): number {
  const s = `${adapter}.eval.json`;
  const r = trainer([
    "--model",
    model,
    "--data",
    data,
    "--adapter-in",
    adapter,
    "--eval-only",
    "--summary",
    s,
    ...extra,
  ]);
  assert.equal(r.code, 0, r.stderr);
  return (JSON.parse(readFileSync(s, "utf8")) as { loss: number }).loss;
}

const dot = (a: number[], b: number[]) => a.reduce((s, x, i) => s + x * b[i], 0);
const norm = (a: number[]) => Math.sqrt(dot(a, a));

/** Relative error and cosine of the analytic directional derivatives against the central differences. */
function compare(an: number[], fd: number[]): { rel: number; cos: number } {
  const diff = an.map((x, i) => x - fd[i]);
  return { rel: norm(diff) / norm(fd), cos: dot(an, fd) / (norm(an) * norm(fd)) };
}

/**
 * Directional derivatives along random unit directions d whose support is
 * `names` (the other tensors stay put): analytic g·d and the central
 * difference (L(θ+εd) − L(θ−εd)) / 2ε.
 */
async function directional(
  model: string,
  arch: string,
  data: string,
  theta: Tensors,
  grad: Tensors,
  names: string[],
  n: number,
  seed: number,
  tag: string,
): Promise<{ an: number[]; fd: number[] }> {
  const r = rng(seed);
  const an: number[] = [];
  const fd: number[] = [];
  for (let k = 0; k < n; k++) {
    const d = new Map(
      names.map((nm) => [nm, Float32Array.from(theta.get(nm)!.data, () => gaussian(r))]),
    );
    let nn = 0;
    for (const v of d.values()) for (const x of v) nn += x * x;
    const scale = 1 / Math.sqrt(nn);
    for (const v of d.values()) for (let i = 0; i < v.length; i++) v[i] *= scale;
    let g = 0;
    for (const [nm, v] of d) {
      const gv = grad.get(nm)!.data;
      for (let i = 0; i < v.length; i++) g += gv[i] * v[i];
    }
    an.push(g);
    const losses: number[] = [];
    for (const sign of [1, -1]) {
      const moved: Tensors = new Map(theta);
      for (const [nm, v] of d) {
        const t = theta.get(nm)!;
        moved.set(nm, {
          shape: t.shape,
          data: Float32Array.from(t.data, (x, i) => x + sign * EPS * v[i]),
        });
      }
      const path = join(work, `${tag}-${k}-${sign > 0 ? "p" : "m"}.gguf`);
      await writeAdapter(path, arch, moved);
      losses.push(lossOf(model, data, path));
    }
    fd.push((losses[0] - losses[1]) / (2 * EPS));
  }
  return { an, fd };
}

// ---------------------------------------------------------------- the check

for (const [arch, seed] of [
  ["qwen2", 3],
  ["llama", 4],
] as const) {
  test(`${arch}: the gradient of every target in every layer matches llama.cpp's forward (central differences)`, async () => {
    const model = await makeModel(arch, seed);
    const data = writeData(`data-${arch}`, seed, 3);
    const theta = await randomAdapter(model, seed + 100);
    const adapter = join(work, `adapter-${arch}.gguf`);
    await writeAdapter(adapter, arch, theta);

    const { loss, grad } = await gradOf(model, data, adapter);
    assert.deepEqual(
      [...grad.keys()].sort(),
      [...theta.keys()].sort(),
      "one gradient per adapter tensor, same names",
    );
    for (const [nm, t] of theta) assert.deepEqual(grad.get(nm)!.shape, t.shape, nm);
    // the same loss as the forward-only pass
    const l0 = lossOf(model, data, adapter);
    assert.ok(Math.abs(l0 - loss) <= 1e-6 * Math.abs(loss), `eval-only ${l0} vs grad pass ${loss}`);
    // K and V are reached (the cache round trip cut them off entirely)
    for (let il = 0; il < N_LAYER; il++)
      for (const t of ["attn_k", "attn_v"]) {
        const g = grad.get(`blk.${il}.${t}.weight.lora_b`)!.data;
        assert.ok(norm([...g]) > 0, `no gradient reaches blk.${il}.${t}`);
      }

    const report: string[] = [];
    // per layer: directions over all seven targets of the layer
    for (let il = 0; il < N_LAYER; il++) {
      const names = [...theta.keys()].filter((n) => n.startsWith(`blk.${il}.`));
      const { an, fd } = await directional(
        model,
        arch,
        data,
        theta,
        grad,
        names,
        DIRECTIONS,
        1000 + il,
        `${arch}-l${il}`,
      );
      const { rel, cos } = compare(an, fd);
      report.push(`layer ${il}: rel ${rel.toExponential(2)} cos ${cos.toFixed(6)}`);
      assert.ok(
        rel <= 1e-2 && cos >= 0.999,
        `${arch} layer ${il}: relative error ${rel}, cosine ${cos}\n an ${an}\n fd ${fd}`,
      );
    }
    // per target: one direction over that target in every layer, so no target hides behind the others
    const an: number[] = [];
    const fd: number[] = [];
    for (const t of TARGETS) {
      const names = [...theta.keys()].filter((n) => n.includes(`.${t}.`));
      const one = await directional(
        model,
        arch,
        data,
        theta,
        grad,
        names,
        1,
        2000 + TARGETS.indexOf(t),
        `${arch}-${t}`,
      );
      an.push(...one.an);
      fd.push(...one.fd);
      const relT = Math.abs(one.an[0] - one.fd[0]) / Math.abs(one.fd[0]);
      report.push(`${t}: rel ${relT.toExponential(2)}`);
      assert.ok(
        relT <= 1e-2,
        `${arch} ${t}: analytic ${one.an[0]} vs central difference ${one.fd[0]}`,
      );
    }
    console.log(`# ${arch} gradient check (loss ${loss.toFixed(4)}): ${report.join("; ")}`);
  });
}

// ---------------------------------------------------------------- packing, sparse labels, lossNorm

let shared: { model: string; adapter: string; data: string } | undefined;
async function sharedSetup() {
  if (shared) return shared;
  const model = await makeModel("qwen2", 7);
  const adapter = join(work, "adapter-shared.gguf");
  await writeAdapter(adapter, "qwen2", await randomAdapter(model, 77));
  shared = { model, adapter, data: writeData("data-shared", 7, 6) };
  return shared;
}

function relDiff(a: Tensors, b: Tensors): number {
  let num = 0;
  let den = 0;
  for (const [nm, t] of a) {
    const u = b.get(nm)!.data;
    for (let i = 0; i < t.data.length; i++) {
      num += (t.data[i] - u[i]) ** 2;
      den += u[i] ** 2;
    }
  }
  return Math.sqrt(num / den);
}

test("packing: a packed step has the loss and gradients of the same examples one by one (lossNorm token)", async () => {
  const { model, adapter, data } = await sharedSetup();
  const one = await gradOf(model, data, adapter, ["--packing", "off"]);
  const packed = await gradOf(model, data, adapter, ["--packing", "on"]);
  const rel = relDiff(packed.grad, one.grad);
  console.log(
    `# packed vs one by one: loss ${packed.loss} vs ${one.loss}, gradient relative difference ${rel.toExponential(2)}`,
  );
  assert.ok(
    Math.abs(packed.loss - one.loss) <= 1e-5 * one.loss,
    `loss ${packed.loss} vs ${one.loss}`,
  );
  assert.ok(rel <= 1e-5, `gradients differ by ${rel}`);
  assert.equal(packed.tokens, one.tokens);
});

test("flash attention: the recomputing backward pass gives the gradients of the materialised attention", async () => {
  const { model, adapter, data } = await sharedSetup();
  // packed too: the mask is then per-sequence causal, not one triangle; n_head_kv < n_head (GQA)
  for (const packing of ["off", "on"]) {
    const off = await gradOf(model, data, adapter, ["--packing", packing, "--flash-attn", "off"]);
    const on = await gradOf(model, data, adapter, ["--packing", packing, "--flash-attn", "on"]);
    const rel = relDiff(on.grad, off.grad);
    let worst = 0;
    for (const [nm, t] of on.grad)
      worst = Math.max(worst, relDiff(new Map([[nm, t]]), new Map([[nm, off.grad.get(nm)!]])));
    console.log(
      `# flash vs materialised attention (packing ${packing}): loss ${on.loss} vs ${off.loss}, ` +
        `gradient relative difference ${rel.toExponential(2)} (worst tensor ${worst.toExponential(2)})`,
    );
    assert.ok(Math.abs(on.loss - off.loss) <= 1e-5 * off.loss, `loss ${on.loss} vs ${off.loss}`);
    assert.ok(rel <= 1e-4, `gradients differ by ${rel}`);
    assert.ok(worst <= 1e-4, `a tensor's gradient differs by ${worst}`);
  }
});

test("flash attention's backward op against a double-precision reference: partial tiles, GQA, every kind of mask (valley-lora --check-flash-attn)", () => {
  const r = spawnSync(join(BIN, "valley-lora"), ["--check-flash-attn"], { encoding: "utf8" });
  const rows = r.stdout
    .trim()
    .split("\n")
    .filter((l) => l)
    .map(
      (l) =>
        JSON.parse(l) as {
          device: string;
          mask: string;
          supported: boolean;
          rel_err: number | string;
        },
    );
  const cpu = rows.filter((x) => x.device === "CPU");
  console.log(
    `# flash attention backward vs double reference (CPU): ${cpu.map((x) => `${x.mask} ${Number(x.rel_err).toExponential(1)}`).join(", ")}`,
  );
  assert.equal(cpu.length, 6, r.stdout + r.stderr);
  assert.deepEqual([...new Set(cpu.map((x) => x.mask))].sort(), ["additive", "none", "packing"]);
  for (const x of cpu) {
    assert.ok(x.supported, JSON.stringify(x));
    assert.ok(typeof x.rel_err === "number" && x.rel_err <= 1e-5, JSON.stringify(x));
  }
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

test("activation checkpointing: recomputing each layer in the backward pass gives the same gradients", async () => {
  const { model, adapter, data } = await sharedSetup();
  for (const flash of ["on", "off"]) {
    const extra = ["--packing", "on", "--flash-attn", flash];
    const off = await gradOf(model, data, adapter, [...extra, "--checkpointing", "off"]);
    const on = await gradOf(model, data, adapter, [...extra, "--checkpointing", "on"]);
    const rel = relDiff(on.grad, off.grad);
    console.log(
      `# checkpointing on vs off (flash attention ${flash}): loss ${on.loss} vs ${off.loss}, ` +
        `gradient relative difference ${rel.toExponential(2)}`,
    );
    // the same kernels on the same inputs: only the order of graph nodes differs
    assert.ok(Math.abs(on.loss - off.loss) <= 1e-6 * off.loss, `loss ${on.loss} vs ${off.loss}`);
    assert.ok(rel <= 1e-6, `gradients differ by ${rel}`);
  }
});

test("sparse labels (token ids) give the loss and gradients of dense one-hot labels", async () => {
  const { model, adapter, data } = await sharedSetup();
  const dense = await gradOf(model, data, adapter, ["--labels", "dense"]);
  const sparse = await gradOf(model, data, adapter, ["--labels", "sparse"]);
  const rel = relDiff(sparse.grad, dense.grad);
  console.log(
    `# sparse vs dense labels: loss ${sparse.loss} vs ${dense.loss}, gradient relative difference ${rel.toExponential(2)}`,
  );
  assert.ok(Math.abs(sparse.loss - dense.loss) <= 1e-6 * dense.loss);
  assert.ok(rel <= 1e-6, `gradients differ by ${rel}`);
});

test("lossNorm: token = mean over all trained tokens, example = mean of the examples' means", async () => {
  const { model, adapter, data } = await sharedSetup();
  // each example on its own: its mean token loss and its number of trained tokens
  const lines = readFileSync(data, "utf8").split("\n").filter(Boolean);
  const per = lines.map((l, i) => {
    const f = join(work, `one-${i}.jsonl`);
    writeFileSync(f, l + "\n");
    const s = join(work, `one-${i}.json`);
    const r = trainer([
      "--model",
      model,
      "--data",
      f,
      "--adapter-in",
      adapter,
      "--eval-only",
      "--summary",
      s,
    ]);
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(readFileSync(s, "utf8")) as { loss: number; tokens: number };
  });
  const n = per.reduce((a, p) => a + p.tokens, 0);
  const tokenMean = per.reduce((a, p) => a + p.loss * p.tokens, 0) / n;
  const exampleMean = per.reduce((a, p) => a + p.loss, 0) / per.length;
  const token = lossOf(model, data, adapter, ["--loss-norm", "token"]);
  const example = lossOf(model, data, adapter, ["--loss-norm", "example"]);
  console.log(
    `# lossNorm token ${token} (expected ${tokenMean}), example ${example} (expected ${exampleMean})`,
  );
  assert.ok(Math.abs(token - tokenMean) <= 1e-5 * tokenMean);
  assert.ok(Math.abs(example - exampleMean) <= 1e-5 * exampleMean);
  assert.ok(
    Math.abs(token - example) > 1e-4,
    "the data should tell the two apart (examples of different lengths)",
  );
});

test("bad input: --grad-out on a quantized base is refused (exit 2), nothing written", async () => {
  const { model, adapter, data } = await sharedSetup();
  const q = join(work, "model-q8.gguf");
  const quant = spawnSync(join(BIN, "llama-quantize"), ["--allow-requantize", model, q, "Q8_0"], {
    encoding: "utf8",
  });
  assert.equal(quant.status, 0, quant.stderr);
  const g = join(work, "never.gguf");
  const r = trainer(["--model", q, "--data", data, "--adapter-in", adapter, "--grad-out", g]);
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /--grad-out needs a base whose tensors are all F32 or F16.*q8_0/i);
  assert.ok(!existsSync(g) && !existsSync(`${g}.tmp`), "nothing written");
  // and an unknown target is named with the allowed ones
  const u = trainer([
    "--model",
    model,
    "--data",
    data,
    "--out",
    join(work, "x.gguf"),
    "--targets",
    "attn_q,attn_z",
  ]);
  assert.equal(u.code, 2, u.stderr);
  assert.match(
    u.stderr,
    /unknown target module 'attn_z'; allowed: attn_q, attn_k, attn_v, attn_output, ffn_gate, ffn_up, ffn_down/,
  );
});
