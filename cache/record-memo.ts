import { existsSync, statSync, type BigIntStats } from "node:fs";
import { dirname } from "node:path";
import { writeFileAtomic } from "./atomic.js";
import { readText } from "./read-text.js";
import { settled } from "./stat-cache.js";

/**
 * What a run needs of the action records it used (the stored result, not the
 * whole record), each with the stat fields of the record file it came from
 * (device, inode, size, mtime and ctime in ns), kept in one file per
 * pipeline. Only a cache: on any doubt the record file is read.
 *
 * Two levels of trust, cheapest first:
 * - The records folder unchanged. Records are only ever created, replaced
 *   (by a rename) or removed, and each of those changes the folder's mtime
 *   and ctime. If the folder has the stat fields it had when the memo's run
 *   began, no record changed since, and the memo is served without a call
 *   per record: on the 2,001-instance bench those 2,001 stats were ~10% of a
 *   no-op run.
 * - Otherwise each record file is stat'ed: one with the memoised stat fields
 *   is the same file (records are never written in place).
 *
 * Kept per pipeline and rewritten with only what the run used, so it does
 * not grow with the cache. The stat cache's "racily clean" rule applies to
 * both: a record file, or the folder, changed less than the filesystem's
 * timestamp granularity ago (taken as 2 s) is not trusted, since a change
 * within the same tick could leave the same times.
 */
interface Entry<T> {
  st: string;
  rec: T;
}

interface MemoFile<T> {
  v: 2;
  /** Stat fields of the records folder when the run that wrote this began; null: too recent to trust. */
  dir: string | null;
  records: Record<string, Entry<T>>;
}

/** The stat fields that identify a version of a file: device, inode, size, mtime and ctime (ns). */
export function statFields(st: BigIntStats): string {
  return `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`;
}

/** The mtime in ns recorded in an entry's stat fields. */
function memoMtimeNs(st: string): bigint {
  return BigInt(st.split(":")[3]);
}

export class RecordMemo<T> {
  private memo?: { records: Record<string, Entry<T>>; trusted: boolean; dirAtLoad: string | null };
  private used = new Map<string, Entry<T>>();
  private changed = false;
  /** A record was looked up other than by trust (read, stat'ed, or not memoised). */
  private doubted = false;
  private unchanged?: string;

  /** `file`: the memo; `folder`: the folder of the record files. */
  constructor(
    private readonly file: string,
    private readonly folder: string,
  ) {}

  /** Read on first use: a command that looks up no record never pays for it. */
  private get loaded() {
    if (!this.memo) {
      // The folder's stat first, before any record is read: a change after
      // this point must make the next run distrust what this one saves.
      let dirAtLoad: string | null = null;
      try {
        const st = statSync(this.folder, { bigint: true });
        if (settled(st)) dirAtLoad = statFields(st);
      } catch {
        // no folder yet: nothing to trust
      }
      let saved: Partial<MemoFile<T>> = {};
      try {
        saved = JSON.parse(readText(this.file)) as MemoFile<T>;
      } catch {
        // missing or unreadable: start empty; it is only a cache
      }
      const ok = saved.v === 2 && saved.records !== null && typeof saved.records === "object";
      this.memo = {
        records: ok ? (saved.records as Record<string, Entry<T>>) : {},
        trusted: ok && dirAtLoad !== null && saved.dir === dirAtLoad,
        dirAtLoad,
      };
    }
    return this.memo;
  }

  private entry(name: string): Entry<T> | undefined {
    const m = this.loaded.records;
    return this.used.get(name) ?? (Object.hasOwn(m, name) ? m[name] : undefined);
  }

  /**
   * The record memoised as `name` with its file's mtime (ns), if the records
   * folder is unchanged since the memo was written: no stat needed.
   */
  trusted(name: string): { rec: T; mtimeNs: bigint } | undefined {
    const e = this.loaded.trusted ? this.entry(name) : undefined;
    if (!e) {
      this.doubted = true;
      return undefined;
    }
    this.used.set(name, e);
    return { rec: e.rec, mtimeNs: memoMtimeNs(e.st) };
  }

  /** The record memoised as `name` if its file still has the stat fields `st`. */
  get(name: string, st: BigIntStats): T | undefined {
    const e = this.entry(name);
    if (!e || e.st !== statFields(st)) return undefined;
    this.used.set(name, e);
    return e.rec;
  }

  /** Remembers a record just read from a file with the stat fields `st`. */
  set(name: string, st: BigIntStats, rec: T): void {
    this.doubted = true;
    if (!settled(st)) return;
    this.used.set(name, { st: statFields(st), rec });
    this.changed = true;
  }

  /**
   * The records folder's stat fields at the start of this run if every record
   * it looked up was served by trust: then all it used is exactly what the
   * records were when that run began (engine/lockfile.ts skips rewriting
   * what it wrote from them then).
   */
  unchangedSince(): string | undefined {
    if (this.memo)
      this.unchanged =
        this.memo.trusted && !this.doubted ? (this.memo.dirAtLoad ?? undefined) : undefined;
    return this.unchanged;
  }

  /** Writes the records this run used, unless that is exactly what was loaded. */
  save(): void {
    const m = this.memo;
    if (!m) return;
    this.unchangedSince();
    if (!this.changed && m.trusted && this.used.size === Object.keys(m.records).length) return;
    if (!existsSync(dirname(this.file))) return;
    const out: MemoFile<T> = {
      v: 2,
      dir: m.dirAtLoad,
      records: Object.fromEntries(this.used),
    };
    writeFileAtomic(this.file, JSON.stringify(out));
    this.memo = undefined;
    this.used = new Map();
    this.changed = false;
  }
}
