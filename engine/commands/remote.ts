import { existsSync, readFileSync, mkdirSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import type { Digest, ActionKey, TreeDigest } from "../../cache/digest.js";
import { Store, type ActionRecord } from "../../cache/store.js";
import { readPins } from "../../cache/gc.js";
import { writeFileAtomic } from "../../cache/atomic.js";
import { type Backend, RemoteConfigError } from "../../cache/remotes/backend.js";
import { resolveRemote, openBackend } from "../../cache/remotes/config.js";
import {
  push as pushKeys,
  pull as pullKeys,
  pullKey,
  verifyRemote,
  gcRemote as gcOnRemote,
  pinOnRemote,
  type TransferReport,
} from "../../cache/remotes/transfer.js";
import { exportBundle, importBundle, TamperedBundle } from "../../cache/remotes/bundle.js";
import { cacheRootFor } from "../engine.js";
import { computeKey, type KeyFields } from "../key.js";
import { lockfilePath, readLockfile, roots, registerRoot } from "../lockfile.js";
import { enterCache } from "../../cache/cache-lock.js";
import { asDiskFull } from "../../cache/disk.js";
import { pinName, takeRemoteLease, describeLease } from "../../cache/remotes/coordination.js";
import { UsageError } from "../errors.js";
import { cacheDir, parse, pipelineFile, openPipeline, waitingForGc } from "./common.js";

const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

async function open(name: string | undefined, dir: string): Promise<Backend> {
  try {
    return await openBackend(resolveRemote(name, dir));
  } catch (e) {
    if (e instanceof RemoteConfigError) throw new UsageError(e.message);
    throw e;
  }
}

/**
 * What push/pull work on: a pipeline's lockfile (-f, or ./valley.yaml when
 * present), or the whole cache (--all).
 */
function target(values: { file?: string; all?: boolean; cache?: string }): {
  store: Store;
  keys: ActionKey[] | "all";
  dir: string;
  lock?: { name: string; path: string };
} {
  const local = values.file ?? ["valley.yaml", "pipeline.yaml"].find((f) => existsSync(f));
  if (values.all || !local) {
    if (!values.all)
      throw new UsageError(
        "name a pipeline (-f file.yaml: its lockfile's results) or pass --all (the whole cache)",
      );
    const root = cacheDir(values.cache, values.file);
    return {
      store: new Store(root),
      keys: "all",
      dir: values.file ? dirname(resolve(values.file)) : process.cwd(),
    };
  }
  const file = pipelineFile(local);
  const lp = lockfilePath(file);
  const lock = readLockfile(lp);
  if (!lock)
    throw new UsageError(
      `${lp} does not exist: run the pipeline first (or pull its lockfile with git)`,
    );
  const dir = dirname(resolve(file));
  const root = values.cache ? resolve(values.cache) : cacheRootFor(dir);
  return {
    store: new Store(root),
    keys: [...new Set(Object.values(lock.instances).map((i) => i.key))],
    dir,
    lock: { name: lock.pipeline, path: lp },
  };
}

function summary(verb: string, url: string, r: TransferReport): number {
  process.stdout.write(
    `${verb} ${r.objects} object(s) (${mib(r.bytes)}) and ${r.actions} result(s) ${verb === "pushed" ? "to" : "from"} ${url}; ${r.present} already there\n`,
  );
  for (const p of r.problems) process.stderr.write(`✗ ${p}\n`);
  return r.problems.length ? 1 : 0;
}

const transferOptions = {
  file: { type: "string", short: "f" },
  all: { type: "boolean" },
  cache: { type: "string" },
  jobs: { type: "string", short: "j" },
  verbose: { type: "boolean", short: "v" },
  repair: { type: "boolean" },
} as const;

function concurrency(jobs: string | undefined): number {
  const n = jobs === undefined ? 4 : Number(jobs);
  if (!Number.isInteger(n) || n < 1) throw new UsageError("--jobs expects a positive integer");
  return n;
}

export async function push(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    transferOptions,
    "valley push [remote] [-f pipeline.yaml | --all] [--jobs N] [--repair]",
  );
  const t = target(values);
  const remote = await open(positionals[0], t.dir);
  // Local objects stay while they are sent (no local gc meanwhile); on the
  // remote, a push lease keeps gc --remote away until the pin is written.
  const cacheLock = await enterCache(t.store.root, "push", { onWait: waitingForGc("push") });
  try {
    const lease = await takeRemoteLease(t.store, remote, "push", {
      onWait: (l) =>
        process.stderr.write(`valley push: waiting for ${describeLease(l)} to finish\n`),
    });
    if ("busy" in lease) throw new Error("unreachable: a push waits for gc");
    try {
      const r = await pushKeys(t.store, remote, t.keys, {
        concurrency: concurrency(values.jobs),
        repair: !!values.repair,
        onProgress: values.verbose ? (l) => process.stderr.write(l + "\n") : undefined,
      });
      // A pushed lockfile pins its results on the remote, so gc --remote from any machine
      // keeps them; the pin is this cache's and this lockfile's alone (cache/README.md).
      if (t.lock && t.keys !== "all" && r.problems.length === 0)
        await pinOnRemote(t.store, remote, pinName(t.store, t.lock.name, t.lock.path), t.keys, {
          pipeline: t.lock.name,
          lockfile: resolve(t.lock.path),
        });
      if (r.repaired) process.stdout.write(`replaced ${r.repaired} broken remote record(s)\n`);
      for (const n of r.notes ?? []) process.stdout.write(`differs: ${n}\n`);
      return summary("pushed", remote.url, r);
    } finally {
      await lease.release();
    }
  } finally {
    cacheLock.release();
    await remote.close();
  }
}

