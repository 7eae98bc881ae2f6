import { mkdirSync } from "node:fs";
import { dirname } from "node:path";
import { hashJson } from "../cache/digest.js";

/**
 * The per-request cache: one SQLite file (better-sqlite3, WAL) mapping
 * sha256(canonical JSON of model identity, rendered request, sampling params,
 * sample index) to the response. A stage writes each answer as soon as it
 * arrives, so a killed run resumes without re-sending answered requests, and a
 * larger N sends only the new requests. WAL + busy_timeout make it safe for
 * two processes (two stages, or two runs) sharing the file.
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

type Db = import("better-sqlite3").Database;
type Stmt = import("better-sqlite3").Statement;

export class RequestCache {
  private constructor(
    private db: Db,
    private getStmt: Stmt,
    private putStmt: Stmt,
    private hasStmt: Stmt,
  ) {}

  static async open(file: string): Promise<RequestCache> {
    const { default: Database } = await import("better-sqlite3");
    mkdirSync(dirname(file), { recursive: true });
    const db = new Database(file, { timeout: 30_000 });
    db.pragma("journal_mode = WAL");
    db.pragma("synchronous = NORMAL");
    db.exec(
      "CREATE TABLE IF NOT EXISTS requests (key TEXT PRIMARY KEY, response TEXT NOT NULL, created_at INTEGER NOT NULL)",
    );
    return new RequestCache(
      db,
      db.prepare("SELECT response FROM requests WHERE key = ?"),
      db.prepare("INSERT OR REPLACE INTO requests (key, response, created_at) VALUES (?, ?, ?)"),
      db.prepare("SELECT 1 FROM requests WHERE key = ?"),
    );
  }

  get<T>(key: string): T | undefined {
    const row = this.getStmt.get(key) as { response: string } | undefined;
    return row ? (JSON.parse(row.response) as T) : undefined;
  }

  has(key: string): boolean {
    return this.hasStmt.get(key) !== undefined;
  }

  put(key: string, value: unknown): void {
    this.putStmt.run(key, JSON.stringify(value), Date.now());
  }

  count(): number {
    return (this.db.prepare("SELECT count(*) AS n FROM requests").get() as { n: number }).n;
  }

  close(): void {
    this.db.close();
  }
}
