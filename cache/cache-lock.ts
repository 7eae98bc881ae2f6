import { cachePath } from "./layout.js";
import {
  closeSync,
  linkSync,
  mkdirSync,
  openSync,
  readFileSync,
  readdirSync,
  renameSync,
  statSync,
  unlinkSync,
  utimesSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";
import { hostname } from "node:os";
import { randomBytes } from "node:crypto";

/**
 * The cache's own lock (see cache/README.md): commands that use the cache
 * hold a shared "user" file for their whole duration; gc holds the
 * exclusive `gc.lock` for its whole mark and sweep. Each side creates its
 * file, then looks for the other's, so two that start together cannot both
 * proceed. gc yields to users; users wait for gc.
 */

export interface Holder {
  host: string;
  pid: number;
  /** Start time of the holder process (from /proc), so a reused pid is not mistaken for it. */
  pidStart: string;
  command: string;
  since: string;
}

const HEARTBEAT_MS = 5_000;
const STALE_MS = 60_000;

function procStart(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? "";
  } catch {
    return "";
  }
}

const SELF_START = procStart(process.pid);

const locksDir = (root: string) => cachePath(root, "locks");
const usersDir = (root: string) => join(locksDir(root), "users");
const gcPath = (root: string) => join(locksDir(root), "gc.lock");

function me(command: string): Holder {
  return {
    host: hostname(),
    pid: process.pid,
    pidStart: SELF_START,
    command,
    since: new Date().toISOString(),
  };
}

/** Creates `path` exclusively with the holder's description; false if it exists. */
function create(path: string, h: Holder): boolean {
  let fd: number;
  try {
    fd = openSync(path, "wx");
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw e;
  }
  try {
    writeSync(fd, JSON.stringify(h));
  } finally {
    closeSync(fd);
  }
  return true;
}

function readHolder(path: string): Holder | undefined {
  try {
    return JSON.parse(readFileSync(path, "utf8")) as Holder;
  } catch {
    return undefined;
  }
}

/** Whether the file at `path` belongs to a process that is still alive. */
function alive(path: string): Holder | undefined {
  const h = readHolder(path);
  let mtime: number;
  try {
    mtime = statSync(path).mtimeMs;
  } catch {
    return undefined; // gone
  }
  if (!h) {
    // Written right after creation: empty and older than a heartbeat means killed in between.
    return Date.now() - mtime > HEARTBEAT_MS
      ? undefined
      : { host: "?", pid: 0, pidStart: "", command: "?", since: "" };
  }
  if (h.host === hostname() && h.pid > 0) {
    const start = procStart(h.pid);
    return start !== "" && start === h.pidStart ? h : undefined;
  }
  return Date.now() - mtime > STALE_MS ? undefined : h;
}

/** Moves a dead holder's file away; puts it back if it was replaced by a live one meanwhile. */
function removeStale(path: string, judged: Holder | undefined): void {
  const aside = `${path}.stale-${process.pid}-${randomBytes(4).toString("hex")}`;
  try {
    renameSync(path, aside);
  } catch {
    return;
  }
  const moved = readHolder(aside);
  if (moved && judged && (moved.pid !== judged.pid || moved.since !== judged.since)) {
    try {
      linkSync(aside, path);
    } catch {
      // a third party holds it now
    }
  }
  try {
    unlinkSync(aside);
  } catch {
    // ignore
  }
}

/** Live users of the cache (other than the caller's own file). */
export function liveUsers(root: string, except?: string): Holder[] {
  let names: string[];
  try {
    names = readdirSync(usersDir(root));
  } catch {
    return [];
  }
  const out: Holder[] = [];
  for (const n of names) {
    if (!n.endsWith(".lock")) continue;
    const p = join(usersDir(root), n);
    if (p === except) continue;
    const h = alive(p);
    if (h) out.push(h);
    else {
      // A dead user's file: remove it (only its exact name, never a live one).
      try {
        if (!alive(p)) unlinkSync(p);
      } catch {
        // gone
      }
    }
  }
  return out;
}

export const describe = (h: Holder): string =>
  `${h.command} on ${h.host} pid ${h.pid}${h.since ? ` since ${h.since}` : ""}`;

/** A held lock file: kept fresh by a heartbeat until released. */
export class HeldLock {
  private timer: NodeJS.Timeout;
  private last = Date.now();

  constructor(readonly path: string) {
    this.timer = setInterval(() => this.touch(true), HEARTBEAT_MS);
    this.timer.unref();
  }

  /** No lock at all (a read-only cache). */
  static none(): HeldLock {
    const l = new HeldLock("");
    clearInterval(l.timer);
    return l;
  }

  /** Refreshes the heartbeat; synchronous loops (gc's sweep) call it as they go. */
  touch(force = false): void {
    if (!this.path) return;
    const now = Date.now();
    if (!force && now - this.last < HEARTBEAT_MS) return;
    this.last = now;
    try {
      utimesSync(this.path, new Date(now), new Date(now));
    } catch {
      // taken from us as stale: nothing to refresh
    }
  }

  release(): void {
    clearInterval(this.timer);
    if (!this.path) return;
    try {
      unlinkSync(this.path);
    } catch {
      // already gone
    }
  }
}

/**
 * Enters the cache as a user for the whole of `command`: waits while a gc
 * holds the cache (saying so once through `onWait`).
 */
export async function enterCache(
  root: string,
  command: string,
  opts: { onWait?: (gc: Holder) => void; signal?: AbortSignal } = {},
): Promise<HeldLock> {
  try {
    mkdirSync(usersDir(root), { recursive: true });
  } catch (e) {
    // A cache this user may only read (a lab's shared results): nothing to
    // protect by a lock it cannot take; its owner's gc is theirs to schedule.
    const code = (e as NodeJS.ErrnoException).code;
    if (code === "EACCES" || code === "EROFS" || code === "EPERM") return HeldLock.none();
    throw e;
  }
  let told = false;
  for (;;) {
    if (opts.signal?.aborted) throw opts.signal.reason ?? new Error("aborted");
    const path = join(
      usersDir(root),
      `${hostname()}-${process.pid}-${randomBytes(4).toString("hex")}.lock`,
    );
    create(path, me(command));
    const gc = alive(gcPath(root));
    if (!gc) {
      // A dead gc's file would make every later gc think it is running: clear it.
      removeStale(gcPath(root), readHolder(gcPath(root)));
      return new HeldLock(path);
    }
    unlinkSync(path);
    if (!told) {
      opts.onWait?.(gc);
      told = true;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
}

/**
 * Takes the cache for gc: the exclusive lock, then a check that no user is
 * live. Returns the held lock, or who is in the way (gc does not wait).
 */
export function lockForGc(root: string): HeldLock | { busy: Holder[] } {
  mkdirSync(usersDir(root), { recursive: true });
  const path = gcPath(root);
  for (let attempt = 0; ; attempt++) {
    if (create(path, me("gc"))) break;
    const h = alive(path);
    if (h || attempt >= 3) return { busy: [h ?? readHolder(path) ?? me("gc")] };
    removeStale(path, readHolder(path));
  }
  const lock = new HeldLock(path);
  const users = liveUsers(root);
  if (users.length) {
    lock.release();
    return { busy: users };
  }
  return lock;
}
