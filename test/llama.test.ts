/**
 * llama-build, quantize, merge and the managed llama-server against a real CPU
 * build of llama.cpp (built once, cached: see llama-fixture.ts).
 */
import { before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, lstatSync, readdirSync, readFileSync } from "node:fs";
import { readFile, readdir, mkdir } from "node:fs/promises";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { BadStageInput, inputAccess, type ToolInfo } from "../engine/stage-api.js";
import { fingerprintTools } from "../engine/engine.js";
import { StatCache } from "../cache/stat-cache.js";
import model from "../stages/model/index.js";
import quantize from "../stages/quantize/index.js";
import merge from "../stages/merge/index.js";
import llamaBuild, { LLAMA_TARGETS } from "../stages/llama-build/index.js";
import { projectRoot, resolveLlama } from "../llama/toolchain.js";
import { startLlamaServer, withLlamaServer } from "../llama/server.js";
import { writeGguf, kv, type TensorSpec } from "../llama/gguf-writer.js";
import { GGML_TYPE_F32 } from "../llama/gguf.js";
import { findCuda } from "../llama/cuda.js";
import {
  artifact,
  makeCtx,
  processesWith,
  testLlama,
  waitGone,
  type BuiltLlama,
} from "./llama-fixture.js";

let llama: BuiltLlama;
let modelDir: string;

before(async () => {
  llama = await testLlama();
  const { ctx } = await makeCtx({
    random: { n_embd: 64, n_layer: 2, n_head: 4, n_head_kv: 2, n_ff: 128, seed: 7 },
  });
  await model.run(ctx);
  modelDir = ctx.out;
});

const tools = (): Record<string, ToolInfo> => ({ llama });

