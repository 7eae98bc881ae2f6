import { spawn, type ChildProcess } from "node:child_process";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { openSync, readSync, fstatSync, closeSync } from "node:fs";
import { AsyncLocalStorage } from "node:async_hooks";
import type { Logger } from "pino";

/**
 * Child processes of stages run in their own process group, registered with
 * a watchdog that kills the group if the engine dies. Use `runCommand` for
 * every external program a stage starts.
 */
let reaper: ChildProcess | undefined;

function reaperProcess(): ChildProcess {
  if (!reaper || reaper.exitCode !== null) {
    const script = fileURLToPath(new URL("./reaper-child.js", import.meta.url));
    reaper = spawn(process.execPath, [script], {
      stdio: ["pipe", "ignore", "ignore"],
      detached: true,
    });
    reaper.unref();
    (reaper.stdin as NodeJS.WritableStream & { unref?: () => void }).on("error", () => {});
    // The pipe must not keep the engine alive; the watchdog is detached so
    // that Ctrl-C on the terminal does not kill it before it can act.
    (reaper.stdin as unknown as { unref(): void }).unref?.();
  }
  return reaper;
}

export function watchGroup(pgid: number): void {
  reaperProcess().stdin?.write(`+${pgid}\n`);
}

export function unwatchGroup(pgid: number): void {
  reaper?.stdin?.write(`-${pgid}\n`);
}

export function killGroup(pgid: number, signal: NodeJS.Signals = "SIGKILL"): void {
  try {
    process.kill(-pgid, signal);
  } catch {
    // no such group: already gone
  }
}

/**
 * Where the engine placed the attempt running in this async context: the GPU
 * device ids it reserved. Every program a stage starts through runCommand
 * gets them as CUDA_VISIBLE_DEVICES, so concurrent instances use distinct
 * GPUs without any stage handling it.
 */
export const placement = new AsyncLocalStorage<{ gpus: string[] }>();

/** A command that failed, with what a user needs to act on it. */
export class CommandError extends Error {
  override name = "CommandError";
  constructor(
    message: string,
    readonly exitCode: number | undefined,
    readonly signal: string | undefined,
    readonly tail: string[],
  ) {
    super(message);
  }
}

export interface RunCommandOptions {
  signal: AbortSignal;
  log: Logger;
  env: Record<string, string>;
  cwd?: string;
  /** Grace period between SIGTERM and SIGKILL on abort. */
  killAfterMs?: number;
  /** Called with each output line (after logging). */
  onLine?: (line: string, stream: "stdout" | "stderr") => void;
  /** Extra exit codes that count as success. */
  okCodes?: number[];
}

/**
 * Runs a program to completion in its own process group, logging each output
 * line. On abort the whole group gets SIGTERM, then SIGKILL; after the program
 * exits, any process it left in its group is killed too.
 */
export async function runCommand(
  file: string,
  args: string[],
  opts: RunCommandOptions,
): Promise<void> {
  const tail: string[] = [];
  const { execa } = await import("execa");
  const place = placement.getStore();
  const env =
    place && place.gpus.length > 0
      ? { ...opts.env, CUDA_VISIBLE_DEVICES: place.gpus.join(",") }
      : opts.env;
  const child = execa(file, args, {
    env,
    extendEnv: false,
    cwd: opts.cwd,
    detached: true,
    buffer: false,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    reject: false,
    cleanup: true,
  });
  const pid = child.pid;
  if (pid === undefined) {
    const r = await child;
    throw new CommandError(
      `cannot start ${file}: ${r.message ?? "spawn failed"}`,
      undefined,
      undefined,
      [],
    );
  }
  watchGroup(pid);
  const onAbort = () => {
    killGroup(pid, "SIGTERM");
    setTimeout(() => killGroup(pid, "SIGKILL"), opts.killAfterMs ?? 3000).unref();
  };
  if (opts.signal.aborted) onAbort();
  opts.signal.addEventListener("abort", onAbort, { once: true });
  const pump = (stream: NodeJS.ReadableStream | null | undefined, name: "stdout" | "stderr") =>
    new Promise<void>((res) => {
      if (!stream) return res();
      const rl = createInterface({ input: stream, crlfDelay: Infinity });
      rl.on("line", (line) => {
        opts.log.info({ stream: name }, line);
        tail.push(line);
        if (tail.length > 20) tail.shift();
        opts.onLine?.(line, name);
      });
      rl.on("close", () => res());
    });
  await Promise.all([pump(child.stdout, "stdout"), pump(child.stderr, "stderr")]);
  const r = await child;
  opts.signal.removeEventListener("abort", onAbort);
  killGroup(pid, "SIGKILL"); // leftovers such as `sleep 100 &`
  unwatchGroup(pid);
  const code = r.exitCode;
  if (opts.signal.aborted) {
    throw new CommandError(
      `${r.escapedCommand} was stopped (${String(opts.signal.reason ?? "aborted")})`,
      code,
      r.signal,
      tail,
    );
  }
  if (code === 0 || (code !== undefined && opts.okCodes?.includes(code))) return;
  const how = r.signal ? `was killed by ${r.signal}` : `failed with exit code ${code}`;
  throw new CommandError(`Command ${how}: ${r.escapedCommand}`, code, r.signal ?? undefined, tail);
}

/**
 * The last `n` stderr lines `runCommand` logged into an attempt's log (pino
 * JSON lines with `stream: "stderr"`), read from the log's end only: what a
 * failure summary shows under the error ("CUDA error: out of memory").
 */
export function stderrTail(logFile: string, n = 10): string[] {
  let text: string;
  try {
    const fd = openSync(logFile, "r");
    try {
      const size = fstatSync(fd).size;
      const len = Math.min(size, 256 << 10);
      const buf = Buffer.alloc(len);
      readSync(fd, buf, 0, len, size - len);
      text = buf.toString("utf8");
      // A read that starts mid-file starts mid-line: drop that partial line.
      if (len < size) text = text.slice(text.indexOf("\n") + 1);
    } finally {
      closeSync(fd);
    }
  } catch {
    return [];
  }
  const out: string[] = [];
  for (const line of text.split("\n")) {
    if (!line.includes('"stderr"')) continue;
    try {
      const rec = JSON.parse(line) as { stream?: string; msg?: string };
      if (rec.stream === "stderr" && typeof rec.msg === "string") out.push(rec.msg);
    } catch {
      // a line cut short by a crash
    }
  }
  return out.slice(-n);
}
