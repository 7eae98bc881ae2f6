/**
 * One OpenAI-compatible /v1/chat/completions call with retries: exponential
 * backoff with full jitter on 408, 409, 429 (honouring Retry-After up to the
 * back-off cap), 5xx, connection resets, time-outs and 200s whose body is not
 * a usable answer (null, not JSON, cut off, no choices or message). Other 4xx
 * fail at once ("not retried"). Reasoning is taken from `reasoning_content`
 * (or `reasoning`) or from inline <think>…</think>.
 */
import { abortError, sleep } from "./ratelimit.js";

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
  /** HTTP attempts made for the request when this error ended it (set by chatWithRetries). */
  attempts = 1;
}

export interface RetryOptions {
  retries: number;
  backoffMs: number;
  backoffMaxMs: number;
  /** Cap on a wait the server asks for (Retry-After); default backoffMaxMs. */
  maxRetryAfterMs?: number;
  timeoutMs: number;
  signal: AbortSignal;
  /** Called for each failed attempt (for counts in the summary and logs). */
  onAttemptError?(e: ChatError, attempt: number): void;
  /**
   * Called before each HTTP attempt (retries included) to wait for the rate
   * limits; the returned function is called with the tokens used when it ends.
   */
  acquire?(): Promise<(usedTokens?: number) => void>;
  /** Called before sleeping `waitMs` between attempts (a 429 pauses the whole stage). */
  onBackoff?(waitMs: number, e: ChatError, attempt: number): void;
  /** When aborted, no further attempt starts (the current one finishes). */
  halt?: AbortSignal;
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

/** A URL with what does not identify the server normalised: case, default port, trailing slash, the implied /v1. */
export function normalizeBaseUrl(baseUrl: string): string {
  const u = new URL(chatUrl(baseUrl.trim()));
  return u.origin + u.pathname.replace(/\/chat\/completions$/, "");
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
      // 408/409/429 and 5xx say "try again"; any other 4xx will not change (a bad key, a bad request).
      const retryable = s === 429 || s === 408 || s === 409 || s >= 500;
      const what = `${s}${res.statusText ? " " + res.statusText : ""}`;
      throw new ChatError(
        `${retryable ? `HTTP ${what}` : `not retried: ${what}`} from ${url}: ${scrub(raw.slice(0, 300), secrets)}`,
        `http_${s}`,
        retryable,
        retryAfter(res.headers.get("retry-after")),
      );
    }
    let parsed: unknown;
    try {
      parsed = JSON.parse(raw);
    } catch {
      // A cut-off or HTML body on a 200 is a server or transport problem, so retry it.
      throw new ChatError(
        `invalid JSON in a 200 from ${url} (${raw.length} bytes): ${scrub(raw.slice(0, 200), secrets)}`,
        "bad_json",
        true,
      );
    }
    if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed))
      throw new ChatError(
        `a 200 from ${url} whose body is ${scrub(JSON.stringify(parsed).slice(0, 100), secrets)}, not an object`,
        "bad_answer",
        true,
      );
    json = parsed as Record<string, unknown>;
  } catch (e) {
    if (e instanceof ChatError) throw e;
    if (signal.aborted) throw abortError(signal);
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
  // A 200 without an answer in it (overloaded proxies do this) is worth another try.
  const choices = json.choices;
  if (!Array.isArray(choices) || choices.length === 0)
    throw new ChatError(
      `a 200 from ${url} with ${Array.isArray(choices) ? "empty" : "no"} choices: ${scrub(JSON.stringify(json).slice(0, 200), secrets)}`,
      "bad_answer",
      true,
    );
  const choice = choices[0] as Record<string, unknown> | null;
  const msg = choice?.message as Record<string, unknown> | null | undefined;
  if (!msg || typeof msg !== "object")
    throw new ChatError(
      `a 200 from ${url} whose choices[0] has no message: ${scrub(JSON.stringify(choice).slice(0, 200), secrets)}`,
      "bad_answer",
      true,
    );
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

/**
 * chatOnce with retries; throws the last ChatError (its `attempts` set) when
 * retries run out, at once when the error is not retryable, or when `halt`
 * stops further attempts.
 */
export async function chatWithRetries(
  /** A function when the server may move (a restarted llama-server gets a new port). */
  url: string | (() => string),
  apiKey: string | undefined,
  body: Record<string, unknown>,
  o: RetryOptions,
): Promise<ChatAnswer> {
  for (let attempt = 0; ; attempt++) {
    // The rate-limit slot is held for the HTTP attempt only, not for the back-off.
    const release = o.acquire ? await o.acquire() : undefined;
    let e: unknown;
    try {
      const u = typeof url === "string" ? url : url();
      const ans = await chatOnce(u, apiKey, body, o.timeoutMs, o.signal, o.secrets);
      release?.((ans.prompt_tokens ?? 0) + (ans.completion_tokens ?? 0) || undefined);
      return ans;
    } catch (x) {
      release?.();
      e = x;
    }
    if (!(e instanceof ChatError)) throw e;
    e.attempts = attempt + 1;
    o.onAttemptError?.(e, attempt);
    if (!e.retryable || attempt >= o.retries || o.halt?.aborted) throw e;
    // Full jitter, and Retry-After honoured but never beyond the cap: a server
    // asking for a day must not hang a run silently.
    const backoff = Math.random() * Math.min(o.backoffMaxMs, o.backoffMs * 2 ** attempt);
    const asked = Math.min(e.retryAfterMs ?? 0, o.maxRetryAfterMs ?? o.backoffMaxMs);
    const wait = Math.max(backoff, asked);
    o.onBackoff?.(wait, e, attempt);
    try {
      await sleep(wait, o.halt ? AbortSignal.any([o.signal, o.halt]) : o.signal);
    } catch (s) {
      if (o.signal.aborted) throw s;
      throw e; // halted: this error ends the request
    }
  }
}
