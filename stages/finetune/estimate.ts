/**
 * What a LoRA fine-tune would cost: windows of training (valley-lora puts one
 * example in a window as long as the longest example, rounded up to 256
 * tokens, unless `packing`), the trainer's measured throughput in window
 * tokens per second for the closest shape, window and device, and the peak
 * memory from the trainer's memory model (memory.ts) against the memory the
 * instance may use.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { Estimate, EstimateContext, Measurement, Range } from "../../engine/stage-api.js";
import {
  charsPerToken,
  closestRate,
  inputPath,
  matrixParams,
  modelInput,
  shapeRecord,
  tracesInput,
  trainFlopsPerToken,
  type Expected,
  type ModelDims,
} from "../../data/estimate.js";
import { estimateMemory, flashAttentionAuto, windowFor, type ModelShape } from "./memory.js";
import { CHECKPOINT_FROM, checkpointingOn, type FinetuneParams } from "./index.js";
import { llamaThreads } from "../../llama/toolchain.js";

/** Tokens of chat scaffolding per example (role headers, BOS/EOS), beyond the text: ChatML's two turns are ~21. */
const TEMPLATE_TOKENS: Range = [8, 24];
const TEMPLATE_MID = (TEMPLATE_TOKENS[0] + TEMPLATE_TOKENS[1]) / 2;
/**
 * FLOP/s of valley-lora when nothing is measured: CPU per thread; GPU from the
 * README's H200 figure (8,458 tokens/s for a Qwen2.5-0.5B shape, F32, r=16,
 * sequence 2,048: about 2e13 FLOP/s by trainFlopsPerToken), halved and doubled.
 */
const ASSUMED_FLOPS: Record<"cpu" | "gpu", Range> = { cpu: [2e9, 2e10], gpu: [1e13, 4e13] };

/** A ModelShape for the memory model from dimensions (the llama/qwen2 block layout). */
export function shapeOf(d: ModelDims): ModelShape {
  const matrices = new Map<string, [number, number]>();
  for (let l = 0; l < d.nLayer; l++) {
    const b = `blk.${l}`;
    matrices.set(`${b}.attn_q.weight`, [d.nEmbd, d.nEmbdQ]);
    matrices.set(`${b}.attn_k.weight`, [d.nEmbd, d.nEmbdKv]);
    matrices.set(`${b}.attn_v.weight`, [d.nEmbd, d.nEmbdKv]);
    matrices.set(`${b}.attn_output.weight`, [d.nEmbdQ, d.nEmbd]);
    matrices.set(`${b}.ffn_gate.weight`, [d.nEmbd, d.nFf]);
    matrices.set(`${b}.ffn_up.weight`, [d.nEmbd, d.nFf]);
    matrices.set(`${b}.ffn_down.weight`, [d.nFf, d.nEmbd]);
  }
  matrices.set("token_embd.weight", [d.nEmbd, d.nVocab]);
  matrices.set("output.weight", [d.nEmbd, d.nVocab]);
  const params = matrixParams(d);
  const bytes = { f32: 4, f16: 2, bf16: 2 }[d.weightType] ?? 34 / 32;
  return {
    arch: d.arch,
    nLayer: d.nLayer,
    nEmbd: d.nEmbd,
    nHead: d.nHead,
    nHeadKv: d.nHeadKv,
    nEmbdQ: d.nEmbdQ,
    nEmbdKv: d.nEmbdKv,
    nFf: d.nFf,
    nVocab: d.nVocab,
    weightBytes: params * bytes,
    halfWeightBytes: params * Math.min(bytes, 2),
    matrixTypes: [d.weightType],
    matrices,
  };
}

/** The student's GGUF when its artifact exists. */
export function studentGguf(input: Parameters<typeof inputPath>[0]): string | undefined {
  const dir = inputPath(input);
  return dir ? join(dir, "model.gguf") : undefined;
}

