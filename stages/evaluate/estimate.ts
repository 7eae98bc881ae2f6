/**
 * What an evaluation would cost: answers still to generate (the request cache
 * knows which are answered once the model exists), generated tokens (measured
 * lengths when there are any, else up to max_tokens), hours at the managed
 * llama-server's measured throughput for the closest shape, device and slot
 * count, plus the sandbox's grading time.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Estimate, EstimateContext, Measurement, Range } from "../../engine/stage-api.js";
import {
  charsPerToken,
  closestRate,
  expectedOf,
  generateFlopsPerToken,
  inputPath,
  modelInput,
  shapeRecord,
  trainedAnswers,
  weightBytes,
  type ModelDims,
} from "../../data/estimate.js";
import { DEFAULT_PROMPT, renderPrompt } from "../../data/prompt.js";
import type { ChatAnswer } from "../../data/chat.js";
import type { Problem } from "../../grader/types.js";
import { loadEvalProblems, type EvaluateParams } from "./index.js";
import { llamaThreads } from "../../llama/toolchain.js";
import { untrainedModel } from "../../llama/model-info.js";

/** Memory bandwidth a decoding step streams the weights at, when nothing is measured. */
const ASSUMED_BANDWIDTH: Record<"cpu" | "gpu", Range> = { cpu: [5e9, 30e9], gpu: [1e12, 3e12] };
/** Sandbox seconds per graded sample, when nothing is measured. */
const ASSUMED_GRADE_S: Range = [0.05, 2];
/** Tokens of chat scaffolding around a prompt (role headers, BOS), beyond its text. */
const TEMPLATE_TOKENS = 16;

export const genFlops = (ctxTokens: number) => (d: ModelDims, m?: Measurement) =>
  generateFlopsPerToken(d, typeof m?.context === "number" ? m.context : ctxTokens);

export function evalDevice(p: EvaluateParams, gpus: number): "cpu" | "gpu" {
  return p.gpuLayers > 0 && gpus > 0 ? "gpu" : "cpu";
}

const mid = (r: Range) => (r[0] + r[1]) / 2;
const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

