import { join } from "node:path";
import { readdir } from "node:fs/promises";
import {
  InputError,
  type InputArtifact,
  type StageContext,
  type StageKind,
} from "../../engine/stage-api.js";
import { readJsonl, writeJsonl } from "../../data/jsonl.js";
import type { Problem } from "../../data/problem.js";
import {
  DEFAULT_PROMPT,
  renderPrompt,
  unknownPlaceholders,
  type PromptTemplate,
} from "../../data/prompt.js";
import {
  ChatError,
  chatUrl,
  chatWithRetries,
  joinThink,
  splitThink,
  type ChatAnswer,
  type Message,
} from "../../data/chat.js";
import { RequestCache, requestKey } from "../../data/request-cache.js";
import { Limiter } from "../../data/ratelimit.js";

export interface TracesParams {
  backend: "openai" | "llama" | "import";
  baseUrl?: string;
  model?: string;
  modelIdentity?: string;
  apiKeyEnv?: string;
  samples: number;
  temperature: number;
  top_p: number;
  max_tokens: number;
  seed?: number;
  prompt?: PromptTemplate;
  extraBody?: Record<string, unknown>;
  concurrency: number;
  rpm?: number;
  tpm?: number;
  retries: number;
  backoffMs: number;
  backoffMaxMs: number;
  timeoutS: number;
  failureBudget: number;
  parallel?: number;
  ctxSize?: number;
}

export interface Trace extends ChatAnswer {
  problem_id: string;
  sample: number;
  /** The request's key in the per-request cache (generated traces only), for `valley lineage`. */
  request_key?: string;
  messages: Message[];
}

/** Defaults as in schema.json, for callers that bypass the engine (tests). */
export const TRACES_DEFAULTS = {
  samples: 1,
  temperature: 0.6,
  top_p: 0.95,
  max_tokens: 32768,
  concurrency: 8,
  retries: 6,
  backoffMs: 1000,
  backoffMaxMs: 60000,
  timeoutS: 1800,
  failureBudget: 0,
} satisfies Partial<TracesParams>;

function one(ctx: StageContext<TracesParams>, name: string): InputArtifact {
  const a = ctx.inputs[name];
  if (!a) throw new InputError(`traces needs an input "${name}"`);
  if (Array.isArray(a)) {
    if (a.length !== 1)
      throw new InputError(`input "${name}" must be one artifact, got ${a.length}`);
    return a[0];
  }
  return a;
}

async function loadProblems(ctx: StageContext<TracesParams>): Promise<Problem[]> {
  const file = join(one(ctx, "problems").path, "problems.jsonl");
  const out: Problem[] = [];
  for await (const { value } of readJsonl<Problem>(file)) out.push(value);
  return out;
}

/** Existing traces from problem records: the demo set's reference trace, OCR2's generations. */
function importTraces(problems: Problem[], params: TracesParams, prompt: PromptTemplate): Trace[] {
  const traces: Trace[] = [];
  const base = {
    finish_reason: "stop",
    prompt_tokens: null,
    completion_tokens: null,
    latency_ms: 0,
  };
  for (const p of problems) {
    const messages = renderPrompt(prompt, p);
    const gens = (p.extra?.generations as Record<string, unknown>[] | undefined) ?? [];
    if (gens.length) {
      gens.slice(0, params.samples).forEach((g, sample) => {
        const text = typeof g.r1_generation === "string" ? g.r1_generation : "";
        if (!text) return;
        const { reasoning, answer } = splitThink(text);
        traces.push({ problem_id: p.id, sample, messages, reasoning, answer, text, ...base });
      });
    } else if (p.reference_solution) {
      const reasoning = (p.reference_trace ?? "").trim();
      const answer = "```python\n" + p.reference_solution.replace(/\s+$/, "") + "\n```";
      traces.push({
        problem_id: p.id,
        sample: 0,
        messages,
        reasoning,
        answer,
        text: joinThink(reasoning, answer),
        ...base,
      });
    }
  }
  return traces;
}

interface Job {
  problem: Problem;
  sample: number;
  messages: Message[];
  key: string;
  body: Record<string, unknown>;
}

/**
 * Sends every (problem, sample) not already in the request cache through an
 * OpenAI-compatible server; answers enter the cache as they arrive.
 */
