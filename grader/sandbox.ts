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
 * (node sets it at spawn), which gives the process limit meaning and keeps concurrent
 * sandboxes from sharing one count.
 */
import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { randomInt } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { projectFile } from "./paths.js";
import type { TestType } from "./types.js";

export type SandboxKind = "bwrap" | "none";

/** Whose verdicts the harness reproduces (see grader/semantics.ts). */
export type Semantics = "strict" | "lcb" | "taco";

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
  /** Test inputs. Expected outputs stay on the host, except under `lcb` and functional `taco` (below). */
  inputs: string[];
  limits: SandboxLimits;
  /** Default strict. */
  semantics?: Semantics;
  /** taco stdin: run the program as given ("plain") or TACO's function-wrapped form ("wrapped"). */
  variant?: "plain" | "wrapped";
  /** lcb and taco: the per-test alarm, seconds of wall clock. */
  alarmS?: number;
  /**
   * lcb, and taco functional: the expected outputs. Those harnesses compare in
   * the candidate's process (Python ==), so these do too.
   */
  expected?: string[];
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
  /** lcb and functional taco: the in-process judgement (pass, wa, tle, re, mle, ce) and why. */
  status?: string;
  note?: string;
  /** taco stdin: the retry reading input.txt and writing output.txt, after a non-zero exit. */
  fileRetry?: { exitCode: number | null; timedOut: boolean; output: Buffer | null };
}

export type SessionEnd =
  | { kind: "done" }
  /** `final` (taco): TACO's wrapped form does not load, so no retry helps. */
  | { kind: "compile-error"; message: string; final?: boolean }
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

const PYTHON = "/usr/bin/python3";
const BWRAP = "/usr/bin/bwrap";

/**
 * The harness as a marshalled code object, with `python3 -I`'s sys.path,
 * made once per process by the host's own interpreter: each sandbox then
 * starts `python3 -I -S` (no site module, no .pth files, ~8 ms less) and
 * skips compiling the harness. See driver.py's header.
 */
let boot: { code: string; blob: Buffer } | undefined;
function driverBoot(): { code: string; blob: Buffer } {
  if (boot) return boot;
  const source = readFileSync(projectFile("grader/driver.py"), "utf8");
  const r = spawnSync(
    PYTHON,
    [
      "-I",
      "-c",
      "import marshal, sys\n" +
        "code = compile(sys.stdin.read(), 'driver.py', 'exec', dont_inherit=True)\n" +
        "sys.stdout.buffer.write(marshal.dumps((sys.path, code)))",
    ],
    { input: source, maxBuffer: 1 << 24 },
  );
  if (r.error || r.status !== 0) {
    const why = r.error?.message ?? `exit ${r.status}: ${String(r.stderr).trim().slice(-500)}`;
    throw new Error(`cannot compile the sandbox harness with ${PYTHON}: ${why}`);
  }
  const blob = r.stdout;
  const code =
    "import sys, marshal\n" +
    `SITE_PATH, _harness = marshal.loads(sys.stdin.buffer.read(${blob.length}))\n` +
    "exec(_harness)\n";
  boot = { code, blob };
  return boot;
}

function bwrapArgs(limits: SandboxLimits, preload?: Semantics): string[] {
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
  // Debian's shared-library alternatives (libblas.so.3 → /etc/alternatives →
  // /usr/lib/…): numpy, which TACO's preamble imports, cannot load without them.
  // Symlinks into /usr only.
  if (existsSync("/etc/alternatives"))
    args.push("--ro-bind", "/etc/alternatives", "/etc/alternatives");
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
  // The harness imports what these semantics need while it waits.
  if (preload && preload !== "strict") args.push("--setenv", "VALLEY_PRELOAD", preload);
  return args;
}

/**
 * The command line that starts one sandbox running the harness, and the uid it
 * runs under (when we are root: a uid nobody uses, fresh per sandbox; see the
 * module comment). The harness's code follows on its stdin (driverBoot).
 */
