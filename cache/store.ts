import {
  mkdirSync,
  existsSync,
  linkSync,
  chmodSync,
  renameSync,
  readdirSync,
  lstatSync,
  readlinkSync,
  readFileSync,
  unlinkSync,
  rmSync,
  statSync,
  symlinkSync,
  copyFileSync,
  openSync,
  closeSync,
  fstatSync,
  constants as fsc,
} from "node:fs";
import { join, dirname, sep } from "node:path";
import { hostname } from "node:os";
import {
  type ActionKey,
  type Digest,
  type TreeDigest,
  digestHex,
  sha256Bytes,
  canonicalJson,
  isDigest,
} from "./digest.js";
import { hashFile } from "./hash.js";
import { uniqueSuffix, writeFileAtomic } from "./atomic.js";
import { StatCache } from "./stat-cache.js";
import { RecordMemo } from "./record-memo.js";
import { CREATED_ON_OPEN, cachePath, type CacheEntry } from "./layout.js";
import { pathManifest } from "./path-manifest.js";

/** One entry of a tree manifest; paths use "/" and are relative to the tree root. */
export type TreeEntry =
  | { path: string; digest: Digest; size: number; exec?: true }
  | { path: string; link: string }
  | { path: string; dir: true };

export interface Manifest {
  v: 1;
  entries: TreeEntry[];
}

/** What the action cache maps a key to (Bazel's ActionResult, in spirit). */
export interface ActionRecord {
  v: 1;
  key: ActionKey;
  /** The key's fields, kept so `plan --why` can say which one changed. */
  fields: Record<string, unknown>;
  instance: string;
  kind: string;
  outputs: {
    tree: TreeDigest;
    /** Top-level files of the tree by name. */
    files: Record<string, Digest>;
    /** The tree's manifest entries, so a cache hit is checked without reading the manifest. */
    entries?: TreeEntry[];
  };
  metrics: Record<string, unknown>;
  /** Throughput the stage measured (StageResult.measured), for later estimates; never keyed. */
  measured?: Record<string, unknown>[];
  log?: Digest;
  /** What the output lacks (StageResult.incomplete): admitted, but re-run by the next run. */
  incomplete?: string;
  timings: { start: string; end: string; seconds: number; attempts: number };
  host: string;
  /** GPU device ids the attempt ran on (CUDA_VISIBLE_DEVICES): where, not what, so never keyed. */
  gpus?: string[];
  engine: string;
}

/**
 * What a run uses of an action record: the key and the stored result. The
 * results memo keeps only this (the key fields of a gathering stage alone can
 * be most of a record), so a no-op run parses a third of the bytes.
 */
export type StoredResult = Pick<ActionRecord, "key" | "outputs" | "metrics" | "incomplete">;

export function storedResult(rec: ActionRecord): StoredResult {
  const { key, outputs, metrics, incomplete } = rec;
  return incomplete === undefined
    ? { key, outputs, metrics }
    : { key, outputs, metrics, incomplete };
}

/** A result that is a cache hit: present and not marked incomplete. */
export function isComplete<R extends StoredResult>(rec: R | undefined): rec is R {
  return rec !== undefined && rec.incomplete === undefined;
}

function isFileEntry(
  e: TreeEntry,
): e is { path: string; digest: Digest; size: number; exec?: true } {
  return "digest" in e;
}

/**
 * Runs `write`, which creates `path`; if its folder is missing (ENOENT),
 * creates the folder and runs it again. Objects live in 256 fan-out folders
 * that almost always exist: trying first saves a mkdir and a stat per object
 * (two of the ~50 file-system calls a tiny job costs the engine).
 */
function withParent<T>(path: string, write: () => T): T {
  try {
    return write();
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== "ENOENT") throw e;
    mkdirSync(dirname(path), { recursive: true });
    return write();
  }
}

/**
 * The content-addressed store under one cache root (its layout: see
 * CACHE_LAYOUT in cache/layout.ts). Every write lands under a temporary name
 * and is renamed into place.
 */
export class Store {
  readonly stat: StatCache;