export async function pull(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    transferOptions,
    "valley pull [remote] [-f pipeline.yaml | --all] [--jobs N]",
  );
  if (values.repair) throw new UsageError("--repair is an option of push");
  const t = target(values);
  const remote = await open(positionals[0], t.dir);
  const cacheLock = await enterCache(t.store.root, "pull", { onWait: waitingForGc("pull") });
  try {
    // The lockfile is a root before anything it lists arrives (cache/README.md).
    if (t.lock) registerRoot(t.store.root, t.lock.path);
    const r = await pullKeys(t.store, remote, t.keys, {
      concurrency: concurrency(values.jobs),
      expect: t.lock ? expectedTrees(t.lock.path) : undefined,
      onProgress: values.verbose ? (l) => process.stderr.write(l + "\n") : undefined,
    });
    return summary("pulled", remote.url, r);
  } finally {
    cacheLock.release();
    await remote.close();
  }
}

/** The tree the lockfile lists for each key (pull checks every record against it). */
function expectedTrees(lockPath: string): Map<Digest, { tree: Digest; instances: string[] }> {
  const out = new Map<Digest, { tree: Digest; instances: string[] }>();
  for (const [id, i] of Object.entries(readLockfile(lockPath)?.instances ?? {})) {
    const e = out.get(i.key);
    if (e) e.instances.push(id);
    else out.set(i.key, { tree: i.tree, instances: [id] });
  }
  return out;
}

/**
 * For `valley run --pull`: before computing a key that misses locally, ask
 * the remote. The connection opens at the first miss. A remote that fails
 * (unreachable, corrupt object) is reported and the key is computed locally.
 */
export function remoteFetcher(
  store: Store,
  name: string | undefined,
  dir: string,
): { fetch: (key: ActionKey) => Promise<ActionRecord | undefined>; close: () => Promise<void> } {
  let remote: Promise<Backend> | undefined;
  let broken = false;
  return {
    fetch: async (key) => {
      if (broken) return undefined;
      try {
        remote ??= open(name, dir);
        return await pullKey(store, await remote, key);
      } catch (e) {
        if (e instanceof UsageError) broken = true; // misconfigured: say it once, then compute locally
        process.stderr.write(`valley run --pull: ${(e as Error).message}; computing it here\n`);
        return undefined;
      }
    },
    close: async () => {
      if (remote) await (await remote.catch(() => undefined))?.close();
    },
  };
}

