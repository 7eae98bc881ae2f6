/**
 * One OpenAI-compatible /v1/chat/completions call with retries: exponential
 * backoff with full jitter on 429 (honouring Retry-After), 408, 5xx,
 * connection resets and time-outs. Other 4xx fail at once. Reasoning is taken
 * from `reasoning_content` (or `reasoning`) or from inline <think>…</think>.
 */
import { sleep } from "./ratelimit.js";

export interface Message {
  role: "system" | "user" | "assistant";
  content: string;
}

export interface ChatAnswer {
  reasoning: string;
  answer: string;
  /** The full raw assistant output, `<think>reasoning</think>answer` form. */
  text: string;
  finish_reason: string | null;
  prompt_tokens: number | null;
  completion_tokens: number | null;
  latency_ms: number;
}

export class ChatError extends Error {
  override name = "ChatError";
  constructor(
    message: string,
    /** Short class used in failure summaries: http_429, http_500, reset, timeout, … */
    readonly kind: string,
    readonly retryable: boolean,
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }
}

export interface RetryOptions {
  retries: number;
  backoffMs: number;
  backoffMaxMs: number;
  timeoutMs: number;
  signal: AbortSignal;
  /** Called for each failed attempt (for counts in the summary and logs). */
  onAttemptError?(e: ChatError, attempt: number): void;
  /** Strings (the API key) scrubbed from every error message. */
  secrets?: string[];
}

export function chatUrl(baseUrl: string): string {
  const b = baseUrl.replace(/\/+$/, "");
  if (/\/chat\/completions$/.test(b)) return b;
  if (/\/v\d+$/.test(b)) return b + "/chat/completions";
  return b + "/v1/chat/completions";
}

/** Splits `<think>r</think>a`; an unclosed <think> (truncated output) is all reasoning. */
export function splitThink(content: string): {
  reasoning: string;
  answer: string;
  hasThink: boolean;
} {
  const c = content.replace(/^\s+/, "");
  const close = c.indexOf("</think>");
  if (c.startsWith("<think>")) {
    if (close < 0) return { reasoning: c.slice(7).trim(), answer: "", hasThink: true };
    return {
      reasoning: c.slice(7, close).trim(),
      answer: c.slice(close + 8).trim(),
      hasThink: true,
    };
  }
  // Some templates put <think> in the prompt, so the output starts inside it.
  if (close >= 0)
    return {
      reasoning: c.slice(0, close).trim(),
      answer: c.slice(close + 8).trim(),
      hasThink: true,
    };
  return { reasoning: "", answer: content.trim(), hasThink: false };
}

export function joinThink(reasoning: string, answer: string): string {
  return `<think>\n${reasoning}\n</think>\n\n${answer}`;
}

function scrub(s: string, secrets: string[] = []): string {
  for (const x of secrets) if (x) s = s.split(x).join("***");
  return s;
}

function retryAfter(h: string | null): number | undefined {
  if (!h) return undefined;
  const s = Number(h);
  if (Number.isFinite(s)) return Math.max(0, s * 1000);
  const t = Date.parse(h);
  return Number.isFinite(t) ? Math.max(0, t - Date.now()) : undefined;
}

/** One attempt. Throws ChatError. */
export async function chatOnce(
  url: string,
  apiKey: string | undefined,
  body: Record<string, unknown>,
  timeoutMs: number,
  signal: AbortSignal,
  secrets: string[] = [],
): Promise<ChatAnswer> {
  const t0 = Date.now();
  const timeout = AbortSignal.timeout(timeoutMs);
  const both = AbortSignal.any([signal, timeout]);
  let res: Response;
  let json: Record<string, unknown>;
  try {
    res = await fetch(url, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        ...(apiKey ? { authorization: `Bearer ${apiKey}` } : {}),
      },
      body: JSON.stringify(body),
      signal: both,
    });
    const raw = await res.text();
    if (!res.ok) {
      const s = res.status;
      const retryable = s === 429 || s === 408 || s >= 500;
      throw new ChatError(
        `HTTP ${s} from ${url}: ${scrub(raw.slice(0, 300), secrets)}`,
        `http_${s}`,
        retryable,
        retryAfter(res.headers.get("retry-after")),
      );
    }
    try {
      json = JSON.parse(raw) as Record<string, unknown>;
    } catch {
      // A cut-off body on a 200 is a transport problem, so retry it.
      throw new ChatError(
        `invalid JSON from ${url}: ${scrub(raw.slice(0, 200), secrets)}`,
        "bad_json",
        true,
      );
    }
  } catch (e) {
    if (e instanceof ChatError) throw e;
    if (signal.aborted) throw signal.reason ?? e;
    if (timeout.aborted)
      throw new ChatError(`no answer from ${url} within ${timeoutMs} ms`, "timeout", true);
    const err = e as Error & { cause?: { code?: string; message?: string } };
    const code = err.cause?.code ?? "";
    const msg = `${err.message}${err.cause?.message ? ` (${err.cause.message})` : ""}`;
    const kind = /RESET|SOCKET|EPIPE|closed|terminated|other side/i.test(code + msg)
      ? "reset"
      : "network";
    // Refused connections are retried too: a local server may be restarting.
    throw new ChatError(`request to ${url} failed: ${scrub(msg, secrets)}`, kind, true);
  }
  const choice = (json.choices as Record<string, unknown>[] | undefined)?.[0];
  const msg = choice?.message as Record<string, unknown> | undefined;
  if (!msg)
    throw new ChatError(`answer from ${url} has no choices[0].message`, "bad_answer", false);
  const content = typeof msg.content === "string" ? msg.content : "";
  const rc =
    typeof msg.reasoning_content === "string"
      ? msg.reasoning_content
      : typeof msg.reasoning === "string"
        ? msg.reasoning
        : undefined;
  let reasoning: string, answer: string, text: string;
  if (rc !== undefined && rc !== "") {
    reasoning = rc.trim();
    answer = content.trim();
    text = joinThink(reasoning, answer);
  } else {
    ({ reasoning, answer } = splitThink(content));
    text = content;
  }
  const usage = (json.usage ?? {}) as Record<string, unknown>;
  return {
    reasoning,
    answer,
    text,
    finish_reason: typeof choice?.finish_reason === "string" ? choice.finish_reason : null,
    prompt_tokens: typeof usage.prompt_tokens === "number" ? usage.prompt_tokens : null,
    completion_tokens: typeof usage.completion_tokens === "number" ? usage.completion_tokens : null,
    latency_ms: Date.now() - t0,
  };
}

/** chatOnce with retries; throws the last ChatError when retries run out. */
export async function chatWithRetries(
  /** A function when the server may move (a restarted llama-server gets a new port). */
  url: string | (() => string),
  apiKey: string | undefined,
  body: Record<string, unknown>,
  o: RetryOptions,
): Promise<ChatAnswer> {
  for (let attempt = 0; ; attempt++) {
    try {
      const u = typeof url === "string" ? url : url();
      return await chatOnce(u, apiKey, body, o.timeoutMs, o.signal, o.secrets);
    } catch (e) {
      if (!(e instanceof ChatError)) throw e;
      o.onAttemptError?.(e, attempt);
      if (!e.retryable || attempt >= o.retries) throw e;
      const backoff = Math.random() * Math.min(o.backoffMaxMs, o.backoffMs * 2 ** attempt);
      await sleep(Math.max(backoff, e.retryAfterMs ?? 0), o.signal);
    }
  }
}
