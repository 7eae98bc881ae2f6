import { readdirSync, readFileSync, rmSync, existsSync, lstatSync } from "node:fs";
import { join } from "node:path";
import { type Digest, isDigest, digestHex, type ActionKey, type TreeDigest } from "./digest.js";
import type { Store, Manifest, ActionRecord } from "./store.js";
import { bytesUnder } from "./disk.js";

export interface GcResult {
  keptActions: number;
  removedActions: number;
  removedObjects: number;
  removedTrees: number;
  freedBytes: number;
}

/**
 * The mark half of mark-and-sweep, shared by local gc and `gc --remote`:
 * what the root keys (action records) and root trees keep alive. Object
 * names are hex digests, plus ".x" for executable copies; trees are hex.
 * The callbacks return undefined (or throw) for what is not there.
 */
export function markLive(
  rootKeys: Iterable<ActionKey>,
  rootTrees: Iterable<Digest>,
  getAction: (key: ActionKey) => ActionRecord | undefined,
  getManifest: (tree: Digest) => Manifest | undefined,
): { objects: Set<string>; trees: Set<string>; actions: Set<string> } {
  const objects = new Set<string>();
  const trees = new Set<string>();
  const actions = new Set<string>();
  const markTree = (tree: Digest) => {
    trees.add(digestHex(tree));
    objects.add(digestHex(tree));
    try {
      const m = getManifest(tree);
      for (const e of m?.entries ?? [])
        if ("digest" in e) objects.add(digestHex(e.digest) + (e.exec ? ".x" : ""));
    } catch {
      // missing manifest: nothing more to keep
    }
  };
  for (const t of rootTrees) markTree(t);
  for (const k of rootKeys) {
    const rec = getAction(k);
    if (!rec) continue;
    actions.add(digestHex(k));
    markTree(rec.outputs.tree);
    if (rec.log) objects.add(digestHex(rec.log));
  }
  return { objects, trees, actions };
}

/**
 * Mark and sweep. Roots are action keys (from lockfiles and pins); an action
 * keeps its output tree, that tree's files and its log. Everything else in
 * objects/, trees/ and actions/ is removed, including half-written
 * `*.tmp-*` files: the caller holds the cache's gc lock, so no process that
 * could be writing them is alive (cache/README.md). `touch` keeps the lock's
 * heartbeat fresh during a long sweep.
 */
export function collectGarbage(
  store: Store,
  rootKeys: Set<ActionKey>,
  rootTrees: Set<Digest>,
  dryRun: boolean,
  touch: () => void = () => {},
): GcResult {
  const { objects: liveObjects, trees: liveTrees } = markLive(
    rootKeys,
    rootTrees,
    (k) => store.getAction(k),
    (t) => JSON.parse(readFileSync(store.objectPath(t), "utf8")) as Manifest,
  );
  let keptActions = 0;
  let removedActions = 0;
  for (const f of readdirSync(store.dir("actions"))) {
    touch();
    if (!f.endsWith(".json")) {
      if (!dryRun) rmSync(join(store.dir("actions"), f), { force: true }); // *.tmp-* of a dead run
      continue;
    }
    const key = ("sha256:" + f.slice(0, -5)) as ActionKey;
    if (rootKeys.has(key)) {
      keptActions++;
    } else {
      removedActions++;
      if (!dryRun) rmSync(join(store.dir("actions"), f), { force: true });
    }
  }
  let removedObjects = 0;
  let freedBytes = 0;
  const objects = store.dir("objects");
  for (const sub of readdirSync(objects)) {
    for (const f of readdirSync(join(objects, sub))) {
      const name = sub + f;
      if (liveObjects.has(name)) continue;
      touch();
      const p = join(objects, sub, f);
      removedObjects++;
      try {
        freedBytes += lstatSync(p).size;
      } catch {
        // vanished
      }
      if (!dryRun) {
        rmSync(p, { force: true });
        store.stat.forget(p);
      }
    }
  }
  let removedTrees = 0;
  for (const t of readdirSync(store.dir("trees"))) {
    if (liveTrees.has(t)) continue;
    touch();
    removedTrees++;
    if (!dryRun) store.removeTree(join(store.dir("trees"), t));
  }
  if (!dryRun) store.stat.save();
  return { keptActions, removedActions, removedObjects, removedTrees, freedBytes };
}

export interface LeftoverResult {
  /** Entries of work/, tmp/, trash/ and scratch/ removed (or that would be). */
  entries: number;
  bytes: number;
}

/**
 * Leftovers of processes that are gone (the caller holds the gc lock, so no
 * user of the cache is alive): attempt outputs and logs in work/,
 * half-written files and partial downloads in tmp/, trash/, and scratch
 * folders of keys that have a result. Scratch folders of keys without one
 * stay (checkpoints a retried stage resumes from), and so does the log of a
 * key's last failed attempt (`valley logs`).
 */
export function cleanLeftovers(
  store: Store,
  dryRun: boolean,
  touch: () => void = () => {},
): LeftoverResult {
  const r: LeftoverResult = { entries: 0, bytes: 0 };
  const drop = (p: string) => {
    touch();
    r.entries++;
    r.bytes += bytesUnder(p);
    if (dryRun) return;
    if (lstatSync(p).isDirectory()) store.removeTree(p);
    else rmSync(p, { force: true });
  };
  const hasResult = (hex: string) => existsSync(join(store.dir("actions"), hex + ".json"));
  for (const d of ["work", "tmp", "trash"] as const) {
    const dir = store.dir(d);
    if (!existsSync(dir)) continue;
    for (const n of readdirSync(dir)) {
      // The log of a key's last failed attempt (`valley logs`) stays until the key has a result.
      const failed = d === "work" ? /^([0-9a-f]{64})\.failed\.log$/.exec(n) : null;
      if (failed && !hasResult(failed[1])) continue;
      drop(join(dir, n));
    }
  }
  const scratch = store.dir("scratch");
  if (existsSync(scratch))
    for (const f of readdirSync(scratch)) if (hasResult(f)) drop(join(scratch, f));
  // The parsed-pipeline memo is rebuilt on demand.
  if (!dryRun) rmSync(store.dir("parsed"), { recursive: true, force: true });
  return r;
}

/** Pins: files in pins/ holding an action key or a tree digest, kept by gc. */
export function readPins(store: Store): { keys: ActionKey[]; trees: TreeDigest[] } {
  const keys: ActionKey[] = [];
  const trees: TreeDigest[] = [];
  const dir = store.dir("pins");
  if (!existsSync(dir)) return { keys, trees };
  for (const f of readdirSync(dir)) {
    try {
      const p = JSON.parse(readFileSync(join(dir, f), "utf8")) as { key?: string; tree?: string };
      if (isDigest(p.key)) keys.push(p.key as ActionKey);
      if (isDigest(p.tree)) trees.push(p.tree as TreeDigest);
    } catch {
      // not a pin
    }
  }
  return { keys, trees };
}
