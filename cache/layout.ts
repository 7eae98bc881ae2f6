import { join } from "node:path";

/**
 * Everything under a cache root, in one place: what each entry holds and who
 * writes it. The store's own content (objects, trees, actions) is what
 * `valley verify`, `gc` and the remotes deal in; the rest is the engine's
 * bookkeeping, rebuilt or discarded at no cost to results.
 */
export const CACHE_LAYOUT = {
  // The content-addressed store (cache/store.ts).
  objects: "immutable read-only blobs by digest: objects/ab/cdef… ('.x': an executable copy)",
  trees: "a tree materialised as read-only hardlinks to objects: trees/<hex>/",
  actions: "action records by key: actions/<hex>.json (Bazel's action cache)",
  corrupt: "objects and trees found corrupt, moved aside so they are never served",
  // The engine's bookkeeping.
  history: "the last key per (pipeline, instance id), for plan --why: history/<hex>.json",
  results:
    "per pipeline: what its last run used of each action record, with the records' stat fields, so a no-op run reads one file (cache/record-memo.ts); per lockfile: what it was last written from, so an unchanged one is not rebuilt (engine/lockfile.ts); per pipeline file: its last complete run's keys and what they were computed from, so a run with nothing to do does not expand the pipeline (engine/run-memo.ts)",
  leases: "one lock file per key being computed (cache/leases.ts)",
  pins: "named roots gc keeps: pins/<name>.json",
  work: "attempts' output folders and logs until admitted; <hex>.failed.log of a failed one",
  scratch: "per-key folders kept across attempts (checkpoints); removed once admitted",
  tmp: "files and folders being written, renamed into place when complete",
  trash: "folders set aside for gc to delete (a rename costs less than rmdir)",
  parsed: "pipelines' data by the digest of their YAML text (engine/pipeline/source.ts)",
  slurm: "sbatch scripts, job logs and results (engine/executors/slurm.ts)",
  "statcache.json": "file digests by stat fields, so unchanged files are not re-read",
  "requests.sqlite": "model requests answered, shared by stages that ask a model (not keyed)",
  calibration:
    "throughput micro-benchmarks of valley calibrate, per stage kind: calibration/<kind>.json",
  // gc and sharing (cache/README.md).
  locks: "gc.lock while gc sweeps; one file per command using the cache (cache/cache-lock.ts)",
  roots: "one file per lockfile whose results gc keeps (registered before they are visible)",
  "roots.json":
    "the former single list of roots, moved into roots/ when next read (engine/lockfile.ts)",
  imports: "bundles being imported (valley import), until their objects are admitted",
  id: "this cache's random id: names its pins on remotes",
} as const;

export type CacheEntry = keyof typeof CACHE_LAYOUT;

/** The folders a store creates when it is opened; the others appear when first used. */
export const CREATED_ON_OPEN: readonly CacheEntry[] = [
  "objects",
  "trees",
  "actions",
  "history",
  "results",
  "leases",
  "work",
  "scratch",
  "tmp",
  "corrupt",
  "pins",
  "trash",
];

/** The path of one entry of the cache at `root`. */
export function cachePath(root: string, entry: CacheEntry): string {
  return join(root, entry);
}
