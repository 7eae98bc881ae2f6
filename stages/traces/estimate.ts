/**
 * What a traces instance would cost: requests still to send (the per-request
 * cache knows which are answered), their prompt tokens from the problems'
 * real text, completion tokens from the answers already cached (else up to
 * max_tokens), dollars from `price`, hours at the stage's concurrency.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import type { Estimate, EstimateContext, Range } from "../../engine/stage-api.js";
import { expectedOf, inputPath, type Expected } from "../../data/estimate.js";
import { readJsonl } from "../../data/jsonl.js";
import type { Problem } from "../../data/problem.js";
import type { ChatAnswer, Message } from "../../data/chat.js";
import { DEFAULT_PROMPT, renderPrompt } from "../../data/prompt.js";
import { openaiIdentity, samplingOf, type TracesParams } from "./index.js";

/** Characters per token of English and code in BPE vocabularies (assumed when nothing is measured). */
const CHARS_PER_TOKEN: Range = [3, 5];
/** Decode speed of one stream of a hosted or local server (assumed when nothing is measured). */
const STREAM_TOKENS_PER_S: Range = [20, 80];

export interface Price {
  /** Dollars per million prompt tokens. */
  input: number;
  /** Dollars per million completion tokens. */
  output: number;
}

const chars = (messages: Message[]) => messages.reduce((n, m) => n + m.content.length, 0);

