/**
 * A test-owned OpenAI-compatible server on 127.0.0.1 that misbehaves on
 * demand, per request: 429 (with a chosen Retry-After), 5xx, 4xx, connection
 * resets before or during the body, stalls, and 200s that carry no usable
 * answer (null, empty choices, no message, HTML, invalid or truncated JSON).
 * It counts what it saw, so tests can check what was paid for.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { createHash } from "node:crypto";
import type { AddressInfo } from "node:net";

export type Fault =
  | "ok"
  /** 429 with `retryAfter` (seconds) in Retry-After. */
  | "429"
  | "500"
  | "503"
  | "408"
  | "409"
  | "400"
  /** 401 whose body echoes the authorization header. */
  | "401"
  /** The connection is cut before any response. */
  | "reset"
  /** Headers and half the answer, then the connection is cut. */
  | "reset-body"
  /** Never answers. */
  | "stall"
  /** 200 with the body `null`. */
  | "null"
  /** 200 with `{"choices": []}`. */
  | "empty-choices"
  /** 200 whose choices[0] has no message. */
  | "no-message"
  /** 200 with an HTML page. */
  | "html"
  /** 200 whose JSON is cut short (the framing is complete). */
  | "truncated";

export interface Received {
  t: number;
  key: string;
  fault: Fault;
}

export interface FakeServer {
  url: string;
  port: number;
  /** Requests received (every attempt). */
  received: number;
  /** Every attempt in arrival order. */
  log: Received[];
  /** 200 answers per distinct request (hash of the body). */
  answered: Map<string, number>;
  /** Distinct request bodies received (hashes). */
  bodies: Set<string>;
  /** Requests left hanging on purpose (stalls). */
  stalled: number;
  maxInFlight: number;
  /** Decides what to do with the attempt-th attempt (0-based) of a request. */
  plan: (key: string, attempt: number) => Fault;
  delayMs: number;
  /** Retry-After sent with 429, in seconds (as text). */
  retryAfter: string;
  /** Expected `authorization` header, if any (401 otherwise). */
  auth?: string;
  close(): Promise<void>;
}

export async function startFakeServer(
  opts: Partial<Pick<FakeServer, "plan" | "delayMs" | "auth" | "retryAfter">> = {},
): Promise<FakeServer> {
  const attempts = new Map<string, number>();
  const hanging = new Set<ServerResponse>();
  let inFlight = 0;
  const s: FakeServer = {
    url: "",
    port: 0,
    received: 0,
    log: [],
    answered: new Map(),
    bodies: new Set(),
    stalled: 0,
    maxInFlight: 0,
    plan: opts.plan ?? (() => "ok"),
    delayMs: opts.delayMs ?? 0,
    retryAfter: opts.retryAfter ?? "0",
    auth: opts.auth,
    close: async () => {
      for (const r of hanging) r.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  const json = (res: ServerResponse, status: number, text: string, type = "application/json") =>
    res.writeHead(status, { "content-type": type }).end(text);
  const server = createServer(async (req: IncomingMessage, res: ServerResponse) => {
    let body = "";
    for await (const c of req) body += c;
    s.received++;
    inFlight++;
    s.maxInFlight = Math.max(s.maxInFlight, inFlight);
    res.on("close", () => inFlight--);
    const j = JSON.parse(body) as { messages: { content: string }[]; seed?: number };
    const key = createHash("sha256").update(body).digest("hex");
    s.bodies.add(key);
    const attempt = attempts.get(key) ?? 0;
    attempts.set(key, attempt + 1);
    const fault: Fault =
      s.auth !== undefined && req.headers.authorization !== `Bearer ${s.auth}`
        ? "401"
        : s.plan(key, attempt);
    s.log.push({ t: Date.now(), key, fault });
    if (s.delayMs) await new Promise((r) => setTimeout(r, s.delayMs));
    const q = j.messages[j.messages.length - 1].content;
    const n = parseInt(key.slice(0, 2), 16);
    const think = `thinking about ${q.length} chars`;
    const code = "```python\nprint(1)\n```";
    const message =
      n % 2
        ? { role: "assistant", content: `<think>\n${think}\n</think>\n\n${code}` }
        : { role: "assistant", content: code, reasoning_content: think };
    const answer = JSON.stringify({
      choices: [{ index: 0, message, finish_reason: "stop" }],
      usage: { prompt_tokens: 10, completion_tokens: 20 },
    });
    // Bodies of errors echo the auth header, so a test can check it never leaks.
    const echo = `auth was ${req.headers.authorization}`;
    switch (fault) {
      case "ok":
        s.answered.set(key, (s.answered.get(key) ?? 0) + 1);
        return json(res, 200, answer);
      case "429":
        return res.writeHead(429, { "retry-after": s.retryAfter }).end("slow down");
      case "500":
      case "503":
      case "408":
      case "409":
      case "400":
        return res.writeHead(Number(fault)).end(`error ${fault} (${echo})`);
      case "401":
        return res.writeHead(401).end(`bad key (${echo})`);
      case "reset":
        return req.socket.destroy();
      case "reset-body":
        res.writeHead(200, {
          "content-type": "application/json",
          "content-length": String(answer.length),
        });
        res.write(answer.slice(0, answer.length >> 1));
        setTimeout(() => req.socket.destroy(), 5);
        return;
      case "stall":
        s.stalled++;
        hanging.add(res);
        return;
      case "null":
        return json(res, 200, "null");
      case "empty-choices":
        return json(res, 200, JSON.stringify({ choices: [], usage: {} }));
      case "no-message":
        return json(res, 200, JSON.stringify({ choices: [{ index: 0, finish_reason: "stop" }] }));
      case "html":
        return json(res, 200, "<html><body>502 Bad Gateway</body></html>", "text/html");
      case "truncated":
        return json(res, 200, answer.slice(0, answer.length - 7));
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  s.port = (server.address() as AddressInfo).port;
  s.url = `http://127.0.0.1:${s.port}/v1`;
  return s;
}
