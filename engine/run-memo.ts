import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  canonicalJson,
  digestHex,
  sha256Bytes,
  type ActionKey,
  type Digest,
  type TreeDigest,
} from "../cache/digest.js";
import { writeFileAtomic } from "../cache/atomic.js";
import { readText } from "../cache/read-text.js";
import { cachePath } from "../cache/layout.js";
import { isComplete, type Store, type StoredResult } from "../cache/store.js";
import { hashToolDir } from "./key.js";
import { DIST_ROOT } from "./root.js";
import type { ToolInfo } from "./stage-api.js";

/**
 * The run memo: what a complete run of a pipeline file computed its keys
 * from, and the keys, so that the next run can tell it has nothing to do
 * without expanding the pipeline or computing a key (make's up-to-date check,
 * on the engine's own terms).
 *
 * A key is a function of the key fields (engine/key.ts), and those are a
 * function of, all recorded here:
 * - valley itself (kinds' code, schema defaults): the build id `npm run
 *   build` writes (scripts/bundle.mjs);
 * - the pipeline file's path and text, and the `-p` overrides;
 * - the environment variables the engine read: declared `env:` names and
 *   `VALLEY_<TOOL>_BIN`;
 * - the tools' digests, the path inputs' digests (both through the stat
 *   cache) and the kinds' fingerprint hooks' results, computed again;
 * - the upstream results' trees: every instance's result must still be the
 *   one recorded (same key, same tree), looked up as a run looks it up.
 * If all of these are unchanged, every key and every result is too, and the
 * run is the no-op the full path would find (and writes what it would). Any
 * difference, or anything missing, falls back to the full path: the memo
 * only ever skips work, never decides a result.
 */
interface RunMemoFile {
  v: 1;
  build: string;
  file: string;
  text: Digest;
  overrides: string;
  /** The pipeline's name (its lockfile field, and where its results memo and history are). */
  name: string;
  env: Record<string, string | null>;
  tools: Record<string, { bin: string; lib?: string; digest: Digest } | null>;
  paths: Record<string, TreeDigest>;
  hooks: { kind: string; params: Record<string, unknown>; result: string }[];
  /** In pipeline order: id, stage, kind, key, output tree. */
  instances: [string, string, string, ActionKey, TreeDigest][];
}

/** What a run consulted besides the pipeline text; the engine fills it in as it computes keys. */
export class Consulted {
  readonly env = new Map<string, string | null>();
  readonly paths = new Map<string, TreeDigest>();
  readonly hooks = new Map<
    string,
    { kind: string; params: Record<string, unknown>; result: string }
  >();
}

let buildId: string | null | undefined;
/** The build id `npm run build` wrote, or null (then no memo is written or trusted). */
function currentBuild(): string | null {
  if (buildId === undefined) {
    try {
      buildId = readFileSync(join(DIST_ROOT, "bin", "build-id"), "utf8").trim() || null;
    } catch {
      buildId = null;
    }
  }
  return buildId;
}

const memoPath = (cacheRoot: string, file: string) =>
  join(cachePath(cacheRoot, "results"), `${digestHex(sha256Bytes(file)).slice(0, 32)}.run.json`);

/** The pipeline's text as its digest, or undefined if it cannot be read. */
function textDigest(file: string): Digest | undefined {
  try {
    return sha256Bytes(readFileSync(file));
  } catch {
    return undefined;
  }
}

/** One instance's part of a complete run: its place, its key and its result's tree. */
export interface MemoInstance {
  id: string;
  stage: string;
  kind: string;
  key: ActionKey;
  tree: TreeDigest;
}

/**
 * Records a complete run (every instance of the pipeline has a complete
 * result) for the next run of the same file. Only a speed-up: a failure to
 * write is ignored.
 */