  /**
   * Opens the store at `root`. With `create: false` (plan, status, show) a
   * missing store is not created: reads simply find nothing.
   */
  constructor(
    readonly root: string,
    opts: { create?: boolean } = {},
  ) {
    if (opts.create !== false || existsSync(root)) {
      for (const d of CREATED_ON_OPEN) mkdirSync(cachePath(root, d), { recursive: true });
    }
    this.stat = new StatCache(cachePath(root, "statcache.json"));
  }

  // Paths are built by concatenation onto these normalised folders: a no-op
  // run builds thousands, and path.join's normalising was a tenth of its
  // allocations.
  private dirs = new Map<CacheEntry, string>();

  dir(name: CacheEntry): string {
    let d = this.dirs.get(name);
    if (d === undefined) this.dirs.set(name, (d = cachePath(this.root, name)));
    return d;
  }

  objectPath(d: Digest, exec = false): string {
    const h = digestHex(d);
    return `${this.dir("objects")}${sep}${h.slice(0, 2)}${sep}${h.slice(2)}${exec ? ".x" : ""}`;
  }

  treePath(d: TreeDigest): string {
    return `${this.dir("trees")}${sep}${digestHex(d)}`;
  }

  hasObject(d: Digest, exec = false): boolean {
    return existsSync(this.objectPath(d, exec));
  }

  readObject(d: Digest): Buffer {
    return readFileSync(this.objectPath(d));
  }

  tmpPath(prefix = "t"): string {
    return join(this.dir("tmp"), `${prefix}-${uniqueSuffix()}`);
  }

  /** Stores bytes; returns their digest. */
  putBytes(data: string | Uint8Array): Digest {
    const d = sha256Bytes(data);
    const p = this.objectPath(d);
    if (!existsSync(p)) withParent(p, () => writeFileAtomic(p, data, 0o444));
    return d;
  }

  /**
   * Admits a file by hardlinking it as an object (the caller must not write to
   * it again). If the object exists already, `file` is replaced by a link to
   * it, so the tree and the store share one inode.
   */
  private async admitFile(
    file: string,
    exec: boolean,
    bytes: number,
  ): Promise<{ digest: Digest; size: number }> {
    const { digest, size } = await hashFile(file, bytes);
    const p = this.objectPath(digest, exec);
    // Link first, without asking whether the object exists: a new object
    // (the common case) costs one call less.
    chmodSync(file, exec ? 0o555 : 0o444);
    try {
      withParent(p, () => linkSync(file, p));
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
      // The store has these bytes already: share its inode.
      unlinkSync(file);
      linkSync(p, file);
    }
    return { digest, size };
  }

  /**
   * Admits a finished file (a stage's log) as an object by linking it, not
   * copying it; the caller must not write to it again. Undefined if there is
   * no such file.
   */
  async adoptFile(file: string): Promise<Digest | undefined> {
    let size: number;
    try {
      size = statSync(file).size;
    } catch {
      return undefined;
    }
    return (await this.admitFile(file, false, size)).digest;
  }