test("the build artifact: programs in bin/, libraries in lib/, found without LD_LIBRARY_PATH", async (t) => {
  if (process.env.VALLEY_LLAMA_BIN) return t.skip("VALLEY_LLAMA_BIN: testing a build of your own");
  const bin = await readdir(llama.bin);
  for (const t of LLAMA_TARGETS) assert.ok(bin.includes(t), `${t} in bin/`);
  const lib = await readdir(llama.lib!);
  assert.ok(
    lib.some((f) => f.startsWith("libllama")),
    "libllama in lib/",
  );
  for (const f of lib) {
    assert.ok(
      lstatSync(join(llama.lib!, f)).isFile(),
      `${f} is a plain file (stores need not keep links)`,
    );
  }
  const info = JSON.parse(await readFile(join(llama.dir, "build.json"), "utf8"));
  assert.equal(info.backend, "cpu");
  assert.match(info.commit, /^[0-9a-f]{40}$/);
  // RPATH $ORIGIN/../lib: runs with a clean environment.
  const env = { PATH: process.env.PATH ?? "/usr/bin:/bin" };
  const r = spawnSync(join(llama.bin, "llama-server"), ["--version"], { env, encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout + r.stderr, /version/);
});

test("fingerprint covers patches and native sources", async () => {
  const tools = fingerprintTools(
    new StatCache(join(tmpdir(), `valley-stat-${process.pid}.json`)),
    tmpdir(),
  );
  const fp = (await llamaBuild.fingerprint!(
    { backend: "cpu", buildType: "Release", cmakeFlags: [] },
    tools,
  )) as {
    patches: Record<string, string>;
    natives: Record<string, Record<string, string>>;
    source: { nodeLlamaCpp: string };
  };
  assert.equal(fp.source.nodeLlamaCpp, "3.21.1");
  const patchDir = join(projectRoot(), "stages", "llama-build", "patches");
  const patches = existsSync(patchDir)
    ? readdirSync(patchDir).filter((f) => f.endsWith(".patch"))
    : [];
  assert.deepEqual(Object.keys(fp.patches).sort(), patches.sort());
  for (const d of Object.values(fp.patches)) assert.match(d, /^sha256:[0-9a-f]{64}$/);
  for (const [kind, files] of Object.entries(fp.natives)) {
    assert.ok(Object.keys(files).includes("CMakeLists.txt"), `${kind} native has CMakeLists.txt`);
  }
});

test("backend: cuda without cuBLAS fails at once, naming what is missing", async (t) => {
  const found = findCuda();
  if (!Array.isArray(found)) return t.skip("this machine has a CUDA toolkit with cuBLAS");
  const { ctx } = await makeCtx({
    backend: "cuda" as const,
    buildType: "Release" as const,
    cmakeFlags: [],
  });
  const t0 = Date.now();
  await assert.rejects(
    llamaBuild.run(ctx),
    (e: Error) =>
      e instanceof BadStageInput &&
      /backend: cuda/.test(e.message) &&
      /(nvcc|cuBLAS)/.test(e.message),
  );
  assert.ok(Date.now() - t0 < 2000, "before cloning");
  assert.deepEqual(await readdir(ctx.scratch), [], "nothing cloned");
});

test("resolveLlama: the `llama` input wins over tools, and no build at all is a clear error", () => {
  const viaInput = resolveLlama({
    ...inputAccess("test", { llama: artifact(llama.dir) }),
    tools: {},
  });
  assert.equal(viaInput.bin, llama.bin);
  const viaTools = resolveLlama({ ...inputAccess("test", {}), tools: tools() });
  assert.equal(viaTools.bin, llama.bin);
  assert.throws(() => resolveLlama({ ...inputAccess("test", {}), tools: {} }), /VALLEY_LLAMA_BIN/);
});

test("quantize to Q8_0: smaller, fewer bits per weight, still loads", async () => {
  const { ctx } = await makeCtx(
    { type: "Q8_0" },
    { inputs: { model: artifact(modelDir) }, tools: tools() },
  );
  const res = await quantize.run(ctx);
  const m = res?.metrics ?? {};
  assert.equal(m.type, "Q8_0");
  assert.ok((m.bitsPerWeight as number) < 32, `bpw ${m.bitsPerWeight}`);
  assert.ok((m.tensorTypes as Record<string, number>).Q8_0 > 0);
  const { getLlama, LlamaCompletion, LlamaLogLevel } = await import("node-llama-cpp");
  const l = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const loaded = await l.loadModel({ modelPath: join(ctx.out, "model.gguf") });
  const c = await loaded.createContext({ contextSize: 256 });
  const out = await new LlamaCompletion({ contextSequence: c.getSequence() }).generateCompletion(
    "ab",
    {
      maxTokens: 4,
      temperature: 0,
    },
  );
  assert.equal(typeof out, "string");
  await c.dispose();
  await loaded.dispose();
});

test("quantize: an unknown type is an BadStageInput listing the valid ones", async () => {
  assert.match(quantize.check!({ type: "Q9_9" })[0].message, /valid types: .*Q4_K_M/);
  const { ctx } = await makeCtx(
    { type: "Q9_9" },
    { inputs: { model: artifact(modelDir) }, tools: tools() },
  );
  await assert.rejects(
    quantize.run(ctx),
    (e: Error) => e instanceof BadStageInput && /Q8_0/.test(e.message),
  );
});

/** A LoRA adapter for the test model: random A and B on attn_q and ffn_up. */
async function writeAdapter(path: string, seed: number): Promise<void> {
  const r = 4;
  let x = seed;
  const fill = (dst: Float32Array) => {
    for (let i = 0; i < dst.length; i++) {
      x = (Math.imul(x, 1103515245) + 12345) >>> 0;
      dst[i] = ((x >>> 8) / 2 ** 24 - 0.5) * 0.2;
    }
  };
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

test("merge: base + two adapters with scales", async () => {
  const dirs: string[] = [];
  for (const seed of [1, 2]) {
    const { tmp } = await makeCtx({});
    const d = join(tmp, "adapter");
    await mkdir(d);
    await writeAdapter(join(d, "adapter.gguf"), seed);
    dirs.push(d);
  }
  const adapters = dirs.map((d, i) => artifact(d, `tune@i=${i}`));
  const { ctx } = await makeCtx(
    { scales: { "tune@i=0": 0.5, "tune@i=1": 1 } },
    { inputs: { base: artifact(modelDir), adapters }, tools: tools() },
  );
  const res = await merge.run(ctx);
  assert.equal(res?.metrics?.adapters, 2);
  const info = JSON.parse(await readFile(join(ctx.out, "model.json"), "utf8"));
  assert.equal(info.architecture, "llama");
  const base = await readFile(join(modelDir, "model.gguf"));
  const merged = await readFile(join(ctx.out, "model.gguf"));
  assert.notDeepEqual(merged, base, "the adapters changed the weights");
  const { ctx: bad } = await makeCtx(
    { scales: [1] },
    { inputs: { base: artifact(modelDir), adapters }, tools: tools() },
  );
  await assert.rejects(
    merge.run(bad),
    (e: Error) => e instanceof BadStageInput && /2 adapters/.test(e.message),
  );
});

test("managed llama-server answers an OpenAI chat request", async () => {
  const marker = join(modelDir, "model.gguf");
  await withLlamaServer(
    { llama, model: marker, parallel: 2, contextSize: 512, threads: 2, alias: "tiny" },
    async (s) => {
      assert.ok(s.pid && s.pid > 0);
      const r = await fetch(`${s.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          messages: [{ role: "user", content: "Say hi" }],
          max_tokens: 16,
          temperature: 0,
        }),
      });
      const body = await r.text();
      assert.equal(r.status, 200, body);
      const j = JSON.parse(body);
      assert.equal(typeof j.choices[0].message.content, "string");
      assert.ok(j.usage.completion_tokens > 0);
    },
  );
  assert.deepEqual(await waitGone(marker), [], "no server left after the run");
});

test("managed llama-server with a LoRA adapter", async () => {
  const { tmp } = await makeCtx({});
  const adapter = join(tmp, "adapter.gguf");
  await writeAdapter(adapter, 3);
  await withLlamaServer(
    {
      llama,
      model: join(modelDir, "model.gguf"),
      lora: [{ path: adapter, scale: 0.5 }],
      contextSize: 256,
    },
    async (s) => {
      const r = await fetch(`${s.url}/lora-adapters`);
      assert.equal(r.status, 200);
      const list = (await r.json()) as { path: string; scale: number }[];
      assert.equal(list.length, 1);
      assert.equal(list[0].scale, 0.5);
      const c = await fetch(`${s.url}/v1/chat/completions`, {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ messages: [{ role: "user", content: "x" }], max_tokens: 4 }),
      });
      assert.equal(c.status, 200, await c.text());
    },
  );
});

test("a crashed server is restarted", async () => {
  const s = await startLlamaServer({
    llama,
    model: join(modelDir, "model.gguf"),
    contextSize: 256,
  });
  try {
    const first = s.pid!;
    process.kill(first, "SIGKILL");
    for (let i = 0; i < 100 && s.restarts === 0; i++) await new Promise((r) => setTimeout(r, 50));
    await s.ready();
    assert.equal(s.restarts, 1);
    assert.notEqual(s.pid, first);
    assert.equal((await fetch(`${s.url}/health`)).status, 200);
  } finally {
    await s.stop();
  }
});

test("the server dies with its watchdog (PR_SET_PDEATHSIG), and is restarted", async (t) => {
  if (!existsSync("/usr/bin/setpriv")) return t.skip("no setpriv here");
  const s = await startLlamaServer({
    llama,
    model: join(modelDir, "model.gguf"),
    contextSize: 256,
  });
  try {
    const server = s.pid!;
    const stat = readFileSync(`/proc/${server}/stat`, "utf8");
    const watchdog = Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[1]);
    process.kill(watchdog, "SIGKILL");
    for (
      let i = 0;
      i < 100 &&
      existsSync(`/proc/${server}/cmdline`) &&
      readFileSync(`/proc/${server}/cmdline`, "utf8");
      i++
    ) {
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(
      existsSync(`/proc/${server}/cmdline`) ? readFileSync(`/proc/${server}/cmdline`, "utf8") : "",
      "",
    );
    for (let i = 0; i < 100 && s.restarts === 0; i++) await new Promise((r) => setTimeout(r, 50));
    await s.ready();
    assert.equal((await fetch(`${s.url}/health`)).status, 200);
  } finally {
    await s.stop();
  }
});

test("no server is left after a failed or aborted run", async () => {
  const marker = join(modelDir, "model.gguf");
  await assert.rejects(
    withLlamaServer({ llama, model: marker, contextSize: 256 }, async () => {
      assert.ok(processesWith(marker).length > 0, "server running");
      throw new Error("stage failed");
    }),
    /stage failed/,
  );
  assert.deepEqual(await waitGone(marker), []);

  const ac = new AbortController();
  const s = await startLlamaServer({ llama, model: marker, contextSize: 256, signal: ac.signal });
  assert.ok(processesWith(marker).length > 0);
  ac.abort(new Error("interrupted"));
  assert.deepEqual(await waitGone(marker), [], "abort stops the server");
  await s.stop();

  // A server that cannot start (not a model) fails with its own output, and leaves nothing.
  const junk = join(modelDir, "model.json");
  await assert.rejects(
    startLlamaServer({ llama, model: junk, startTimeoutMs: 30000 }),
    /did not start/,
  );
  assert.deepEqual(await waitGone(junk), []);
});

test("no server is left after kill -9 of the node process that started it", async () => {
  const marker = join(modelDir, "model.gguf");
  const serverJs = new URL("../llama/server.js", import.meta.url).href;
  const code = `
    import { startLlamaServer } from ${JSON.stringify(serverJs)};
    const s = await startLlamaServer(${JSON.stringify({ llama, model: marker, contextSize: 256 })});
    console.log("ready " + s.pid);
    setInterval(() => {}, 1000);
  `;
  const child = spawn(process.execPath, ["--input-type=module", "-e", code], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  const pid = await new Promise<number>((resolve, reject) => {
    let buf = "";
    child.stdout.on("data", (c: Buffer) => {
      buf += c.toString();
      const m = /ready (\d+)/.exec(buf);
      if (m) resolve(Number(m[1]));
    });
    child.on("exit", (c) => reject(new Error(`child exited early (${c})`)));
  });
  assert.ok(processesWith(marker).includes(pid), "server runs");
  child.kill("SIGKILL");
  assert.deepEqual(await waitGone(marker), [], "the watchdog stopped the server");
});