export function sandboxCommand(
  kind: SandboxKind,
  limits: SandboxLimits,
  bwrap = BWRAP,
  preload?: Semantics,
): { file: string; args: string[]; uid?: number } {
  const py = [PYTHON, "-I", "-S", "-c", driverBoot().code];
  if (kind === "none") return { file: PYTHON, args: py.slice(1) };
  const args = [...bwrapArgs(limits, preload), ...py];
  // Node sets the uid and gid and clears supplementary groups before exec;
  // bwrap sets no_new_privs itself. One exec fewer than setpriv.
  if (process.getuid?.() === 0) return { file: bwrap, args, uid: 1_000_000 + randomInt(1 << 24) };
  return { file: bwrap, args };
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
  /** base64, like every text field the harness sends. */
  exc: string | null;
  result: string | null;
  status?: string;
  note?: string;
  file_exit?: number | null;
  file_timed_out?: boolean;
  file_out?: string | null;
}

function toRaw(l: DriverTestLine): RawRun {
  const text = (b: string) => Buffer.from(b, "base64").toString("utf8");
  return {
    ...(l.status !== undefined ? { status: text(l.status), note: text(l.note ?? "") } : {}),
    ...(l.file_exit !== undefined
      ? {
          fileRetry: {
            exitCode: l.file_exit,
            timedOut: l.file_timed_out === true,
            output: l.file_out ? Buffer.from(l.file_out, "base64") : null,
          },
        }
      : {}),
    index: l.i,
    exitCode: l.exit_code,
    signal: l.signal,
    timedOut: l.timed_out,
    outputLimitExceeded: l.ole,
    cpuS: l.cpu_s,
    wallS: l.wall_s,
    stdout: Buffer.from(l.stdout, "base64"),
    stderr: Buffer.from(l.stderr, "base64"),
    exception: l.exc === null ? null : Buffer.from(l.exc, "base64").toString("utf8"),
    result: l.result === null ? null : Buffer.from(l.result, "base64").toString("utf8"),
  };
}

function alive(child: ChildProcess): child is ChildProcess & { pid: number } {
  return child.pid !== undefined && child.exitCode === null && child.signalCode === null;
}

/** Direct children of a process (bwrap's: the sandbox's init). */
function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8")
      .split(/\s+/)
      .filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

/**
 * Kills a sandbox. The sandbox's init (bwrap's child) goes first: the PID
 * namespace dies with it, and bwrap, its child gone, exits and is reaped by us.
 * Killing bwrap first would orphan that init to the host's PID 1, which (in a
 * container) may never reap it. The whole process group follows shortly after,
 * in case bwrap itself is stuck.
 */
function killTree(child: ChildProcess): void {
  if (!alive(child)) return;
  const inits = childrenOf(child.pid);
  for (const pid of inits) {
    try {
      process.kill(pid, "SIGKILL");
    } catch {
      /* already gone */
    }
  }
  const group = () => {
    if (!alive(child)) return;
    try {
      process.kill(-child.pid, "SIGKILL");
    } catch {
      try {
        child.kill("SIGKILL");
      } catch {
        /* already gone */
      }
    }
  };
  if (inits.length === 0) group();
  else setTimeout(group, 500).unref();
}

let ownCount: { at: number; n: number } | undefined;
/**
 * When we are not root the sandbox runs under our own uid, whose other
 * processes count against RLIMIT_NPROC too: the limit is raised by their
 * number (re-counted at most once a second). As root it is 0: each sandbox has
 * a uid of its own.
 */
function processesOfOwnUid(): number {
  const uid = process.getuid?.();
  if (uid === undefined || uid === 0) return 0;
  const now = Date.now();
  if (ownCount && now - ownCount.at < 1000) return ownCount.n;
  let n = 0;
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (statSync(`/proc/${name}`).uid === uid)
        n += Number(
          readFileSync(`/proc/${name}/status`, "utf8").match(/^Threads:\s+(\d+)/m)?.[1] ?? 1,
        );
    } catch {
      /* exited meanwhile */
    }
  }
  ownCount = { at: now, n };
  return n;
}

