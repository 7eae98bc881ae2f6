/**
 * The vocabulary stage kinds share for `valley plan --estimate`: ranges, what
 * an upstream output is expected to hold (`Estimate.output`), model
 * dimensions, and picking the closest throughput measurement. The engine sees
 * none of this: it sums hours, dollars and tokens and prints the rest.
 */
import type { Measurement, Range, StageInput } from "../engine/stage-api.js";
import type { HeaderDims } from "../llama/gguf.js";

/** What a stage's output is expected to hold (`Estimate.output`). */
export interface Expected {
  /** Records in the output (problems, traces, examples). */
  records?: Range;
  /** Mean prompt and completion tokens per record (traces, training examples). */
  promptTokens?: Range;
  completionTokens?: Range;
  /** Mean characters per record (prompt turns and answer), for a student's own vocabulary. */
  chars?: Range;
  /** Characters of the longest record. */
  maxChars?: number;
  /** The longest records by characters, longest first (when asked for: tracesInput's `longest`). */
  longest?: unknown[];
  /** Words for the numbers above, carried into downstream bases. */
  basis?: string;
  /** A model output: its dimensions. */
  model?: ModelDims;
  /**
   * Mean characters of each record's answer (its last assistant turn, or a
   * trace's text): for a model fine-tuned on the records, what it learnt to
   * answer, carried through merge and quantize to an evaluation's estimate.
   */
  answerChars?: Range;
  /** Words for answerChars, carried into downstream bases. */
  answerBasis?: string;
  /** A model output with random weights, never trained (the model stage's random source). */
  untrained?: boolean;
}

/** A model's dimensions, enough for memory, FLOPs and bytes per token. */
export interface ModelDims extends HeaderDims {
  /** Type of the weight matrices as stored: "f32", "f16", "bf16", "q8_0", … */
  weightType: string;
  /** Where the dimensions came from, in words (a GGUF header, a shape: hint, a known model). */
  source: string;
}

export const range = (lo: number, hi = lo): Range => [lo, hi];
export const scale = (r: Range, k: number): Range => [r[0] * k, r[1] * k];
export const add = (a: Range, b: Range): Range => [a[0] + b[0], a[1] + b[1]];
export const mul = (a: Range, b: Range): Range => [a[0] * b[0], a[1] * b[1]];
/** A rate applied to an amount: low amount at the high rate, high amount at the low rate. */
export const divide = (amount: Range, rate: Range): Range => [
  amount[0] / rate[1],
  amount[1] / rate[0],
];

/** One expected output, whether the input is one artifact or a list of them (summed). */
export function expectedOf(
  e: Record<string, unknown> | Record<string, unknown>[] | undefined,
): Expected | undefined {
  if (e === undefined) return undefined;
  if (!Array.isArray(e)) return e as Expected;
  const list = e as Expected[];
  if (list.length === 0) return undefined;
  const records = list.every((x) => x.records)
    ? list.reduce<Range>((a, x) => add(a, x.records!), [0, 0])
    : undefined;
  return { ...list[0], records };
}

/** The folder of an input that exists (one artifact), or undefined. */
export function inputPath(input: StageInput | undefined): string | undefined {
  if (input === undefined) return undefined;
  if (Array.isArray(input)) return input.length === 1 ? input[0].path : undefined;
  return input.path;
}

/** Bytes per weight of a ggml type name (Q-types per their block layout). */
export function bytesPerWeight(type: string): number {
  const t = type.toLowerCase();
  const table: Record<string, number> = {
    f32: 4,
    f16: 2,
    bf16: 2,
    q8_0: 34 / 32,
    q6_k: 210 / 256,
    q5_k_m: 176 / 256,
    q5_k: 176 / 256,
    q4_k_m: 144 / 256,
    q4_k: 144 / 256,
    q4_0: 18 / 32,
  };
  return table[t] ?? 4;
}

/** Weights of the matrices (embedding and output included). */
export function matrixParams(d: ModelDims): number {
  const perLayer = d.nEmbd * d.nEmbdQ * 2 + d.nEmbd * d.nEmbdKv * 2 + 3 * d.nEmbd * d.nFf;
  return d.nLayer * perLayer + 2 * d.nEmbd * d.nVocab;
}

export function weightBytes(d: ModelDims): number {
  return matrixParams(d) * bytesPerWeight(d.weightType);
}

/**
 * FLOPs per trained token of a LoRA run: the forward (2 per weight) and the
 * backward through the frozen weights to the activations (2 more; no weight
 * gradients but LoRA's), plus attention over a window of `seq` tokens
 * (forward and backward, causal: half of the QKᵀ and AV products).
 */