/** Where the trainer runs: the CPU for device: cpu, a CPU build, or no GPU reserved. */
export function trainDevice(
  p: FinetuneParams,
  gpus: number,
  llamaDir: string | undefined,
): "cpu" | "gpu" {
  if (p.device === "cpu" || gpus === 0) return "cpu";
  if (llamaDir) {
    try {
      const info = JSON.parse(readFileSync(join(llamaDir, "build.json"), "utf8")) as {
        backend?: string;
      };
      if (info.backend === "cpu") return "cpu";
    } catch {
      // a build of the user's own: assume it uses the GPU it was given
    }
  }
  return "gpu";
}

/** The trainer's FLOPs per window token at window `w` (the scaling between measured shapes). */
export const windowFlops = (w: number) => (d: ModelDims, m?: Measurement) =>
  trainFlopsPerToken(d, typeof m?.window === "number" ? m.window : w);

/**
 * FLOPs of one window of `w` tokens holding `l` tokens of examples, the rest
 * padding (one sequence of its own): the dense layers on every token, and,
 * with flash attention (whose kernels skip what the mask rules out),
 * attention on the causal pairs within each sequence only: l² + (w−l)² of
 * the w² pairs for one example per window. Without flash attention every
 * pair is computed. At l = w it is w × trainFlopsPerToken(d, w).
 */
export function filledWindowFlops(d: ModelDims, w: number, l: number, flash: boolean): number {
  const full = trainFlopsPerToken(d, w) * w;
  if (!flash) return full;
  const k = Math.min(Math.max(l, 1), w);
  const attention = 3 * 2 * d.nLayer * d.nEmbdQ; // per causal pair, forward and backward, as trainFlopsPerToken
  return full - attention * w * w + attention * (k * k + (w - k) * (w - k));
}

/** How many of the longest examples (by characters) are counted in the student's tokens. */
export const EXACT_LONGEST = 8;

/**
 * The longest example valley-lora will keep, in its own tokens: the
 * EXACT_LONGEST longest examples by characters counted as the trainer counts
 * them (tokens.ts), cut to maxSeqLen (overlong: truncate) or left out
 * (overlong: drop). A reason instead when it cannot be counted.
 */
export async function longestTokens(
  p: FinetuneParams,
  data: { longest?: unknown[] } | undefined,
  gguf: string | undefined,
): Promise<{ tokens: number; counted: number; template: string } | { reason: string }> {
  if (!data?.longest?.length) return { reason: "the training set is not there yet" };
  if (!gguf || !existsSync(gguf)) return { reason: "the student model is not there yet" };
  const { trainerCounter } = await import("./tokens.js");
  let counter: Awaited<ReturnType<typeof trainerCounter>>;
  try {
    counter = await trainerCounter(gguf);
  } catch (e) {
    return {
      reason: `its vocabulary could not be loaded (${(e as Error).message.split("\n")[0]})`,
    };
  }
  try {
    if (!counter.template)
      return { reason: "the student's chat template is not one counted here (chatml, llama3)" };
    let longest = 0;
    let counted = 0;
    for (const row of data.longest) {
      const n = counter.count(row);
      if (n === undefined) continue; // the trainer refuses it: the run fails anyway
      counted++;
      if (n > p.maxSeqLen && p.overlong === "drop") continue;
      longest = Math.max(longest, Math.min(n, p.maxSeqLen));
    }
    if (!counted) return { reason: "none of the longest examples is one the trainer takes" };
    // every counted example dropped: the kept ones are at most maxSeqLen
    if (longest === 0) longest = p.maxSeqLen;
    return { tokens: longest, counted, template: counter.template };
  } finally {
    await counter.dispose();
  }
}

/**
 * The windows valley-lora may use, low and high: ctx, else the longest
 * example in tokens (less one: its last token is only a label) rounded up to
 * 256. `exact`: the longest example's tokens as the trainer counts them
 * (longestTokens), which gives the window itself. Without it the longest
 * example's tokens are guessed from its characters, known to a few percent
 * (single-token specials such as <think>, byte-coded characters, the chat
 * template), so an example near a multiple of 256 gives two candidates.
 */
