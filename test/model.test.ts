/**
 * The `model` stage and our GGUF writer, without llama.cpp binaries of our own
 * (node-llama-cpp's prebuilt CPU binaries load the models).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFile, stat, writeFile, truncate, copyFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { BadStageInput } from "../engine/stage-api.js";
import { sha256Bytes } from "../cache/digest.js";
import { StatCache } from "../cache/stat-cache.js";
import { fingerprintTools } from "../engine/engine.js";
import model, { type ModelParams } from "../stages/model/index.js";
import { inspectGguf } from "../llama/gguf.js";
import { toHalf } from "../llama/gguf-writer.js";
import { buildVocab } from "../llama/random-model.js";
import { makeCtx } from "./llama-fixture.js";

const TINY: ModelParams = { random: { n_embd: 64, n_layer: 2, n_head: 4, n_ff: 128, seed: 1 } };

async function runModel(params: ModelParams) {
  const { ctx } = await makeCtx(params);
  const res = await model.run(ctx);
  return { out: ctx.out, metrics: res?.metrics ?? {} };
}

test("a random model is a valid GGUF with model.json", async () => {
  const { out, metrics } = await runModel(TINY);
  const s = await inspectGguf(join(out, "model.gguf"));
  assert.equal(s.version, 3);
  const info = JSON.parse(await readFile(join(out, "model.json"), "utf8"));
  assert.equal(info.architecture, "llama");
  assert.equal(info.contextLength, 512);
  assert.equal(info.embeddingLength, 64);
  assert.equal(info.headCountKv, 4, "n_head_kv defaults to n_head");
  assert.deepEqual(info.tensorTypes, { F32: 2 * 9 + 3 });
  assert.match(info.chatTemplate, /<\|im_start\|>/);
  assert.equal(info.parameterCount, metrics.parameterCount);
  assert.equal(metrics.source, "random");
  assert.equal(info.vocabSize, buildVocab().tokens.length);
});

test("same params give the same bytes; another seed does not", async () => {
  const a = await runModel(TINY);
  const b = await runModel(TINY);
  const c = await runModel({ random: { ...TINY.random, seed: 2 } });
  const digest = async (d: string) => sha256Bytes(await readFile(join(d, "model.gguf")));
  assert.equal(await digest(a.out), await digest(b.out));
  assert.notEqual(await digest(a.out), await digest(c.out));
  assert.equal(
    await readFile(join(a.out, "model.json"), "utf8"),
    await readFile(join(b.out, "model.json"), "utf8"),
  );
});

test("qwen2 F16 has q/k/v biases and F16 matrices", async () => {
  const { out } = await runModel({
    random: {
      architecture: "qwen2",
      type: "F16",
      n_embd: 64,
      n_layer: 1,
      n_head: 4,
      n_head_kv: 2,
      n_ff: 96,
    },
  });
  const s = await inspectGguf(join(out, "model.gguf"));
  const names = s.tensors.map((t) => t.name);
  for (const b of ["attn_q.bias", "attn_k.bias", "attn_v.bias"])
    assert.ok(names.includes(`blk.0.${b}`));
  const k = s.tensors.find((t) => t.name === "blk.0.attn_k.weight");
  assert.deepEqual(k?.shape, [64, 32]);
  assert.equal(k?.type, 1);
  const info = JSON.parse(await readFile(join(out, "model.json"), "utf8"));
  assert.equal(info.architecture, "qwen2");
  assert.ok(info.bitsPerWeight > 16 && info.bitsPerWeight < 17);
});

test("a random model loads in node-llama-cpp, tokenizes by character and generates", async () => {
  const { out } = await runModel(TINY);
  const { getLlama, LlamaCompletion, LlamaLogLevel } = await import("node-llama-cpp");
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const m = await llama.loadModel({ modelPath: join(out, "model.gguf") });
  try {
    const text = "def f(x):\n\treturn x ≤ 3 <think>é</think>";
    const tokens = m.tokenize(text);
    assert.equal(m.detokenize(tokens), text, "tokenize → detokenize round-trips");
    assert.equal(m.tokenize("abc").length, 3, "one token per character");
    const ctx = await m.createContext({ contextSize: 256 });
    const completion = new LlamaCompletion({ contextSequence: ctx.getSequence() });
    let n = 0;
    const res = await completion.generateCompletion("Hello", {
      maxTokens: 12,
      temperature: 0,
      onToken: (t) => (n += t.length),
    });
    assert.ok(n > 0, "produced tokens");
    assert.equal(typeof res, "string");
    assert.equal(Buffer.from(res, "utf8").toString("utf8"), res);
    await ctx.dispose();
  } finally {
    await m.dispose();
  }
});

test("path: a local GGUF is hardlinked, and its bytes are in the fingerprint", async () => {
  const src = await runModel(TINY);
  const file = join(src.out, "model.gguf");
  const { out } = await runModel({ path: file });
  assert.equal((await stat(join(out, "model.gguf"))).ino, (await stat(file)).ino);
  // The fingerprint is the file's content: a copy elsewhere has the same one,
  // a copy with one byte changed does not.
  const { tmp } = await makeCtx({});
  const tools = fingerprintTools(new StatCache(join(tmp, "stat.json")), tmp);
  const fp = await model.fingerprint!({ path: file }, tools);
  await mkdir(join(tmp, "copy"));
  const copy = join(tmp, "copy", "model.gguf");
  await copyFile(file, copy);
  assert.deepEqual(await model.fingerprint!({ path: copy }, tools), fp);
  const bytes = await readFile(file);
  bytes[bytes.length - 1] ^= 1;
  await writeFile(copy, bytes);
  assert.notDeepEqual(await model.fingerprint!({ path: copy }, tools), fp);
  assert.match(String(fp.file), /^sha256:[0-9a-f]{64}$/);
});

test("bad GGUF inputs fail with BadStageInput", async () => {
  const src = await runModel(TINY);
  const { ctx, tmp } = await makeCtx({});
  const cut = join(tmp, "cut.gguf");
  await copyFile(join(src.out, "model.gguf"), cut);
  await truncate(cut, (await stat(cut)).size - 1000);
  await assert.rejects(
    model.run({ ...ctx, params: { path: cut } }),
    (e: Error) => e instanceof BadStageInput && /truncated/.test(e.message),
  );
  const header = join(tmp, "header.gguf");
  await copyFile(join(src.out, "model.gguf"), header);
  await truncate(header, 100);
  await assert.rejects(
    model.run({ ...ctx, params: { path: header } }),
    (e: Error) => e instanceof BadStageInput && /truncated/.test(e.message),
  );
  const junk = join(tmp, "junk.gguf");
  await writeFile(junk, "PK\x03\x04 definitely a zip file, not a model");
  await assert.rejects(
    model.run({ ...ctx, params: { path: junk } }),
    (e: Error) => e instanceof BadStageInput && /not a GGUF file/.test(e.message),
  );
  await assert.rejects(
    model.run({ ...ctx, params: { path: join(tmp, "missing.gguf") } }),
    (e: Error) => e instanceof BadStageInput && /does not exist/.test(e.message),
  );
});

test("impossible shapes and source mix-ups are caught by check() and run()", async () => {
  const bad: ModelParams = { random: { n_embd: 65, n_head: 4 } };
  const issues = model.check!(bad);
  assert.equal(issues.length, 1);
  assert.deepEqual(issues[0].path, ["random", "n_embd"]);
  assert.match(issues[0].message, /not divisible by n_head/);
  assert.match(
    model.check!({ random: { n_head: 6, n_head_kv: 4, n_embd: 48 } })[0].message,
    /n_head_kv/,
  );
  assert.match(model.check!({})[0].message, /give one model source/);
  assert.match(model.check!({ path: "a", random: {} })[0].message, /exactly one/);
  const { ctx } = await makeCtx(bad);
  await assert.rejects(
    model.run(ctx),
    (e: Error) => e instanceof BadStageInput && /divisible/.test(e.message),
  );
});

test("F32 → F16 conversion rounds like IEEE", () => {
  assert.equal(toHalf(0), 0);
  assert.equal(toHalf(1), 0x3c00);
  assert.equal(toHalf(-2), 0xc000);
  assert.equal(toHalf(65504), 0x7bff);
  assert.equal(toHalf(1e6), 0x7c00);
  assert.equal(toHalf(5.960464477539063e-8), 0x0001); // smallest subnormal
  assert.equal(toHalf(1 + 2 ** -11), 0x3c00); // tie → even
  assert.equal(toHalf(1 + 3 * 2 ** -11), 0x3c02);
  assert.equal(toHalf(0.1), 0x2e66);
});