  /**
   * Turns a finished output folder into a tree: every file becomes an object,
   * the manifest is stored, and the folder itself is renamed to trees/<hex>
   * (read-only). The folder must be on the cache's filesystem.
   */
  async admitTree(
    dir: string,
  ): Promise<{ tree: TreeDigest; files: Record<string, Digest>; manifest: Manifest }> {
    const entries: TreeEntry[] = [];
    const dirs: string[] = [];
    const walk = async (abs: string, rel: string) => {
      const names = readdirSync(abs).sort();
      for (const name of names) {
        const a = join(abs, name);
        const r = rel ? `${rel}/${name}` : name;
        const st = lstatSync(a);
        if (st.isSymbolicLink()) entries.push({ path: r, link: readlinkSync(a) });
        else if (st.isDirectory()) {
          entries.push({ path: r, dir: true });
          dirs.push(a);
          await walk(a, r);
        } else if (st.isFile()) {
          const exec = (st.mode & 0o111) !== 0;
          const { digest, size } = await this.admitFile(a, exec, st.size);
          entries.push(exec ? { path: r, digest, size, exec: true } : { path: r, digest, size });
        } else {
          throw new Error(`output ${r} is neither a file, a folder nor a symlink`);
        }
      }
    };
    await walk(dir, "");
    const manifest: Manifest = { v: 1, entries };
    const tree = this.putBytes(canonicalJson(manifest)) as TreeDigest;
    const files: Record<string, Digest> = {};
    for (const e of entries) if (isFileEntry(e) && !e.path.includes("/")) files[e.path] = e.digest;
    for (const d of [...dirs].reverse()) chmodSync(d, 0o555);
    chmodSync(dir, 0o555);
    const dest = this.treePath(tree);
    if (existsSync(dest)) this.discard(dir);
    else {
      try {
        renameSync(dir, dest);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code !== "ENOTEMPTY" && code !== "EEXIST") throw e;
        this.discard(dir); // a concurrent run materialised the same tree
      }
    }
    return { tree, files, manifest };
  }

  /**
   * The digest a user's file or folder has in the store, without copying it
   * (a no-op run over a large input tree costs one stat per file).
   */
  async pathDigest(src: string): Promise<TreeDigest> {
    const { manifest } = await pathManifest(src, (f, st) => this.stat.digestAsync(f, st));
    return sha256Bytes(canonicalJson(manifest)) as TreeDigest;
  }

  /**
   * A user's file or folder as a tree in the store, copied in (not linked:
   * the user may edit it in place) only if its content is new.
   */
  async importPath(src: string): Promise<TreeDigest> {
    const { manifest, files } = await pathManifest(src, (f, st) => this.stat.digestAsync(f, st));
    const d = sha256Bytes(canonicalJson(manifest)) as TreeDigest;
    if (this.hasObject(d) && this.checkTree(d).ok) return d;
    const tmp = this.tmpPath("import");
    mkdirSync(tmp);
    for (const e of manifest.entries) if ("dir" in e) mkdirSync(join(tmp, e.path));
    for (const f of files) copyFileSync(f.abs, join(tmp, f.path), fsc.COPYFILE_FICLONE);
    const got = (await this.admitTree(tmp)).tree;
    if (got !== d)
      throw new Error(`${src} changed while it was being copied into the cache; run again`);
    return d;
  }

  readManifest(tree: TreeDigest): Manifest {
    return JSON.parse(this.readObject(tree).toString("utf8")) as Manifest;
  }

  /**
   * Checks that a tree is present and every file in it still has its digest.
   * Files whose stat matches what was recorded at admission are trusted;
   * others are re-hashed. A corrupt object is moved to corrupt/ together with
   * the tree, so it is never served again and the producer re-runs.
   */
  checkTree(tree: TreeDigest): { ok: true } | { ok: false; reason: string } {
    let manifest: Manifest;
    try {
      // Reading the manifest costs the same as hashing it: check it every time.
      const bytes = this.readObject(tree);
      if (sha256Bytes(bytes) !== tree) {
        this.quarantine(this.objectPath(tree));
        return { ok: false, reason: `manifest ${tree} is corrupt` };
      }
      manifest = JSON.parse(bytes.toString("utf8")) as Manifest;
    } catch {
      return { ok: false, reason: `manifest ${tree} is missing` };
    }
    const root = this.treePath(tree);
    if (!existsSync(root)) {
      const r = this.materialize(tree, manifest);
      if (!r.ok) return r;
    }
    // Objects are immutable: one not modified since its tree's manifest was
    // written (same size, mtime not newer) is trusted without re-reading.
    // Any write to it moves its mtime past the manifest's.
    const admitted = statSync(this.objectPath(tree), { bigint: true }).mtimeNs;
    let relink = false;
    for (const e of manifest.entries) {
      if (!isFileEntry(e)) continue;
      let st;
      try {
        st = statSync(this.objectPath(e.digest, e.exec === true), { bigint: true });
      } catch {
        this.quarantineTree(tree);
        return { ok: false, reason: `object ${e.digest} (${e.path}) is missing` };
      }
      const fresh = Number(st.size) === e.size && st.mtimeNs <= admitted;
      if (!fresh && !this.objectIntact(e.digest, e.exec === true)) {
        this.quarantineTree(tree);
        return { ok: false, reason: `object ${e.digest} (${e.path}) is corrupt or missing` };
      }
      // The tree must link the object itself: after a corrupt object was
      // replaced, an older tree may still hold the bad inode.
      if (!relink) {
        try {
          relink =
            statSync(join(root, e.path)).ino !==
            statSync(this.objectPath(e.digest, e.exec === true)).ino;
        } catch {
          relink = true;
        }
      }
    }
    if (relink) {
      this.quarantineTree(tree);
      return this.materialize(tree, manifest);
    }
    return { ok: true };
  }

  /** True if the object exists with its digest; quarantines it otherwise. */
  objectIntact(d: Digest, exec = false): boolean {
    const p = this.objectPath(d, exec);
    if (this.stat.unchanged(p, d)) return true;
    let actual: Digest;
    try {
      actual = this.stat.digest(p).digest;
    } catch {
      return false;
    }
    if (actual === d) {
      // Objects are immutable: unlike a user's file, a fresh one may be trusted by stat.
      this.stat.remember(p, d);
      return true;
    }
    this.quarantine(p);
    return false;
  }

  quarantine(path: string): void {
    this.stat.forget(path);
    try {
      renameSync(
        path,
        join(this.dir("corrupt"), `${path.split("/").slice(-2).join("")}-${Date.now()}`),
      );
    } catch {
      // already moved by another run
    }
  }

  quarantineTree(tree: TreeDigest): void {
    const p = this.treePath(tree);
    if (!existsSync(p)) return;
    const dest = join(this.dir("corrupt"), `tree-${digestHex(tree)}-${Date.now()}`);
    try {
      renameSync(p, dest);
    } catch {
      // another run moved it
    }
  }

  /** Rebuilds trees/<hex> from objects (after a pull, or after the folder was removed). */
  materialize(tree: TreeDigest, manifest?: Manifest): { ok: true } | { ok: false; reason: string } {
    manifest ??= this.readManifest(tree);
    const tmp = this.tmpPath("tree");
    mkdirSync(tmp);
    for (const e of manifest.entries) {
      const dest = join(tmp, e.path);
      if ("dir" in e) mkdirSync(dest, { recursive: true });
      else if ("link" in e) {
        mkdirSync(dirname(dest), { recursive: true });
        symlinkSync(e.link, dest);
      } else {
        const p = this.objectPath(e.digest, e.exec === true);
        if (!existsSync(p)) {
          this.removeTree(tmp);
          return { ok: false, reason: `object ${e.digest} (${e.path}) is missing` };
        }
        mkdirSync(dirname(dest), { recursive: true });
        linkSync(p, dest);
      }
    }
    const dirs = manifest.entries.filter((e) => "dir" in e).map((e) => join(tmp, e.path));
    for (const d of dirs.reverse()) chmodSync(d, 0o555);
    chmodSync(tmp, 0o555);
    try {
      renameSync(tmp, this.treePath(tree));
    } catch {
      this.removeTree(tmp);
    }
    return { ok: true };
  }

  /**
   * Moves a folder out of the way for `valley gc` to delete. On filesystems
   * mounted with `discard`, every rmdir costs milliseconds (measured: 3.4 ms
   * on this ext4), which dominated a run of many small stages; a rename is
   * ~0.02 ms.
   */
  discard(dir: string): void {
    try {
      renameSync(dir, join(this.dir("trash"), uniqueSuffix()));
    } catch {
      this.removeTree(dir);
    }
  }

  /** Empties trash/ and the parsed-pipeline memo (gc): both are rebuilt on demand. */
  emptyTrash(): number {
    rmSync(this.dir("parsed"), { recursive: true, force: true });
    const t = this.dir("trash");
    const names = readdirSync(t);
    for (const n of names) this.removeTree(join(t, n));
    return names.length;
  }

  /** Removes a read-only folder (restoring write permission first, for non-root users). */
  removeTree(dir: string): void {
    const unlock = (d: string) => {
      try {
        chmodSync(d, 0o755);
      } catch {
        return;
      }
      for (const n of readdirSync(d)) {
        const p = join(d, n);
        if (lstatSync(p).isDirectory()) unlock(p);
      }
    };
    if (existsSync(dir)) unlock(dir);
    rmSync(dir, { recursive: true, force: true });
  }

  actionPath(key: ActionKey): string {
    return `${this.dir("actions")}${sep}${digestHex(key)}.json`;
  }

  getAction(key: ActionKey): ActionRecord | undefined {
    return this.readAction(key)?.rec;
  }

  private results?: RecordMemo<StoredResult>;

  /**
   * Memoises the stored results looked up through `lookupResult` in
   * results/<name>.json (cache/record-memo.ts), so that the next run under
   * the same name neither reads nor, while no record changed, stats their
   * records. `saveResults` writes it.
   */
  memoResults(name: string): void {
    this.results = new RecordMemo(join(this.dir("results"), `${name}.json`), this.dir("actions"));
  }

  saveResults(): void {
    this.results?.save();
  }

  /**
   * The records folder's stat fields when this run began, if every result it
   * looked up was served from the memo by trust (cache/record-memo.ts).
   */
  resultsUnchangedSince(): string | undefined {
    return this.results?.unchangedSince();
  }

  private readAction(key: ActionKey): { rec: ActionRecord; mtimeNs: bigint } | undefined {
    let fd: number | undefined;
    try {
      fd = openSync(this.actionPath(key), "r");
      const st = fstatSync(fd, { bigint: true });
      const rec = JSON.parse(readFileSync(fd, "utf8")) as ActionRecord;
      if (rec.key !== key || !isDigest(rec.outputs?.tree)) return undefined;
      this.results?.set(digestHex(key), st, storedResult(rec));
      return { rec, mtimeNs: st.mtimeNs };
    } catch {
      return undefined;
    } finally {
      if (fd !== undefined) closeSync(fd);
    }
  }

  private readResult(key: ActionKey): { rec: StoredResult; mtimeNs: bigint } | undefined {
    const memo = this.results;
    if (memo) {
      const name = digestHex(key);
      const hit = memo.trusted(name);
      if (hit) return hit;
      let st;
      try {
        st = statSync(this.actionPath(key), { bigint: true });
      } catch {
        return undefined;
      }
      const rec = memo.get(name, st);
      if (rec) return { rec, mtimeNs: st.mtimeNs };
    }
    const got = this.readAction(key);
    return got && { rec: storedResult(got.rec), mtimeNs: got.mtimeNs };
  }

  /**
   * Whether the tree of a result is intact. The fast path trusts a tree whose
   * files all have their recorded size and were not modified after the action
   * record was written (any write to a stored file moves its mtime past it);
   * otherwise the full check re-hashes what changed and quarantines what is
   * corrupt.
   */
  private intact(outputs: ActionRecord["outputs"], mtimeNs: bigint): boolean {
    const entries = outputs.entries;
    if (entries) {
      const root = this.treePath(outputs.tree);
      // Plain (float) stats: a no-op run makes one per output file, and
      // BigInt stats cost a quarter of that. An mtime in ms as a double is
      // exact to well under a microsecond, and a write after the record
      // moves it by at least a clock tick (milliseconds): 1 µs of slack.
      const recordMs = Number(mtimeNs) / 1e6 + 0.001;
      let fresh = true;
      try {
        for (const e of entries) {
          if (!isFileEntry(e)) continue;
          const st = statSync(`${root}${sep}${e.path}`, { throwIfNoEntry: false });
          if (!st || st.size !== e.size || st.mtimeMs > recordMs) {
            fresh = false;
            break;
          }
        }
      } catch {
        fresh = false;
      }
      if (fresh) return true;
    }
    return this.checkTree(outputs.tree).ok;
  }

  /** A valid result for `key` (the whole action record), or undefined. */
  lookupAction(key: ActionKey): ActionRecord | undefined {
    const got = this.readAction(key);
    return got && this.intact(got.rec.outputs, got.mtimeNs) ? got.rec : undefined;
  }

  /**
   * A valid stored result for `key`, or undefined: what a run needs of the
   * record, served from the results memo when there is one.
   */
  lookupResult(key: ActionKey): StoredResult | undefined {
    const got = this.readResult(key);
    return got && this.intact(got.rec.outputs, got.mtimeNs) ? got.rec : undefined;
  }

  putAction(rec: ActionRecord): void {
    writeFileAtomic(this.actionPath(rec.key), JSON.stringify(rec, null, 1));
  }

  private static hostName?: string;

  static host(): string {
    // One uname(2) per process, not per record.
    return (Store.hostName ??= hostname());
  }
}