export function plannedWindows(
  p: FinetuneParams,
  data: { maxChars?: number } | undefined,
  dims: ModelDims | undefined,
  exact?: number,
): [number, number] {
  if (p.ctx > 0) return [windowFor(p.ctx), windowFor(p.ctx)];
  if (exact !== undefined) return [windowFor(exact - 1), windowFor(exact - 1)];
  if (!data?.maxChars) return [windowFor(p.maxSeqLen), windowFor(p.maxSeqLen)];
  const cpt = charsPerToken(dims).range;
  const cap = (t: number) => windowFor(Math.min(p.maxSeqLen, t) - 1);
  return [
    cap((0.97 * data.maxChars) / cpt[1] + TEMPLATE_TOKENS[0]),
    cap((1.03 * data.maxChars) / cpt[0] + TEMPLATE_TOKENS[1]),
  ];
}

/** The windows of a fine-tune and the words for them (estimate and calibrate share it). */
export async function windowsOf(
  p: FinetuneParams,
  data: Expected | undefined,
  dims: ModelDims | undefined,
  gguf: string | undefined,
): Promise<{ windows: [number, number]; basis: string; longestTokens?: number }> {
  const layout = p.packing ? "examples packed" : "one example per window";
  if (p.ctx > 0) {
    const w = windowFor(p.ctx);
    return { windows: [w, w], basis: `${w} tokens: ctx ${p.ctx} rounded up to 256, ${layout}` };
  }
  const exact = await longestTokens(p, data, gguf);
  if ("tokens" in exact) {
    const windows = plannedWindows(p, data, dims, exact.tokens);
    const cut = exact.tokens >= p.maxSeqLen ? `, cut to maxSeqLen ${p.maxSeqLen}` : "";
    return {
      windows,
      longestTokens: exact.tokens,
      basis:
        `${windows[0]} tokens: the longest example, ${exact.tokens} tokens as valley-lora counts them ` +
        `(${exact.template} template, the student's vocabulary; the ${exact.counted} longest by characters counted${cut}), ` +
        `less its last token, rounded up to 256, ${layout}`,
    };
  }
  const windows = plannedWindows(p, data, dims);
  const both = windows[0] === windows[1] ? `${windows[1]}` : `${windows[0]} or ${windows[1]}`;
  const why = "reason" in exact ? `; not counted in tokens: ${exact.reason}` : "";
  return {
    windows,
    basis: data?.maxChars
      ? `${both} tokens: the longest example (${data.maxChars} characters) rounded up to 256, guessed from its characters${windows[0] === windows[1] ? "" : " (it is near a multiple of 256)"}${why}, ${layout}`
      : `${windows[1]} tokens: maxSeqLen rounded up (the longest example is unknown), ${layout}`,
  };
}

