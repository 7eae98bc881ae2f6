import { join } from "node:path";
import { readdir } from "node:fs/promises";
import { BadStageInput, type StageContext, type StageKind } from "../../engine/stage-api.js";
import { JsonlWriter, readJsonl, writeJsonl } from "../../data/jsonl.js";
import { importTraces, type ImportCounts } from "./import.js";
import type { Problem } from "../../data/problem.js";
import {
  DEFAULT_PROMPT,
  renderPrompt,
  unknownPlaceholders,
  templateOf,
  type PromptSpec,
} from "../../data/prompt.js";
import {
  ChatError,
  chatUrl,
  chatWithRetries,
  normalizeBaseUrl,
  type ChatAnswer,
  type Message,
} from "../../data/chat.js";
import { RequestCache, requestKey } from "../../data/request-cache.js";
import { abortError, Limiter, sleep } from "../../data/ratelimit.js";

export interface TracesParams {
  backend: "openai" | "llama" | "import";
  baseUrl?: string;
  model?: string;
  modelIdentity?: string;
  modelRenamed?: boolean;
  endpointIdentity?: string;
  apiKeyEnv?: string;
  samples: number;
  temperature: number;
  top_p: number;
  max_tokens: number;
  seed?: number;
  prompt?: PromptSpec;
  extraBody?: Record<string, unknown>;
  concurrency: number;
  rpm?: number;
  tpm?: number;
  retries: number;
  backoffMs: number;
  backoffMaxMs: number;
  maxRetryAfterS?: number;
  timeoutS: number;
  failureBudget: number;
  parallel?: number;
  ctxSize?: number;
  /** Dollars per million tokens, for estimates (unkeyed). */
  price?: { input: number; output: number };
}

export interface Trace extends ChatAnswer {
  problem_id: string;
  sample: number;
  /** The request's key in the per-request cache (generated traces only), for `valley lineage`. */
  request_key?: string;
  messages: Message[];
}

async function loadProblems(ctx: StageContext<TracesParams>): Promise<Problem[]> {
  const file = join(ctx.input("problems").path, "problems.jsonl");
  const out: Problem[] = [];
  for await (const { value } of readJsonl<Problem>(file)) out.push(value);
  return out;
}

interface Job {
  problem: Problem;
  sample: number;
  messages: Message[];
  key: string;
  body: Record<string, unknown>;
}

/** The sampling params of sample `sample`, as keyed in the request cache. */
export function samplingOf(p: TracesParams, sample: number): Record<string, unknown> {
  return {
    temperature: p.temperature,
    top_p: p.top_p,
    max_tokens: p.max_tokens,
    ...(p.seed !== undefined ? { seed: p.seed + sample } : {}),
    ...(p.extraBody ?? {}),
  };
}

/** The openai backend's model identity in the request cache. */
export function openaiIdentity(p: TracesParams): ModelIdentity {
  // The endpoint as the server sees it: ".../v1", ".../v1/" and the bare host are one server.
  const endpoint = p.endpointIdentity ?? normalizeBaseUrl(p.baseUrl!);
  return {
    identity: { backend: "openai", model: p.modelIdentity ?? `${p.model} @ ${endpoint}` },
    binding: p.modelIdentity ? { name: p.modelIdentity, model: `${p.model}` } : undefined,
    legacy:
      p.modelIdentity || p.endpointIdentity || endpoint === p.baseUrl
        ? undefined
        : { backend: "openai", model: `${p.model} @ ${p.baseUrl}` },
  };
}

/** `p3#1`: how a request is named in messages. */
const jobId = (j: Job) => `${j.problem.id}#${j.sample}`;

/** What names the model in the request cache, and the model it stands for (checked against the cache). */
export interface ModelIdentity {
  identity: { backend: string; model: string };
  /** Set when the user named the identity (modelIdentity): the model it stood for so far must match. */
  binding?: { name: string; model: string };
  /** The identity an earlier version used (the raw baseUrl text): its answers are carried over, not paid again. */
  legacy?: { backend: string; model: string };
}

/**
 * Sends every (problem, sample) not already in the request cache through an
 * OpenAI-compatible server; answers enter the cache as they arrive. Each
 * request is claimed in the cache before it is sent, so another instance or
 * run needing it waits for this answer instead of paying for it again.
 */
