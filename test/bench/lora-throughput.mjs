#!/usr/bin/env node
// CPU training throughput on the tiny random model: valley-lora (LoRA, our
// trainer) vs upstream llama-finetune (full fine-tune) on the same chats.
//
//   VALLEY_LLAMA_BIN=<llama build>/bin node test/bench/lora-throughput.mjs [--threads 2] [--epochs 2]
//
// Needs the compiled project (npm run build, or npx tsc -p
// npm run build) for llama/random-model.js.
//
// Both run with windows of 256 tokens. Two figures per trainer:
// - window tokens/s: tokens pushed through forward + backward per second
//   (valley-lora: one example per window, padding included; llama-finetune:
//   windows of the concatenated text at stride 128, so each token twice);
// - data tokens/s: tokens of the dataset per second of one epoch.
//
// Then, on the demo data (the built-in problems' training split with their
// reference reasoning and solutions, as the demo's `teacher` imports them) and
// the demo's student shape (llama, 128-dim, 2 layers):
// - packed vs padded: data tokens/s with `--packing on` (examples share windows)
//   against one example per window, same window, same batch of windows;
// - sparse vs dense labels: peak resident memory and tokens/s of the same run
//   with the labels as token ids against one-hot rows (--labels dense), and the
//   size of the dense label tensor that the sparse form does not allocate.
//
//   node test/bench/lora-throughput.mjs [--only full|demo]
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const threads = Number(arg("--threads", "2"));
const epochs = Number(arg("--epochs", "2"));
const only = arg("--only", "");
const bin = process.env.VALLEY_LLAMA_BIN ?? join(root, ".tmp/lora-src/build/bin");
for (const b of ["valley-lora", ...(only === "demo" ? [] : ["llama-finetune"])]) {
  if (!existsSync(join(bin, b))) {
    console.error(
      `no ${b} in ${bin}: set VALLEY_LLAMA_BIN to a llama.cpp build holding valley-lora`,
    );
    process.exit(2);
  }
}
const dist = ["dist", ".tmp/dist-finetune"]
  .map((p) => join(root, p))
  .find((d) => existsSync(join(d, "llama/random-model.js")));
if (!dist) {
  console.error("compile the project first: npm run build ");
  process.exit(2);
}
const { randomModel, resolveRandomParams } = await import(
  pathToFileURL(join(dist, "llama/random-model.js")).href
);
const { writeGguf } = await import(pathToFileURL(join(dist, "llama/gguf-writer.js")).href);