export async function estimateFinetune(ctx: EstimateContext<FinetuneParams>): Promise<Estimate> {
  const p = ctx.params;
  const basis: Record<string, string> = {};
  const dims = await modelInput(ctx.inputs.from, ctx.expected.from);
  basis.shape = dims
    ? `${dims.source}: ${dims.nLayer} layers × ${dims.nEmbd}, ${dims.weightType}`
    : "unknown: the base model's shape (give the model stage a shape: hint)";
  const data = await tracesInput(ctx.inputs.data, ctx.expected.data, "train.jsonl", EXACT_LONGEST);
  const cpt = charsPerToken(dims);
  const examples = data?.records;
  if (!examples || !data?.chars) {
    basis.tokens = `unknown: ${data?.basis ?? "the training set is unknown"}`;
  }
  // tokens per example: characters at the vocabulary's rate plus the chat scaffolding, cut to maxSeqLen
  const cut = (t: number) => Math.min(t, p.maxSeqLen);
  const perExample: Range | undefined = data?.chars
    ? [
        cut(data.chars[0] / cpt.range[1] + TEMPLATE_MID),
        cut(data.chars[1] / cpt.range[0] + TEMPLATE_MID),
      ]
    : undefined;
  const planned = await windowsOf(p, data, dims, studentGguf(ctx.inputs.from));
  const windows = planned.windows;
  const window = windows[1];
  const training: Range | undefined =
    examples && perExample
      ? [examples[0] * perExample[0] * p.epochs, examples[1] * perExample[1] * p.epochs]
      : undefined;
  if (training && examples && perExample)
    basis.tokens = `${examples[0]} examples × ${perExample[0].toFixed(0)}-${perExample[1].toFixed(0)} tokens × ${p.epochs} epochs (${data?.basis ?? ""}; ${cpt.basis})`;
  // Compute: one window per example (padding included) per epoch, unless packed.
  const tokensAt = (w: number, i: 0 | 1): number | undefined =>
    examples
      ? p.packing && training
        ? Math.ceil(training[i] / w) * w
        : examples[i] * w * p.epochs
      : undefined;
  const windowTokens: Range | undefined = examples
    ? [tokensAt(windows[0], 0)!, tokensAt(windows[1], 1)!]
    : undefined;
  basis.window = planned.basis;

  const device = trainDevice(p, ctx.resources.gpu, inputPath(ctx.inputs.llama));
  const threads = llamaThreads(p.threads, ctx.resources.cpu);
  let hours: Range = [0, 0];
  if (dims && windowTokens) {
    // the low end at the low window, the high end at the high one, each at its own rate
    const at = (w: number) =>
      closestRate(ctx.measured, {
        what: "train",
        device,
        dims,
        flops: windowFlops(w),
        threads: device === "cpu" ? threads : undefined,
        prefer: { window: w },
      });
    const rates = [at(windows[0]), at(windows[1])];
    // A rate measured on windows filled to another length (calibrate's chats fill
    // theirs): scaled by the FLOPs of this fine-tune's windows, whose examples
    // (mean length) leave the rest padding. A record without its fill: as measured.
    const flash = flashAttentionAuto(device !== "cpu", dims);
    const fills: number[] = [];
    const ends = rates.map((rate, i) => {
      let tps: Range;
      let overhead: Range = [0, 0];
      if (rate) {
        tps = rate.tokensPerS;
        const ref = rate.measurement?.fill_tokens;
        const w = windows[i];
        if (typeof ref === "number" && ref > 0 && perExample && !p.packing) {
          const f =
            filledWindowFlops(dims, w, Math.min(w, perExample[i] - 1), flash) /
            filledWindowFlops(dims, w, Math.min(w, ref), flash);
          tps = [tps[0] / f, tps[1] / f];
          fills[i] = f;
        }
        const o = rate.measurement?.overhead_s;
        if (typeof o === "number") overhead = [o * 0.8, o * 1.25];
      } else {
        const f = ASSUMED_FLOPS[device];
        const k = device === "cpu" ? threads : Math.max(1, ctx.resources.gpu);
        const per = windowFlops(windows[i])(dims);
        tps = [(f[0] * k) / per, (f[1] * k) / per];
      }
      return i === 0
        ? (overhead[0] + windowTokens[0] / tps[1]) / 3600
        : (overhead[1] + windowTokens[1] / tps[0]) / 3600;
    });
    hours = [ends[0], ends[1]];
    const rate = rates[1];
    if (rate)
      basis.hours =
        `${rate.basis}; ${windowTokens[1].toExponential(2)} window tokens` +
        (fills[1] !== undefined
          ? `; its windows held ${Number(rate.measurement?.fill_tokens).toFixed(0)} tokens of examples, these ~${Math.min(window, (perExample?.[1] ?? 1) - 1).toFixed(0)} (the rest padding${flash ? ", whose attention flash attention skips" : ""}): ×${(1 / fills[1]).toPrecision(3)} the rate`
          : "");
    else {
      const f = ASSUMED_FLOPS[device];
      const per = windowFlops(window)(dims);
      basis.hours =
        `assumed: ${(f[0] / 1e9).toFixed(0)}-${(f[1] / 1e9).toFixed(0)} GFLOP/s per ${device === "cpu" ? "thread" : "GPU (an H200 measured ~20,000 for valley-lora, F32)"} ` +
        `at ${(per / 1e9).toPrecision(3)} GFLOP per window token (nothing measured: valley calibrate${device === "gpu" ? " --gpu" : ""})`;
    }
  } else basis.hours = "unknown: the model's shape or the training set is unknown";

  // Peak memory: the memory model at the window admission checks (maxSeqLen, or ctx).
  let peak: number | undefined;
  let fits: boolean | undefined;
  const extra: Record<string, unknown> = {};
  if (dims && p.method === "lora") {
    const cfg = {
      window: p.ctx > 0 ? p.ctx : p.maxSeqLen - 1,
      rank: p.lora.rank,
      targets: p.lora.targets,
      batch: p.batch,
      // as valley-lora will run it (and as admission checks it)
      checkpointing: checkpointingOn(p),
      checkpointFrom: p.checkpointing === "auto" ? CHECKPOINT_FROM : undefined,
      flashAttention: flashAttentionAuto(device !== "cpu", dims),
    };
    const est = estimateMemory(shapeOf(dims), cfg);
    peak = est.total;
    const limit =
      device === "cpu" ? ctx.resources.memory * 2 ** 20 : await gpuLimit(ctx.resources.gpu);
    if (limit !== undefined && limit > 0) fits = peak <= limit;
    basis.peak_memory = `the trainer's memory model (stages/finetune/memory.ts) at a window of ${est.window} (maxSeqLen, as admission checks it)`;
    basis.fits =
      limit === undefined
        ? `unknown: no GPU here to ask (nvidia-smi); ${(peak / 2 ** 30).toFixed(1)} GiB would ${peak <= 80 * 2 ** 30 ? "" : "not "}fit one 80 GiB GPU`
        : `${device === "cpu" ? "resources.memory" : `${ctx.resources.gpu} GPU(s)`}: ${(limit / 2 ** 30).toFixed(1)} GiB`;
  }
  if (windowTokens) extra.window_tokens = windowTokens;
  if (examples) extra.examples = examples;
  if (planned.longestTokens !== undefined) extra.longest_example_tokens = planned.longestTokens;
  return {
    hours,
    device,
    gpus: device === "gpu" ? Math.max(1, ctx.resources.gpu) : undefined,
    tokens: training ? { training } : undefined,
    usd: null,
    peak_memory_bytes: peak,
    fits,
    basis,
    extra,
    // what the student learns to answer, and (method full: a model) its shape,
    // for its evaluations' estimates
    output: {
      ...(p.method === "full" && dims
        ? { model: { ...dims, source: `fine-tuned from ${dims.source}` } }
        : {}),
      ...(data?.answerChars
        ? { answerChars: data.answerChars, answerBasis: data.answerBasis }
        : {}),
    },
  };
}

