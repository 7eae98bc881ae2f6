/**
 * `finetune`: LoRA (valley's own trainer, stages/finetune/native/valley-lora.cpp,
 * built into the llama-build artifact) or full fine-tuning (upstream
 * llama-finetune) of a GGUF model on chat examples.
 *
 * - `from`: a folder with `model.gguf` (a `model` artifact, or a merged model).
 * - `data`: a folder with `train.jsonl` ({"messages": [...]} per line).
 * - `llama` (optional): a llama-build artifact (bin/, lib/).
 *
 * Outputs: `adapter.gguf` (lora) or `model.gguf` (full), `metrics.jsonl`
 * (one row per optimizer step for lora, per epoch for full), `summary.json`.
 * LoRA checkpoints live in ctx.scratch, so a re-run after a crash resumes.
 */
import { spawnSync } from "node:child_process";
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type {
  AdmitContext,
  InputArtifact,
  ParamIssue,
  StageContext,
  StageKind,
  ToolInfo,
} from "../../engine/stage-api.js";
import { BadStageInput } from "../../engine/stage-api.js";
import { CommandError, runCommand } from "../../engine/process.js";
import { llamaEnv, llamaExe, llamaThreads, resolveLlama } from "../../llama/toolchain.js";
import { inspectGguf } from "../../llama/gguf.js";
import { fitProblem, flashAttentionAuto, shapeFromGguf, windowFor } from "./memory.js";

export interface FinetuneParams {
  method: "lora" | "full";
  lora: { rank: number; alpha: number; targets: string[]; seed: number };
  lr: number;
  warmup: number;
  decay: "linear" | "cosine" | "constant";
  weightDecay: number;
  epochs: number;
  batch: number;
  maxSeqLen: number;
  overlong: "truncate" | "drop";
  masking: boolean;
  checkpointEvery: number;
  threads: number;
  ctx: number;
  device: "auto" | "cpu";
  /** token: mean over every trained token of an optimizer step (TRL's default); example: mean of example means. */
  lossNorm: "token" | "example";
  /** Several examples per window, each its own sequence (own positions, no attention across examples). */
  packing: boolean;
  /**
   * Activation checkpointing (lora): keep each layer's input, recompute its forward pass in the backward
   * pass. auto: on when the window may reach CHECKPOINT_FROM tokens (valley-lora says why).
   */
  checkpointing: "auto" | boolean;
}

/** valley-lora's `--checkpointing auto` threshold (CHECKPOINT_FROM in native/valley-lora.cpp). */
export const CHECKPOINT_FROM = 4096;

/** Whether a run checkpoints, as valley-lora decides it: from the longest window the params allow. */
export function checkpointingOn(
  p: Pick<FinetuneParams, "checkpointing" | "ctx" | "maxSeqLen">,
): boolean {
  if (p.checkpointing !== "auto") return p.checkpointing;
  return windowFor(p.ctx > 0 ? p.ctx : p.maxSeqLen - 1) >= CHECKPOINT_FROM;
}

/** The seven projections of a llama/qwen2 block: PEFT's "all-linear" for these decoders. */
export const LINEAR_TARGETS = [
  "attn_q",
  "attn_k",
  "attn_v",
  "attn_output",
  "ffn_gate",
  "ffn_up",
  "ffn_down",
] as const;
export const ALLOWED_TARGETS: readonly string[] = [...LINEAR_TARGETS, "output"];
export const DEFAULT_TARGETS: string[] = [...LINEAR_TARGETS];

export interface LlamaBinaries {
  bin: string;
  lib?: string;
}

/** The llama.cpp build: the `llama` input (a llama-build artifact), else the engine's llama tool. */
export function resolveBinaries(ctx: StageContext<FinetuneParams>): LlamaBinaries {
  let tool: ToolInfo;
  try {
    tool = resolveLlama(ctx);
  } catch (e) {
    throw new BadStageInput((e as Error).message);
  }
  for (const exe of ["valley-lora", ...(ctx.params.method === "full" ? ["llama-finetune"] : [])]) {
    try {
      llamaExe(tool, exe);
    } catch (e) {
      throw new BadStageInput((e as Error).message);
    }
  }
  return { bin: tool.bin, lib: tool.lib };
}

/**
 * A llama-build artifact that says it is a CPU build: `device: auto` then
 * means the CPU, whatever GPUs the engine reserved for the instance.
 */
function cpuBuild(b: LlamaBinaries): boolean {
  try {
    const info = JSON.parse(readFileSync(join(b.bin, "..", "build.json"), "utf8")) as {
      backend?: string;
    };
    return info.backend === "cpu";
  } catch {
    return false; // a build of the user's own: valley-lora decides
  }
}

