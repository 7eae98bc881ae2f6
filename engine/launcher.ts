import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants } from "node:fs";
import { createInterface } from "node:readline";
import { PassThrough } from "node:stream";

/**
 * A small long-lived process that starts the engine's commands.
 *
 * Why: starting a program from the engine forks the engine, a Node process of
 * a few hundred MB, and libuv's spawn() blocks the event loop until the child
 * has called exec. On a DAG of thousands of tiny shell jobs that fork was the
 * engine's largest cost (test/bench/engine.mjs; the README's "Where the time
 * goes"). A Python process of ~10 MB forks in a fraction of that time, and it
 * blocks its own loop, not the engine's.
 *
 * The launcher is /usr/bin/python3 (which valley already needs for the
 * grader) running the script below; without it, or with VALLEY_LAUNCHER=off,
 * commands are spawned directly, with the same behaviour. Protocol: one JSON
 * object per line each way. The engine sends `{id, file, args, env, cwd}`;
 * the launcher answers `{id, pid}` or `{id, error, code}`, then output chunks
 * `{id, s: "o"|"e", d}` (UTF-8 text), then `{id, exit, signal}` once the
 * program has exited and both of its pipes are closed. Like a direct spawn,
 * each program runs in its own session (its pid is its process group), and
 * whatever it leaves in its group is killed when it exits. If the engine goes
 * away (stdin closes), the launcher kills every group it started and exits.
 */
const SCRIPT = String.raw`
import codecs, errno, json, os, selectors, signal, subprocess, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
sel = selectors.DefaultSelector()
out = sys.stdout.buffer
live = {}
pending = []
def send(o):
    pending.append(json.dumps(o, separators=(",", ":")))
def finish(j):
    if j["status"] is not None and j["open"] == 0:
        live.pop(j["id"], None)
        c = j["status"]
        send({"id": j["id"], "exit": c if c >= 0 else None,
              "signal": signal.Signals(-c).name if c < 0 else None})
def start(r):
    try:
        p = subprocess.Popen([r["file"]] + r["args"], env=r["env"], cwd=r.get("cwd"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, start_new_session=True)
    except Exception as e:
        code = errno.errorcode.get(getattr(e, "errno", None) or errno.EIO, "EIO")
        send({"id": r["id"], "error": "spawn " + r["file"] + " " + code, "code": code})
        return
    j = {"id": r["id"], "p": p, "open": 2, "status": None}
    live[r["id"]] = j
    send({"id": r["id"], "pid": p.pid})
    for s, f in (("o", p.stdout), ("e", p.stderr)):
        os.set_blocking(f.fileno(), False)
        sel.register(f, selectors.EVENT_READ,
                     ("pipe", j, s, codecs.getincrementaldecoder("utf-8")("replace")))
    sel.register(os.pidfd_open(p.pid), selectors.EVENT_READ, ("exit", j))
buf = b""
os.set_blocking(0, False)
sel.register(0, selectors.EVENT_READ, ("in",))
while True:
    # Messages go out once per loop turn, in one write: each write wakes the
    # engine, and on a busy machine each wake-up is a context switch.
    if pending:
        out.write(("\n".join(pending) + "\n").encode())
        out.flush()
        pending.clear()
    for key, _ in sel.select():
        what = key.data
        if what[0] == "in":
            data = os.read(0, 1 << 16)
            if not data:
                for j in list(live.values()):
                    try:
                        os.killpg(j["p"].pid, signal.SIGKILL)
                    except OSError:
                        pass
                sys.exit(0)
            buf += data
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line:
                    start(json.loads(line))
        elif what[0] == "pipe":
            _, j, s, dec = what
            try:
                data = os.read(key.fd, 1 << 16)
            except BlockingIOError:
                continue
            text = dec.decode(data, not data)
            if text:
                send({"id": j["id"], "s": s, "d": text})
            if not data:
                sel.unregister(key.fileobj)
                key.fileobj.close()
                j["open"] -= 1
                finish(j)
        else:
            _, j = what
            sel.unregister(key.fd)
            os.close(key.fd)
            _, status = os.waitpid(j["p"].pid, 0)
            j["status"] = j["p"].returncode = os.waitstatus_to_exitcode(status)
            try:
                os.killpg(j["p"].pid, signal.SIGKILL)
            except OSError:
                pass
            finish(j)
`;

/** A program started by `startProgram`: its output streams and how it ended. */
export interface Started {
  /** Undefined if the program could not be started (`exited` says why). */
  pid: number | undefined;
  stdout: NodeJS.ReadableStream;
  stderr: NodeJS.ReadableStream;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; error?: Error }>;
}

export interface StartOptions {
  env: Record<string, string>;
  cwd?: string;
}

