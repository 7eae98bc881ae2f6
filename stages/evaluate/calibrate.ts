/**
 * `valley calibrate` for evaluation: the managed llama-server on a random
 * model of each shape the pipeline evaluates (a stand-in when too large for
 * the device), with the instance's slots and threads, answering a round of
 * requests per slot; the aggregate generated tokens per second and the
 * server's start-up time are kept.
 */
import { existsSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { inputAccess, type CalibrateContext, type Measurement } from "../../engine/stage-api.js";
import { modelInput, shapeRecord } from "../../data/estimate.js";
import { llamaThreads, resolveLlama, runLlama } from "../../llama/toolchain.js";
import { DEFAULT_PROMPT, renderPrompt } from "../../data/prompt.js";
import type { Message } from "../../data/chat.js";
import { benchmarkModel } from "../../llama/calibration.js";
import type { EvaluateParams } from "./index.js";
import { evalDevice, evalMeasurements } from "./estimate.js";

/** Samples graded per sandbox job when calibrating the grading. */
const SAMPLES_PER_JOB = 16;
/** Measured rounds of prompts alone (after one unmeasured warm-up round). */
const PROMPT_ROUNDS = 3;

export async function calibrateServer(
  ctx: CalibrateContext<EvaluateParams>,
): Promise<Measurement[]> {
  const plans = new Map<string, { p: EvaluateParams; inst: (typeof ctx.instances)[number] }>();
  for (const inst of ctx.instances) {
    // as the run will start the server: no more threads than the CPUs it is given
    const p: EvaluateParams = {
      ...inst.params,
      threads: llamaThreads(inst.params.threads, inst.resources.cpu),
    };
    const dims = await modelInput(inst.inputs.model, inst.expected.model);
    if (!dims) continue;
    const device = evalDevice(p, ctx.gpu ? 1 : 0);
    if ((device === "gpu") !== ctx.gpu) continue;
    // the weight type too: a quantized model decodes at another rate (fewer bytes
    // per weight to stream, dequantizing to do)
    const k = JSON.stringify([shapeRecord(dims), p.parallel, p.threads]);
    if (!plans.has(k)) plans.set(k, { p, inst });
  }
  if (plans.size === 0) return [];
  const llama = resolveLlama({
    input: ctx.instances.find((i) => i.inputs.llama)?.input ?? inputAccess("evaluate", {}).input,
    tools: ctx.tools,
  });
  const { withLlamaServer } = await import("../../llama/server.js");
  const { chatUrl, chatWithRetries } = await import("../../data/chat.js");
  const out: Measurement[] = [];
  const share = ctx.budgetSeconds / plans.size;
  for (const { p, inst } of plans.values()) {
    if (ctx.signal.aborted) break;
    const want = (await modelInput(inst.inputs.model, inst.expected.model))!;
    const dir = join(ctx.scratch, `server-${out.length}`);
    mkdirSync(dir, { recursive: true });
    const maxTokens = Math.min(p.max_tokens, 512);
    // the context per slot the run will give the server
    const { PROMPT_ROOM } = await import("./index.js");
    const slotCtx = p.ctxSize ?? p.max_tokens + PROMPT_ROOM;
    const bench = await benchmarkModel(want, dir, {
      maxParams: ctx.gpu ? 2e9 : 30e6,
      contextLength: slotCtx,
      signal: ctx.signal,
    });
    let { path, dims } = bench;
    if (!["f32", "f16", "bf16"].includes(want.weightType)) {
      // the pipeline's quantized type, made by the same llama-quantize the quantize stage runs
      const q = join(dir, `bench-${want.weightType}.gguf`);
      await runLlama(llama, "llama-quantize", [path, q, want.weightType.toUpperCase(), "2"], {
        signal: ctx.signal,
        log: ctx.log,
      });
      path = q;
      dims = { ...dims, weightType: want.weightType };
    }
    const prompt =
      "Write a Python program that reads n integers from standard input and prints their sum. " +
      "Think step by step, then give the code in one ```python block.";
    // the instance's own prompt: its length is what the run pays to process, and
    // the context every decoding step attends over
    const long = (await instancePrompts(inst, p)) ?? [
      { role: "user", content: `${prompt}\n${"Constraints: 1 <= n <= 100000. ".repeat(40)}` },
    ];
    const t0 = Date.now();
    const m = await withLlamaServer(
      {
        llama,
        model: path,
        parallel: p.parallel,
        contextSize: slotCtx * p.parallel,
        threads: p.threads,
        gpuLayers: ctx.gpu ? p.gpuLayers || 999 : 0,
        alias: "student",
        chatTemplate: "builtin",
        extraArgs: ["--reasoning-format", "none"],
        signal: ctx.signal,
        log: ctx.log,
      },
      async (server) => {
        const start = (Date.now() - t0) / 1000;
        const ask = (messages: Message[], max: number, seed: number) =>
          chatWithRetries(
            () => chatUrl(server.url),
            undefined,
            {
              model: "student",
              messages,
              temperature: p.temperature,
              top_p: p.top_p,
              max_tokens: max,
              // a random model ends answers at random: generate the whole budget, as long answers do
              ignore_eos: true,
              seed,
            },
            {
              retries: 2,
              backoffMs: 500,
              backoffMaxMs: 2000,
              timeoutMs: 120_000,
              signal: ctx.signal,
            },
          );
        // a distinct start per request: no prompt cache shared between them
        const distinct = (tag: string) =>
          long.map((m, j) => (j === 0 ? { ...m, content: `(${tag}) ${m.content}` } : m));
        // Prompt processing (compute bound, batched) and decoding (a step per
        // token, bound by streaming the weights) scale differently: rounds of
        // the prompts with one token each price the former. The first round
        // after the server starts also pays its warm-up (buffers, page
        // faults): unmeasured, else it is counted as prompt time and the
        // decoding rate derived from it comes out several times too high.
        const promptRound = { seconds: 0, prompt: 0, generated: 0 };
        for (let round = 0; round <= PROMPT_ROUNDS; round++) {
          const tp = Date.now();
          const pr = await Promise.all(
            Array.from({ length: p.parallel }, (_, i) => ask(distinct(`p${round}.${i}`), 1, i)),
          );
          if (round === 0) continue;
          promptRound.seconds += (Date.now() - tp) / 1000;
          promptRound.prompt += pr.reduce((a, x) => a + (x.prompt_tokens ?? 0), 0);
          promptRound.generated += pr.reduce((a, x) => a + (x.completion_tokens ?? 0), 0);
        }
        let generated = 0;
        let answers = 0;
        let promptTokens = 0;
        const t1 = Date.now();
        // rounds of one request per slot until this shape's share of the time is spent
        for (let round = 0; round === 0 || (Date.now() - t0) / 1000 < share * 0.6; round++) {
          const got = await Promise.all(
            Array.from({ length: p.parallel }, (_, i) =>
              ask(distinct(`${round}.${i}`), maxTokens, i),
            ),
          );
          for (const a of got) {
            generated += a.completion_tokens ?? 0;
            promptTokens += a.prompt_tokens ?? 0;
            answers++;
          }
          if (round > 20) break;
        }
        const decodeRound = { seconds: (Date.now() - t1) / 1000, prompt: promptTokens, generated };
        const rates = splitRates(decodeRound, promptRound);
        ctx.log.debug({ decodeRound, promptRound, rates }, "calibrate: server rounds");
        return evalMeasurements({
          dims,
          p: { ...p, max_tokens: maxTokens },
          device: ctx.gpu ? "gpu" : "cpu",
          generated,
          answers,
          generateSeconds: generated / rates.decode,
          startSeconds: start,
          promptChars: long.reduce((a, m) => a + m.content.length, 0) * answers,
          graded: 0,
          ranCode: 0,
          gradeSeconds: 0,
        }).map((x) => {
          // lengths of a random model say nothing of a student's: keep the rate only
          const { mean_completion_tokens: _m, max_tokens: _t, context: _c, ...rest } = x;
          return (
            x.what === "generate" ? { ...rest, prompt_tokens_per_s: rates.prompt } : rest
          ) as Measurement;
        });
      },
    );
    out.push(...m);
  }
  const grade = await calibrateGrading(ctx);
  if (grade) out.push(grade);
  return out;
}

/**
 * The sandbox's cost per sample with code: a program that reads its input and
 * prints it runs on the first real problems' tests, as a wrong answer does
 * (until its first failing test, or on every test with allTests).
 */
async function calibrateGrading(
  ctx: CalibrateContext<EvaluateParams>,
): Promise<Measurement | undefined> {
  if (ctx.signal.aborted) return undefined;
  // the sandbox runs the instance's own problems' tests: they must exist (the
  // problems stage cached under the key this pipeline gives it now)
  const inst = ctx.instances.find((i) => i.inputs.problems);
  if (!inst) {
    ctx.skip(
      "grade",
      "no evaluate instance has its problems yet (their producer has no result in this cache: " +
        "run it first, e.g. valley run --only <its stage>); estimates assume the grading time",
    );
    return undefined;
  }
  const p: EvaluateParams = inst.params;
  const problems = await instanceProblems(inst, p);
  if (!problems?.length) {
    ctx.skip(
      "grade",
      `${inst.instanceId}: ${problems ? `no problem in split ${JSON.stringify(p.split)}` : "its problems input has no problems.jsonl"}; estimates assume the grading time`,
    );
    return undefined;
  }
  const { gradeAnswers } = await import("./grading.js");
  const { gradeOptionsFrom } = await import("../../grader/grade.js");
  // Enough samples per sandbox that the first one's start, which a run's many
  // samples share, is not priced into every sample: with 4 per sandbox the
  // measured cost was twice what 47 samples paid each (0.050 s against 0.026 s).
  const n = SAMPLES_PER_JOB * Math.max(1, p.jobs);
  const answers = Array.from({ length: n }, (_, i) => ({
    problem: problems[i % problems.length],
    sample: 0,
    text: "```python\nimport sys\nprint(sys.stdin.read())\n```",
    finish_reason: "stop",
    prompt_tokens: null,
    completion_tokens: null,
  }));
  const t0 = Date.now();
  await gradeAnswers(answers, gradeOptionsFrom(p, ctx.signal, "evaluate"));
  const seconds = (Date.now() - t0) / 1000;
  return {
    what: "grade",
    seconds_per_sample: (seconds * Math.max(1, p.jobs)) / n,
    device: "cpu",
    jobs: p.jobs,
    samples: n,
    // the high end: an answer without code is graded without running anything
    worst_case: true,
  };
}

/**
 * Seconds per prompt token and per generated token from two rounds, each
 * t = P·x + G·y: one mostly decoding (short prompts, long answers), one mostly
 * prompt (long prompts, one token). Rates are aggregates over the slots.
 */
export function splitRates(
  decode: { seconds: number; prompt: number; generated: number },
  prompt: { seconds: number; prompt: number; generated: number },
): { prompt: number; decode: number } {
  const det = decode.prompt * prompt.generated - prompt.prompt * decode.generated;
  let x =
    det !== 0 ? (decode.seconds * prompt.generated - prompt.seconds * decode.generated) / det : -1;
  let y = det !== 0 ? (decode.prompt * prompt.seconds - prompt.prompt * decode.seconds) / det : -1;
  if (!(x > 0 && y > 0)) {
    // noise made the system inconsistent: the decoding round is nearly all decoding
    y = decode.seconds / Math.max(1, decode.generated);
    x = Math.max(1e-6, (prompt.seconds - prompt.generated * y) / Math.max(1, prompt.prompt));
  }
  return { prompt: 1 / x, decode: 1 / y };
}

type CalibratedInstance = CalibrateContext<EvaluateParams>["instances"][number];

/** The problems an instance evaluates (its split and limit), or undefined before they exist. */
async function instanceProblems(inst: CalibratedInstance, p: EvaluateParams) {
  const input = inst.inputs.problems;
  const dir = Array.isArray(input) ? input[0]?.path : input?.path;
  if (!dir || !existsSync(join(dir, "problems.jsonl"))) return undefined;
  const { loadEvalProblems } = await import("./index.js");
  return (await loadEvalProblems(join(dir, "problems.jsonl"), p.split, p.limit, p.semantics))
    .problems;
}

/** The instance's first prompts as evaluate renders them, or undefined without its problems. */
async function instancePrompts(
  inst: CalibratedInstance,
  p: EvaluateParams,
): Promise<Message[] | undefined> {
  const problems = await instanceProblems(inst, p);
  if (!problems?.length) return undefined;
  // the median-length problem: one prompt standing for the rest
  const rendered = problems.slice(0, 16).map((problem) =>
    renderPrompt(p.prompt ?? DEFAULT_PROMPT, {
      ...problem,
      title: problem.title ?? "",
      starter_code: problem.starter_code ?? "",
    } as never),
  );
  const len = (m: Message[]) => m.reduce((a, x) => a + x.content.length, 0);
  rendered.sort((a, b) => len(a) - len(b));
  return rendered[Math.floor(rendered.length / 2)];
}