export async function estimateTraces(
  ctx: EstimateContext<TracesParams & { price?: Price }>,
): Promise<Estimate> {
  const p = ctx.params;
  const basis: Record<string, string> = {};
  const problemsDir = inputPath(ctx.inputs.problems);
  const upstream = expectedOf(ctx.expected.problems);

  if (p.backend === "import") {
    const records: Range | undefined = upstream?.records
      ? [0, upstream.records[1] * p.samples]
      : undefined;
    basis.hours = "assumed: import reads existing traces (minutes at most); no request is sent";
    return {
      hours: [0, 0.1],
      device: "cpu",
      tokens: { prompt: [0, 0], completion: [0, 0] },
      usd: null,
      basis,
      extra: { requests_to_send: 0 },
      // lengths are unknown before import: a statement of ~3,500 characters and an answer of
      // 1,000 tokens to max_tokens at ~4 characters a token
      output: {
        records,
        chars: [3500 + 1000 * 4, 3500 + p.max_tokens * 4],
        maxChars: 3500 + p.max_tokens * 4,
        basis: `assumed: imported traces of 1,000-${p.max_tokens} tokens (lengths unknown before import)`,
      },
    };
  }

  let total: number;
  let toSend: number;
  let promptChars = 0;
  let cachedCompletion: number[] = [];
  let cachedLatencyPerToken: number[] = [];
  let promptTokensPerChar: number[] = [];
  if (problemsDir && existsSync(join(problemsDir, "problems.jsonl"))) {
    const problems: Problem[] = [];
    for await (const { value } of readJsonl<Problem>(join(problemsDir, "problems.jsonl")))
      problems.push(value);
    // The llama backend's identity is its GGUF's digest: known only once the model input exists.
    const model = ctx.inputs.model;
    const identity =
      p.backend === "openai"
        ? openaiIdentity(p).identity
        : model && !Array.isArray(model)
          ? { backend: "llama", model: p.modelIdentity ?? model.digest }
          : undefined;
    const { requestKey } = await import("../../data/request-cache.js");
    const cache =
      identity && existsSync(ctx.requestCache)
        ? await (await import("../../data/request-cache.js")).RequestCache.open(ctx.requestCache)
        : undefined;
    total = 0;
    toSend = 0;
    try {
      for (const problem of problems) {
        const messages = renderPrompt(p.prompt ?? DEFAULT_PROMPT, problem);
        const c = chars(messages);
        for (let sample = 0; sample < p.samples; sample++) {
          total++;
          const key = identity
            ? requestKey({
                model: identity,
                request: { messages },
                sampling: samplingOf(p, sample),
                sample,
              })
            : undefined;
          const ans = key && cache ? cache.get<ChatAnswer>(key) : undefined;
          if (ans) {
            if (typeof ans.completion_tokens === "number") {
              cachedCompletion.push(ans.completion_tokens);
              if (ans.latency_ms > 0 && ans.completion_tokens > 0)
                cachedLatencyPerToken.push(ans.latency_ms / 1000 / ans.completion_tokens);
            }
            if (typeof ans.prompt_tokens === "number" && c > 0)
              promptTokensPerChar.push(ans.prompt_tokens / c);
            continue;
          }
          toSend++;
          promptChars += c;
        }
      }
    } finally {
      cache?.close();
    }
    basis.requests = `measured: ${total} requests (${problems.length} problems × ${p.samples}), ${total - toSend} answered in the request cache`;
  } else {
    const n = upstream?.records;
    if (!n) {
      basis.requests = "unknown: the problems are not imported yet and their count is unknown";
      return {
        hours: [0, 0],
        device: "cpu",
        usd: null,
        basis: { ...basis, hours: "unknown (no request count)", usd: "unknown (no request count)" },
        output: {},
      };
    }
    total = n[1] * p.samples;
    toSend = total;
    // prompts of competitive-programming statements: 1,000-6,000 characters
    promptChars = total * 3500;
    basis.requests = `${upstream?.basis ?? "expected"} × ${p.samples} samples; none assumed cached (problems not imported yet)`;
    cachedCompletion = [];
    cachedLatencyPerToken = [];
    promptTokensPerChar = [];
  }

  const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;
  // Prompt tokens: measured tokens per character of answered requests, else 3-5 characters a token.
  const perChar: Range = promptTokensPerChar.length
    ? [mean(promptTokensPerChar) * 0.95, mean(promptTokensPerChar) * 1.05]
    : [1 / CHARS_PER_TOKEN[1], 1 / CHARS_PER_TOKEN[0]];
  const prompt: Range = [promptChars * perChar[0], promptChars * perChar[1]];
  basis.prompt_tokens = promptTokensPerChar.length
    ? `measured: ${promptChars} characters of prompts still to send × ${mean(promptTokensPerChar).toFixed(3)} tokens per character (from ${promptTokensPerChar.length} answered requests)`
    : `assumed: ${promptChars} characters of prompts still to send at ${CHARS_PER_TOKEN[0]}-${CHARS_PER_TOKEN[1]} characters per token`;
  // Completion tokens: the mean of answered requests, else up to max_tokens.
  let perRequest: Range;
  if (cachedCompletion.length) {
    const m = mean(cachedCompletion);
    const sd = Math.sqrt(mean(cachedCompletion.map((x) => (x - m) ** 2)));
    // the mean of the rest differs from this sample's by about sd/√n (twice that for the range)
    const err = (2 * sd) / Math.sqrt(cachedCompletion.length);
    perRequest = [Math.max(0, m - err), Math.min(p.max_tokens, m + err)];
    basis.completion_tokens = `measured: mean ${m.toFixed(0)} tokens per answer over ${cachedCompletion.length} answered requests (± 2 standard errors)`;
  } else {
    perRequest = [p.max_tokens * 0.1, p.max_tokens];
    basis.completion_tokens = `assumed: no answer measured yet; 10% of max_tokens (${p.max_tokens}) to max_tokens per request`;
  }
  const completion: Range = [toSend * perRequest[0], toSend * perRequest[1]];

  // Dollars: only from a price; absent, unknown (never 0).
  let usd: Range | null = null;
  if (ctx.params.price) {
    const pr = ctx.params.price;
    usd = [
      (prompt[0] * pr.input + completion[0] * pr.output) / 1e6,
      (prompt[1] * pr.input + completion[1] * pr.output) / 1e6,
    ];
    basis.usd = `price: $${pr.input} / $${pr.output} per million prompt / completion tokens`;
  } else
    basis.usd =
      "unknown: no price given (price: {input, output} in dollars per million tokens; 0 for a free server)";

  // Hours: each request at a stream's decode speed, `concurrency` at a time, within rpm and tpm.
  const secPerToken: Range = cachedLatencyPerToken.length
    ? [mean(cachedLatencyPerToken) * 0.8, mean(cachedLatencyPerToken) * 1.25]
    : [1 / STREAM_TOKENS_PER_S[1], 1 / STREAM_TOKENS_PER_S[0]];
  const streams = Math.max(1, Math.min(p.concurrency, toSend || 1));
  const hours: Range = [
    (completion[0] * secPerToken[0]) / streams / 3600,
    (completion[1] * secPerToken[1]) / streams / 3600,
  ];
  basis.hours = cachedLatencyPerToken.length
    ? `measured: ${(1 / mean(cachedLatencyPerToken)).toFixed(1)} completion tokens/s per request (answered requests), ${streams} at a time (concurrency)`
    : `assumed: ${STREAM_TOKENS_PER_S[0]}-${STREAM_TOKENS_PER_S[1]} completion tokens/s per request, ${streams} at a time (concurrency)`;
  if (p.rpm) {
    const floor = toSend / p.rpm / 60;
    hours[0] = Math.max(hours[0], floor);
    hours[1] = Math.max(hours[1], floor);
    basis.hours += `; at most ${p.rpm} requests per minute (rpm)`;
  }
  if (p.tpm) {
    hours[0] = Math.max(hours[0], (prompt[0] + completion[0]) / p.tpm / 60);
    hours[1] = Math.max(hours[1], (prompt[1] + completion[1]) / p.tpm / 60);
    basis.hours += `; at most ${p.tpm} tokens per minute (tpm)`;
  }

  const output: Expected = {
    records: [total, total],
    promptTokens: [
      (promptChars / Math.max(1, toSend)) * perChar[0],
      (promptChars / Math.max(1, toSend)) * perChar[1],
    ],
    completionTokens: perRequest,
    // characters for a student's vocabulary: the prompt's, and 3-5 per teacher token of the answer
    chars: [
      promptChars / Math.max(1, toSend) + perRequest[0] * 3,
      promptChars / Math.max(1, toSend) + perRequest[1] * 5,
    ],
    maxChars: promptChars / Math.max(1, toSend) + p.max_tokens * 5,
    basis: "the teacher's expected answers",
  };
  return {
    hours,
    device: "cpu",
    tokens: { prompt, completion },
    usd,
    basis,
    extra: { requests: total, requests_to_send: toSend },
    output: output as Record<string, unknown>,
  };
}
