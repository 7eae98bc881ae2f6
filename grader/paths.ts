/**
 * Files the grader reads at run time from the source tree (the harness, the
 * stage schema): found from the project root, the nearest folder above this
 * module holding package.json, so the same code works from src and from dist.
 */
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

let root: string | undefined;

export function projectRoot(): string {
  if (root) return root;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json")) && existsSync(join(dir, "grader")))
      return (root = dir);
    const up = dirname(dir);
    if (up === dir)
      throw new Error(
        `cannot find the valley project root above ${fileURLToPath(import.meta.url)}`,
      );
    dir = up;
  }
}

export function projectFile(rel: string): string {
  return join(projectRoot(), rel);
}
