import {
  openSync,
  writeSync,
  closeSync,
  readFileSync,
  renameSync,
  unlinkSync,
  utimesSync,
  statSync,
  linkSync,
} from "node:fs";
import { join } from "node:path";
import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import { digestHex, type ActionKey } from "./digest.js";

/** What a lease file says about its holder. */
export interface LeaseInfo {
  host: string;
  pid: number;
  /** Start time of the holder process (from /proc), so a reused pid is not mistaken for it. */
  pidStart: string;
  run: string;
  since: string;
}

// A holder touches its lease files this often; a lease not touched for
// STALE_MS is considered abandoned even on another host (shared filesystems).
const HEARTBEAT_MS = 5_000;
const STALE_MS = 60_000;

export function procStart(pid: number): string {
  try {
    // Field 22 of /proc/<pid>/stat: start time in clock ticks since boot.
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? "";
  } catch {
    return "";
  }
}

const SELF_START = procStart(process.pid);

export interface Lease {
  key: ActionKey;
  path: string;
}

/**
 * Per-key lock files under leases/. Creation with O_EXCL decides who computes
 * a key; a heartbeat (mtime) shows the holder is alive; a lease whose holder
 * died (same host: pid gone or reused; any host: no heartbeat) is taken over.
 */
export class Leases {
  private held = new Map<string, Lease>();
  private timer: NodeJS.Timeout | undefined;
  readonly runId = randomBytes(6).toString("hex");

  private readonly heartbeatMs: number;

  /** `heartbeatMs` (tests make it short): how often held leases are touched. */
  constructor(
    private readonly dir: string,
    opts: { heartbeatMs?: number } = {},
  ) {
    this.heartbeatMs = opts.heartbeatMs ?? HEARTBEAT_MS;
  }

  /** True if the lease file at `path` names this run as its holder. */
  private ours(path: string): boolean {
    const h = this.readHolder(path);
    return h !== undefined && h.pid === process.pid && h.run === this.runId;
  }

  private pathOf(key: ActionKey): string {
    return join(this.dir, digestHex(key) + ".lock");
  }

  /** Takes the lease if free or stale; otherwise returns the live holder. */
  tryAcquire(key: ActionKey): Lease | { holder: LeaseInfo } {
    const path = this.pathOf(key);
    for (let attempt = 0; attempt < 5; attempt++) {
      const info: LeaseInfo = {
        host: hostname(),
        pid: process.pid,
        pidStart: SELF_START,
        run: this.runId,
        since: new Date().toISOString(),
      };
      try {
        const fd = openSync(path, "wx");
        writeSync(fd, JSON.stringify(info));
        closeSync(fd);
        const lease = { key, path };
        this.held.set(path, lease);
        this.startHeartbeat();
        return lease;
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      }
      const holder = this.readHolder(path);
      if (holder === undefined) continue; // vanished or half-written: retry
      if (!this.isStale(path, holder)) return { holder };
      this.takeOver(path, holder);
    }
    const holder = this.readHolder(path);
    return { holder: holder ?? { host: "?", pid: 0, pidStart: "", run: "?", since: "" } };
  }

  private readHolder(path: string): LeaseInfo | undefined {
    try {
      return JSON.parse(readFileSync(path, "utf8")) as LeaseInfo;
    } catch {
      // A lease file is written right after creation; an empty one older than
      // the heartbeat was left by a process killed in between.
      try {
        const st = statSync(path);
        if (Date.now() - st.mtimeMs > HEARTBEAT_MS) {
          return { host: "?", pid: 0, pidStart: "", run: "?", since: "" };
        }
      } catch {
        // gone
      }
      return undefined;
    }
  }

  private isStale(path: string, h: LeaseInfo): boolean {
    if (h.host === hostname() && h.pid > 0) {
      if (h.pid === process.pid && h.run === this.runId) return false;
      const start = procStart(h.pid);
      if (start === "" || start !== h.pidStart) return true;
      if (h.pid === process.pid) return false;
    }
    try {
      return Date.now() - statSync(path).mtimeMs > STALE_MS;
    } catch {
      return true;
    }
  }

  /** Moves a stale lease aside; only one contender's rename succeeds. */
  private takeOver(path: string, judged: LeaseInfo): void {
    const aside = `${path}.stale-${process.pid}-${randomBytes(4).toString("hex")}`;
    try {
      renameSync(path, aside);
    } catch {
      return; // someone else took it over first
    }
    const moved = this.readHolder(aside);
    if (moved && (moved.pid !== judged.pid || moved.run !== judged.run)) {
      // We moved a fresh lease created after our check: put it back.
      try {
        linkSync(aside, path);
      } catch {
        // a third party holds it now; both are live holders, ours loses
      }
    }
    try {
      unlinkSync(aside);
    } catch {
      // ignore
    }
  }

  /** Waits until the key's lease is ours, or until `ready()` says the result appeared. */
  async acquire(
    key: ActionKey,
    opts: { signal?: AbortSignal; ready: () => boolean; onWait?: (h: LeaseInfo) => void },
  ): Promise<Lease | "ready"> {
    let told = false;
    for (;;) {
      if (opts.signal?.aborted) throw opts.signal.reason ?? new Error("aborted");
      const r = this.tryAcquire(key);
      if ("path" in r) return r;
      if (opts.ready()) return "ready";
      if (!told) {
        opts.onWait?.(r.holder);
        told = true;
      }
      await new Promise((res) => setTimeout(res, 150));
      if (opts.ready()) return "ready";
    }
  }

  /**
   * Gives a lease up. The file is removed only if it still names this run: a
   * run that judged us dead (no heartbeat for STALE_MS) may have taken the
   * key over, and its lease is not ours to delete.
   */
  release(lease: Lease): void {
    this.held.delete(lease.path);
    if (this.ours(lease.path)) {
      try {
        unlinkSync(lease.path);
      } catch {
        // already gone
      }
    }
    if (this.held.size === 0) this.stopHeartbeat();
  }

  releaseAll(): void {
    for (const l of [...this.held.values()]) this.release(l);
  }

  /** Live leases of other processes (used by gc to refuse while a run is active). */
  liveHolders(paths: string[]): LeaseInfo[] {
    const out: LeaseInfo[] = [];
    for (const p of paths) {
      const h = this.readHolder(p);
      if (h && !this.isStale(p, h)) out.push(h);
    }
    return out;
  }

  private startHeartbeat(): void {
    if (this.timer) return;
    this.timer = setInterval(() => {
      const now = new Date();
      for (const l of this.held.values()) {
        // A lease taken over from us (we were judged dead) is the new holder's to refresh.
        if (!this.ours(l.path)) {
          this.held.delete(l.path);
          continue;
        }
        try {
          utimesSync(l.path, now, now);
        } catch {
          // removed meanwhile
        }
      }
    }, this.heartbeatMs);
    this.timer.unref();
  }

  private stopHeartbeat(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }
}
