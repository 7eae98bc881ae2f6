/**
 * Running untrusted Python in bubblewrap. One sandbox per candidate: all
 * namespaces unshared (no network), a read-only /usr and nothing else of the
 * host, a size-capped tmpfs /tmp, a cleared environment. Inside, the harness
 * (driver.py, PID 1 of the namespace) forks one child per test under rlimits.
 * The host enforces a wall clock on the whole sandbox by killing its process
 * group; bwrap's --die-with-parent and the PID namespace take every process
 * inside down with it.
 *
 * RLIMIT_NPROC counts every process of a uid on the host, and root is exempt
 * from it. So when we are root the sandbox runs under a fresh random uid
 * (setpriv), which gives the process limit meaning and keeps concurrent
 * sandboxes from sharing one count.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { randomInt } from "node:crypto";
import { existsSync, readFileSync } from "node:fs";
import { projectFile } from "./paths.js";
import type { TestType } from "./types.js";

export type SandboxKind = "bwrap" | "none";

export interface SandboxLimits {
  /** CPU seconds per test (RLIMIT_CPU rounds up to whole seconds; the host checks the exact figure). */
  cpuS: number;
  /** Wall-clock seconds per test before the harness kills it. */
  wallS: number;
  /** Address space per test program, MiB. */
  memoryMb: number;
  /** Largest file a program may write. */
  fileSizeBytes: number;
  openFiles: number;
  /** Processes and threads of the sandbox's uid. */
  processes: number;
  /** Bytes of stdout kept; more is an OLE. */
  stdoutBytes: number;
  /** Bytes of stderr kept; more is dropped (drained, not blocked). */
  stderrBytes: number;
  /** Size of the sandbox's /tmp. */
  tmpBytes: number;
}

export const DEFAULT_LIMITS: SandboxLimits = {
  cpuS: 6,
  wallS: 13,
  memoryMb: 1024,
  fileSizeBytes: 16 << 20,
  openFiles: 256,
  processes: 64,
  stdoutBytes: 16 << 20,
  stderrBytes: 64 << 10,
  tmpBytes: 32 << 20,
};

export interface SandboxRequest {
  code: string;
  mode: TestType;
  fnName?: string;
  /** Test inputs only: expected outputs stay on the host. */
  inputs: string[];
  limits: SandboxLimits;
}

/** One test as the harness saw it. */
export interface RawRun {
  index: number;
  exitCode: number | null;
  signal: number | null;
  timedOut: boolean;
  outputLimitExceeded: boolean;
  cpuS: number | null;
  wallS: number;
  stdout: Buffer;
  stderr: Buffer;
  /** Name of the exception that ended the program, if the harness saw one. */
  exception: string | null;
  /** Functional tests: the JSON text of the returned value. */
  result: string | null;
}

export type SessionEnd =
  | { kind: "done" }
  | { kind: "compile-error"; message: string }
  /** The harness died while test `index` ran (its output never came): the program's doing or a hard kill. */
  | { kind: "crashed"; index: number; message: string }
  /** The host's wall clock for the whole sandbox ran out while test `index` ran. */
  | { kind: "timeout"; index: number }
  /** The sandbox could not start or broke its protocol: an infrastructure error. */
  | { kind: "infra"; message: string };

export interface SandboxOptions {
  sandbox: SandboxKind;
  /** bubblewrap's path (default /usr/bin/bwrap). */
  bwrap?: string;
  signal?: AbortSignal;
}

let driverSource: string | undefined;
function driver(): string {
  driverSource ??= readFileSync(projectFile("grader/driver.py"), "utf8");
  return driverSource;
}

const PYTHON = "/usr/bin/python3";
const BWRAP = "/usr/bin/bwrap";
const SETPRIV = "/usr/bin/setpriv";

function bwrapArgs(limits: SandboxLimits): string[] {
  const args = [
    "--unshare-all",
    "--die-with-parent",
    "--new-session",
    "--clearenv",
    "--as-pid-1",
    "--cap-drop",
    "ALL",
    "--ro-bind",
    "/usr",
    "/usr",
    "--symlink",
    "usr/lib",
    "/lib",
    "--symlink",
    "usr/bin",
    "/bin",
  ];
  if (existsSync("/usr/lib64")) args.push("--symlink", "usr/lib64", "/lib64");
  args.push(
    "--proc",
    "/proc",
    "--dev",
    "/dev",
    "--size",
    String(limits.tmpBytes),
    "--tmpfs",
    "/tmp",
    "--chdir",
    "/tmp",
    "--hostname",
    "sandbox",
    "--setenv",
    "HOME",
    "/tmp",
    "--setenv",
    "PATH",
    "/usr/bin:/bin",
  );
  return args;
}

