import { spawn, type ChildProcess } from "node:child_process";
import { startProgram } from "./launcher.js";
import { DIST_ROOT } from "./root.js";
import { createInterface } from "node:readline";
import { openSync, readSync, fstatSync, closeSync, writeSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { AsyncLocalStorage } from "node:async_hooks";
import type { Logger } from "pino";

/**
 * Child processes of stages run in their own process group, registered with
 * a watchdog that kills the group if the engine dies. Use `runCommand` for
 * every external program a stage starts.
 *
 * Registration is a line appended to a file the watchdog reads only when the
 * engine is gone (its stdin pipe closes): a message over the pipe would wake
 * the watchdog twice per command, and on a busy machine each wake-up costs a
 * context switch away from the engine.
 */
let reaper: { child: ChildProcess; fd: number } | undefined;

function reaperProcess(): { child: ChildProcess; fd: number } {
  if (!reaper || reaper.child.exitCode !== null) {
    const file = join(tmpdir(), `valley-groups-${process.pid}-${Date.now()}`);
    const fd = openSync(file, "a", 0o600);
    const script = join(DIST_ROOT, "engine", "reaper-child.js");
    const child = spawn(process.execPath, [script, file], {
      stdio: ["pipe", "ignore", "ignore"],
      detached: true,
    });
    child.unref();
    (child.stdin as NodeJS.WritableStream & { unref?: () => void }).on("error", () => {});
    // The pipe must not keep the engine alive; the watchdog is detached so
    // that Ctrl-C on the terminal does not kill it before it can act.
    (child.stdin as unknown as { unref(): void }).unref?.();
    reaper = { child, fd };
  }
  return reaper;
}

export function watchGroup(pgid: number): void {
  writeSync(reaperProcess().fd, `+${pgid}\n`);
}

export function unwatchGroup(pgid: number): void {
  if (reaper) writeSync(reaper.fd, `-${pgid}\n`);
}

export function killGroup(pgid: number, signal: NodeJS.Signals = "SIGKILL"): void {
  // Usually the group is empty by now (ESRCH): skip the stack trace of the
  // error that reports it, which costs more than the kill itself.
  const limit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    process.kill(-pgid, signal);
  } catch {
    // no such group: already gone
  } finally {
    Error.stackTraceLimit = limit;
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
  const place = placement.getStore();
  const env =
    place && place.gpus.length > 0
      ? { ...opts.env, CUDA_VISIBLE_DEVICES: place.gpus.join(",") }
      : opts.env;
  const shown = [file, ...args].map(quoteArg).join(" ");
  // Not execa, and not a fork of this process where a launcher can start it:
  // per command that costs a fraction of the CPU, which matters for DAGs of
  // thousands of small jobs (test/bench/engine.mjs, engine/launcher.ts).
  const child = await startProgram(executable(file, env.PATH), args, { env, cwd: opts.cwd });
  const exited = child.exited;
  const pid = child.pid;
  if (pid === undefined) {
    const r = await exited;
    throw new CommandError(
      `cannot start ${file}: ${r.error?.message ?? "spawn failed"}`,
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
  const pumped = Promise.all([pump(child.stdout, "stdout"), pump(child.stderr, "stderr")]);
  const r = await exited;
  // Leftovers such as `sleep 100 &` die with the program; what they wrote
  // before is still read from the pipes.
  killGroup(pid, "SIGKILL");
  await pumped;
  opts.signal.removeEventListener("abort", onAbort);
  unwatchGroup(pid);
  const code = r.code ?? undefined;
  if (opts.signal.aborted) {
    throw new CommandError(
      `${shown} was stopped (${String(opts.signal.reason ?? "aborted")})`,
      code,
      r.signal ?? undefined,
      tail,
    );
  }
  if (code === 0 || (code !== undefined && opts.okCodes?.includes(code))) return;
  const how = r.signal ? `was killed by ${r.signal}` : `failed with exit code ${code}`;
  throw new CommandError(`Command ${how}: ${shown}`, code, r.signal ?? undefined, tail);
}

/** An argument as a shell would need it written (for messages only). */
function quoteArg(a: string): string {
  return /^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, "'\\''")}'`;
}

const found = new Map<string, string>();
/**
 * The absolute path of a program named without a folder, looked up in PATH
 * once per run: exec's own lookup tries every PATH entry on every spawn (a
 * failed execve each), thousands of times in a large DAG.
 */
function executable(file: string, path = process.env.PATH ?? ""): string {
  if (file.includes("/")) return file;
  const k = `${path}\0${file}`;
  let exe = found.get(k);
  if (exe === undefined) {
    exe = file;
    for (const dir of path.split(delimiter)) {
      if (!dir) continue;
      const p = join(dir, file);
      try {
        const st = statSync(p);
        if (st.isFile() && (st.mode & 0o111) !== 0) {
          exe = p;
          break;
        }
      } catch {
        // not here
      }
    }
    found.set(k, exe);
  }
  return exe;
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
