import { statSync, existsSync, type BigIntStats } from "node:fs";
import { dirname } from "node:path";
import type { Digest } from "./digest.js";
import { hashFile, hashFileSync } from "./hash.js";
import { writeFileAtomic } from "./atomic.js";
import { readText } from "./read-text.js";

/**
 * Remembers the digest of a file together with the stat fields that change
 * whenever its bytes can have changed (device, inode, size, mtime in ns). A
 * file whose fields all match is not re-hashed. This is what makes a no-op run
 * over a large input tree cost a stat per file instead of a read.
 */
interface Entry {
  dev: string;
  ino: string;
  size: number;
  mtimeNs: string;
  digest: Digest;
}

/** Younger files than this are not trusted by stat alone (coarse clocks, FAT's 2 s, NFS). */
const RACY_NS = 2_000_000_000n;

/**
 * Whether a file or folder is old enough to be trusted by its stat fields:
 * every change sets its mtime to the current tick, so one whose mtime is
 * older than RACY_NS cannot change and keep them ("racily clean", git's term).
 */
export const settled = (st: BigIntStats): boolean =>
  BigInt(Date.now()) * 1_000_000n - st.mtimeNs >= RACY_NS;

export class StatCache {
  private entries = new Map<string, Entry>();
  private dirty = false;

  constructor(private readonly file: string) {
    try {
      const raw = JSON.parse(readText(file)) as Record<string, Entry>;
      for (const [k, v] of Object.entries(raw)) this.entries.set(k, v);
    } catch {
      // Missing or unreadable: start empty; it is only a cache.
    }
  }

  private static fields(st: BigIntStats) {
    return {
      dev: st.dev.toString(),
      ino: st.ino.toString(),
      size: Number(st.size),
      mtimeNs: st.mtimeNs.toString(),
    };
  }

  /** Digest of `path`, re-hashing only if its stat fields changed. */
  digest(path: string, st?: BigIntStats): { digest: Digest; size: number; hashed: boolean } {
    st ??= statSync(path, { bigint: true });
    const hit = this.lookup(path, st);
    if (hit) return { digest: hit.digest, size: hit.size, hashed: false };
    const { digest, size } = hashFileSync(path);
    this.settle(path, digest, st);
    return { digest, size, hashed: true };
  }

  /** As `digest`, hashing a large changed file in a worker thread (see hashFile). */
  async digestAsync(
    path: string,
    st?: BigIntStats,
  ): Promise<{ digest: Digest; size: number; hashed: boolean }> {
    st ??= statSync(path, { bigint: true });
    const hit = this.lookup(path, st);
    if (hit) return { digest: hit.digest, size: hit.size, hashed: false };
    const { digest, size } = await hashFile(path, Number(st.size));
    this.settle(path, digest, st);
    return { digest, size, hashed: true };
  }

  private lookup(path: string, st: BigIntStats): Entry | undefined {
    const f = StatCache.fields(st);
    const e = this.entries.get(path);
    return e && e.dev === f.dev && e.ino === f.ino && e.size === f.size && e.mtimeNs === f.mtimeNs
      ? e
      : undefined;
  }

  /**
   * Keeps a fresh digest, unless the file is "racily clean" (git's term): a
   * file modified within the filesystem's timestamp granularity of being
   * hashed could change again with the same size and mtime. Such an entry is
   * not kept; the next run hashes it again.
   */
  private settle(path: string, digest: Digest, st: BigIntStats): void {
    if (settled(st)) this.remember(path, digest, st);
    else this.forget(path);
  }

  /** True if `path` still has the stat fields recorded for `digest`. */
  unchanged(path: string, digest: Digest): boolean {
    const e = this.entries.get(path);
    if (!e || e.digest !== digest) return false;
    let st: BigIntStats;
    try {
      st = statSync(path, { bigint: true });
    } catch {
      return false;
    }
    const f = StatCache.fields(st);
    return e.dev === f.dev && e.ino === f.ino && e.size === f.size && e.mtimeNs === f.mtimeNs;
  }

  remember(path: string, digest: Digest, st?: BigIntStats): void {
    st ??= statSync(path, { bigint: true });
    this.entries.set(path, { ...StatCache.fields(st), digest });
    this.dirty = true;
  }

  forget(path: string): void {
    if (this.entries.delete(path)) this.dirty = true;
  }

  /** Writes the cache if it changed. Concurrent runs: last writer wins, which only costs re-hashing. */
  save(): void {
    if (!this.dirty || !existsSync(dirname(this.file))) return;
    writeFileAtomic(this.file, JSON.stringify(Object.fromEntries(this.entries)));
    this.dirty = false;
  }
}