/** The command line that starts one sandbox running the harness. */
export function sandboxCommand(
  kind: SandboxKind,
  limits: SandboxLimits,
  bwrap = BWRAP,
): { file: string; args: string[] } {
  const py = [PYTHON, "-I", "-c", driver()];
  if (kind === "none") return { file: PYTHON, args: py.slice(1) };
  const inner = [bwrap, ...bwrapArgs(limits), ...py];
  if (process.getuid?.() === 0) {
    // A uid nobody uses, fresh per sandbox; see the module comment.
    const uid = 1_000_000 + randomInt(1 << 24);
    return {
      file: SETPRIV,
      args: [`--reuid=${uid}`, `--regid=${uid}`, "--clear-groups", "--no-new-privs", ...inner],
    };
  }
  return { file: inner[0], args: inner.slice(1) };
}

interface DriverTestLine {
  i: number;
  exit_code: number | null;
  signal: number | null;
  timed_out: boolean;
  ole: boolean;
  cpu_s: number | null;
  wall_s: number;
  stdout: string;
  stderr: string;
  exc: string | null;
  result: string | null;
}

function toRaw(l: DriverTestLine): RawRun {
  return {
    index: l.i,
    exitCode: l.exit_code,
    signal: l.signal,
    timedOut: l.timed_out,
    outputLimitExceeded: l.ole,
    cpuS: l.cpu_s,
    wallS: l.wall_s,
    stdout: Buffer.from(l.stdout, "base64"),
    stderr: Buffer.from(l.stderr, "base64"),
    exception: l.exc,
    result: l.result,
  };
}