async function generate(
  ctx: StageContext<TracesParams>,
  problems: Problem[],
  prompt: PromptSpec,
  baseUrl: string | (() => string),
  id: ModelIdentity,
  apiKey: string | undefined,
  /** Writes the output; called while the cache is open, traces read lazily from it. */
  write: (traces: Iterable<Trace>) => Promise<void>,
): Promise<{ metrics: Record<string, unknown>; incomplete?: string }> {
  const p = ctx.params;
  const cacheFile =
    ctx.env.VALLEY_REQUEST_CACHE ||
    ctx.requestCache ||
    process.env.VALLEY_REQUEST_CACHE ||
    join(ctx.scratch, "requests.sqlite");
  const cache = await RequestCache.open(cacheFile);
  const url = typeof baseUrl === "string" ? chatUrl(baseUrl) : () => chatUrl(baseUrl());
  const secrets = apiKey ? [apiKey] : [];
  try {
    if (id.binding) {
      const { name, model } = id.binding;
      const before = cache.bindIdentity(name, model, p.modelRenamed === true);
      if (before !== undefined && before !== model && !p.modelRenamed)
        throw new BadStageInput(
          `modelIdentity "${name}" holds answers of model "${before}", but model is now "${model}": ` +
            `reusing them would label one model's answers as another's. Give the new model its own modelIdentity, ` +
            `or, if "${model}" is the same model under a new name, set modelRenamed: true.`,
        );
    }
    // Only keys are held in memory; answers live in the cache (30K long traces would not fit).
    const all: { problem: number; sample: number; key: string }[] = [];
    const rendered: Message[][] = [];
    const jobs: Job[] = [];
    let cached = 0;
    for (const [pi, problem] of problems.entries()) {
      const messages = renderPrompt(prompt, problem);
      rendered.push(messages);
      for (let sample = 0; sample < p.samples; sample++) {
        const sampling = samplingOf(p, sample);
        const key = requestKey({ model: id.identity, request: { messages }, sampling, sample });
        all.push({ problem: pi, sample, key });
        if (!cache.has(key) && id.legacy) {
          const old = cache.get(
            requestKey({ model: id.legacy, request: { messages }, sampling, sample }),
          );
          if (old) cache.put(key, old);
        }
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
    const total = all.length;
    // Requests an earlier run could not get answered: say that they are sent again, and why they failed.
    const before: Record<string, number> = {};
    let again = 0;
    for (const j of jobs) {
      const f = cache.failure(j.key);
      if (f) {
        again++;
        before[f.kind] = (before[f.kind] ?? 0) + 1;
      }
    }
    const shownUrl = typeof url === "string" ? url : url();
    ctx.log.info(
      { total, cached, toSend: jobs.length, missingBefore: again, url: shownUrl },
      `traces: ${total} requests, ${cached} cached, ${jobs.length} to send` +
        (again
          ? `, of which ${again} failed in an earlier run and are sent again (${Object.entries(
              before,
            )
              .map(([k, n]) => `${k} ×${n}`)
              .join(", ")})`
          : ""),
    );
    ctx.progress(cached, total, again ? `${again} missing from an earlier run` : undefined);

    const limiter = new Limiter({
      concurrency: p.concurrency,
      rpm: p.rpm,
      tpm: p.tpm,
      signal: ctx.signal,
    });
    // Over the failure budget, `halt` stops new requests and retries; requests
    // in flight finish their attempt and are cached. Ctrl-C or a time-out
    // (ctx.signal) cancels them; they are recorded as not answered.
    const halt = new AbortController();
    const attemptErrors: Record<string, number> = {};
    const failed: { id: string; kind: string; error: string }[] = [];
    let lastError = "";
    let fatal: unknown;
    let sent = 0;
    let fromOthers = 0;
    let done = cached;

    const runJob = async (job: Job) => {
      const est = Math.ceil(JSON.stringify(job.messages).length / 4) + p.max_tokens;
      try {
        const ans = await chatWithRetries(url, apiKey, job.body, {
          retries: p.retries,
          backoffMs: p.backoffMs,
          backoffMaxMs: p.backoffMaxMs,
          maxRetryAfterMs: p.maxRetryAfterS !== undefined ? p.maxRetryAfterS * 1000 : undefined,
          timeoutMs: p.timeoutS * 1000,
          signal: ctx.signal,
          halt: halt.signal,
          secrets,
          acquire: () => limiter.acquire(est),
          onAttemptError: (e, attempt) => {
            attemptErrors[e.kind] = (attemptErrors[e.kind] ?? 0) + 1;
            lastError = `${jobId(job)}: ${e.message}`;
            ctx.log.debug(
              { problem: job.problem.id, sample: job.sample, attempt, kind: e.kind },
              `traces: ${jobId(job)} attempt ${attempt + 1} failed: ${e.message}`,
            );
          },
          onBackoff: (wait, e) => {
            if (e.kind === "http_429") limiter.pause(wait);
            if (e.retryAfterMs !== undefined)
              ctx.log.info(
                {
                  problem: job.problem.id,
                  sample: job.sample,
                  retryAfterMs: e.retryAfterMs,
                  waitMs: wait,
                },
                `traces: the server asked to wait ${(e.retryAfterMs / 1000).toFixed(1)} s (Retry-After); ` +
                  `waiting ${(wait / 1000).toFixed(1)} s${wait < e.retryAfterMs ? " (capped by " + (p.maxRetryAfterS !== undefined ? "maxRetryAfterS" : "backoffMaxMs") + ")" : ""}` +
                  (e.kind === "http_429" ? ", every request of this stage waits too" : ""),
              );
          },
        });
        sent++;
        cache.put(job.key, ans);
        ctx.progress(++done, total);
      } catch (e) {
        cache.release(job.key);
        if (ctx.signal.aborted) {
          cache.recordFailure(job.key, "cancelled", abortError(ctx.signal).message);
          return;
        }
        const ce =
          e instanceof ChatError
            ? e
            : new ChatError(`${(e as Error)?.message ?? String(e)}`, "error", false);
        if (!(e instanceof ChatError)) fatal ??= e;
        const how =
          ce.retryable && ce.attempts > 1 ? `failed after ${ce.attempts - 1} retries: ` : "";
        failed.push({ id: jobId(job), kind: ce.kind, error: how + ce.message });
        lastError = `${jobId(job)}: ${ce.message}`;
        cache.recordFailure(job.key, ce.kind, ce.message);
        ctx.log.warn(
          { problem: job.problem.id, sample: job.sample, kind: ce.kind, attempts: ce.attempts },
          `traces: ${jobId(job)} not answered (${ce.attempts} attempt(s)): ${how}${ce.message}`,
        );
        if (failed.length > p.failureBudget || fatal) halt.abort(new Error("failure budget spent"));
      }
    };

    // Claims: a request answered or being sent by another holder is waited
    // for, not sent. One scan at a time re-checks the waiting ones.
    const pending = [...jobs];
    const waiting = new Set<Job>();
    let scan: Promise<void> | undefined;
    const rescan = async () => {
      await sleep(Math.min(2000, 200 + waiting.size / 10), ctx.signal).catch(() => {});
      for (const j of [...waiting]) {
        const st = cache.peek(j.key);
        if (st === "held") continue;
        waiting.delete(j);
        if (st === "answered") {
          fromOthers++;
          ctx.progress(++done, total);
        } else pending.push(j); // the holder gave up or died: ours to send
      }
    };
    const nextJob = async (): Promise<Job | undefined> => {
      for (;;) {
        if (ctx.signal.aborted || halt.signal.aborted) return undefined;
        const job = pending.shift();
        if (job) {
          const st = cache.claim(job.key);
          if (st === "claimed") return job;
          if (st === "held") waiting.add(job);
          else {
            fromOthers++;
            ctx.progress(++done, total);
          }
          continue;
        }
        if (waiting.size === 0) return undefined;
        await (scan ??= rescan().finally(() => (scan = undefined)));
      }
    };
    // A fixed pool of workers: the limiter holds their HTTP attempts to the concurrency and rate limits.
    const workers = Array.from({ length: Math.min(p.concurrency, jobs.length) }, async () => {
      for (let job = await nextJob(); job; job = await nextJob()) await runJob(job);
    });
    // Every worker settles before the cache closes, whatever happened to the others.
    await Promise.allSettled(workers);
    if (ctx.signal.aborted) throw abortError(ctx.signal, "traces stopped");
    if (fatal) throw fatal;
    const notSent = pending.length + waiting.size;
    if (failed.length > p.failureBudget) {
      const byKind: Record<string, number> = {};
      for (const f of failed) byKind[f.kind] = (byKind[f.kind] ?? 0) + 1;
      throw new Error(
        `traces: ${failed.length} request(s) not answered, over the failure budget of ${p.failureBudget}; ` +
          `${notSent} not sent, requests in flight finished. ` +
          `Failed: ${failed
            .slice(0, 5)
            .map((f) => `${f.id} (${f.error})`)
            .join("; ")}${failed.length > 5 ? "; …" : ""}. ` +
          `Final errors by kind: ${JSON.stringify(byKind)}; all failed attempts by kind: ${JSON.stringify(attemptErrors)}. ` +
          `Last error: ${lastError}. ` +
          `${done} of ${total} requests are answered and cached; a re-run sends only the others.`,
      );
    }
    let answered = 0;
    await write(
      (function* () {
        for (const r of all) {
          const ans = cache.get<ChatAnswer>(r.key);
          if (!ans) continue; // failed within the failure budget
          answered++;
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
    const metrics = {
      requests: total,
      cached,
      sent,
      from_other_runs: fromOthers,
      answered,
      failed: failed.length,
      missing: total - answered,
      attempt_errors: attemptErrors,
    };
    if (answered === total) return { metrics };
    const incomplete =
      `${answered}/${total} answered, ${total - answered} failed within budget` +
      ` (${failed
        .slice(0, 3)
        .map((f) => `${f.id}: ${f.kind}`)
        .join(", ")}${failed.length > 3 ? ", …" : ""}); the next run sends the missing ones`;
    ctx.log.warn(metrics, `traces: ${incomplete}`);
    return { metrics, incomplete };
  } finally {
    cache.close();
  }
}

async function findGguf(dir: string): Promise<string> {
  const names = (await readdir(dir)).filter((n) => n.endsWith(".gguf")).sort();
  if (!names.length) throw new BadStageInput(`input "model" (${dir}) holds no .gguf file`);
  return join(dir, names[0]);
}

/**
 * How fast and how politely requests are sent, never what is asked: changing
 * them re-runs nothing (answers are cached per request anyway). `failureBudget`
 * only decides when to stop; an output short of requests is re-run regardless.
 */
export const TRACES_UNKEYED = [
  "concurrency",
  "rpm",
  "tpm",
  "retries",
  "backoffMs",
  "backoffMaxMs",
  "maxRetryAfterS",
  "timeoutS",
  "failureBudget",
  "modelRenamed",
  // what requests cost, for estimates; never what they return
  "price",
] as const;

const kind: StageKind<TracesParams> = {
  kind: "traces",
  // 2: import streams OCR generations from generations.jsonl (row_id kept;
  // samples numbered among usable generations); request claims, unkeyed
  // politeness params, normalised endpoint identity;
  // generated traces carry their request_key.
  version: "2",
  unkeyedParams: TRACES_UNKEYED,
  // Needed by the llama backend only; the engine skips a tool it cannot find.
  tools: ["llama"],
  resources: (p) => ({ cpu: p.backend === "llama" ? 4 : 1, memory: 1024 }),
  estimate: async (ctx) => (await import("./estimate.js")).estimateTraces(ctx),
  check(p, stage) {
    const issues = [];
    if (p.backend === "openai" && !p.baseUrl)
      issues.push({ path: ["baseUrl"], message: "the openai backend needs baseUrl" });
    if (p.baseUrl) {
      try {
        normalizeBaseUrl(p.baseUrl);
      } catch {
        issues.push({ path: ["baseUrl"], message: `"${p.baseUrl}" is not a URL` });
      }
    }
    if (p.apiKeyEnv && stage && !stage.secrets.includes(p.apiKeyEnv))
      issues.push({
        path: ["apiKeyEnv"],
        message:
          `${p.apiKeyEnv} is not listed under secrets: of this stage; list it there ` +
          `(its value is then passed to the stage, kept out of keys and records, and blanked in logs)`,
      });
    if (p.backend === "openai" && !p.model)
      issues.push({ path: ["model"], message: "the openai backend needs model" });
    for (const part of ["system", "user"] as const) {
      const t = templateOf(p.prompt)?.[part];
      if (t)
        for (const f of unknownPlaceholders(t))
          issues.push({ path: ["prompt", part], message: `unknown field {{${f}}}` });
    }
    return issues;
  },
  async run(ctx) {
    const p = ctx.params;
    // The import backend streams (stages/traces/import.ts); the others need the list.
    const problems = p.backend === "import" ? [] : await loadProblems(ctx);
    const prompt = p.prompt ?? DEFAULT_PROMPT;
    const tally = {
      traces: 0,
      with_reasoning: 0,
      finish_reason: {} as Record<string, number>,
      prompt_tokens: 0,
      completion_tokens: 0,
    };
    const count = (t: Trace) => {
      tally.traces++;
      if (t.reasoning !== "") tally.with_reasoning++;
      const f = t.finish_reason ?? "none";
      tally.finish_reason[f] = (tally.finish_reason[f] ?? 0) + 1;
      tally.prompt_tokens += t.prompt_tokens ?? 0;
      tally.completion_tokens += t.completion_tokens ?? 0;
    };
    // Streams traces to traces.jsonl, counting as they pass.
    const write = (traces: Iterable<Trace>) =>
      writeJsonl(
        join(ctx.out, "traces.jsonl"),
        (function* () {
          for (const t of traces) {
            count(t);
            yield t;
          }
        })(),
      ).then(() => undefined);
    let metrics: Record<string, unknown>;
    let incomplete: string | undefined;
    if (p.backend === "import") {
      const counts: ImportCounts = { problems: 0, empty: 0, over_samples: 0, no_problem: 0 };
      const out = await JsonlWriter.open(join(ctx.out, "traces.jsonl"));
      try {
        for await (const t of importTraces(ctx.input("problems").path, p.samples, prompt, counts)) {
          if (ctx.signal.aborted) throw ctx.signal.reason ?? new Error("aborted");
          count(t);
          await out.write(t);
        }
        await out.close();
      } catch (e) {
        await out.abandon();
        throw e;
      }
      const { problems: n, ...skipped } = counts;
      metrics = { problems: n, skipped };
    } else if (p.backend === "openai") {
      let apiKey: string | undefined;
      if (p.apiKeyEnv) {
        // Only from the stage's declared secrets: a key the pipeline does not declare is not scrubbed from logs.
        apiKey = ctx.env[p.apiKeyEnv];
        if (!apiKey)
          throw new BadStageInput(
            `environment variable ${p.apiKeyEnv} (apiKeyEnv) is not set; export it and list it under secrets: of this stage`,
          );
      }
      const id = openaiIdentity(p);
      ({ metrics, incomplete } = await generate(
        ctx,
        problems,
        prompt,
        p.baseUrl!,
        id,
        apiKey,
        write,
      ));
    } else {
      // The engine-managed llama-server (llama/server.ts) with N parallel slots.
      const model = ctx.input("model");
      const gguf = await findGguf(model.path);
      const llama = ctx.tools.llama;
      if (!llama)
        throw new BadStageInput(
          "the llama backend needs the llama tool (tools.llama.path in the pipeline, or VALLEY_LLAMA_BIN)",
        );
      const { withLlamaServer } = await import("../../llama/server.js");
      const parallel = p.parallel ?? p.concurrency;
      // The GGUF's digest identifies the model in the request cache, whatever its path.
      const id: ModelIdentity = {
        identity: { backend: "llama", model: p.modelIdentity ?? model.digest },
        binding: p.modelIdentity ? { name: p.modelIdentity, model: model.digest } : undefined,
      };
      ({ metrics, incomplete } = await withLlamaServer(
        {
          llama,
          model: gguf,
          parallel,
          contextSize: p.ctxSize ? p.ctxSize * parallel : undefined,
          alias: p.model ?? "teacher",
          signal: ctx.signal,
          log: ctx.log,
        },
        (server) => generate(ctx, problems, prompt, () => server.url, id, undefined, write),
      ));
    }
    const m = { problems: problems.length, ...tally, ...metrics };
    ctx.log.info(m, "traces written");
    return { metrics: m, incomplete };
  },
};

export default kind;