async function generate(
  ctx: StageContext<TracesParams>,
  problems: Problem[],
  prompt: PromptTemplate,
  baseUrl: string | (() => string),
  identity: unknown,
  apiKey: string | undefined,
  /** Writes the output; called while the cache is open, traces read lazily from it. */
  write: (traces: Iterable<Trace>) => Promise<void>,
): Promise<Record<string, unknown>> {
  const p = ctx.params;
  const cacheFile =
    ctx.env.VALLEY_REQUEST_CACHE ||
    ctx.requestCache ||
    process.env.VALLEY_REQUEST_CACHE ||
    join(ctx.scratch, "requests.sqlite");
  const cache = await RequestCache.open(cacheFile);
  const url = typeof baseUrl === "string" ? chatUrl(baseUrl) : () => chatUrl(baseUrl());
  const secrets = apiKey ? [apiKey] : [];
  // Only keys are held in memory; answers live in the cache (30K long traces would not fit).
  const all: { problem: number; sample: number; key: string }[] = [];
  const rendered: Message[][] = [];
  const jobs: Job[] = [];
  let cached = 0;
  try {
    for (const [pi, problem] of problems.entries()) {
      const messages = renderPrompt(prompt, problem);
      rendered.push(messages);
      for (let sample = 0; sample < p.samples; sample++) {
        const sampling = {
          temperature: p.temperature,
          top_p: p.top_p,
          max_tokens: p.max_tokens,
          ...(p.seed !== undefined ? { seed: p.seed + sample } : {}),
          ...(p.extraBody ?? {}),
        };
        const key = requestKey({ model: identity, request: { messages }, sampling, sample });
        all.push({ problem: pi, sample, key });
        if (cache.has(key)) cached++;
        else
          jobs.push({
            problem,
            sample,
            messages,
            key,
            body: { model: p.model ?? "teacher", messages, ...sampling },
          });
      }
    }
    const total = cached + jobs.length;
    ctx.log.info(
      { total, cached, toSend: jobs.length, url: typeof url === "string" ? url : url() },
      "traces: requests",
    );
    ctx.progress(cached, total);

    const limiter = new Limiter({
      concurrency: p.concurrency,
      rpm: p.rpm,
      tpm: p.tpm,
      signal: ctx.signal,
    });
    const stop = new AbortController();
    const signal = AbortSignal.any([ctx.signal, stop.signal]);
    const attemptErrors: Record<string, number> = {};
    const failed: { id: string; kind: string; error: string }[] = [];
    let lastError = "";
    let sent = 0;
    let done = cached;

    const runJob = async (job: Job) => {
      const est = Math.ceil(JSON.stringify(job.messages).length / 4) + p.max_tokens;
      const release = await limiter.acquire(est);
      let used: number | undefined;
      try {
        const ans = await chatWithRetries(url, apiKey, job.body, {
          retries: p.retries,
          backoffMs: p.backoffMs,
          backoffMaxMs: p.backoffMaxMs,
          timeoutMs: p.timeoutS * 1000,
          signal,
          secrets,
          onAttemptError: (e, attempt) => {
            attemptErrors[e.kind] = (attemptErrors[e.kind] ?? 0) + 1;
            lastError = e.message;
            ctx.log.debug(
              { problem: job.problem.id, sample: job.sample, attempt, kind: e.kind },
              "traces: attempt failed",
            );
          },
        });
        sent++;
        used = (ans.prompt_tokens ?? 0) + (ans.completion_tokens ?? 0) || undefined;
        cache.put(job.key, ans);
        ctx.progress(++done, total);
      } catch (e) {
        if (signal.aborted) return;
        if (!(e instanceof ChatError)) throw e;
        failed.push({ id: `${job.problem.id}#${job.sample}`, kind: e.kind, error: e.message });
        lastError = e.message;
        ctx.log.warn(
          { problem: job.problem.id, sample: job.sample, kind: e.kind },
          "traces: request failed after retries",
        );
        if (failed.length > p.failureBudget) stop.abort(new Error("failure budget spent"));
      } finally {
        release(used);
      }
    };

    // A fixed pool of workers: the limiter holds them to the concurrency and rate limits.
    let next = 0;
    const workers = Array.from({ length: Math.min(p.concurrency, jobs.length) }, async () => {
      while (next < jobs.length && !signal.aborted) await runJob(jobs[next++]);
    });
    await Promise.all(workers);
    if (ctx.signal.aborted) throw ctx.signal.reason ?? new Error("aborted");
    if (failed.length > p.failureBudget) {
      const byKind: Record<string, number> = {};
      for (const f of failed) byKind[f.kind] = (byKind[f.kind] ?? 0) + 1;
      throw new Error(
        `traces: ${failed.length} request(s) failed after ${p.retries} retries, over the failure budget of ${p.failureBudget}. ` +
          `Failed: ${failed
            .slice(0, 5)
            .map((f) => `${f.id} (${f.kind})`)
            .join(", ")}${failed.length > 5 ? ", …" : ""}. ` +
          `Final errors by kind: ${JSON.stringify(byKind)}; all failed attempts by kind: ${JSON.stringify(attemptErrors)}. ` +
          `Last error: ${lastError}. ${done} of ${total} requests are answered and cached; a re-run resumes from there.`,
      );
    }
    await write(
      (function* () {
        for (const r of all) {
          const ans = cache.get<ChatAnswer>(r.key);
          if (!ans) continue; // failed within the failure budget
          const messages = rendered[r.problem];
          yield {
            problem_id: problems[r.problem].id,
            sample: r.sample,
            request_key: r.key,
            messages,
            ...ans,
          };
        }
      })(),
    );
    return { requests: total, cached, sent, failed: failed.length, attempt_errors: attemptErrors };
  } finally {
    cache.close();
  }
}