const work = mkdtempSync(join(tmpdir(), "valley-lora-bench-"));
try {
  const model = join(work, "tiny.gguf");
  const tiny = randomModel(resolveRandomParams({ preset: "tiny", seed: 1 }));
  await writeGguf(model, tiny.kvs, tiny.tensors);
  let seed = 12345;
  const rnd = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const chars = "abcdefghijklmnopqrstuvwxyz0123456789 +-*/=()";
  const noise = (n) =>
    Array.from({ length: n }, () => chars[Math.floor(rnd() * chars.length)]).join("");
  const rows = Array.from({ length: 96 }, () => ({
    messages: [
      { role: "user", content: noise(60 + Math.floor(rnd() * 60)) },
      { role: "assistant", content: noise(60 + Math.floor(rnd() * 60)) },
    ],
  }));
  const data = join(work, "train.jsonl");
  writeFileSync(data, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");

  const time = (file, args) => {
    const t0 = process.hrtime.bigint();
    const r = spawnSync(join(bin, file), args, { encoding: "utf8" });
    const s = Number(process.hrtime.bigint() - t0) / 1e9;
    if (r.status !== 0) throw new Error(`${file} failed (${r.status}):\n${r.stderr.slice(-3000)}`);
    return { s, stderr: r.stderr };
  };

  if (only !== "demo") {
    // LoRA
    const summary = join(work, "summary.json");
    // prettier-ignore
    const lora = time("valley-lora", [
    "--model", model, "--data", data, "--out", join(work, "a.gguf"), "--summary", summary,
    "--epochs", String(epochs), "--batch", "1", "--ctx", "256", "--threads", String(threads), "--lr", "1e-3",
  ]);
    const s = JSON.parse(readFileSync(summary, "utf8"));
    const loraWindowTps = (s.steps * s.window) / s.train_seconds;
    const loraDataTps = s.seq_tokens_per_second;

    // full fine-tune on the same chats rendered to text
    const text = join(work, "train.txt");
    time("valley-lora", ["--model", model, "--data", data, "--render-text", text]);
    // prettier-ignore
    const full = time("llama-finetune", [
    "-m", model, "-f", text, "-o", join(work, "full.gguf"), "-c", "256", "-b", "256", "-ub", "256",
    "-epochs", String(epochs), "-t", String(threads), "-ngl", "0", "-lr", "1e-5", "-val-split", "0",
  ]);
    const m = [...full.stderr.matchAll(/train: \[[^\]]*\] data=(\d+)\/(\d+) loss=/g)].pop();
    if (!m) throw new Error("cannot read llama-finetune's progress");
    const windows = Number(m[2]);
    const fullWindowTps = (windows * 256 * epochs) / full.s;
    // every data token is seen twice per epoch (stride n_ctx/2)
    const fullDataTps = (windows * 128 * epochs) / full.s;

    const f = (x) => Math.round(x).toLocaleString("en-US");
    console.log(
      `tiny random llama (64-dim, 2 layers), ${rows.length} chats, ${epochs} epochs, ${threads} threads, windows of 256`,
    );
    console.log(
      `LoRA (valley-lora, r=8):       window ${f(loraWindowTps)} tok/s, data ${f(loraDataTps)} tok/s (${s.steps} steps, ${lora.s.toFixed(2)} s wall)`,
    );
    console.log(
      `full (llama-finetune):          window ${f(fullWindowTps)} tok/s, data ${f(fullDataTps)} tok/s (${windows} windows/epoch, ${full.s.toFixed(2)} s wall)`,
    );
    console.log(
      `ratio LoRA/full: window tokens/s ${(loraWindowTps / fullWindowTps).toFixed(2)}x, data tokens/s ${(loraDataTps / fullDataTps).toFixed(2)}x`,
    );
  }

  if (only !== "full") {
    // the demo's data and student
    const student = join(work, "student.gguf");
    const st = randomModel(
      resolveRandomParams({
        architecture: "llama", n_embd: 128, n_layer: 2, n_head: 4, n_ff: 384, context_length: 1024, seed: 7,
      }),
    ); // prettier-ignore
    await writeGguf(student, st.kvs, st.tensors);
    const problems = readFileSync(join(root, "pipelines/data/demo/problems.jsonl"), "utf8")
      .split("\n")
      .filter(Boolean)
      .map((l) => JSON.parse(l))
      .filter((p) => p.split === "train" && p.reference_solution);
    const demo = join(work, "demo.jsonl");
    writeFileSync(
      demo,
      problems
        .map((p) =>
          JSON.stringify({
            messages: [
              { role: "user", content: p.statement },
              {
                role: "assistant",
                content: `<think>\n${(p.reference_trace ?? "").trim()}\n</think>\n\n\`\`\`python\n${p.reference_solution.trimEnd()}\n\`\`\``,
              },
            ],
          }),
        )
        .join("\n") + "\n",
    );
    const run = (name, extra) => {
      const sum = join(work, `${name}.json`);
      // prettier-ignore
      time("valley-lora", [
        "--model", student, "--data", demo, "--out", join(work, `${name}.gguf`), "--summary", sum,
        "--epochs", String(epochs), "--batch", "4", "--threads", String(threads), "--lr", "1e-3", ...extra,
      ]);
      return JSON.parse(readFileSync(sum, "utf8"));
    };
    const padded = run("padded", ["--packing", "off"]);
    const packed = run("packed", ["--packing", "on"]);
    const dense = run("dense", ["--packing", "off", "--labels", "dense"]);
    const f = (x) => Math.round(x).toLocaleString("en-US");
    console.log(
      `demo data: ${problems.length} chats, student llama 128-dim 2 layers, window ${padded.window}, batch 4 windows, ${epochs} epochs, ${threads} threads`,
    );
    console.log(
      `padded (one example per window): ${f(padded.seq_tokens_per_second)} data tok/s (${padded.windows} windows, ${padded.train_seconds.toFixed(2)} s)`,
    );
    console.log(
      `packed:                          ${f(packed.seq_tokens_per_second)} data tok/s (${packed.windows} windows, ${packed.train_seconds.toFixed(2)} s)`,
    );
    console.log(
      `ratio packed/padded: ${(packed.seq_tokens_per_second / padded.seq_tokens_per_second).toFixed(2)}x data tokens/s`,
    );
    // the dense form holds one F32 row of the vocabulary per trained position of a window
    const vocab = st.kvs.find((k) => k.key === "tokenizer.ggml.tokens").value.length;
    const labelsMiB = (vocab * padded.window * 4) / 2 ** 20;
    console.log(
      `labels sparse vs dense: peak RSS ${padded.max_rss_mib.toFixed(1)} vs ${dense.max_rss_mib.toFixed(1)} MiB, ${f(padded.seq_tokens_per_second)} vs ${f(dense.seq_tokens_per_second)} data tok/s; ` +
        `dense label tensor at most ${labelsMiB.toFixed(2)} MiB per window here (vocabulary ${vocab}); Qwen2.5 (V=152,064) at 32,768 trained tokens: ${((152064 * 32768 * 4) / 2 ** 30).toFixed(1)} GiB`,
    );
  }
} finally {
  rmSync(work, { recursive: true, force: true });
}