/** The engine's environment (CUDA_VISIBLE_DEVICES and the like) plus llama.cpp's library folders. */
function childEnv(b: LlamaBinaries): Record<string, string> {
  const env = llamaEnv({ bin: b.bin, lib: b.lib, digest: "" as ToolInfo["digest"] });
  return Object.fromEntries(
    Object.entries(env).filter((e): e is [string, string] => typeof e[1] === "string"),
  );
}

/** Runs a program; exit code 2 (bad input) becomes an BadStageInput carrying its message. */
async function run2(
  ctx: StageContext<FinetuneParams>,
  file: string,
  args: string[],
  b: LlamaBinaries,
  onLine?: (l: string) => void,
) {
  const errors: string[] = [];
  try {
    await runCommand(file, args, {
      signal: ctx.signal,
      log: ctx.log,
      env: childEnv(b),
      cwd: ctx.scratch,
      onLine: (line) => {
        if (/error:/.test(line)) errors.push(line.replace(/^.*?error:\s*/, ""));
        onLine?.(line);
      },
    });
  } catch (e) {
    if (e instanceof CommandError && e.exitCode === 2 && !ctx.signal.aborted) {
      throw new BadStageInput(errors.join("; ") || e.tail.join("\n"));
    }
    throw e;
  }
}

export function checkParams(p: FinetuneParams): ParamIssue[] {
  const issues: ParamIssue[] = [];
  if (p.method === "lora") {
    if (!(p.lora.rank > 0)) issues.push({ path: ["lora", "rank"], message: "rank must be > 0" });
    p.lora.targets.forEach((t, i) => {
      if (!ALLOWED_TARGETS.includes(t)) {
        issues.push({
          path: ["lora", "targets", i],
          message: `unknown target ${JSON.stringify(t)}; allowed: ${ALLOWED_TARGETS.join(", ")}`,
        });
      }
    });
    if (p.packing && p.lossNorm === "example") {
      issues.push({
        path: ["packing"],
        message:
          "packing needs lossNorm: token (a packed window's loss is a mean over its tokens, so examples cannot be weighed one by one)",
      });
    }
  }
  return issues;
}

interface Summary {
  first_loss: number | null;
  last_loss: number | null;
  min_loss: number | null;
  steps: number;
  tokens: number;
  resumed_from_step: number;
  dropped: number;
  truncated: number;
  [k: string]: unknown;
}

async function runLora(
  ctx: StageContext<FinetuneParams>,
  b: LlamaBinaries,
  model: string,
  data: string,
  fingerprint: string,
) {
  const p = ctx.params;
  const ckpt = join(ctx.scratch, "checkpoints");
  mkdirSync(ckpt, { recursive: true });
  const summaryPath = join(ctx.out, "summary.json");
  const threads = llamaThreads(p.threads, ctx.resources.cpu);
  const args = [
    "--model", model,
    "--data", data,
    "--out", join(ctx.out, "adapter.gguf"),
    "--metrics", join(ctx.out, "metrics.jsonl"),
    "--summary", summaryPath,
    "--checkpoint-dir", ckpt,
    "--checkpoint-every", String(p.checkpointEvery),
    "--rank", String(p.lora.rank),
    "--alpha", String(p.lora.alpha),
    "--targets", p.lora.targets.join(","),
    "--seed", String(p.lora.seed),
    "--lr", String(p.lr),
    "--warmup", String(p.warmup),
    "--decay", p.decay,
    "--weight-decay", String(p.weightDecay),
    "--epochs", String(p.epochs),
    "--batch", String(p.batch),
    "--max-seq-len", String(p.maxSeqLen),
    "--overlong", p.overlong,
    "--masking", p.masking ? "on" : "off",
    "--threads", String(threads),
    "--ctx", String(p.ctx),
    "--device", p.device,
    "--loss-norm", p.lossNorm,
    "--packing", p.packing ? "on" : "off",
    "--checkpointing", p.checkpointing === "auto" ? "auto" : p.checkpointing ? "on" : "off",
    // the GPUs the engine assigned: the layers are split over them (0: the CPU)
    ...(p.device === "cpu" || cpuBuild(b) ? [] : ["--gpus", String(ctx.resources.gpu)]),
    // checkpoints belong to this model and data, wherever the engine puts them
    "--fingerprint", fingerprint,
  ]; // prettier-ignore
  const t0 = Date.now();
  await run2(ctx, join(b.bin, "valley-lora"), args, b, (line) => {
    const m = /step (\d+)\/(\d+) .*loss ([\d.]+)/.exec(line);
    if (m) ctx.progress(Number(m[1]), Number(m[2]), `loss ${m[3]}`);
  });
  const s = JSON.parse(readFileSync(summaryPath, "utf8")) as Summary;
  // The throughput this run measured, kept in its action record for later estimates.
  const { trainMeasurement } = await import("./estimate.js");
  const { dimsFromGguf } = await import("../../llama/dims.js");
  const device = p.device === "cpu" || cpuBuild(b) || ctx.resources.gpu === 0 ? "cpu" : "gpu";
  const steps: number[] = [];
  try {
    for (const line of readFileSync(join(ctx.out, "metrics.jsonl"), "utf8").split("\n"))
      if (line.trim()) steps.push(Number((JSON.parse(line) as { seconds?: number }).seconds));
  } catch {
    // no per-step seconds: the rate then includes the first step
  }
  const measured = trainMeasurement(
    s,
    await dimsFromGguf(model).catch(() => undefined),
    device,
    threads,
    (Date.now() - t0) / 1000,
    steps.every((x) => Number.isFinite(x)) ? steps : [],
  );
  return { metrics: pick(s), measured: measured ? [measured] : [] };
}