/** Roots for gc --remote: this cache's lockfiles and pins, plus -f's lockfile. */
function localRoots(
  store: Store,
  file: string | undefined,
): { keys: ActionKey[]; trees: TreeDigest[] } {
  const keys: ActionKey[] = [];
  const lockfiles = roots(store.root);
  if (file) lockfiles.push(lockfilePath(file));
  for (const lf of lockfiles)
    for (const i of Object.values(readLockfile(lf)?.instances ?? {})) keys.push(i.key);
  const pins = readPins(store);
  return { keys: [...keys, ...pins.keys], trees: pins.trees };
}

/** `valley gc --remote R`: what no lockfile or pin (local or on the remote) references goes. */
export async function gcRemote(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      remote: { type: "string" },
      cache: { type: "string" },
      "dry-run": { type: "boolean" },
      file: { type: "string", short: "f" },
    },
    "valley gc --remote REMOTE [-f pipeline.yaml] [--cache DIR] [--dry-run]",
  );
  const dir = values.file ? dirname(resolve(values.file)) : process.cwd();
  const store = new Store(cacheDir(values.cache, values.file));
  const remote = await open(values.remote, dir);
  try {
    // Pushes in progress hold leases on the remote: their objects are not pinned yet.
    const lease = await takeRemoteLease(store, remote, "gc");
    if ("busy" in lease) {
      process.stderr.write(
        `valley gc --remote: ${remote.url} is in use (${lease.busy.map(describeLease).join("; ")}); try again when it ends\n`,
      );
      return 1;
    }
    let r;
    try {
      r = await gcOnRemote(remote, localRoots(store, values.file), !!values["dry-run"]);
    } finally {
      await lease.release();
    }
    const verb = values["dry-run"] ? "would remove" : "removed";
    process.stdout.write(
      `${remote.url}: kept ${r.keptActions} result(s); ${verb} ${r.removedActions} result(s), ${r.removedObjects} object(s), ${mib(r.freedBytes)}, ${r.removedTmp} unfinished upload(s)\n`,
    );
    return 0;
  } finally {
    await remote.close();
  }
}

/** `valley verify --remote R`: re-hash every object on the remote. */
export async function verifyRemoteCommand(argv: string[]): Promise<number> {
  const { values } = parse(
    argv,
    {
      remote: { type: "string" },
      json: { type: "boolean" },
      keep: { type: "boolean" },
      file: { type: "string", short: "f" },
    },
    "valley verify --remote REMOTE [--keep] [--json]",
  );
  const remote = await open(
    values.remote,
    values.file ? dirname(resolve(values.file)) : process.cwd(),
  );
  try {
    const r = await verifyRemote(remote, { keep: !!values.keep });
    if (values.json) process.stdout.write(JSON.stringify(r) + "\n");
    else {
      for (const c of r.corrupt)
        process.stdout.write(
          `CORRUPT ${c.path}: got ${c.actual}${values.keep ? "" : " (deleted: push again from a cache that has it)"}\n`,
        );
      for (const a of r.brokenActions) process.stdout.write(`BROKEN  ${a}\n`);
      process.stdout.write(
        `${remote.url}: ${r.checked} objects checked, ${r.corrupt.length} corrupt` +
          (r.leftovers
            ? `, ${r.leftovers} unfinished upload(s) in tmp/ (gc --remote removes them)`
            : "") +
          "\n",
      );
    }
    return r.corrupt.length || r.brokenActions.length ? 1 : 0;
  } finally {
    await remote.close();
  }
}

