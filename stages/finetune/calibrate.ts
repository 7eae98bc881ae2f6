/**
 * `valley calibrate` for the trainer: valley-lora on a random model of each
 * shape and window the pipeline's fine-tunes will use (a stand-in when the
 * shape is too large for the device), on synthetic chats as long as the
 * window, with the threads the instance would get. A first short run sizes a
 * second one that fills its share of the time; the second is what is kept.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { inputAccess, type CalibrateContext, type Measurement } from "../../engine/stage-api.js";
import { modelInput, shapeRecord, tracesInput } from "../../data/estimate.js";
import { llamaEnv, envStrings, llamaThreads, resolveLlama } from "../../llama/toolchain.js";
import { runCommand } from "../../engine/process.js";
import { benchmarkModel } from "../../llama/calibration.js";
import {
  EXACT_LONGEST,
  studentGguf,
  trainDevice,
  trainMeasurement,
  windowsOf,
} from "./estimate.js";
import type { FinetuneParams } from "./index.js";

export async function calibrateTrainer(
  ctx: CalibrateContext<FinetuneParams>,
): Promise<Measurement[]> {
  // One benchmark per distinct (shape, window, threads, device).
  const plans = new Map<
    string,
    { inst: (typeof ctx.instances)[number]; window: number; threads: number; device: "cpu" | "gpu" }
  >();
  for (const inst of ctx.instances) {
    const p = inst.params;
    if (p.method !== "lora") continue;
    const dims = await modelInput(inst.inputs.from, inst.expected.from);
    if (!dims) continue;
    const data = await tracesInput(
      inst.inputs.data,
      inst.expected.data,
      "train.jsonl",
      EXACT_LONGEST,
    );
    const device = ctx.gpu ? "gpu" : "cpu";
    if (device === "gpu" && trainDevice(p, 1, undefined) === "cpu") continue;
    const threads = llamaThreads(p.threads, inst.resources.cpu);
    // the window the estimate will use (both candidates when guessed near a multiple of 256)
    const { windows } = await windowsOf(p, data, dims, studentGguf(inst.inputs.from));
    for (const w of new Set(windows)) {
      const window = Math.min(w, device === "cpu" ? 2048 : 8192);
      const k = JSON.stringify([shapeRecord(dims), window, threads, device]);
      if (!plans.has(k)) plans.set(k, { inst, window, threads, device });
    }
  }
  if (plans.size === 0) return [];
  const tool = resolveLlama({
    input: ctx.instances.find((i) => i.inputs.llama)?.input ?? inputAccess("finetune", {}).input,
    tools: ctx.tools,
  });
  const env = envStrings(llamaEnv(tool));
  const out: Measurement[] = [];
  const share = ctx.budgetSeconds / plans.size;
  for (const { inst, window, threads, device } of plans.values()) {
    if (ctx.signal.aborted) break;
    const want = (await modelInput(inst.inputs.from, inst.expected.from))!;
    const dir = join(ctx.scratch, `train-${out.length}`);
    mkdirSync(dir, { recursive: true });
    const { path, dims } = await benchmarkModel(want, dir, {
      maxParams: device === "cpu" ? 30e6 : 2e9,
      contextLength: window,
      signal: ctx.signal,
    });
    let fill: number | undefined;
    const run = async (examples: number) => {
      // chats as long as the window (character-level vocabulary: a character a token)
      const text = "x = 1\n".repeat(Math.max(1, Math.floor((window - 64) / 6)));
      const rows = Array.from({ length: examples }, (_, i) =>
        JSON.stringify({
          messages: [
            { role: "user", content: `problem ${i}` },
            { role: "assistant", content: text.slice(0, window - 64 - String(i).length) },
          ],
        }),
      );
      const data = join(dir, "train.jsonl");
      writeFileSync(data, rows.join("\n") + "\n");
      // what the windows hold (the rest is padding): the estimate scales to its own examples' length
      fill = await meanInputTokens(path, rows, window);
      const summary = join(dir, `summary-${examples}.json`);
      const p = inst.params;
      mkdirSync(join(dir, `ck-${examples}`), { recursive: true });
      const t0 = Date.now();
      await runCommand(
        join(tool.bin, "valley-lora"),
        [
          "--model", path, "--data", data, "--out", join(dir, "adapter.gguf"),
          "--metrics", join(dir, "metrics.jsonl"), "--summary", summary,
          "--checkpoint-dir", join(dir, `ck-${examples}`), "--checkpoint-every", "100000",
          "--rank", String(p.lora.rank), "--alpha", String(p.lora.alpha),
          "--targets", p.lora.targets.join(","), "--epochs", "1", "--batch", "1",
          "--max-seq-len", String(window), "--overlong", "truncate",
          "--threads", String(threads), "--device", device === "cpu" ? "cpu" : "auto",
          "--packing", "off", "--fingerprint", `calibrate-${examples}`,
          ...(device === "gpu" ? ["--gpus", "1"] : []),
        ], // prettier-ignore
        { signal: ctx.signal, log: ctx.log, env, cwd: dir },
      );
      const s = JSON.parse(readFileSync(summary, "utf8")) as Record<string, unknown>;
      const steps = readFileSync(join(dir, "metrics.jsonl"), "utf8")
        .split("\n")
        .filter((l) => l.trim())
        .map((l) => Number((JSON.parse(l) as { seconds?: number }).seconds));
      return { s, wall: (Date.now() - t0) / 1000, steps };
    };
    // a first short run sizes the second to fill this plan's share of the time
    const first = await run(2);
    const perExample = Number(first.s.train_seconds) / 2;
    const overhead = Math.max(0, first.wall - Number(first.s.train_seconds));
    const n = Math.max(
      2,
      Math.min(
        256,
        Math.floor((0.7 * (share - first.wall - overhead)) / Math.max(perExample, 1e-3)),
      ),
    );
    const second = n > 2 ? await run(n) : first;
    // the steps' seconds separate the first step's set-up (graph building,
    // paid once per run like loading the model) from the steady window rate
    const m = trainMeasurement(second.s, dims, device, threads, second.wall, second.steps);
    if (m)
      out.push({
        ...m,
        examples: n,
        source: "calibrate",
        ...(fill !== undefined ? { fill_tokens: fill } : {}),
      });
  }
  return out;
}

/** Mean input tokens (every token but the last) of chats in a window, as valley-lora counts them. */
async function meanInputTokens(
  model: string,
  rows: string[],
  window: number,
): Promise<number | undefined> {
  const { trainerCounter } = await import("./tokens.js");
  const counter = await trainerCounter(model).catch(() => undefined);
  if (!counter) return undefined;
  try {
    const n = rows.map((r) => counter.count(JSON.parse(r) as unknown));
    if (n.some((x) => x === undefined)) return undefined;
    return n.reduce<number>((a, x) => a + Math.min(window, x! - 1), 0) / n.length;
  } finally {
    await counter.dispose();
  }
}
