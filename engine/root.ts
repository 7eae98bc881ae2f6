import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

function findRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "schemas"))) return dir;
    const up = dirname(dir);
    if (up === dir)
      throw new Error("valley: cannot find the package root (package.json + schemas/)");
    dir = up;
  }
}

/** The package root: source assets (schemas, stage schema.json files, pipelines) live here. */
export const PACKAGE_ROOT = findRoot();
/** Where compiled modules live. */
export const DIST_ROOT = join(PACKAGE_ROOT, "dist");
