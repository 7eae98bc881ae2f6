/**
 * An engine-managed llama-server: started on 127.0.0.1 on a free port, waited
 * for until /health answers, restarted if it dies, and never left behind. The
 * server runs under a watchdog (watchdog.ts) that stops it when the pipe from
 * this process closes, so it goes away when the run ends, fails, is aborted,
 * or this process is killed with SIGKILL.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";
import type { Readable } from "node:stream";
import type { Logger } from "pino";
import type { ToolInfo } from "../engine/stage-api.js";
import { llamaEnv, llamaExe } from "./toolchain.js";
// Type-only: puts watchdog.ts into every program that compiles this file (so
// dist/llama/watchdog.js exists) without running it here.
import type {} from "./watchdog.js";

export interface LoraSpec {
  path: string;
  /** Default 1. */
  scale?: number;
}

export interface LlamaServerOptions {
  llama: ToolInfo;
  model: string;
  lora?: LoraSpec[];
  /** Parallel slots (-np). */
  parallel?: number;
  /** Total context (-c), shared by the slots. */
  contextSize?: number;
  threads?: number;
  /** Layers on the GPU (-ngl); "all" for every layer. */
  gpuLayers?: number | "all";
  /** Name the server reports as the model (-a). */
  alias?: string;
  extraArgs?: string[];
  /**
   * How chats become prompts: "jinja" (the default) runs the model's Jinja
   * template (--jinja); "builtin" is llama.cpp's llama_chat_apply_template,
   * the renderer valley's trainer uses, so a student is asked exactly as it
   * was taught (Jinja would add e.g. Qwen's default system prompt).
   */
  chatTemplate?: "jinja" | "builtin";
  /** Give up if /health is not OK within this time (default 120 s: big models load slowly). */
  startTimeoutMs?: number;
  /** Restarts after unexpected deaths before giving up (default 3). */
  maxRestarts?: number;
  signal?: AbortSignal;
  log?: Logger;
}

export interface LlamaServer {
  /** e.g. http://127.0.0.1:43127; may change after a restart. */
  readonly url: string;
  readonly port: number;
  /** pid of llama-server itself (not the watchdog), once known. */
  readonly pid: number | undefined;
  readonly restarts: number;
  /** Resolves when the server is healthy; after a crash, when the restart is. */
  ready(): Promise<void>;
  stop(): Promise<void>;
}

const WATCHDOG = fileURLToPath(new URL("./watchdog.js", import.meta.url));

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const s = createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const addr = s.address();
      const port = typeof addr === "object" && addr ? addr.port : 0;
      s.close(() => resolve(port));
    });
  });
}

export function serverArgs(opts: LlamaServerOptions, port: number): string[] {
  const a = ["-m", opts.model, "--host", "127.0.0.1", "--port", String(port)];
  // Jinja is llama-server's default; --no-jinja selects llama_chat_apply_template.
  a.push(opts.chatTemplate === "builtin" ? "--no-jinja" : "--jinja");
  a.push("--no-webui");
  if (opts.alias) a.push("-a", opts.alias);
  if (opts.parallel) a.push("-np", String(opts.parallel));
  if (opts.contextSize) a.push("-c", String(opts.contextSize));
  if (opts.threads) a.push("-t", String(opts.threads));
  if (opts.gpuLayers !== undefined)
    a.push("-ngl", String(opts.gpuLayers === "all" ? 999 : opts.gpuLayers));
  for (const l of opts.lora ?? []) {
    // The flag's value is split on ',' and ':'.
    if (/[,:]/.test(l.path))
      throw new Error(`LoRA path ${l.path} contains ',' or ':', which llama-server cannot parse`);
    a.push("--lora-scaled", `${l.path}:${l.scale ?? 1}`);
  }
  return [...a, ...(opts.extraArgs ?? [])];
}