export function trainFlopsPerToken(d: ModelDims, seq: number): number {
  const dense = 4 * (matrixParams(d) - d.nEmbd * d.nVocab); // the embedding is a lookup
  const attention = 3 * 2 * d.nLayer * d.nEmbdQ * seq;
  return dense + attention;
}

/** FLOPs per generated token (forward only) at a context of `ctx` tokens. */
export function generateFlopsPerToken(d: ModelDims, ctx: number): number {
  return 2 * (matrixParams(d) - d.nEmbd * d.nVocab) + 2 * d.nLayer * d.nEmbdQ * ctx;
}

/**
 * Shapes of the models the study uses and their relatives, from their
 * published configs: a plan can estimate before the GGUF is downloaded.
 */
export const KNOWN_MODELS: Record<string, Omit<ModelDims, "weightType" | "source">> = {
  "qwen2.5-0.5b": dims("qwen2", 24, 896, 14, 2, 64, 4864, 151936),
  "qwen2.5-1.5b": dims("qwen2", 28, 1536, 12, 2, 128, 8960, 151936),
  "qwen2.5-3b": dims("qwen2", 36, 2048, 16, 2, 128, 11008, 151936),
  "qwen2.5-7b": dims("qwen2", 28, 3584, 28, 4, 128, 18944, 152064),
  "qwen2.5-14b": dims("qwen2", 48, 5120, 40, 8, 128, 13824, 152064),
  "qwen2.5-32b": dims("qwen2", 64, 5120, 40, 8, 128, 27648, 152064),
  "llama-3.2-1b": dims("llama", 16, 2048, 32, 8, 64, 8192, 128256),
  "llama-3.2-3b": dims("llama", 28, 3072, 24, 8, 128, 8192, 128256),
  "llama-3.1-8b": dims("llama", 32, 4096, 32, 8, 128, 14336, 128256),
  "llama-3.1-70b": dims("llama", 80, 8192, 64, 8, 128, 28672, 128256),
};

function dims(
  arch: string,
  nLayer: number,
  nEmbd: number,
  nHead: number,
  nHeadKv: number,
  headDim: number,
  nFf: number,
  nVocab: number,
): Omit<ModelDims, "weightType" | "source"> {
  return {
    arch,
    nLayer,
    nEmbd,
    nHead,
    nHeadKv,
    nEmbdQ: nHead * headDim,
    nEmbdKv: nHeadKv * headDim,
    nFf,
    nVocab,
  };
}

/**
 * A known model named in a path or URI ("…/Qwen2.5-7B-Instruct-F32.gguf"),
 * its weight type from the file name's suffix (F32 when none).
 */
export function knownModel(name: string): ModelDims | undefined {
  const base = name.toLowerCase().replace(/\\/g, "/").split("/").pop() ?? "";
  const flat = base.replace(/[_\s]/g, "-");
  const match = Object.keys(KNOWN_MODELS)
    .sort((a, b) => b.length - a.length)
    .find((k) => flat.includes(k));
  if (!match) return undefined;
  const type = /(?:^|[-.])(f32|f16|bf16|q8-0|q6-k|q5-k-m|q4-k-m|q4-0)(?:\.gguf)?$/.exec(
    flat.replace(/\.gguf$/, ""),
  );
  return {
    ...KNOWN_MODELS[match],
    weightType: type ? type[1].replace(/-/g, "_") : "f32",
    source: `known model ${match} (from the name ${base})`,
  };
}

/** A measurement's shape as stored (numbers only), from dims. */
export function shapeRecord(d: ModelDims): Record<string, number | string> {
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
    weightType: d.weightType,
  };
}

function sameShape(a: Record<string, number | string> | undefined, d: ModelDims): boolean {
  if (!a) return false;
  return (["nLayer", "nEmbd", "nHead", "nHeadKv", "nFf", "nVocab", "weightType"] as const).every(
    (k) => a[k] === d[k],
  );
}

export interface Rate {
  /** Tokens per second, low and high. */
  tokensPerS: Range;
  basis: string;
  measurement?: Measurement;
}

/**
 * The closest measurement of `what` on `device` ("cpu" or "gpu"): the same
 * shape (and threads) when there is one, else the nearest in FLOPs per token,
 * scaled by the FLOPs ratio. Measured on a run → "measured", by valley
 * calibrate → "calibrated". The spread widens as the evidence weakens.
 */