function killTree(child: ChildProcess): void {
  if (child.pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  try {
    // The whole process group: setpriv execs bwrap, so this is bwrap itself.
    process.kill(-child.pid, "SIGKILL");
  } catch {
    try {
      child.kill("SIGKILL");
    } catch {
      /* already gone */
    }
  }
}

/**
 * Runs the candidate on each input in order, calling `onTest` as each finishes;
 * `onTest` returns false to stop. Resolves with how the session ended; never
 * rejects for anything the program does.
 */
export function runSandboxed(
  req: SandboxRequest,
  onTest: (run: RawRun) => boolean,
  opts: SandboxOptions,
): Promise<SessionEnd> {
  const { file, args } = sandboxCommand(opts.sandbox, req.limits, opts.bwrap);
  const l = req.limits;
  const request = {
    code: req.code,
    mode: req.mode,
    fn_name: req.fnName ?? null,
    tests: req.inputs,
    limits: {
      cpu_s: Math.max(1, Math.ceil(l.cpuS)),
      wall_s: l.wallS,
      as_bytes: l.memoryMb * 1024 * 1024,
      fsize_bytes: l.fileSizeBytes,
      nofile: l.openFiles,
      nproc: l.processes,
      stdout_bytes: l.stdoutBytes,
      stderr_bytes: l.stderrBytes,
    },
  };
  // Per test: the harness's own wall clock plus its bookkeeping; then start-up.
  const hostWallMs = (req.inputs.length * (l.wallS + 2) + 15) * 1000;
  // A result line carries base64 stdout and stderr: anything longer is a broken protocol.
  const maxLine = Math.ceil(((l.stdoutBytes + l.stderrBytes) * 4) / 3) + (1 << 20);

  return new Promise<SessionEnd>((resolve) => {
    let settled = false;
    let end: SessionEnd | undefined;
    let started = false;
    let nextIndex = 0;
    let stopped = false;
    const errChunks: Buffer[] = [];
    let errBytes = 0;

    const child = spawn(file, args, {
      stdio: ["pipe", "pipe", "pipe"],
      detached: true,
      env: { PATH: "/usr/bin:/bin" },
    });

    const finish = (e: SessionEnd) => {
      end ??= e;
    };
    const fail = (e: SessionEnd) => {
      finish(e);
      killTree(child);
    };

    const timer = setTimeout(() => fail({ kind: "timeout", index: nextIndex }), hostWallMs);
    const onAbort = () => fail({ kind: "infra", message: "grading was aborted" });
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    if (opts.signal?.aborted) onAbort();

    const send = (s: string) => {
      if (child.stdin && !child.stdin.destroyed) child.stdin.write(s);
    };
    child.stdin?.on("error", () => {
      /* the harness exits when done; a late write may hit a closed pipe */
    });

    const handleLine = (line: string) => {
      let msg: Record<string, unknown>;
      try {
        msg = JSON.parse(line) as Record<string, unknown>;
      } catch {
        fail({ kind: "infra", message: `sandbox harness sent a malformed line: ${line.slice(0, 200)}` });
        return;
      }
      if (!started) {
        started = true;
        if (typeof msg.ce === "string") {
          finish({ kind: "compile-error", message: msg.ce });
          return;
        }
        if (msg.ready !== true) fail({ kind: "infra", message: `sandbox harness did not start: ${line.slice(0, 200)}` });
        return;
      }
      const run = toRaw(msg as unknown as DriverTestLine);
      if (run.index !== nextIndex) {
        fail({ kind: "infra", message: `sandbox harness reported test ${run.index}, expected ${nextIndex}` });
        return;
      }
      nextIndex++;
      let more = false;
      try {
        more = onTest(run) && nextIndex < req.inputs.length;
      } catch (e) {
        fail({ kind: "infra", message: `grading callback failed: ${(e as Error).message}` });
        return;
      }
      if (more) send("c\n");
      else {
        stopped = true;
        send("q\n");
        child.stdin?.end();
      }
    };

    // Lines can be megabytes of base64: keep chunks, join only at a newline.
    let parts: Buffer[] = [];
    let partBytes = 0;
    child.stdout?.on("data", (chunk: Buffer) => {
      let from = 0;
      let nl: number;
      while ((nl = chunk.indexOf(10, from)) >= 0) {
        parts.push(chunk.subarray(from, nl));
        const line = Buffer.concat(parts).toString("utf8");
        parts = [];
        partBytes = 0;
        from = nl + 1;
        if (end === undefined) handleLine(line);
      }
      if (from < chunk.length) {
        parts.push(chunk.subarray(from));
        partBytes += chunk.length - from;
      }
      if (partBytes > maxLine) fail({ kind: "infra", message: "sandbox harness sent an oversized line" });
    });
    child.stderr?.on("data", (chunk: Buffer) => {
      if (errBytes < 65536) errChunks.push(chunk);
      errBytes += chunk.length;
    });

    const settle = (e: SessionEnd) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener("abort", onAbort);
      killTree(child);
      resolve(e);
    };

    child.on("error", (err: NodeJS.ErrnoException) => {
      const what = err.code === "ENOENT" ? `${file} not found` : err.message;
      const hint = file.endsWith("bwrap") || file === SETPRIV ? " (install the Debian package bubblewrap; util-linux gives setpriv)" : "";
      settle({ kind: "infra", message: `cannot start the sandbox: ${what}${hint}` });
    });
    child.on("close", (code, sig) => {
      if (end) return settle(end);
      const stderr = Buffer.concat(errChunks).toString("utf8").trim().slice(-2000);
      if (!started) {
        return settle({
          kind: "infra",
          message:
            `the sandbox did not start (${sig ? `signal ${sig}` : `exit ${code}`})` +
            (stderr ? `: ${stderr}` : "") +
            (opts.sandbox === "bwrap" ? ` — command: ${file} … bwrap (is unprivileged user-namespace creation allowed?)` : ""),
        });
      }
      if (stopped || nextIndex >= req.inputs.length) return settle({ kind: "done" });
      settle({
        kind: "crashed",
        index: nextIndex,
        message: `the sandbox ended while test ${nextIndex} ran (${sig ? `signal ${sig}` : `exit ${code}`})${stderr ? `: ${stderr}` : ""}`,
      });
    });

    child.stdin?.write(JSON.stringify(request) + "\n");
    if (req.inputs.length === 0) child.stdin?.end();
  });
}

/** Starts one sandbox with no tests: null when it works, else why not. */
export async function probeSandbox(kind: SandboxKind, bwrap?: string): Promise<string | null> {
  const end = await runSandboxed(
    { code: "pass\n", mode: "stdin", inputs: [], limits: DEFAULT_LIMITS },
    () => false,
    { sandbox: kind, bwrap },
  );
  return end.kind === "done" ? null : end.kind === "infra" ? end.message : `unexpected probe result ${end.kind}`;
}
