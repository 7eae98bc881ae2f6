import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import { hashJson } from "../cache/digest.js";
import { procStart } from "../cache/leases.js";

/**
 * The per-request cache: one SQLite file (better-sqlite3, WAL) mapping
 * sha256(canonical JSON of model identity, rendered request, sampling params,
 * sample index) to the response. A stage writes each answer as soon as it
 * arrives, so a killed run resumes without re-sending answered requests, and a
 * larger N sends only the new requests. WAL + busy_timeout make it safe for
 * two processes (two stages, or two runs) sharing the file.
 *
 * Before sending, a request is *claimed* (a row naming the holder, refreshed
 * by a heartbeat), so two instances or runs needing the same request send it
 * once: the other waits for the answer. A claim whose holder died (same host:
 * its process is gone; any host: no heartbeat for STALE_MS) is taken over.
 * A request that failed is recorded as such until it is answered, so the next
 * run can say what it is sending again.
 */
export interface RequestKey {
  model: unknown;
  request: unknown;
  sampling: unknown;
  sample: number;
}

export function requestKey(k: RequestKey): string {
  return hashJson(k);
}

/** What `claim` found: the answer is cached, the request is ours to send, or another holder sends it. */
export type ClaimState = "answered" | "claimed" | "held";

export interface Failure {
  kind: string;
  error: string;
  at: number;
}

type Db = import("better-sqlite3").Database;
type Stmt = import("better-sqlite3").Statement;

const HEARTBEAT_MS = 5_000;
const STALE_MS = 60_000;
const SELF_START = procStart(process.pid);

export class RequestCache {
  /** This cache handle's claim holder: host, pid, process start, random. */
  readonly holder = [hostname(), process.pid, SELF_START, randomBytes(6).toString("hex")].join("|");
  private timer: NodeJS.Timeout;
  private s: Record<string, Stmt>;
  private closed = false;

  private constructor(private db: Db) {
    const q = (sql: string) => db.prepare(sql);
    this.s = {
      get: q("SELECT response FROM requests WHERE key = ?"),
      has: q("SELECT 1 FROM requests WHERE key = ?"),
      put: q("INSERT OR REPLACE INTO requests (key, response, created_at) VALUES (?, ?, ?)"),
      claimOf: q("SELECT holder, heartbeat FROM claims WHERE key = ?"),
      setClaim: q("INSERT OR REPLACE INTO claims (key, holder, heartbeat) VALUES (?, ?, ?)"),
      unclaim: q("DELETE FROM claims WHERE key = ? AND holder = ?"),
      unclaimAll: q("DELETE FROM claims WHERE holder = ?"),
      beat: q("UPDATE claims SET heartbeat = ? WHERE holder = ?"),
      fail: q("INSERT OR REPLACE INTO failures (key, kind, error, at) VALUES (?, ?, ?, ?)"),
      failure: q("SELECT kind, error, at FROM failures WHERE key = ?"),
      unfail: q("DELETE FROM failures WHERE key = ?"),
      bound: q("SELECT model FROM identities WHERE identity = ?"),
      bind: q("INSERT OR REPLACE INTO identities (identity, model, at) VALUES (?, ?, ?)"),
    };
    this.timer = setInterval(() => this.heartbeat(), HEARTBEAT_MS);
    this.timer.unref();
  }

  static async open(file: string): Promise<RequestCache> {
    const { default: Database } = await import("better-sqlite3");
    mkdirSync(dirname(file), { recursive: true });
    const db = new Database(file, { timeout: 30_000 });
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = NORMAL");
    db.exec(
      "CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, response TEXT NOT NULL, created_at INTEGER NOT NULL);" +
        "CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, holder TEXT NOT NULL, heartbeat INTEGER NOT NULL);" +
        "CREATE TABLE IF NOT EXISTS failures (key TEXT PRIMARY KEY, kind TEXT NOT NULL, error TEXT NOT NULL, at INTEGER NOT NULL);" +
        "CREATE TABLE IF NOT EXISTS identities (identity TEXT PRIMARY KEY, model TEXT NOT NULL, at INTEGER NOT NULL);",
    );
    return new RequestCache(db);
  }

  get<T>(key: string): T | undefined {
    const row = this.s.get.get(key) as { response: string } | undefined;
    return row ? (JSON.parse(row.response) as T) : undefined;
  }

  has(key: string): boolean {
    return this.s.has.get(key) !== undefined;
  }

  /** Stores an answer; the claim on it (anyone's) and any recorded failure go. */
  put(key: string, value: unknown): void {
    this.db.transaction(() => {
      this.s.put.run(key, JSON.stringify(value), Date.now());
      this.db.prepare("DELETE FROM claims WHERE key = ?").run(key);
      this.s.unfail.run(key);
    })();
  }

  /** Without writing: is the request answered, free (or abandoned), or held by a live holder? */
  peek(key: string): ClaimState | "free" {
    if (this.has(key)) return "answered";
    const c = this.s.claimOf.get(key) as { holder: string; heartbeat: number } | undefined;
    if (!c || c.holder === this.holder || this.dead(c)) return "free";
    return "held";
  }

  /** Claims the request for this holder unless it is answered or another live holder has it. */
  claim(key: string): ClaimState {
    const st = this.peek(key);
    if (st !== "free") return st;
    return this.db
      .transaction((): ClaimState => {
        const st = this.peek(key);
        if (st !== "free") return st;
        this.s.setClaim.run(key, this.holder, Date.now());
        return "claimed";
      })
      .immediate();
  }

  /** Gives up this holder's claim (the request was not answered). */
  release(key: string): void {
    this.s.unclaim.run(key, this.holder);
  }

  /** Records why a request is not answered; cleared when it is. */
  recordFailure(key: string, kind: string, error: string): void {
    this.s.fail.run(key, kind, error.slice(0, 500), Date.now());
  }

  failure(key: string): Failure | undefined {
    return this.s.failure.get(key) as Failure | undefined;
  }

  /**
   * The model a model-identity name was last used with, and the binding to
   * `model` (recorded when new, or when `rebind`).
   */
  bindIdentity(identity: string, model: string, rebind: boolean): string | undefined {
    const row = this.s.bound.get(identity) as { model: string } | undefined;
    if (!row || rebind) this.s.bind.run(identity, model, Date.now());
    return row?.model;
  }

  count(): number {
    return (this.db.prepare("SELECT count(*) AS n FROM requests").get() as { n: number }).n;
  }

  /** Releases this holder's claims and closes the file. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearInterval(this.timer);
    try {
      this.s.unclaimAll.run(this.holder);
    } finally {
      this.db.close();
    }
  }

  private heartbeat(): void {
    try {
      this.s.beat.run(Date.now(), this.holder);
    } catch {
      // busy for 30 s: the next beat tries again, well before STALE_MS
    }
  }

  private dead(c: { holder: string; heartbeat: number }): boolean {
    const [host, pid, start] = c.holder.split("|");
    if (host === hostname() && Number(pid) !== process.pid) {
      const now = procStart(Number(pid));
      if (now === "" || now !== start) return true;
    }
    return Date.now() - c.heartbeat > STALE_MS;
  }
}