async function findGguf(dir: string): Promise<string> {
  const names = (await readdir(dir)).filter((n) => n.endsWith(".gguf")).sort();
  if (!names.length) throw new InputError(`input "model" (${dir}) holds no .gguf file`);
  return join(dir, names[0]);
}

const kind: StageKind<TracesParams> = {
  kind: "traces",
  // 2: generated traces carry their request_key.
  version: "2",
  // Needed by the llama backend only; the engine skips a tool it cannot find.
  tools: ["llama"],
  resources: (p) => ({ cpu: p.backend === "llama" ? 4 : 1, memory: 1024 }),
  check(p) {
    const issues = [];
    if (p.backend === "openai" && !p.baseUrl)
      issues.push({ path: ["baseUrl"], message: "the openai backend needs baseUrl" });
    if (p.backend === "openai" && !p.model)
      issues.push({ path: ["model"], message: "the openai backend needs model" });
    for (const part of ["system", "user"] as const) {
      const t = p.prompt?.[part];
      if (t)
        for (const f of unknownPlaceholders(t))
          issues.push({ path: ["prompt", part], message: `unknown field {{${f}}}` });
    }
    return issues;
  },
  async run(ctx) {
    const p: TracesParams = { ...TRACES_DEFAULTS, ...ctx.params };
    const problems = await loadProblems(ctx);
    const prompt = p.prompt ?? DEFAULT_PROMPT;
    const tally = {
      traces: 0,
      with_reasoning: 0,
      finish_reason: {} as Record<string, number>,
      prompt_tokens: 0,
      completion_tokens: 0,
    };
    // Streams traces to traces.jsonl, counting as they pass.
    const write = (traces: Iterable<Trace>) =>
      writeJsonl(
        join(ctx.out, "traces.jsonl"),
        (function* () {
          for (const t of traces) {
            tally.traces++;
            if (t.reasoning !== "") tally.with_reasoning++;
            const f = t.finish_reason ?? "none";
            tally.finish_reason[f] = (tally.finish_reason[f] ?? 0) + 1;
            tally.prompt_tokens += t.prompt_tokens ?? 0;
            tally.completion_tokens += t.completion_tokens ?? 0;
            yield t;
          }
        })(),
      ).then(() => undefined);
    let metrics: Record<string, unknown> = {};
    if (p.backend === "import") {
      await write(importTraces(problems, p, prompt));
    } else if (p.backend === "openai") {
      let apiKey: string | undefined;
      if (p.apiKeyEnv) {
        apiKey = ctx.env[p.apiKeyEnv] ?? process.env[p.apiKeyEnv];
        if (!apiKey)
          throw new InputError(`environment variable ${p.apiKeyEnv} (apiKeyEnv) is not set`);
      }
      const identity = { backend: "openai", model: p.modelIdentity ?? `${p.model} @ ${p.baseUrl}` };
      metrics = await generate(ctx, problems, prompt, p.baseUrl!, identity, apiKey, write);
    } else {
      // The engine-managed llama-server (llama/server.ts) with N parallel slots.
      const model = one(ctx, "model");
      const gguf = await findGguf(model.path);
      const llama = ctx.tools.llama;
      if (!llama)
        throw new InputError(
          "the llama backend needs the llama tool (tools.llama.path in the pipeline, or VALLEY_LLAMA_BIN)",
        );
      const { withLlamaServer } = await import("../../llama/server.js");
      const parallel = p.parallel ?? p.concurrency;
      // The GGUF's digest identifies the model in the request cache, whatever its path.
      const identity = { backend: "llama", model: p.modelIdentity ?? model.digest };
      metrics = await withLlamaServer(
        {
          llama,
          model: gguf,
          parallel,
          contextSize: p.ctxSize ? p.ctxSize * parallel : undefined,
          alias: p.model ?? "teacher",
          signal: ctx.signal,
          log: ctx.log,
        },
        (server) => generate(ctx, problems, prompt, () => server.url, identity, undefined, write),
      );
    }
    const m = { problems: problems.length, ...tally, ...metrics };
    ctx.log.info(m, "traces written");
    return { metrics: m };
  },
};

export default kind;