export function closestRate(
  measured: Measurement[],
  opts: {
    what: string;
    device: "cpu" | "gpu";
    dims: ModelDims;
    /** FLOPs per token of a shape (the scaling law between shapes); `m` the measurement's own record, absent for the target. */
    flops: (d: ModelDims, m?: Measurement) => number;
    threads?: number;
    /** Extra fields that should match (e.g. parallel slots), preferred but not required. */
    prefer?: Record<string, unknown>;
  },
): Rate | undefined {
  const candidates = measured.filter(
    (m) =>
      m.what === opts.what &&
      typeof m.tokens_per_s === "number" &&
      m.tokens_per_s > 0 &&
      m.device.split(":")[0] === opts.device,
  );
  if (candidates.length === 0) return undefined;
  const target = opts.flops(opts.dims);
  const score = (m: Measurement) => {
    const d = m.shape ? (m.shape as unknown as ModelDims) : undefined;
    const shapeDist = sameShape(m.shape, opts.dims)
      ? 0
      : d
        ? Math.abs(Math.log(opts.flops(d, m) / target)) + 1
        : 10;
    const threadDist =
      opts.threads && typeof m.threads === "number"
        ? Math.abs(Math.log(m.threads / opts.threads))
        : 0;
    const preferDist = Object.entries(opts.prefer ?? {}).filter(([k, v]) => m[k] !== v).length;
    return shapeDist * 10 + threadDist + preferDist * 0.5;
  };
  // newest first on ties: a later measurement knows today's machine and trainer
  const best = candidates.reduce((a, b) => (score(b) < score(a) ? b : a));
  const how = String(best.source ?? "").startsWith("calibrate") ? "calibrated" : "measured";
  const rate = best.tokens_per_s as number;
  const where = `${best.device}${typeof best.threads === "number" ? `, ${best.threads} threads` : ""}`;
  const exact = Object.entries(opts.prefer ?? {}).every(([k, v]) => best[k] === v);
  if (sameShape(best.shape, opts.dims) && exact) {
    return {
      tokensPerS: [rate / 1.25, rate * 1.25],
      basis: `${how}: ${rate.toFixed(1)} tokens/s on this shape (${where}; ${best.source ?? "a past run"})`,
      measurement: best,
    };
  }
  const from = best.shape as unknown as ModelDims | undefined;
  if (!from) return undefined;
  const k = opts.flops(from, best) / target;
  return {
    tokensPerS: [(rate * k) / 2, rate * k * 1.5],
    basis:
      `${how}: ${rate.toFixed(1)} tokens/s on ${sameShape(best.shape, opts.dims) ? "this shape" : `a ${from.nLayer}-layer ${from.nEmbd}-wide model`}` +
      `${
        Object.keys(opts.prefer ?? {}).length
          ? ` with ${Object.keys(opts.prefer ?? {})
              .map((k) => `${k} ${String(best[k])}`)
              .join(", ")}`
          : ""
      } (${where}; ${best.source ?? "a past run"}), ` +
      `scaled by FLOPs per token (×${k.toPrecision(3)}; assumed proportional)`,
    measurement: best,
  };
}

