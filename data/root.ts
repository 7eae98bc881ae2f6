import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

let cached: string | undefined;

/**
 * The project root: the nearest folder above this module holding package.json.
 * Works from the source tree and from any compiled outDir, so schema.json and
 * the demo data are always read from the source tree.
 */
export function projectRoot(): string {
  if (cached) return cached;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json"))) return (cached = dir);
    const up = dirname(dir);
    if (up === dir)
      throw new Error(
        "valley: cannot find the project root (package.json) above " + import.meta.url,
      );
    dir = up;
  }
}