export interface SpawnOptions {
  sandbox: SandboxKind;
  bwrap?: string;
  /** Only the fields fixed at start-up are used: the size of /tmp and the output caps. */
  limits: SandboxLimits;
  /** Modules to import while waiting (lcb, taco). */
  preload?: Semantics;
}

/**
 * A started sandbox whose harness waits for its request. Starting one costs
 * most of a sandbox's time (namespaces, the interpreter), so a grader starts
 * the next while the current one runs. Every event is captured from the
 * start, so one may sit unused without losing an exit or a spawn error.
 */
export class SandboxProcess {
  /** Undefined when the process could not even be spawned (see spawnError). */
  readonly child: ChildProcess | undefined;
  readonly file: string;
  /** The uid the sandbox was to run under (root only). */
  readonly uid: number | undefined;
  readonly kind: SandboxKind;
  /** Resolves when the process has exited and its pipes are closed. */
  readonly closed: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  spawnError: NodeJS.ErrnoException | undefined;
  private readonly maxLine: number;
  private lineHandler: ((line: string) => void) | undefined;
  private readonly queued: string[] = [];
  private parts: Buffer[] = [];
  private partBytes = 0;
  private errChunks: Buffer[] = [];
  private errBytes = 0;
  overflow = false;
  taken = false;

  constructor(opts: SpawnOptions) {
    this.kind = opts.sandbox;
    // A result line carries base64 stdout and stderr: anything longer is a broken protocol.
    this.maxLine =
      Math.ceil(((opts.limits.stdoutBytes + opts.limits.stderrBytes) * 4) / 3) + (1 << 20);
    let child: ChildProcess;
    try {
      const { file, args, uid } = sandboxCommand(
        opts.sandbox,
        opts.limits,
        opts.bwrap,
        opts.preload,
      );
      this.file = file;
      this.uid = uid;
      // Throws at once when the uid cannot be set (e.g. root inside a user
      // namespace that does not map it): an infrastructure error, not a crash.
      child = spawn(file, args, {
        stdio: ["pipe", "pipe", "pipe"],
        detached: true,
        env: { PATH: "/usr/bin:/bin" },
        ...(uid === undefined ? {} : { uid, gid: uid }),
      });
    } catch (e) {
      this.file ??= opts.bwrap ?? BWRAP;
      this.spawnError = e as NodeJS.ErrnoException;
      this.closed = Promise.resolve({ code: null, signal: null });
      return;
    }
    this.child = child;
    this.closed = new Promise((resolve) => {
      child.on("close", (code, signal) => resolve({ code, signal }));
      child.on("error", (err: NodeJS.ErrnoException) => {
        this.spawnError = err;
        // A process that never started emits no close.
        if (child.pid === undefined) resolve({ code: null, signal: null });
      });
    });
    child.stdin?.on("error", () => {
      /* the harness exits when done; a late write may hit a closed pipe */
    });
    // The harness's code goes first, so it loads while waiting for a request.
    this.write(driverBoot().blob);
    // Lines can be megabytes of base64: keep chunks, join only at a newline.
    child.stdout?.on("data", (chunk: Buffer) => {
      let from = 0;
      let nl: number;
      while ((nl = chunk.indexOf(10, from)) >= 0) {
        this.parts.push(chunk.subarray(from, nl));
        const line = Buffer.concat(this.parts).toString("utf8");
        this.parts = [];
        this.partBytes = 0;
        from = nl + 1;
        if (this.lineHandler) this.lineHandler(line);
        else this.queued.push(line);
      }
      if (from < chunk.length) {
        this.parts.push(chunk.subarray(from));
        this.partBytes += chunk.length - from;
      }
      if (this.partBytes > this.maxLine && !this.overflow) {
        this.overflow = true;
        this.kill();
      }
    });
    child.stderr?.on("data", (chunk: Buffer) => {
      if (this.errBytes < 65536) this.errChunks.push(chunk);
      this.errBytes += chunk.length;
    });
  }

