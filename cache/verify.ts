import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { type Digest, type TreeDigest } from "./digest.js";
import { hashFileSync } from "./hash.js";
import type { Store } from "./store.js";

export interface Corrupt {
  path: string;
  expected: Digest;
  actual: Digest | "unreadable";
}

/**
 * Re-hashes every object regardless of the stat cache (a flipped byte with a
 * restored mtime fools the stat cache, not this), and checks every action
 * record names a stored tree. Corrupt objects are quarantined so that no run
 * serves them; their producers re-run.
 */
export function verifyStore(
  store: Store,
  opts: { onProgress?: (n: number) => void } = {},
): { checked: number; corrupt: Corrupt[]; brokenActions: string[] } {
  const corrupt: Corrupt[] = [];
  let checked = 0;
  const objects = store.dir("objects");
  for (const sub of readdirSync(objects).sort()) {
    for (const f of readdirSync(join(objects, sub)).sort()) {
      if (f.includes(".tmp-")) continue;
      const p = join(objects, sub, f);
      const expected = ("sha256:" + sub + f.replace(/\.x$/, "")) as Digest;
      let actual: Digest | "unreadable";
      try {
        actual = hashFileSync(p).digest;
      } catch {
        actual = "unreadable";
      }
      checked++;
      opts.onProgress?.(checked);
      if (actual !== expected) {
        corrupt.push({ path: p, expected, actual });
        store.quarantine(p);
      }
    }
  }
  const brokenActions: string[] = [];
  for (const f of readdirSync(store.dir("actions"))) {
    if (!f.endsWith(".json")) continue;
    try {
      const rec = JSON.parse(readFileSync(join(store.dir("actions"), f), "utf8")) as {
        outputs: { tree: Digest };
      };
      if (!store.hasObject(rec.outputs.tree)) brokenActions.push(f.slice(0, -5));
    } catch {
      brokenActions.push(f.slice(0, -5));
    }
  }
  for (const c of corrupt) {
    // Trees that hardlink a corrupt object share its bytes: move them aside too.
    const expected = c.expected;
    for (const t of readdirSync(store.dir("trees"))) {
      try {
        const m = JSON.parse(readFileSync(store.objectPath(("sha256:" + t) as Digest), "utf8")) as {
          entries: { digest?: string }[];
        };
        if (m.entries.some((e) => e.digest === expected))
          store.quarantineTree(("sha256:" + t) as TreeDigest);
      } catch {
        // manifest itself missing or corrupt: checkTree will refuse it
      }
    }
  }
  store.stat.save();
  return { checked, corrupt, brokenActions };
}