function pick(s: Summary) {
  return {
    first_loss: s.first_loss,
    last_loss: s.last_loss,
    min_loss: s.min_loss,
    steps: s.steps,
    tokens: s.tokens,
    resumed_from_step: s.resumed_from_step,
    dropped: s.dropped,
    truncated: s.truncated,
  };
}

/** Upstream llama-finetune on the chats rendered to text; one metrics row per epoch. */
async function runFull(
  ctx: StageContext<FinetuneParams>,
  b: LlamaBinaries,
  model: string,
  data: string,
) {
  const p = ctx.params;
  const text = join(ctx.scratch, "train.txt");
  await run2(
    ctx,
    join(b.bin, "valley-lora"),
    ["--model", model, "--data", data, "--render-text", text],
    b,
  );
  const n = p.ctx > 0 ? p.ctx : 512;
  const threads = llamaThreads(p.threads, ctx.resources.cpu);
  const rows: Record<string, number>[] = [];
  const t0 = Date.now();
  let last = t0;
  const args = [
    "-m", model, "-f", text, "-o", join(ctx.out, "model.gguf"),
    "-c", String(n), "-b", String(n), "-ub", String(n),
    "-lr", String(p.lr), "-wd", String(p.weightDecay), "-epochs", String(p.epochs),
    "-opt", "adamw", "-val-split", "0", "-t", String(threads), "-ngl", p.device === "cpu" ? "0" : "999",
  ]; // prettier-ignore
  await run2(ctx, join(b.bin, "llama-finetune"), args, b, (line) => {
    if (!line.includes("train:")) return;
    const losses = [...line.matchAll(/data=(\d+)\/(\d+) loss=([\d.]+)/g)];
    const m = losses[losses.length - 1];
    // one progress line per window; the epoch's running mean is final on its last window
    if (!m || m[1] !== m[2]) return;
    const now = Date.now();
    const epoch = rows.length + 1;
    // llama-finetune reports windows of n tokens, every token a target
    rows.push({
      step: epoch,
      epoch,
      loss: Number(m[3]),
      lr: p.lr,
      tokens: Number(m[2]) * n,
      seconds: (now - last) / 1000,
    });
    last = now;
    ctx.progress(epoch, p.epochs, `loss ${m[3]}`);
  });
  writeFileSync(
    join(ctx.out, "metrics.jsonl"),
    rows.map((r) => JSON.stringify(r)).join("\n") + (rows.length ? "\n" : ""),
  );
  const losses = rows.map((r) => r.loss);
  const s: Summary = {
    first_loss: losses[0] ?? null,
    last_loss: losses[losses.length - 1] ?? null,
    min_loss: losses.length ? Math.min(...losses) : null,
    steps: rows.length,
    tokens: rows.reduce((a, r) => a + r.tokens, 0),
    resumed_from_step: 0,
    dropped: 0,
    truncated: 0,
    train_seconds: (Date.now() - t0) / 1000,
  };
  writeFileSync(join(ctx.out, "summary.json"), JSON.stringify(s, null, 2) + "\n");
  return pick(s);
}

