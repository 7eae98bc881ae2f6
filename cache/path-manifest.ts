import { readdirSync, statSync, type BigIntStats } from "node:fs";
import { basename, join } from "node:path";
import type { Digest } from "./digest.js";
import type { Manifest, TreeEntry } from "./store.js";

/** A file of a user's path, with where its bytes are read from. */
export interface SourceFile {
  /** Path in the tree ("/"-separated). */
  path: string;
  /** The file to read (symbolic links resolved by the kernel when it is opened). */
  abs: string;
  exec: boolean;
}

/**
 * The manifest a user's file or folder has once admitted to the store: the
 * one description both the no-copy digest (plan, a cached run) and the copy
 * into the store work from, so the two cannot disagree.
 *
 * Symbolic links are followed, to files and to folders alike: a stage reads
 * what a link points at, so that content is what the key must cover (a link
 * kept as a link would leave its target out of the key, and would dangle
 * once the tree is in the store). A link that points at a folder above it
 * (a cycle) or at nothing is reported, not walked.
 *
 * `digest` hashes one regular file given its stat (the stat cache; a large
 * file in a worker thread, so that lease heartbeats keep ticking).
 */
export async function pathManifest(
  abs: string,
  digest: (file: string, st: BigIntStats) => Promise<{ digest: Digest; size: number }>,
): Promise<{ manifest: Manifest; files: SourceFile[] }> {
  const entries: TreeEntry[] = [];
  const files: SourceFile[] = [];
  const file = async (a: string, rel: string, st: BigIntStats) => {
    const { digest: d, size } = await digest(a, st);
    const exec = (st.mode & 0o111n) !== 0n;
    entries.push(
      exec ? { path: rel, digest: d, size, exec: true } : { path: rel, digest: d, size },
    );
    files.push({ path: rel, abs: a, exec });
  };
  const follow = (a: string): BigIntStats => {
    try {
      return statSync(a, { bigint: true });
    } catch (e) {
      const code = (e as NodeJS.ErrnoException).code;
      if (code === "ENOENT" || code === "ELOOP")
        throw new Error(`${a} is a symbolic link to nothing (${code})`, { cause: e });
      throw e;
    }
  };
  // Folders on the current walk, by device and inode: a link back to one is a cycle.
  const open = new Set<string>();
  const walk = async (dir: string, rel: string, st: BigIntStats) => {
    const id = `${st.dev}:${st.ino}`;
    if (open.has(id)) throw new Error(`${dir} links back to a folder that contains it`);
    open.add(id);
    for (const name of readdirSync(dir).sort()) {
      const a = join(dir, name);
      const r = rel ? `${rel}/${name}` : name;
      const s = follow(a);
      if (s.isDirectory()) {
        entries.push({ path: r, dir: true });
        await walk(a, r, s);
      } else if (s.isFile()) await file(a, r, s);
      else throw new Error(`${a} is neither a file nor a folder`);
    }
    open.delete(id);
  };
  const st = follow(abs);
  if (st.isDirectory()) await walk(abs, "", st);
  else if (st.isFile()) await file(abs, basename(abs), st);
  else throw new Error(`${abs} is neither a file nor a folder`);
  return { manifest: { v: 1, entries }, files };
}