function lines(stream: Readable, onLine: (l: string) => void): void {
  let partial = "";
  stream.on("data", (c: Buffer) => {
    const parts = (partial + c.toString("utf8")).split("\n");
    partial = parts.pop() ?? "";
    for (const l of parts) onLine(l);
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

class ManagedServer implements LlamaServer {
  port = 0;
  pid: number | undefined;
  restarts = 0;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private readyPromise: Promise<void> = Promise.resolve();
  private stopping = false;
  /** Set once /health answered: a death before that is a failed start, not a crash. */
  private healthy = false;
  private tail: string[] = [];
  private readonly exe: string;

  constructor(private readonly opts: LlamaServerOptions) {
    this.exe = llamaExe(opts.llama, "llama-server");
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  ready(): Promise<void> {
    return this.readyPromise;
  }

  /** Starts (or restarts) the server and waits for health; retries a port taken meanwhile. */
  async start(): Promise<void> {
    for (let attempt = 0; ; attempt++) {
      this.port = await freePort();
      this.spawnOnce();
      try {
        await this.waitHealthy();
        this.healthy = true;
        return;
      } catch (e) {
        const portTaken = this.tail.some((l) => /couldn't bind|address already in use/i.test(l));
        if (portTaken && attempt < 3 && !this.stopping) {
          await this.kill();
          continue;
        }
        await this.kill();
        throw e;
      }
    }
  }

  private spawnOnce(): void {
    const args = serverArgs(this.opts, this.port);
    this.tail = [];
    this.pid = undefined;
    this.healthy = false;
    const child = spawn(process.execPath, [WATCHDOG, this.exe, ...args], {
      stdio: ["pipe", "pipe", "pipe", "pipe"],
      env: llamaEnv(this.opts.llama),
    });
    this.child = child;
    const keep = (l: string) => {
      this.tail.push(l);
      if (this.tail.length > 40) this.tail.shift();
      this.opts.log?.debug({ server: this.port }, l);
    };
    lines(child.stdout as Readable, keep);
    lines(child.stderr as Readable, keep);
    lines(child.stdio[3] as Readable, (l) => {
      const n = Number(l);
      if (Number.isInteger(n) && n > 0) this.pid = n;
    });
    // The open stdin pipe is the lifeline: never written, closed on stop or
    // when this process ends. None of this keeps node's event loop alive.
    child.stdin?.on("error", () => {});
    for (const s of [child.stdin, child.stdout, child.stderr, child.stdio[3]]) {
      (s as unknown as { unref?: () => void } | null)?.unref?.();
    }
    child.unref();
    this.exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        resolve();
        if (this.child === child) this.child = undefined;
        if (!this.stopping && this.healthy) this.onUnexpectedExit(code, signal);
      });
    });
  }

  private onUnexpectedExit(code: number | null, signal: string | null): void {
    const why = `llama-server exited (${signal ?? `code ${code}`}); last output:\n${this.tail.slice(-15).join("\n")}`;
    const max = this.opts.maxRestarts ?? 3;
    if (this.restarts >= max) {
      this.opts.log?.error(why);
      this.readyPromise = Promise.reject(new Error(`${why}\n(gave up after ${max} restarts)`));
      this.readyPromise.catch(() => {});
      return;
    }
    this.restarts++;
    this.opts.log?.warn({ restarts: this.restarts }, `${why}\nrestarting`);
    this.readyPromise = this.start();
    this.readyPromise.catch(() => {});
  }

  private async waitHealthy(): Promise<void> {
    const deadline = Date.now() + (this.opts.startTimeoutMs ?? 120_000);
    const child = this.child;
    for (;;) {
      this.opts.signal?.throwIfAborted();
      if (!child || child.exitCode !== null || child.signalCode !== null || this.child !== child) {
        throw new Error(
          `llama-server did not start; last output:\n${this.tail.slice(-20).join("\n")}`,
        );
      }
      try {
        const r = await fetch(`${this.url}/health`, { signal: AbortSignal.timeout(2000) });
        if (r.ok) return;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) {
        throw new Error(
          `llama-server not healthy after ${(this.opts.startTimeoutMs ?? 120_000) / 1000} s; last output:\n` +
            this.tail.slice(-20).join("\n"),
        );
      }
      await sleep(150);
    }
  }

  /** Ends the current server: close the lifeline and TERM the watchdog, KILL after 10 s. */
  private async kill(): Promise<void> {
    const child = this.child;
    if (!child) return;
    const wasStopping = this.stopping;
    this.stopping = true;
    child.stdin?.end();
    child.kill("SIGTERM");
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      if (this.pid) {
        try {
          process.kill(this.pid, "SIGKILL");
        } catch {
          // gone
        }
      }
    }, 10_000);
    await this.exited;
    clearTimeout(timer);
    this.stopping = wasStopping;
  }

  async stop(): Promise<void> {
    this.stopping = true;
    await this.kill();
  }
}

/** Starts a managed llama-server and waits until it is healthy. */
export async function startLlamaServer(opts: LlamaServerOptions): Promise<LlamaServer> {
  opts.signal?.throwIfAborted();
  const s = new ManagedServer(opts);
  const onAbort = () => void s.stop();
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  try {
    await s.start();
  } catch (e) {
    opts.signal?.removeEventListener("abort", onAbort);
    await s.stop();
    throw e;
  }
  const stop = s.stop.bind(s);
  s.stop = async () => {
    opts.signal?.removeEventListener("abort", onAbort);
    await stop();
  };
  return s;
}

/** Runs `fn` with a server that is stopped when `fn` settles, whatever happens. */
export async function withLlamaServer<T>(
  opts: LlamaServerOptions,
  fn: (server: LlamaServer) => Promise<T>,
): Promise<T> {
  const s = await startLlamaServer(opts);
  try {
    return await fn(s);
  } finally {
    await s.stop();
  }
}