/** Total memory of the first n GPUs in bytes (nvidia-smi), or undefined when it cannot be read. */
function gpuMemory(n: number): number | undefined {
  const r = spawnSync("nvidia-smi", ["--query-gpu=memory.total", "--format=csv,noheader,nounits"], {
    encoding: "utf8",
    timeout: 10_000,
  });
  if (r.status !== 0 || !r.stdout) return undefined;
  const mib = r.stdout.trim().split("\n").map(Number).slice(0, n);
  if (mib.length < n || mib.some((x) => !Number.isFinite(x))) return undefined;
  return mib.reduce((a, b) => a + b, 0) * 2 ** 20;
}

/**
 * Before queueing: does the run fit the memory it may use? On the CPU that is
 * resources.memory; on GPUs their memory (when nvidia-smi can tell; the trainer
 * checks the GPUs' free memory again when it starts). The estimate is the
 * memory model's (memory.ts) for the longest window maxSeqLen (or ctx) allows.
 */
export async function admitLora(ctx: AdmitContext<FinetuneParams>): Promise<string[]> {
  const p = ctx.params;
  if (p.method !== "lora") return [];
  let from: InputArtifact;
  try {
    from = ctx.input("from");
  } catch {
    return []; // run() reports it
  }
  const model = join(from.path, "model.gguf");
  if (!existsSync(model)) return [];
  const shape = shapeFromGguf(await inspectGguf(model));
  const onGpu = p.device !== "cpu" && ctx.resources.gpu > 0;
  const cfg = {
    window: p.ctx > 0 ? p.ctx : p.maxSeqLen - 1,
    rank: p.lora.rank,
    targets: p.lora.targets,
    batch: p.batch,
    checkpointing: checkpointingOn(p),
    // auto: the suggested shorter windows are judged as valley-lora would run them
    checkpointFrom: p.checkpointing === "auto" ? CHECKPOINT_FROM : undefined,
    // valley-lora's --flash-attn auto: on for a CPU run, and on GPUs for the head sizes CUDA runs both passes for
    flashAttention: flashAttentionAuto(onGpu, shape),
  };
  // on CUDA, OUT_PROD (the backward through a frozen matrix) takes F32, F16, BF16 (patch 0009)
  const cudaless = shape.matrixTypes.filter((t) => !["f32", "f16", "bf16"].includes(t));
  if (onGpu && cudaless.length)
    return [
      `the base's weight matrices are ${cudaless.join(", ")}: on the GPU the backward pass takes F32, F16 and BF16 weights only; ` +
        "convert the base (llama-quantize --allow-requantize base.gguf base-bf16.gguf BF16) or set device: cpu",
    ];
  const limit = onGpu ? gpuMemory(ctx.resources.gpu) : ctx.resources.memory * 2 ** 20;
  if (limit === undefined || !(limit > 0)) return [];
  const where = onGpu ? `of ${ctx.resources.gpu} GPU(s)` : "of resources.memory";
  const problem = fitProblem(shape, cfg, limit, where, { checkpointingAvailable: true });
  return problem ? [`the fine-tune does not fit: ${problem}`] : [];
}

const finetune: StageKind<FinetuneParams> = {
  kind: "finetune",
  // 2: exact gradients through attention (K/V bypass the cache), seven targets,
  // lossNorm, packing; the trainer runs on the GPUs the engine assigns
  // (resources.gpu; none: the CPU). 3: flash attention with a recomputing
  // backward pass on the CPU, activation checkpointing (`checkpointing`)
  version: "3",
  tools: ["llama"],
  resources(p) {
    return { cpu: p.threads > 0 ? p.threads : 2, memory: 2048 };
  },
  check: checkParams,
  admit: admitLora,
  estimate: async (ctx) => (await import("./estimate.js")).estimateFinetune(ctx),
  calibrate: async (ctx) => (await import("./calibrate.js")).calibrateTrainer(ctx),
  async run(ctx) {
    const issues = checkParams(ctx.params);
    if (issues.length)
      throw new BadStageInput(issues.map((i) => `${i.path.join(".")}: ${i.message}`).join("; "));
    const from = ctx.input("from");
    const dataIn = ctx.input("data");
    const model = join(from.path, "model.gguf");
    const data = join(dataIn.path, "train.jsonl");
    if (!existsSync(model))
      throw new BadStageInput(
        `input \`from\` (${from.id}) has no model.gguf (an adapter must be merged first: the merge stage)`,
      );
    if (!existsSync(data))
      throw new BadStageInput(`input \`data\` (${dataIn.id}) has no train.jsonl`);
    const b = resolveBinaries(ctx);
    if (ctx.params.method === "full") return { metrics: await runFull(ctx, b, model, data) };
    return await runLora(ctx, b, model, data, `${from.digest}+${dataIn.digest}`);
  },
};

export default finetune;
