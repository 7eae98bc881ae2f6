/** File helpers shared by the llama stages. */
import { copyFile, link } from "node:fs/promises";

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