/** Hours as text: "0.2 h", "35 min", "12 s". */
export function fmtHours(h: number): string {
  const s = h * 3600;
  if (s < 90) return `${s.toFixed(0)} s`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min`;
  return `${h.toFixed(h < 10 ? 1 : 0)} h`;
}

/**
 * Mean characters per record of a traces or training file (prompt turns plus
 * the answer), over its first `limit` records: what a downstream estimate
 * turns into tokens with its own model's vocabulary.
 */
export async function charsPerRecord(
  file: string,
  limit = 20000,
  /** Keep this many of the longest records by characters (longest first). */
  keepLongest = 0,
): Promise<
  | {
      records: number;
      meanChars: number;
      /** Mean characters of the answer: the last assistant turn, else `text`. */
      meanAnswerChars: number;
      maxChars: number;
      complete: boolean;
      longest: unknown[];
    }
  | undefined
> {
  const { readJsonl } = await import("./jsonl.js");
  let records = 0;
  let total = 0;
  let answers = 0;
  let maxChars = 0;
  let complete = true;
  const top: { c: number; value: unknown }[] = [];
  for await (const { value } of readJsonl<{
    messages?: { role?: string; content: string }[];
    text?: string;
  }>(file)) {
    if (records >= limit) {
      complete = false;
      break;
    }
    records++;
    const c =
      (value.messages ?? []).reduce((a, m) => a + (m.content?.length ?? 0), 0) +
      (value.text?.length ?? 0);
    total += c;
    const last = [...(value.messages ?? [])].reverse().find((m) => m.role === "assistant");
    answers += last ? (last.content?.length ?? 0) : (value.text?.length ?? 0);
    maxChars = Math.max(maxChars, c);
    if (keepLongest > 0 && (top.length < keepLongest || c > top[top.length - 1].c)) {
      top.push({ c, value });
      top.sort((a, b) => b.c - a.c);
      if (top.length > keepLongest) top.pop();
    }
  }
  const longest = top.map((t) => t.value);
  return records
    ? {
        records,
        meanChars: total / records,
        meanAnswerChars: answers / records,
        maxChars,
        complete,
        longest,
      }
    : undefined;
}

/** Characters per token of a model's vocabulary: 1 for a character-level one (valley's random models). */
export function charsPerToken(d: ModelDims | undefined): { range: Range; basis: string } {
  if (d && d.nVocab > 0 && d.nVocab < 1000)
    return {
      range: [1, 1],
      basis: `a ${d.nVocab}-token vocabulary is character-level: about one character a token`,
    };
  return { range: [3, 4.5], basis: "assumed: 3-4.5 characters a token (BPE on English and code)" };
}

/** The model dims of an input: its GGUF header when the artifact exists, else what its producer expects. */
export async function modelInput(
  input: StageInput | undefined,
  expected: Record<string, unknown> | Record<string, unknown>[] | undefined,
): Promise<ModelDims | undefined> {
  const dir = inputPath(input);
  if (dir) {
    const { existsSync } = await import("node:fs");
    const { join } = await import("node:path");
    const file = join(dir, "model.gguf");
    if (existsSync(file)) return (await import("../llama/dims.js")).dimsFromGguf(file);
  }
  return expectedOf(expected)?.model;
}

/**
 * What a model still to be made was fine-tuned to answer (`answerChars`), from
 * its producer's expectation: one artifact's, or a list of exactly one (a
 * merge of several adapters learnt several things).
 */
export function trainedAnswers(
  ...expected: (Record<string, unknown> | Record<string, unknown>[] | undefined)[]
): Pick<Expected, "answerChars" | "answerBasis"> | undefined {
  for (const e of expected) {
    const one = (Array.isArray(e) ? (e.length === 1 ? e[0] : undefined) : e) as
      Expected | undefined;
    if (one?.answerChars) return { answerChars: one.answerChars, answerBasis: one.answerBasis };
  }
  return undefined;
}

/**
 * A stage that rewrites a model file (merge, quantize): reading and writing
 * its weights at an assumed 100-500 MB/s. `carry`: what the input model was
 * (fine-tuned to answer, or never trained), passed on to its evaluations' estimates.
 */
export function rewriteEstimate(
  d: ModelDims | undefined,
  out: ModelDims | undefined,
  carry: Pick<Expected, "answerChars" | "answerBasis" | "untrained"> = {},
) {
  const bytes = d ? weightBytes(d) + (out ? weightBytes(out) : 0) : undefined;
  return {
    // plus 0.02-5 s of starting the program and loading (a small model's
    // merge took 0.1 s in test/bench/estimate.mjs, its quantization 0.05 s)
    hours: (bytes
      ? [(0.02 + bytes / 500e6) / 3600, (5 + bytes / 100e6) / 3600]
      : [0, 0.5]) as Range,
    device: "cpu" as const,
    usd: null,
    basis: {
      hours: bytes
        ? `assumed: ${(bytes / 1e9).toPrecision(3)} GB read and written at 100-500 MB/s, plus 0.02-5 s to start`
        : "assumed: up to half an hour (the model's size is unknown)",
    },
    output: { model: out, ...carry } as Record<string, unknown>,
  };
}

/** What a traces-like input holds: measured from its file when it exists, else its producer's expectation. */
export async function tracesInput(
  input: StageInput | undefined,
  expected: Record<string, unknown> | Record<string, unknown>[] | undefined,
  file = "traces.jsonl",
  /** Also keep this many of the longest records by characters (`Expected.longest`). */
  longest = 0,
): Promise<Expected | undefined> {
  const dir = inputPath(input);
  if (dir) {
    const { existsSync } = await import("node:fs");
    const { join } = await import("node:path");
    const f = join(dir, file);
    if (!existsSync(f)) return undefined;
    const m = await charsPerRecord(f, 20000, longest);
    if (!m) return { records: [0, 0], basis: `measured: ${f} is empty` };
    return {
      records: m.complete ? [m.records, m.records] : [m.records, Infinity],
      chars: [m.meanChars, m.meanChars],
      answerChars: [m.meanAnswerChars, m.meanAnswerChars],
      answerBasis: `measured: mean ${m.meanAnswerChars.toFixed(0)} characters an answer over ${m.complete ? "all" : "the first"} ${m.records} records of ${file}`,
      maxChars: m.maxChars,
      longest: longest > 0 ? m.longest : undefined,
      basis: `measured: mean ${m.meanChars.toFixed(0)} characters per record over ${m.complete ? "all" : "the first"} ${m.records} records of ${file}`,
    };
  }
  return expectedOf(expected);
}
