import { readFileSync, existsSync, type BigIntStats } from "node:fs";
import { dirname } from "node:path";
import { writeFileAtomic } from "./atomic.js";

/**
 * Parsed action records, each with the stat fields of the file it was read
 * from (device, inode, size, mtime and ctime in ns), kept in one file per
 * pipeline. A record whose file still has those fields is the same record
 * (records are only ever replaced by a rename, never written in place), so a
 * no-op run stats each record instead of opening, reading and closing it: on
 * a 2,001-instance pipeline those calls were half of the run's own time
 * (test/bench/engine.mjs). Only a cache: on a mismatch, or a missing or
 * unreadable memo, the record file is read.
 *
 * Kept per pipeline and rewritten with only what the run used, so it does
 * not grow with the cache. The stat cache's "racily clean" rule applies: a
 * record file younger than the filesystem's timestamp granularity (taken as
 * 2 s) is not memoised, since a replacement within the same tick could reuse
 * its inode with the same size and times.
 */
interface Entry<T> {
  st: string;
  rec: T;
}

const RACY_NS = 2_000_000_000n;

function statFields(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

export class RecordMemo<T> {
  private memo?: Record<string, Entry<T>>;
  private used = new Map<string, Entry<T>>();
  private changed = false;

  constructor(private readonly file: string) {}

  /** Read on first use: a command that looks up no record never pays for it. */
  private get loaded(): Record<string, Entry<T>> {
    if (!this.memo) {
      try {
        this.memo = JSON.parse(readFileSync(this.file, "utf8")) as Record<string, Entry<T>>;
      } catch {
        this.memo = {}; // missing or unreadable: start empty; it is only a cache
      }
    }
    return this.memo;
  }

  /** The record memoised as `name` if its file still has the stat fields `st`. */
  get(name: string, st: BigIntStats): T | undefined {
    const e =
      this.used.get(name) ?? (Object.hasOwn(this.loaded, name) ? this.loaded[name] : undefined);
    if (!e || e.st !== statFields(st)) return undefined;
    this.used.set(name, e);
    return e.rec;
  }

  /** Remembers a record just read from a file with the stat fields `st`. */
  set(name: string, st: BigIntStats, rec: T): void {
    if (BigInt(Date.now()) * 1_000_000n - st.mtimeNs < RACY_NS) return;
    this.used.set(name, { st: statFields(st), rec });
    this.changed = true;
  }

  /** Writes the records this run used, unless that is exactly what was loaded. */
  save(): void {
    if (!this.changed && this.used.size === Object.keys(this.memo ?? {}).length) return;
    if (!existsSync(dirname(this.file))) return;
    writeFileAtomic(this.file, JSON.stringify(Object.fromEntries(this.used)));
    this.memo = Object.fromEntries(this.used);
    this.used = new Map();
    this.changed = false;
  }
}