async function gpuLimit(n: number): Promise<number | undefined> {
  const { spawnSync } = await import("node:child_process");
  const r = spawnSync("nvidia-smi", ["--query-gpu=memory.total", "--format=csv,noheader,nounits"], {
    encoding: "utf8",
    timeout: 10_000,
  });
  if (r.status !== 0 || !r.stdout) return undefined;
  const mib = r.stdout.trim().split("\n").map(Number).slice(0, Math.max(1, n));
  if (mib.some((x) => !Number.isFinite(x))) return undefined;
  return mib.reduce((a, b) => a + b, 0) * 2 ** 20;
}

/** The measurement a finished LoRA run leaves in its action record. */
export function trainMeasurement(
  summary: Record<string, unknown>,
  dims: ModelDims | undefined,
  device: "cpu" | "gpu",
  threads: number,
  wallSeconds: number,
  /** Seconds of each step (metrics.jsonl), to tell the first step's set-up from the steady rate. */
  stepSeconds: number[] = [],
): Measurement | undefined {
  const secs = Number(summary.train_seconds);
  const windows = Number(summary.windows);
  const window = Number(summary.window);
  if (!(secs > 0) || !(windows > 0) || !(window > 0)) return undefined;
  // the first step builds and allocates the graphs: a cost per run, not per window
  let first = 0;
  if (stepSeconds.length >= 3) {
    const rest = stepSeconds.slice(1).sort((a, b) => a - b);
    first = Math.max(0, stepSeconds[0] - rest[Math.floor(rest.length / 2)]);
    if (first >= secs) first = 0;
  }
  return {
    what: "train",
    tokens_per_s: (windows * window) / (secs - first),
    window,
    threads: device === "cpu" ? threads : undefined,
    device,
    shape: dims ? shapeRecord(dims) : undefined,
    // loading the model, the first step's set-up, tokenising, writing the adapter: what the window rate leaves out
    overhead_s: Math.max(0, wallSeconds - secs) + first,
    first_step_s: first,
  };
}
