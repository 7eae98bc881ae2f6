/** File helpers shared by the llama stages. */
import { copyFile, link, stat } from "node:fs/promises";
import type { Digest } from "../cache/digest.js";
import { hashFile } from "./toolchain.js";

/**
 * Puts `src` at `dst` as a hardlink (no copy of a multi-GB model); copies only
 * where a link is impossible: across filesystems (EXDEV) or where the kernel
 * refuses to link a file we do not own (EPERM, fs.protected_hardlinks).
 */
export async function linkOrCopy(src: string, dst: string): Promise<"link" | "copy"> {
  try {
    await link(src, dst);
    return "link";
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code !== "EXDEV" && code !== "EPERM" && code !== "EMLINK") throw e;
    await copyFile(src, dst);
    return "copy";
  }
}

/**
 * sha256 of a file, remembered per (device, inode, size, mtime) for the life of
 * the process, so a pipeline naming one big model twice hashes it once.
 */
const memo = new Map<string, Digest>();
export async function hashFileCached(path: string): Promise<Digest> {
  const s = await stat(path, { bigint: true });
  const k = `${s.dev}:${s.ino}:${s.size}:${s.mtimeNs}`;
  let d = memo.get(k);
  if (!d) {
    d = await hashFile(path);
    memo.set(k, d);
  }
  return d;
}
