/**
 * A test-owned OpenAI-compatible server on 127.0.0.1 that can answer 429,
 * 500, cut the connection or stall, per request, and counts what it saw.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { createHash } from "node:crypto";
import type { AddressInfo } from "node:net";

export type Fault = "429" | "500" | "reset" | "stall" | "ok";

export interface FakeServer {
  url: string;
  /** Requests received (every attempt). */
  received: number;
  /** 200 answers per distinct request (hash of the body). */
  answered: Map<string, number>;
  /** Requests left hanging on purpose (stalls). */
  stalled: number;
  maxInFlight: number;
  /** Decides what to do with the attempt-th attempt (0-based) of a request. */
  plan: (key: string, attempt: number) => Fault;
  delayMs: number;
  /** Expected `authorization` header, if any (401 otherwise). */
  auth?: string;
  close(): Promise<void>;
}

export async function startFakeServer(
  opts: Partial<Pick<FakeServer, "plan" | "delayMs" | "auth">> = {},
): Promise<FakeServer> {
  const attempts = new Map<string, number>();
  const hanging = new Set<ServerResponse>();
  let inFlight = 0;
  const s: FakeServer = {
    url: "",
    received: 0,
    answered: new Map(),
    stalled: 0,
    maxInFlight: 0,
    plan: opts.plan ?? (() => "ok"),
    delayMs: opts.delayMs ?? 0,
    auth: opts.auth,
    close: async () => {
      for (const r of hanging) r.destroy();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  const server = createServer(async (req: IncomingMessage, res: ServerResponse) => {
    let body = "";
    for await (const c of req) body += c;
    s.received++;
    inFlight++;
    s.maxInFlight = Math.max(s.maxInFlight, inFlight);
    res.on("close", () => inFlight--);
    const j = JSON.parse(body) as { messages: { content: string }[]; seed?: number };
    const key = createHash("sha256").update(body).digest("hex");
    const attempt = attempts.get(key) ?? 0;
    attempts.set(key, attempt + 1);
    if (s.auth !== undefined && req.headers.authorization !== `Bearer ${s.auth}`) {
      res.writeHead(401).end("bad key");
      return;
    }
    const fault = s.plan(key, attempt);
    if (s.delayMs) await new Promise((r) => setTimeout(r, s.delayMs));
    if (fault === "429") res.writeHead(429, { "retry-after": "0" }).end("slow down");
    // The body echoes the auth header, so a test can check it never leaks.
    else if (fault === "500")
      res.writeHead(500).end(`internal error (auth was ${req.headers.authorization})`);
    else if (fault === "reset") req.socket.destroy();
    else if (fault === "stall") {
      s.stalled++;
      hanging.add(res);
    } else {
      s.answered.set(key, (s.answered.get(key) ?? 0) + 1);
      const q = j.messages[j.messages.length - 1].content;
      const n = parseInt(key.slice(0, 2), 16);
      const think = `thinking about ${q.length} chars`;
      const code = "```python\nprint(1)\n```";
      const message =
        n % 2
          ? { role: "assistant", content: `<think>\n${think}\n</think>\n\n${code}` }
          : { role: "assistant", content: code, reasoning_content: think };
      res.writeHead(200, { "content-type": "application/json" }).end(
        JSON.stringify({
          choices: [{ index: 0, message, finish_reason: "stop" }],
          usage: { prompt_tokens: 10, completion_tokens: 20 },
        }),
      );
    }
  });
  await new Promise<void>((r) => server.listen(0, "127.0.0.1", () => r()));
  s.url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
  return s;
}
