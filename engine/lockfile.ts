import { cachePath } from "../cache/layout.js";
import { readFileSync, existsSync, readdirSync, mkdirSync, rmSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { writeFileAtomic } from "../cache/atomic.js";
import { type Digest, digestHex, sha256Bytes, type ActionKey } from "../cache/digest.js";
import type { StoredResult } from "../cache/store.js";
import type { Pipeline } from "./pipeline/expand.js";
import { readText } from "../cache/read-text.js";
import { statFields } from "../cache/record-memo.js";
import { settled } from "../cache/stat-cache.js";

/** `<pipeline>.lock`: what each instance produced, for users to commit as provenance. */
export interface Lockfile {
  version: 1;
  pipeline: string;
  instances: Record<
    string,
    {
      stage: string;
      kind: string;
      key: ActionKey;
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

/**
 * What the lockfile was last written from, when that is known exactly: the
 * records folder unchanged since the start of the run that wrote it (every
 * result it used was served from the results memo by trust), the instances
 * and keys it listed, and the lockfile's own stat fields since.
 */
interface LockState {
  lock: string;
  dir: string;
  ids: Digest;
  st: string;
}

/** What a lockfile is written about: a pipeline, or the instances a run memo lists (engine/run-memo.ts). */
export interface LockSource {
  file: Pipeline["file"];
  name: Pipeline["name"];
  instances: readonly { id: string; stage: string; kind: string }[];
}

/** A lockfile's name in the cache: for its gc root and its lock state. */
const lockName = (abs: string) => digestHex(sha256Bytes(abs)).slice(0, 32);

const lockStatePath = (cacheRoot: string, lock: string) =>
  join(cachePath(cacheRoot, "results"), `${lockName(lock)}.lockfile.json`);

/**
 * Writes the lockfile (only if its content changed), registering it as a gc
 * root first (`run` registered it already before computing anything).
 *
 * `unchangedSince`: the records folder's stat fields at the start of this
 * run, when every result in `results` was served from the results memo by
 * trust (Store.resultsUnchangedSince). A run that used the same instances
 * and keys from the same records, with the lockfile untouched since, would
 * write it byte for byte again: building and comparing its text was ~8% of a
 * no-op run of 2,001 instances, so it is skipped.
 */
export function writeLockfile(
  pl: LockSource,
  results: Map<string, StoredResult>,
  cacheRoot: string,
  unchangedSince?: string,
): string {
  const path = lockfilePath(pl.file);
  registerRoot(cacheRoot, path);
  let ids: Digest | undefined;
  let statePath = "";
  if (unchangedSince) {
    let list = "";
    for (const inst of pl.instances) {
      const r = results.get(inst.id);
      if (r) list += `${inst.id}\t${r.key}\n`;
    }
    ids = sha256Bytes(list);
    statePath = lockStatePath(cacheRoot, path);
    try {
      const s = JSON.parse(readText(statePath)) as LockState;
      if (
        s.lock === path &&
        s.dir === unchangedSince &&
        s.ids === ids &&
        s.st === statFields(statSync(path, { bigint: true }))
      )
        return path;
    } catch {
      // no state, or no lockfile: write it
    }
  }
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
    old = readText(path);
  } catch {
    // first run
  }
  if (old !== text) writeFileAtomic(path, text);
  else if (ids) {
    // Verified as it is: remembered, once its stat fields can be trusted.
    const st = statSync(path, { bigint: true });
    if (settled(st)) {
      const state: LockState = {
        lock: path,
        dir: unchangedSince as string,
        ids,
        st: statFields(st),
      };
      writeFileAtomic(statePath, JSON.stringify(state));
    }
  }
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

const legacyRootsFile = (cacheRoot: string) => cachePath(cacheRoot, "roots.json");
const rootsDir = (cacheRoot: string) => cachePath(cacheRoot, "roots");

/** Every registered lockfile path, whether or not it exists (yet). */
function registered(cacheRoot: string): { path: string; file?: string }[] {
  const out: { path: string; file?: string }[] = [];
  try {
    for (const p of JSON.parse(readFileSync(legacyRootsFile(cacheRoot), "utf8")) as string[])
      out.push({ path: p });
  } catch {
    // none
  }
  let names: string[] = [];
  try {
    names = readdirSync(rootsDir(cacheRoot));
  } catch {
    // none
  }
  for (const n of names) {
    if (n.includes(".tmp-")) continue;
    try {
      const file = join(rootsDir(cacheRoot), n);
      out.push({ path: readFileSync(file, "utf8").trim(), file });
    } catch {
      // removed meanwhile
    }
  }
  return out;
}

/** Lockfiles written with this cache: gc keeps what they reference. */
export function roots(cacheRoot: string): string[] {
  return [...new Set(registered(cacheRoot).map((r) => r.path))].filter((p) => existsSync(p));
}

/**
 * Registers a lockfile (existing or about to be written) as a gc root: one
 * file per lockfile under roots/, so concurrent registrations never
 * overwrite each other (see cache/README.md).
 */
export function registerRoot(cacheRoot: string, lock: string): void {
  const abs = resolve(lock);
  const file = join(rootsDir(cacheRoot), lockName(abs));
  if (existsSync(file)) return;
  mkdirSync(rootsDir(cacheRoot), { recursive: true });
  writeFileAtomic(file, abs + "\n");
}

/** Forgets registrations whose lockfile is gone (gc, while no run can be about to write one). */
export function pruneRoots(cacheRoot: string): number {
  let n = 0;
  const regs = registered(cacheRoot);
  for (const r of regs) {
    if (!r.file || existsSync(r.path)) continue;
    rmSync(r.file, { force: true });
    n++;
  }
  // The legacy list moves into roots/ (only the lockfiles that still exist).
  if (existsSync(legacyRootsFile(cacheRoot))) {
    for (const r of regs) if (!r.file && existsSync(r.path)) registerRoot(cacheRoot, r.path);
    rmSync(legacyRootsFile(cacheRoot), { force: true });
  }
  return n;
}
