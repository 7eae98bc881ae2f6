#!/usr/bin/env bash
# CUDA smoke test (issue 3): the llama-build stage with backend: cuda and
# cudaArchitectures: "90", then a random Qwen2.5-0.5B-shaped F16 model written
# by valley's GGUF writer, all layers on the GPU: prompt and generation tokens/s
# from llama-bench, and one chat request through the managed llama-server.
# Writes $OUT/cuda-smoke.json (card, build seconds, tokens/s).
#
# Needs: an NVIDIA GPU with the CUDA toolkit (nvcc + cuBLAS), node ≥ 20, and the
# compiled modules (npm run build, here). Through the device
# tool, from the repository root, with
#   carry: ["dist", "node_modules/node-llama-cpp/llama",
#           "node_modules/node-llama-cpp/package.json", ".tmp/device"]
#   bash test/device/all.sh      (which runs this script)
# node-llama-cpp's folder gives the llama.cpp bundle; the stages' process
# runner needs execa, which all.sh unpacks from .tmp/device. Knobs: CUDA_ARCH (90), JOBS (nproc), WORK, OUT;
# BACKEND=cpu and CMAKE_FLAGS (space-separated) rehearse the script on a CPU.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/.tmp/cuda-smoke-out}
WORK=${WORK:-/tmp/valley-cuda-smoke}
mkdir -p "$OUT" "$WORK"
cd "$ROOT"
[ -f dist/stages/llama-build/index.js ] || { echo "compile first: npm run build" >&2; exit 2; }
CARD=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || echo unknown)
echo "card: $CARD" >&2

BACKEND=${BACKEND:-cuda} CMAKE_FLAGS=${CMAKE_FLAGS:-} CUDA_ARCH=${CUDA_ARCH:-90} JOBS=${JOBS:-$(nproc)} \
  WORK=$WORK OUT=$OUT CARD=$CARD node --input-type=module <<'JS'
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
const dist = process.cwd() + "/dist";
const { default: llamaBuild } = await import(dist + "/stages/llama-build/index.js");
// The model stage reads metadata back through node-llama-cpp, which is not
// carried; its writer needs nothing beyond node.
const { randomModel, resolveRandomParams } = await import(dist + "/llama/random-model.js");
const { writeGguf } = await import(dist + "/llama/gguf-writer.js");
const { withLlamaServer } = await import(dist + "/llama/server.js");
const W = process.env.WORK;
const log = { info: (o, m) => console.error("[info]", m ?? "", JSON.stringify(o)), debug() {}, warn: console.error, error: console.error };
const ctx = (params, dir, cpu) => {
  for (const d of ["out", "scratch"]) mkdirSync(join(W, dir, d), { recursive: true });
  return { instanceId: dir, coords: {}, params, inputs: {}, out: join(W, dir, "out"), scratch: join(W, dir, "scratch"),
    log, progress: (d, t) => d % 20 === 0 && console.error(`[${dir}] ${d}/${t}`), signal: new AbortController().signal,
    tools: {}, env: {}, resources: { cpu, gpu: 1, memory: 0 } };
};
const jobs = Number(process.env.JOBS);
let t0 = Date.now();
const cuda = process.env.BACKEND === "cuda";
const cmakeFlags = process.env.CMAKE_FLAGS.split(" ").filter(Boolean);
const b = ctx({ backend: process.env.BACKEND, ...(cuda ? { cudaArchitectures: process.env.CUDA_ARCH } : {}), buildType: "Release", cmakeFlags, jobs }, "build", jobs);
await llamaBuild.run(b);
const buildSeconds = (Date.now() - t0) / 1000;
// llama-bench is not one of the stage's programs: build it in the same tree.
spawnSync("cmake", ["--build", join(b.scratch, "build"), "-j", String(jobs), "--target", "llama-bench"], { stdio: "inherit" });
t0 = Date.now();
const rm = randomModel(resolveRandomParams({ preset: "qwen2.5-0.5b", type: "F16", seed: 0 }));
const gguf = join(W, "model.gguf");
await writeGguf(gguf, rm.kvs, rm.tensors);
const modelSeconds = (Date.now() - t0) / 1000;
const bench = spawnSync(join(b.scratch, "build", "bin", "llama-bench"), ["-m", gguf, "-ngl", "99", "-p", "512", "-n", "128", "-r", "3", "-o", "json"], { encoding: "utf8" });
if (bench.status !== 0) console.error(bench.stderr);
const rows = bench.status === 0 ? JSON.parse(bench.stdout) : [];
const tps = Object.fromEntries(rows.map((r) => [r.n_prompt ? "prompt_tokens_per_s" : "gen_tokens_per_s", r.avg_ts]));
const llama = { bin: join(b.out, "bin"), lib: join(b.out, "lib"), digest: "sha256:" + "0".repeat(64) };
const chat = await withLlamaServer({ llama, model: gguf, gpuLayers: "all", contextSize: 4096, log }, async (s) => {
  const r = await fetch(s.url + "/v1/chat/completions", { method: "POST", headers: { "content-type": "application/json" },
    body: JSON.stringify({ messages: [{ role: "user", content: "hi" }], max_tokens: 64, temperature: 0 }) });
  const j = await r.json();
  return { status: r.status, timings: j.timings };
});
const result = { card: process.env.CARD, backend: process.env.BACKEND, cudaArchitectures: process.env.CUDA_ARCH, jobs, buildSeconds, modelSeconds,
  model: { preset: "qwen2.5-0.5b", type: "F16", parameters: rm.parameterCount }, ...tps, serverChat: chat };
console.log(JSON.stringify(result, null, 2));
writeFileSync(join(process.env.OUT, "cuda-smoke.json"), JSON.stringify(result, null, 2) + "\n");
JS
