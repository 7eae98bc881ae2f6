#!/usr/bin/env node
// Peak memory of valley-lora against the window length (issue 13), on the CPU:
// the 4-layer model of the issue (llama, 4 layers, 8 heads, 256 wide, FFN 704),
// LoRA r=16 on the trainer's default targets, one optimizer step over one
// example that fills the window (every position trained, masking off: the
// worst case). Prints the peak RSS at each L, the memory model's prediction
// (valley-lora --estimate-memory) and RSS(largest L)/RSS(smallest L).
//
//   VALLEY_LLAMA_BIN=<llama build>/bin node test/bench/lora-memory.mjs \
//     [--lengths 2048,8192] [--threads 2] [-- extra valley-lora flags, e.g. --flash-attn off]
//
// Targets: RSS@8192 ≤ 1.5 GB and RSS(8192)/RSS(2048) ≤ 4.5 (with the
// materialised softmax: 11.5 GB and 13.9). Needs the compiled project (npm
// run build) for llama/random-model.js.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const dashes = process.argv.indexOf("--");
const own = dashes > 0 ? process.argv.slice(2, dashes) : process.argv.slice(2);
const extra = dashes > 0 ? process.argv.slice(dashes + 1) : [];
const arg = (name, dflt) => {
  const i = own.indexOf(name);
  return i >= 0 ? own[i + 1] : dflt;
};
const lengths = arg("--lengths", "2048,8192").split(",").map(Number);
const threads = arg("--threads", "2");
const bin = process.env.VALLEY_LLAMA_BIN;
if (!bin || !existsSync(join(bin, "valley-lora"))) {
  console.error("set VALLEY_LLAMA_BIN to a llama.cpp build holding valley-lora");
  process.exit(2);
}
const dist = join(root, "dist");
if (!existsSync(join(dist, "llama/random-model.js"))) {
  console.error("compile the project first: npm run build");
  process.exit(2);
}
const { randomModel, resolveRandomParams } = await import(
  pathToFileURL(join(dist, "llama/random-model.js")).href
);
const { writeGguf } = await import(pathToFileURL(join(dist, "llama/gguf-writer.js")).href);

const MiB = 2 ** 20;
const work = mkdtempSync(join(tmpdir(), "valley-lora-memory-"));
try {
  const model = join(work, "model.gguf");
  const m = randomModel(
    resolveRandomParams({
      seed: 1,
      architecture: "llama",
      n_layer: 4,
      n_head: 8,
      n_embd: 256,
      n_ff: 704,
      context_length: Math.max(...lengths),
    }),
  );
  await writeGguf(model, m.kvs, m.tensors);
  const rss = new Map();
  for (const L of lengths) {
    // one chat whose assistant turn is L + 64 characters, one token each: cut to the window
    const a = "abcdefghijklmnopqrstuvwxyz0123456789";
    let s = "";
    for (let i = 0; i < L + 64; i++) s += a[(i * 7919) % a.length];
    const data = join(work, `long-${L}.jsonl`);
    writeFileSync(
      data,
      JSON.stringify({
        messages: [
          { role: "user", content: "go" },
          { role: "assistant", content: s },
        ],
      }) + "\n",
    );
    const flags = ["--model", model, "--max-seq-len", String(L + 1), "--rank", "16", ...extra];
    const est = spawnSync(join(bin, "valley-lora"), [...flags, "--estimate-memory"], {
      encoding: "utf8",
    });
    const predicted = est.status === 0 ? JSON.parse(est.stdout).total : NaN;
    const summary = join(work, `s-${L}.json`);
    const t0 = Date.now();
    // prettier-ignore
    const r = spawnSync(join(bin, "valley-lora"), [
      ...flags, "--data", data, "--out", join(work, "a.gguf"), "--summary", summary,
      "--masking", "off", "--max-steps", "1", "--threads", threads, "--device", "cpu",
    ], { encoding: "utf8" });
    if (r.status !== 0) {
      console.error(r.stderr.slice(-3000));
      process.exit(1);
    }
    const sum = JSON.parse(readFileSync(summary, "utf8"));
    rss.set(L, sum.peak_rss_bytes);
    console.log(
      `L=${L}: peak RSS ${(sum.peak_rss_bytes / MiB).toFixed(0)} MiB (${(sum.peak_rss_bytes / 1e9).toFixed(3)} GB), ` +
        `predicted ${(predicted / MiB).toFixed(0)} MiB (${(predicted / sum.peak_rss_bytes).toFixed(3)}), ` +
        `flash_attn ${sum.flash_attn}, ${((Date.now() - t0) / 1000).toFixed(1)} s`,
    );
  }
  const lo = Math.min(...lengths);
  const hi = Math.max(...lengths);
  if (lo !== hi) {
    console.log(`RSS(${hi})/RSS(${lo}) = ${(rss.get(hi) / rss.get(lo)).toFixed(2)}`);
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