export function saveRunMemo(a: {
  cacheRoot: string;
  file: string;
  /** The digest of the text the run's keys came from: an edit during the run is not theirs. */
  text: Digest;
  overrides: Record<string, unknown>;
  name: string;
  consulted: Consulted;
  tools: Map<string, ToolInfo | undefined>;
  instances: MemoInstance[];
}): void {
  const build = currentBuild();
  if (!build) return;
  const env: Record<string, string | null> = Object.fromEntries(a.consulted.env);
  const tools: RunMemoFile["tools"] = {};
  for (const [name, info] of a.tools) {
    env[toolEnv(name)] = process.env[toolEnv(name)] ?? null;
    tools[name] = info ? { bin: info.bin, lib: info.lib, digest: info.digest } : null;
  }
  const memo: RunMemoFile = {
    v: 1,
    build,
    file: a.file,
    text: a.text,
    overrides: canonicalJson(a.overrides),
    name: a.name,
    env,
    tools,
    paths: Object.fromEntries(a.consulted.paths),
    hooks: [...a.consulted.hooks.values()],
    instances: a.instances.map((i) => [i.id, i.stage, i.kind, i.key, i.tree]),
  };
  try {
    writeFileAtomic(memoPath(a.cacheRoot, a.file), JSON.stringify(memo));
  } catch {
    // a full disk, a concurrent gc: the next run takes the full path
  }
}

/** The variable a tool's binary folder can come from when the pipeline names none. */
export const toolEnv = (name: string) => `VALLEY_${name.toUpperCase()}_BIN`;

/** A run found to have nothing to do: its instances and their results. */
export interface Unchanged {
  name: string;
  instances: MemoInstance[];
  results: Map<string, StoredResult>;
}

/**
 * Whether the last complete run of `file` (absolute) still holds: every
 * determinant of every key unchanged and every result still there, intact
 * and complete. Returns its instances and results, or undefined (take the
 * full path). `store` must have its results memo opened under the
 * pipeline's name, which the memo names: `openStore` does that.
 */
export async function unchangedRun(
  a: UnchangedQuery,
): Promise<{ run: Unchanged; store: Store } | undefined> {
  try {
    return await check(a);
  } catch {
    // no memo, one of another shape, a path gone, a hook that throws: only a speed-up
    return undefined;
  }
}

interface UnchangedQuery {
  cacheRoot: string;
  file: string;
  overrides: Record<string, unknown>;
  openStore: (name: string) => Store;
  /** A kind's fingerprint hook, run again with recorded params (loads the kind). */
  fingerprint: (
    kind: string,
    params: Record<string, unknown>,
    store: Store,
  ) => Promise<Record<string, unknown> | undefined>;
}

/** Throws on whatever it cannot read or run: `unchangedRun` takes that as "take the full path". */
async function check(a: UnchangedQuery): Promise<{ run: Unchanged; store: Store } | undefined> {
  const memo = JSON.parse(readText(memoPath(a.cacheRoot, a.file))) as RunMemoFile;
  const build = currentBuild();
  if (
    memo.v !== 1 ||
    !build ||
    memo.build !== build ||
    memo.file !== a.file ||
    memo.text !== textDigest(a.file) ||
    memo.overrides !== canonicalJson(a.overrides)
  )
    return undefined;
  for (const [name, value] of Object.entries(memo.env))
    if ((process.env[name] ?? null) !== value) return undefined;
  const store = a.openStore(memo.name);
  for (const t of Object.values(memo.tools)) {
    if (!t) continue;
    const dirs = [t.bin, ...(t.lib ? [t.lib] : [])];
    if (!existsSync(t.bin) || hashToolDir(dirs, store.stat) !== t.digest) return undefined;
  }
  for (const [path, digest] of Object.entries(memo.paths))
    if ((await store.pathDigest(path)) !== digest) return undefined;
  // A hook that throws now is reported by the full path, which runs it again.
  for (const h of memo.hooks) {
    const got = await a.fingerprint(h.kind, h.params, store);
    if (!got || canonicalJson(got) !== h.result) return undefined;
  }
  const results = new Map<string, StoredResult>();
  const instances: MemoInstance[] = [];
  for (const [id, stage, kind, key, tree] of memo.instances) {
    const rec = store.lookupResult(key);
    // A result replaced under the same key by another tree changes its dependents' keys.
    if (!isComplete(rec) || rec.outputs.tree !== tree) return undefined;
    results.set(id, rec);
    instances.push({ id, stage, kind, key, tree });
  }
  return { run: { name: memo.name, instances, results }, store };
}
