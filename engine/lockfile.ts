import { readFileSync, existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { writeFileAtomic } from "../cache/atomic.js";
import type { Digest } from "../cache/digest.js";
import type { ActionRecord } from "../cache/store.js";
import type { Pipeline } from "./pipeline/expand.js";

/** `<pipeline>.lock`: what each instance produced, for users to commit as provenance. */
export interface Lockfile {
  version: 1;
  pipeline: string;
  instances: Record<
    string,
    {
      stage: string;
      kind: string;
      key: Digest;
      tree: Digest;
      files: Record<string, Digest>;
      metrics: Record<string, unknown>;
    }
  >;
}

export function lockfilePath(pipelineFile: string): string {
  return pipelineFile.replace(/\.(ya?ml)$/i, "") + ".lock";
}

function sortKeys<T>(o: Record<string, T>): Record<string, T> {
  // Most records have one output file and few metrics: no copy needed then.
  const keys = Object.keys(o);
  if (keys.length < 2) return o;
  return Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/** Writes the lockfile (only if its content changed) and registers it as a gc root. */
export function writeLockfile(
  pl: Pipeline,
  results: Map<string, ActionRecord>,
  cacheRoot: string,
): string {
  const path = lockfilePath(pl.file);
  const instances: Lockfile["instances"] = {};
  for (const inst of pl.instances) {
    const r = results.get(inst.id);
    if (!r) continue;
    instances[inst.id] = {
      stage: inst.stage,
      kind: inst.kind,
      key: r.key,
      tree: r.outputs.tree,
      files: sortKeys(r.outputs.files),
      metrics: sortKeys(r.metrics),
    };
  }
  const lock: Lockfile = { version: 1, pipeline: pl.name, instances: sortKeys(instances) };
  const text = JSON.stringify(lock, null, 2) + "\n";
  let old = "";
  try {
    old = readFileSync(path, "utf8");
  } catch {
    // first run
  }
  if (old !== text) writeFileAtomic(path, text);
  registerRoot(cacheRoot, path);
  return path;
}

export function readLockfile(path: string): Lockfile | undefined {
  try {
    const l = JSON.parse(readFileSync(path, "utf8")) as Lockfile;
    return l.version === 1 && l.instances ? l : undefined;
  } catch {
    return undefined;
  }
}

const rootsFile = (cacheRoot: string) => join(cacheRoot, "roots.json");

/** Lockfiles written with this cache: gc keeps what they reference. */
export function roots(cacheRoot: string): string[] {
  try {
    return (JSON.parse(readFileSync(rootsFile(cacheRoot), "utf8")) as string[]).filter((p) =>
      existsSync(p),
    );
  } catch {
    return [];
  }
}

export function registerRoot(cacheRoot: string, lock: string): void {
  const abs = resolve(lock);
  const list = roots(cacheRoot);
  if (list.includes(abs)) return;
  writeFileAtomic(rootsFile(cacheRoot), JSON.stringify([...list, abs].sort(), null, 1));
}
