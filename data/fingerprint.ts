import { createHash } from "node:crypto";
import { createReadStream } from "node:fs";
import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";

/**
 * sha256 of a file, or of a folder's files (name + content, in name order).
 * Used as key material for stages that read a local path named in params: the
 * path string alone would not notice the file changing.
 */
export async function pathDigest(path: string): Promise<string | null> {
  let st;
  try {
    st = await stat(path);
  } catch {
    return null; // the stage reports a missing path when it runs
  }
  const h = createHash("sha256");
  const files: string[] = [];
  if (st.isDirectory()) {
    for (const n of (await readdir(path)).sort()) {
      if ((await stat(join(path, n))).isFile()) files.push(n);
    }
  } else files.push("");
  for (const n of files) {
    h.update(n + "\0");
    await new Promise<void>((res, rej) => {
      createReadStream(n ? join(path, n) : path)
        .on("data", (c) => h.update(c))
        .on("end", res)
        .on("error", rej);
    });
    h.update("\0");
  }
  return "sha256:" + h.digest("hex");
}