export async function estimateEvaluate(ctx: EstimateContext<EvaluateParams>): Promise<Estimate> {
  const p: EvaluateParams = ctx.params;
  const basis: Record<string, string> = {};
  const dims = await modelInput(ctx.inputs.model, ctx.expected.model);
  basis.shape = dims
    ? `${dims.source}: ${dims.nLayer} layers × ${dims.nEmbd}, ${dims.weightType}`
    : "unknown: the model's shape (give the model stage a shape: hint)";

  // Requests: problems × samples, less those the request cache has answered.
  let problems: Problem[] | undefined;
  const dir = inputPath(ctx.inputs.problems);
  if (dir && existsSync(join(dir, "problems.jsonl")))
    problems = (await loadEvalProblems(join(dir, "problems.jsonl"), p.split, p.limit, p.semantics))
      .problems;
  const upstream = expectedOf(ctx.expected.problems);
  let total: number | undefined;
  let toSend: number | undefined;
  let promptChars = 0;
  // characters every prompt begins with (the template's instructions): a slot
  // of llama-server keeps its last prompt and processes only what differs
  let sharedChars: number | undefined;
  let firstPrompt = "";
  const cachedLengths: number[] = [];
  if (problems) {
    total = problems.length * p.samples;
    toSend = total;
    const model = ctx.inputs.model;
    const adapter = ctx.inputs.adapter;
    const cache =
      model && !Array.isArray(model) && existsSync(ctx.requestCache)
        ? await (await import("../../data/request-cache.js")).RequestCache.open(ctx.requestCache)
        : undefined;
    const { requestKey } = await import("../../data/request-cache.js");
    try {
      for (const problem of problems) {
        const messages = renderPrompt(p.prompt ?? DEFAULT_PROMPT, {
          ...problem,
          title: problem.title ?? "",
          starter_code: problem.starter_code ?? "",
        } as never);
        promptChars += messages.reduce((a, m) => a + m.content.length, 0) * p.samples;
        const text = messages.map((m) => `${m.role}\n${m.content}`).join("\n");
        if (sharedChars === undefined) {
          firstPrompt = text;
          sharedChars = text.length;
        } else sharedChars = commonPrefix(firstPrompt, text, sharedChars);
        if (!cache || !model || Array.isArray(model)) continue;
        // as evaluate's run() keys its requests
        const identity = {
          backend: "llama-server",
          model: model.digest,
          adapter:
            adapter && !Array.isArray(adapter)
              ? { digest: adapter.digest, scale: p.loraScale }
              : null,
          chat: "llama_chat_apply_template",
        };
        for (let sample = 0; sample < p.samples; sample++) {
          const sampling = {
            temperature: p.temperature,
            top_p: p.top_p,
            max_tokens: p.max_tokens,
            seed: p.seed + sample,
            ...(p.extraBody ?? {}),
          };
          const a = cache.get<ChatAnswer>(
            requestKey({ model: identity, request: { messages }, sampling, sample }),
          );
          if (a) {
            toSend--;
            if (typeof a.completion_tokens === "number") cachedLengths.push(a.completion_tokens);
          }
        }
      }
    } finally {
      cache?.close();
    }
    basis.requests = `measured: ${problems.length} problems (split ${p.split ?? "auto"}) × ${p.samples} samples, ${total - toSend} answered in the request cache`;
  } else if (upstream?.records) {
    total = upstream.records[1] * p.samples;
    toSend = total;
    basis.requests = `${upstream.basis ?? "expected"} × ${p.samples} samples (every record assumed in the split)`;
  } else basis.requests = "unknown: the problems are not imported yet and their count is unknown";

  // Generated tokens per answer: the answers already cached, else what the
  // model was fine-tuned to answer, else past evaluations of this shape, else up to max_tokens.
  const trained = trainedAnswers(ctx.expected.model, ctx.expected.adapter);
  // random weights, never trained (and no adapter): what they answer is known
  const modelDir = inputPath(ctx.inputs.model);
  const untrained =
    ctx.inputs.adapter === undefined &&
    ctx.expected.adapter === undefined &&
    (modelDir ? untrainedModel(modelDir) : expectedOf(ctx.expected.model)?.untrained === true);
  let perAnswer: Range;
  const past = ctx.measured.filter(
    (m) =>
      m.what === "generate" &&
      m.max_tokens === p.max_tokens &&
      typeof m.mean_completion_tokens === "number" &&
      (!dims || JSON.stringify(m.shape) === JSON.stringify(shapeRecord(dims))),
  );
  if (cachedLengths.length) {
    const m = mean(cachedLengths);
    perAnswer = [m * 0.9, Math.min(p.max_tokens, m * 1.1)];
    basis.generated_tokens = `measured: mean ${m.toFixed(0)} tokens over ${cachedLengths.length} cached answers`;
  } else if (untrained && p.temperature === 0) {
    perAnswer = [p.max_tokens * 0.9, p.max_tokens];
    basis.generated_tokens = `assumed: random weights, never trained, decoded greedily have no learnt reason to end an answer: to max_tokens (${p.max_tokens}), at least 90% of it`;
  } else if (trained?.answerChars) {
    // a student fine-tuned on answers of some length learns to answer about as
    // long, or never learns to stop and runs to max_tokens
    const cpt = charsPerToken(dims).range;
    const learnt = mid(trained.answerChars) / mid(cpt) + 1;
    perAnswer = [Math.min(p.max_tokens, learnt / 2), p.max_tokens];
    basis.generated_tokens = `assumed: from half as long as the answers it was fine-tuned on (~${learnt.toFixed(0)} tokens: ${trained.answerBasis ?? "their mean length"}) to max_tokens (${p.max_tokens}), where a student that has not learnt to stop runs on`;
  } else if (past.length) {
    const means = past.map((m) => m.mean_completion_tokens as number);
    perAnswer = [Math.min(...means), p.max_tokens];
    basis.generated_tokens = `measured: past evaluations of this shape at max_tokens ${p.max_tokens} averaged ${Math.min(...means).toFixed(0)}-${Math.max(...means).toFixed(0)} tokens an answer; up to max_tokens`;
  } else {
    perAnswer = [p.max_tokens * 0.1, p.max_tokens];
    basis.generated_tokens = `assumed: 10% of max_tokens (${p.max_tokens}) to max_tokens per answer`;
  }
  const generated: Range | undefined =
    toSend !== undefined ? [toSend * perAnswer[0], toSend * perAnswer[1]] : undefined;

  const device = evalDevice(p, ctx.resources.gpu);
  let hours: Range = [0, 0];
  const extra: Record<string, unknown> = {};
  if (toSend !== undefined) extra.answers_to_generate = toSend;
  if (dims && generated && toSend !== undefined && toSend > 0) {
    // the student's vocabulary: a character a token for valley's random models, ~4 for BPE
    const cpt = charsPerToken(dims).range;
    const promptTokens = total ? promptChars / total / mid(cpt) + TEMPLATE_TOKENS : 500;
    const context = promptTokens + perAnswer[1] / 2;
    const rate = closestRate(ctx.measured, {
      what: "generate",
      device,
      dims,
      flops: genFlops(context),
      threads: device === "cpu" ? llamaThreads(p.threads, ctx.resources.cpu) : undefined,
      prefer: { parallel: p.parallel },
    });
    let tps: Range;
    let overhead: Range = [0, 0];
    if (rate) {
      tps = rate.tokensPerS;
      basis.hours = `${rate.basis}; ${p.parallel} slots`;
      const o = rate.measurement?.overhead_s;
      if (typeof o === "number") overhead = [o * 0.8, o * 1.25];
    } else {
      // decoding streams every weight once per step; `parallel` slots share a step
      const bw = ASSUMED_BANDWIDTH[device];
      const b = weightBytes(dims);
      const slots = Math.min(p.parallel, toSend);
      tps = [(bw[0] / b) * slots * 0.5, (bw[1] / b) * slots];
      basis.hours = `assumed: decoding streams the weights (${(b / 1e9).toFixed(2)} GB) at ${bw[0] / 1e9}-${bw[1] / 1e9} GB/s, ${slots} slots sharing a step (nothing measured: valley calibrate${device === "gpu" ? " --gpu" : ""})`;
    }
    // Prompt processing, when the calibration priced it apart from decoding
    // (a run's own rate already includes its prompts): the same scaling as decoding.
    const pps = rate?.measurement?.prompt_tokens_per_s;
    let promptS: Range = [0, 0];
    if (rate && typeof pps === "number" && pps > 0) {
      const r = rate.measurement!.tokens_per_s as number;
      const ppRange: Range = [(pps * tps[0]) / r, (pps * tps[1]) / r];
      // llama-server reuses the prefix a slot's last prompt shares with the next
      // (cache_prompt, on by default): after each slot's first request, only
      // the rest of a prompt is processed
      const shared = Math.min(promptTokens, (sharedChars ?? 0) / mid(cpt));
      const reused = Math.max(0, toSend - Math.min(p.parallel, toSend)) * shared;
      const prompted = toSend * promptTokens - reused;
      promptS = [prompted / ppRange[1], prompted / ppRange[0]];
      basis.hours +=
        `; prompts: ${toSend} × ${promptTokens.toFixed(0)} tokens` +
        (reused > 0
          ? `, less the ${shared.toFixed(0)} every prompt begins with after each slot's first (llama-server keeps a slot's prompt)`
          : "") +
        `, at ${pps.toFixed(0)} tokens/s (calibrated)`;
      extra.prompt_seconds = promptS;
    }
    extra.decode_tokens_per_s = tps;
    extra.start_seconds = overhead;
    hours = [
      (overhead[0] + promptS[0] + generated[0] / tps[1]) / 3600,
      (overhead[1] + promptS[1] + generated[1] / tps[0]) / 3600,
    ];
  } else if (toSend === 0) basis.hours = "every answer is cached: grading only";
  else basis.hours = "unknown: the model's shape or the number of problems is unknown";

  // Grading: every sample (cached answers too) runs in the sandbox, `jobs` at a time.
  // The sandbox's cost per sample with code is measured (a calibration, or a
  // past run's samples that had code); how many answers have code is not known
  // before the model answers, so the range runs from nearly none (an answer
  // without code costs ~0) to all of them.
  if (total !== undefined) {
    const g = ctx.measured.find(
      (m) =>
        m.what === "grade" &&
        typeof (m.worst_case ? m.seconds_per_sample : m.seconds_per_sample_with_code) === "number",
    );
    const sps = (g?.worst_case ? g.seconds_per_sample : g?.seconds_per_sample_with_code) as number;
    const s: Range = untrained
      ? [0, 0]
      : g
        ? g.worst_case
          ? [sps * 0.05, sps]
          : [sps * 0.05, sps * 1.25]
        : ASSUMED_GRADE_S;
    const cpuHours: Range = [(total * s[0]) / 3600, (total * s[1]) / 3600];
    extra.grading_cpu_hours = cpuHours;
    extra.grading_jobs = Math.max(1, p.jobs);
    const jobs = Math.max(1, p.jobs);
    hours = [hours[0] + cpuHours[0] / jobs, hours[1] + cpuHours[1] / jobs];
    const runs = p.allTests ? "on every test" : "to its first failing test";
    basis.grading = untrained
      ? "assumed: random weights, never trained, write no fenced code block: nothing runs in the sandbox"
      : g
        ? g.worst_case
          ? `calibrated: ${sps.toFixed(3)} s of sandbox per sample whose code is run as a wrong answer's is, ${runs} (the high end: every answer with code; an answer without code costs ~0${p.allTests ? "" : ", one that passes runs every test"}), ${jobs} at a time`
          : `measured: ${sps.toFixed(3)} s of sandbox per sample with code (${g.source ?? "a past run"}); from 5% to every answer with code (one without costs ~0), ${jobs} at a time`
        : `assumed: ${ASSUMED_GRADE_S[0]}-${ASSUMED_GRADE_S[1]} s of sandbox per sample, ${jobs} at a time`;
  }
  return {
    hours,
    device,
    gpus: device === "gpu" ? 1 : undefined,
    tokens: generated ? { generated } : undefined,
    usd: null,
    basis,
    extra,
    output: {},
  };
}