interface Job {
  stdout: PassThrough;
  stderr: PassThrough;
  pid: (pid: number | undefined) => void;
  exit: (r: { code: number | null; signal: NodeJS.Signals | null; error?: Error }) => void;
}

const PYTHON = "/usr/bin/python3";

class Launcher {
  private next = 1;
  private readonly jobs = new Map<number, Job>();
  private readonly child: ChildProcess;

  constructor() {
    this.child = spawn(PYTHON, ["-I", "-c", SCRIPT], {
      stdio: ["pipe", "pipe", "inherit"],
      // Its own session: Ctrl-C on the terminal is the engine's to handle.
      detached: true,
    });
    this.child.unref();
    this.child.stdin?.on("error", () => {});
    const lines = createInterface({ input: this.child.stdout as NodeJS.ReadableStream });
    lines.on("line", (line) => this.message(line));
    this.child.once("exit", () => this.gone());
    this.child.once("error", () => this.gone());
    this.idle();
  }

  /** The pipes keep the engine alive only while a program is running. */
  private idle(): void {
    const busy = this.jobs.size > 0;
    for (const s of [this.child.stdin, this.child.stdout] as unknown as {
      ref(): void;
      unref(): void;
    }[])
      if (busy) s?.ref();
      else s?.unref();
  }

  get alive(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null && !this.dead;
  }
  private dead = false;

  private gone(): void {
    this.dead = true;
    for (const [id, job] of this.jobs) {
      job.pid(undefined);
      job.stdout.end();
      job.stderr.end();
      job.exit({ code: null, signal: null, error: new Error("the command launcher exited") });
      this.jobs.delete(id);
    }
  }

  private message(line: string): void {
    const m = JSON.parse(line) as {
      id: number;
      pid?: number;
      error?: string;
      code?: string;
      s?: "o" | "e";
      d?: string;
      exit?: number | null;
      signal?: NodeJS.Signals | null;
    };
    const job = this.jobs.get(m.id);
    if (!job) return;
    if (m.d !== undefined) (m.s === "o" ? job.stdout : job.stderr).write(m.d);
    else if (m.pid !== undefined) job.pid(m.pid);
    else if (m.error !== undefined) {
      this.jobs.delete(m.id);
      this.idle();
      job.pid(undefined);
      job.stdout.end();
      job.stderr.end();
      job.exit({
        code: null,
        signal: null,
        error: Object.assign(new Error(m.error), { code: m.code }),
      });
    } else if ("exit" in m) {
      this.jobs.delete(m.id);
      this.idle();
      job.stdout.end();
      job.stderr.end();
      job.exit({ code: m.exit ?? null, signal: m.signal ?? null });
    }
  }

  async start(file: string, args: string[], opts: StartOptions): Promise<Started> {
    const id = this.next++;
    const stdout = new PassThrough({ encoding: "utf8" });
    const stderr = new PassThrough({ encoding: "utf8" });
    let pid!: (p: number | undefined) => void;
    let exit!: Job["exit"];
    const started = new Promise<number | undefined>((res) => (pid = res));
    const exited = new Promise<Awaited<Started["exited"]>>((res) => (exit = res));
    this.jobs.set(id, { stdout, stderr, pid, exit });
    this.idle();
    this.child.stdin?.write(
      JSON.stringify({ id, file, args, env: opts.env, cwd: opts.cwd ?? process.cwd() }) + "\n",
    );
    return { pid: await started, stdout, stderr, exited };
  }
}

let launcher: Launcher | undefined;
let usable: boolean | undefined;

function viaLauncher(): Launcher | undefined {
  if (usable === undefined) {
    usable = false;
    if (process.platform === "linux" && process.env.VALLEY_LAUNCHER !== "off") {
      try {
        accessSync(PYTHON, constants.X_OK);
        usable = true;
      } catch {
        // no python3: spawn directly
      }
    }
  }
  if (!usable) return undefined;
  if (!launcher || !launcher.alive) launcher = new Launcher();
  return launcher;
}

/**
 * Starts a program in its own session with stdin closed and stdout/stderr
 * piped: through the launcher when there is one, else with spawn().
 */
export async function startProgram(
  file: string,
  args: string[],
  opts: StartOptions,
): Promise<Started> {
  const l = viaLauncher();
  if (l) return l.start(file, args, opts);
  const child = spawn(file, args, {
    env: opts.env,
    cwd: opts.cwd,
    detached: true,
    stdio: ["ignore", "pipe", "pipe"],
  });
  const exited = new Promise<Awaited<Started["exited"]>>((res) => {
    child.once("error", (error) => res({ code: null, signal: null, error }));
    child.once("exit", (code, signal) => res({ code, signal }));
  });
  return {
    pid: child.pid,
    stdout: child.stdout as NodeJS.ReadableStream,
    stderr: child.stderr as NodeJS.ReadableStream,
    exited,
  };
}
