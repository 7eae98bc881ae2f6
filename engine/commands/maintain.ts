import { existsSync, readdirSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { Store } from "../../cache/store.js";
import { Leases } from "../../cache/leases.js";
import { collectGarbage, cleanLeftovers, readPins } from "../../cache/gc.js";
import { lockForGc, describe, enterCache } from "../../cache/cache-lock.js";
import { verifyStore } from "../../cache/verify.js";
import type { ActionKey } from "../../cache/digest.js";
import { lockfilePath, pruneRoots, readLockfile, roots } from "../lockfile.js";
import { UsageError } from "../errors.js";
import { cacheDir, openPipeline, parse, waitingForGc } from "./common.js";

const mib = (n: number) => `${(n / 1048576).toFixed(1)} MiB`;

function openStore(dir: string): Store {
  if (!existsSync(dir)) throw new UsageError(`no cache at ${dir} (set --cache or VALLEY_CACHE)`);
  return new Store(dir);
}

export async function gc(argv: string[]): Promise<number> {
  if (argv.some((a) => a === "--remote" || a.startsWith("--remote=")))
    return (await import("./remote.js")).gcRemote(argv);
  const { values } = parse(
    argv,
    {
      cache: { type: "string" },
      "dry-run": { type: "boolean" },
      file: { type: "string", short: "f" },
    },
    "valley gc [--cache DIR] [-f pipeline.yaml] [--dry-run]",
  );
  const store = openStore(cacheDir(values.cache, values.file));
  const dryRun = !!values["dry-run"];
  // The cache's own lock for the whole mark and sweep: no run, pull or import
  // can start until it is released, and gc yields if one is active.
  const lock = lockForGc(store.root);
  if ("busy" in lock) {
    process.stderr.write(
      `valley gc: the cache is in use (${lock.busy.map(describe).join("; ")}); try again when it ends\n`,
    );
    return 1;
  }
  try {
    const leaseDir = store.dir("leases");
    const live = new Leases(leaseDir).liveHolders(
      readdirSync(leaseDir)
        .filter((f) => f.endsWith(".lock"))
        .map((f) => join(leaseDir, f)),
    );
    if (live.length) {
      process.stderr.write(
        `valley gc: a run is active (${live.map((h) => `${h.host} pid ${h.pid}`).join(", ")}); try again when it ends\n`,
      );
      return 1;
    }
    if (!dryRun) pruneRoots(store.root);
    const keys = new Set<ActionKey>();
    const lockfiles = roots(store.root);
    // -f: that pipeline's lockfile is a root even if no run registered it here (a fresh clone).
    if (values.file) {
      const lp = resolve(lockfilePath(values.file));
      if (existsSync(lp) && !lockfiles.includes(lp)) lockfiles.push(lp);
    }
    for (const lf of lockfiles)
      for (const i of Object.values(readLockfile(lf)?.instances ?? {})) keys.add(i.key);
    const pins = readPins(store);
    for (const k of pins.keys) keys.add(k);
    const touch = () => lock.touch();
    const r = collectGarbage(store, keys, new Set(pins.trees), dryRun, touch);
    const left = cleanLeftovers(store, dryRun, touch);
    if (!dryRun) store.stat.save();
    const verb = dryRun ? "would remove" : "removed";
    process.stdout.write(
      `roots: ${lockfiles.length} lockfile(s), ${pins.keys.length + pins.trees.length} pin(s); kept ${r.keptActions} result(s)\n` +
        `${verb} ${r.removedActions} result(s), ${r.removedTrees} tree(s), ${r.removedObjects} object(s), ${mib(r.freedBytes)}; ` +
        `${left.entries} leftover(s) of stopped runs (work/, tmp/, trash/, scratch/), ${mib(left.bytes)}\n`,
    );
    return 0;
  } finally {
    lock.release();
  }
}

export async function verify(argv: string[]): Promise<number> {
  if (argv.some((a) => a === "--remote" || a.startsWith("--remote=")))
    return (await import("./remote.js")).verifyRemoteCommand(argv);
  const { values } = parse(
    argv,
    { cache: { type: "string" }, json: { type: "boolean" }, file: { type: "string", short: "f" } },
    "valley verify [--cache DIR] [--json]",
  );
  const store = openStore(cacheDir(values.cache, values.file));
  const r = verifyStore(store);
  if (values.json) process.stdout.write(JSON.stringify(r) + "\n");
  else {
    for (const c of r.corrupt)
      process.stdout.write(
        `CORRUPT ${c.path}: expected ${c.expected}, got ${c.actual} (moved to corrupt/)\n`,
      );
    for (const a of r.brokenActions)
      process.stdout.write(`BROKEN  action ${a}: its output tree is missing\n`);
    process.stdout.write(`${r.checked} objects checked, ${r.corrupt.length} corrupt\n`);
  }
  return r.corrupt.length || r.brokenActions.length ? 1 : 0;
}

export async function pin(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    { file: { type: "string", short: "f" }, name: { type: "string" } },
    "valley pin <instance> [-f file] [--name NAME]",
  );
  const id = positionals[0];
  if (!id) throw new UsageError("usage: valley pin <instance> [-f file]");
  const { engine } = await openPipeline(values.file);
  const name = (values.name ?? id).replace(/[^A-Za-z0-9@=,._-]/g, "_");
  // Checked and pinned under the cache's lock, so gc cannot remove the result in between.
  const lock = await enterCache(engine.store.root, "pin", { onWait: waitingForGc("pin") });
  let h;
  try {
    h = engine.history(id);
    if (!h || !engine.store.getAction(h.key)) throw new UsageError(`${id} has no result to pin`);
    writeFileSync(
      join(engine.store.dir("pins"), name + ".json"),
      JSON.stringify({ key: h.key, instance: id }) + "\n",
    );
  } finally {
    lock.release();
  }
  process.stdout.write(`pinned ${id} (${h.key})\n`);
  return 0;
}