/** Length of the common prefix of `a` and `b`, at most `upTo`. */
function commonPrefix(a: string, b: string, upTo: number): number {
  const n = Math.min(upTo, a.length, b.length);
  let i = 0;
  while (i < n && a.charCodeAt(i) === b.charCodeAt(i)) i++;
  return i;
}

/** The measurements a finished evaluation leaves in its action record. */
export function evalMeasurements(o: {
  dims: ModelDims | undefined;
  p: EvaluateParams;
  device: "cpu" | "gpu";
  generated: number;
  answers: number;
  generateSeconds: number;
  startSeconds: number;
  promptChars: number;
  graded: number;
  /** Of the graded samples, those with code the sandbox ran (not NO_CODE). */
  ranCode: number;
  gradeSeconds: number;
}): Measurement[] {
  const out: Measurement[] = [];
  const shape = o.dims ? shapeRecord(o.dims) : undefined;
  if (o.generated > 0 && o.generateSeconds > 0)
    out.push({
      what: "generate",
      tokens_per_s: o.generated / o.generateSeconds,
      device: o.device,
      threads: o.device === "cpu" ? o.p.threads : undefined,
      parallel: o.p.parallel,
      shape,
      context:
        o.promptChars / Math.max(1, o.answers) / mid(charsPerToken(o.dims).range) +
        o.generated / o.answers / 2,
      overhead_s: o.startSeconds,
      max_tokens: o.p.max_tokens,
      mean_completion_tokens: o.generated / o.answers,
    });
  if (o.graded > 0 && o.gradeSeconds > 0)
    out.push({
      what: "grade",
      seconds_per_sample: (o.gradeSeconds * Math.max(1, o.p.jobs)) / o.graded,
      // what the sandbox costs is the samples it runs: how many of a model's
      // answers have code is the model's own, and says nothing of the next one's
      code_fraction: o.ranCode / o.graded,
      ...(o.ranCode > 0
        ? { seconds_per_sample_with_code: (o.gradeSeconds * Math.max(1, o.p.jobs)) / o.ranCode }
        : {}),
      device: "cpu",
      jobs: o.p.jobs,
    });
  return out;
}