  onLine(handler: (line: string) => void): void {
    this.lineHandler = handler;
    for (const l of this.queued.splice(0)) handler(l);
  }

  write(data: string | Buffer): void {
    const stdin = this.child?.stdin;
    if (stdin && !stdin.destroyed && !stdin.writableEnded) stdin.write(data);
  }

  endInput(): void {
    this.child?.stdin?.end();
  }

  stderrText(): string {
    return Buffer.concat(this.errChunks).toString("utf8").trim().slice(-2000);
  }

  kill(): void {
    if (this.child) killTree(this.child);
  }

  /** Ends an unused warm sandbox (its harness exits on end of input) and waits until it is gone. */
  async dispose(): Promise<void> {
    this.endInput();
    const t = setTimeout(() => this.kill(), 2000);
    await this.closed;
    clearTimeout(t);
  }
}

/**
 * Runs the candidate on each input in order, calling `onTest` as each finishes;
 * `onTest` returns false to stop. Resolves with how the session ended; never
 * rejects for anything the program does. `proc` is a sandbox started earlier
 * with the same options; without one, a sandbox is started here.
 */
export async function runSandboxed(
  req: SandboxRequest,
  onTest: (run: RawRun) => boolean,
  opts: SandboxOptions,
  proc?: SandboxProcess,
): Promise<SessionEnd> {
  const l = req.limits;
  if (req.fnName !== undefined && !/^[A-Za-z_][A-Za-z0-9_]*$/.test(req.fnName)) {
    await proc?.dispose();
    return {
      kind: "infra",
      message: `fn_name ${JSON.stringify(req.fnName)} is not a Python identifier`,
    };
  }
  const p =
    proc ??
    new SandboxProcess({
      sandbox: opts.sandbox,
      bwrap: opts.bwrap,
      limits: l,
      preload: req.semantics,
    });
  if (p.taken) throw new Error("a sandbox process runs one candidate only");
  p.taken = true;
  // The harness reads a header line, then length-prefixed blobs (see driver.py).
  const header = [
    req.mode,
    req.fnName ?? "-",
    req.inputs.length,
    Math.max(1, Math.ceil(l.cpuS)),
    l.wallS,
    l.memoryMb * 1024 * 1024,
    l.fileSizeBytes,
    l.openFiles,
    l.processes + processesOfOwnUid(),
    l.stdoutBytes,
    l.stderrBytes,
    req.semantics ?? "strict",
    req.variant ?? "plain",
    req.alarmS ?? l.cpuS,
  ].join(" ");
  const blob = (s: string) => {
    const b = Buffer.from(s, "utf8");
    return [Buffer.from(`${b.length}\n`), b];
  };
  const request = Buffer.concat([
    Buffer.from(header + "\n"),
    ...blob(req.code),
    ...req.inputs.flatMap(blob),
    ...(req.expected ?? []).flatMap(blob),
  ]);
  // The host keeps its own clocks, so a harness that stalls (or was tampered
  // with) cannot stretch a test: start-up, then each test's wall clock + 2 s.
  const startupMs = 15_000;
  const perTestMs = (l.wallS + 2) * 1000;

  let end: SessionEnd | undefined;
  let started = false;
  let nextIndex = 0;
  let stopped = false;
  const finish = (e: SessionEnd) => {
    end ??= e;
  };
  const fail = (e: SessionEnd) => {
    finish(e);
    p.kill();
  };

  let timer: NodeJS.Timeout | undefined;
  const arm = (ms: number, what: () => SessionEnd) => {
    clearTimeout(timer);
    timer = setTimeout(() => fail(what()), ms);
  };
  arm(startupMs, () => ({
    kind: "infra",
    message: `the sandbox did not start within ${startupMs / 1000} s`,
  }));
  const armTest = () => arm(perTestMs, () => ({ kind: "timeout", index: nextIndex }));
  const onAbort = () => fail({ kind: "infra", message: "grading was aborted" });
  opts.signal?.addEventListener("abort", onAbort, { once: true });
  if (opts.signal?.aborted) onAbort();

  p.onLine((line) => {
    if (end !== undefined) return;
    let msg: Record<string, unknown>;
    try {
      msg = JSON.parse(line) as Record<string, unknown>;
    } catch {
      fail({
        kind: "infra",
        message: `sandbox harness sent a malformed line: ${line.slice(0, 200)}`,
      });
      return;
    }
    if (!started) {
      started = true;
      if (typeof msg.ce === "string") {
        finish({
          kind: "compile-error",
          message: Buffer.from(msg.ce, "base64").toString("utf8"),
          ...(msg.final === true ? { final: true } : {}),
        });
        return;
      }
      if (typeof msg.ie === "string") {
        finish({ kind: "infra", message: Buffer.from(msg.ie, "base64").toString("utf8") });
        return;
      }
      if (msg.ready !== true)
        fail({ kind: "infra", message: `sandbox harness did not start: ${line.slice(0, 200)}` });
      else if (req.inputs.length > 0) armTest();
      return;
    }
    const run = toRaw(msg as unknown as DriverTestLine);
    if (run.index !== nextIndex) {
      fail({
        kind: "infra",
        message: `sandbox harness reported test ${run.index}, expected ${nextIndex}`,
      });
      return;
    }
    nextIndex++;
    let more: boolean;
    try {
      more = onTest(run) && nextIndex < req.inputs.length;
    } catch (e) {
      fail({ kind: "infra", message: `grading callback failed: ${(e as Error).message}` });
      return;
    }
    if (more) {
      armTest();
      p.write("c\n");
    } else {
      // Every result is in; a harness that does not exit is simply killed.
      arm(5000, () => ({ kind: "done" }));
      stopped = true;
      p.write("q\n");
      p.endInput();
    }
  });

  p.write(request);
  if (req.inputs.length === 0) p.endInput();
  const { code, signal } = await p.closed;
  clearTimeout(timer);
  opts.signal?.removeEventListener("abort", onAbort);
  p.kill();

  if (p.spawnError) {
    const err = p.spawnError;
    const what = err.code === "ENOENT" ? `${p.file} not found` : err.message;
    const hint =
      err.code === "ENOENT" && p.kind === "bwrap"
        ? " (install the Debian package bubblewrap)"
        : p.uid !== undefined && (err.code === "EINVAL" || err.code === "EPERM")
          ? ` (as root, each sandbox runs under a uid of its own, here ${p.uid}, and switching to it failed:` +
            " root inside a user namespace that does not map it, or without CAP_SETUID? Run valley as a regular user)"
          : "";
    return { kind: "infra", message: `cannot start the sandbox: ${what}${hint}` };
  }
  if (p.overflow) return { kind: "infra", message: "sandbox harness sent an oversized line" };
  if (end) return end;
  const how = signal ? `signal ${signal}` : `exit ${code}`;
  const stderr = p.stderrText();
  if (!started) {
    return {
      kind: "infra",
      message:
        `the sandbox did not start (${how})` +
        (stderr ? `: ${stderr}` : "") +
        (p.kind === "bwrap"
          ? ` — ${p.file} … bwrap: is unprivileged user-namespace creation allowed?`
          : ""),
    };
  }
  if (stopped || nextIndex >= req.inputs.length) return { kind: "done" };
  return {
    kind: "crashed",
    index: nextIndex,
    message: `the sandbox ended while test ${nextIndex} ran (${how})${stderr ? `: ${stderr}` : ""}`,
  };
}

/** Starts one sandbox with no tests: null when it works, else why not. */
export async function probeSandbox(kind: SandboxKind, bwrap?: string): Promise<string | null> {
  const end = await runSandboxed(
    { code: "pass\n", mode: "stdin", inputs: [], limits: DEFAULT_LIMITS },
    () => false,
    { sandbox: kind, bwrap },
  );
  return end.kind === "done"
    ? null
    : end.kind === "infra"
      ? end.message
      : `unexpected probe result ${end.kind}`;
}