/** `valley export <pipeline.yaml | instance> -o bundle.tar`. */
export async function exportCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    {
      out: { type: "string", short: "o" },
      file: { type: "string", short: "f" },
      cache: { type: "string" },
    },
    "valley export <pipeline.yaml | instance> [-f pipeline.yaml] -o bundle.tar",
  );
  const what = positionals[0];
  if (!what || !values.out)
    throw new UsageError(
      "usage: valley export <pipeline.yaml | instance> [-f pipeline.yaml] -o bundle.tar",
    );
  const isFile = /\.ya?ml$/i.test(what) && existsSync(what);
  const file = pipelineFile(isFile ? what : values.file);
  const lp = lockfilePath(file);
  const lock = readLockfile(lp);
  if (!lock) throw new UsageError(`${lp} does not exist: run the pipeline first`);
  if (!isFile) {
    const inst = lock.instances[what];
    if (!inst) {
      const { pl } = await openPipeline(file);
      throw new UsageError(
        pl.byId.has(what)
          ? `${what} has no result in ${lp}: run it first`
          : `no instance "${what}" in ${file}`,
      );
    }
    lock.instances = { [what]: inst };
  }
  const store = new Store(
    values.cache ? resolve(values.cache) : cacheRootFor(dirname(resolve(file))),
  );
  const text = JSON.stringify(lock, null, 2) + "\n";
  const cacheLock = await enterCache(store.root, "export", { onWait: waitingForGc("export") });
  let r;
  try {
    r = await exportBundle(
      store,
      {
        name: lock.pipeline,
        text,
        keys: [...new Set(Object.values(lock.instances).map((i) => i.key))],
      },
      values.out,
    );
  } catch (e) {
    throw asDiskFull(e, values.out);
  } finally {
    cacheLock.release();
  }
  process.stdout.write(
    `wrote ${values.out}: ${Object.keys(lock.instances).length} result(s), ${r.objects} object(s), ${mib(r.bytes)}\nbundle digest: ${r.digest}\n`,
  );
  return 0;
}

/** `valley import bundle.tar [--expect DIGEST]`: verify everything, then admit. */
export async function importCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    { cache: { type: "string" }, expect: { type: "string" }, file: { type: "string", short: "f" } },
    "valley import bundle.tar [--cache DIR | -f pipeline.yaml] [--expect sha256:…]",
  );
  const file = positionals[0];
  if (!file)
    throw new UsageError("usage: valley import bundle.tar [--cache DIR] [--expect sha256:…]");
  if (!existsSync(file)) throw new UsageError(`no such file: ${file}`);
  const store = new Store(cacheDir(values.cache, values.file));
  const cacheLock = await enterCache(store.root, "import", { onWait: waitingForGc("import") });
  let r;
  let lockOut: string;
  try {
    try {
      r = await importBundle(store, file, {
        expect: values.expect,
        checkKey: (rec) => computeKey(rec.fields as unknown as KeyFields) === rec.key,
      });
    } catch (e) {
      if (e instanceof TamperedBundle) throw new UsageError(e.message);
      throw e;
    }
    // The bundle's lockfile becomes a gc root of this cache (while the cache's
    // lock is still held, so no gc can come between), so its results stay.
    const dir = store.dir("imports");
    mkdirSync(dir, { recursive: true });
    lockOut = join(
      dir,
      `${r.pipeline.replace(/[^A-Za-z0-9._-]/g, "_")}-${r.digest.slice(7, 19)}.lock`,
    );
    registerRoot(store.root, lockOut);
    if (!existsSync(lockOut) || readFileSync(lockOut, "utf8") !== r.lockfileText)
      writeFileAtomic(lockOut, r.lockfileText);
  } catch (e) {
    throw asDiskFull(e, store.root);
  } finally {
    cacheLock.release();
  }
  process.stdout.write(
    `imported ${r.actions.length} result(s), ${r.objects} object(s) into ${store.root}\nbundle digest: ${r.digest}\nlockfile: ${lockOut}\n`,
  );
  return 0;
}
