import {
  chmodSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  renameSync,
  statSync,
  unlinkSync,
  existsSync,
  writeFileSync,
} from "node:fs";
import { dirname } from "node:path";
import { createHash } from "node:crypto";
import type { Readable } from "node:stream";
import {
  type Digest,
  digestHex,
  isDigest,
  sha256Bytes,
  type ActionKey,
  type TreeDigest,
} from "../digest.js";
import { hashFileSync } from "../hash.js";
import { markLive } from "../gc.js";
import { DiskFull, isDiskFull } from "../disk.js";
import { Store, type ActionRecord, type Manifest } from "../store.js";
import { type Backend, RemoteNotFound, mapLimit } from "./backend.js";

/** An object as the store names it: its digest, and whether it is the executable copy. */
export interface ObjectRef {
  digest: Digest;
  exec: boolean;
}

export const objectRel = (o: ObjectRef): string => {
  const h = digestHex(o.digest);
  return `objects/${h.slice(0, 2)}/${h.slice(2)}${o.exec ? ".x" : ""}`;
};
export const actionRel = (key: Digest): string => `actions/${digestHex(key)}.json`;

/** The inverse of objectRel; undefined for names that are not objects (temporary files). */
export function parseObjectRel(rel: string): ObjectRef | undefined {
  const m = /^objects\/([0-9a-f]{2})\/([0-9a-f]{62})(\.x)?$/.exec(rel);
  return m ? { digest: `sha256:${m[1]}${m[2]}` as Digest, exec: !!m[3] } : undefined;
}

const refKey = (o: ObjectRef) => digestHex(o.digest) + (o.exec ? ".x" : "");

/** Everything an action record needs: its manifest, the tree's files, its log. */
export function objectsOf(rec: ActionRecord, manifest: Manifest): ObjectRef[] {
  const out: ObjectRef[] = [{ digest: rec.outputs.tree, exec: false }];
  for (const e of manifest.entries)
    if ("digest" in e) out.push({ digest: e.digest, exec: e.exec === true });
  if (rec.log) out.push({ digest: rec.log, exec: false });
  return dedupe(out);
}

function dedupe(refs: ObjectRef[]): ObjectRef[] {
  const seen = new Map<string, ObjectRef>();
  for (const r of refs) seen.set(refKey(r), r);
  return [...seen.values()];
}

export interface TransferOptions {
  /**
   * push: replace remote records that are broken (unreadable, or their
   * manifest or objects missing) with the local ones.
   */
  repair?: boolean;
  /**
   * pull: the tree each key must have (from a lockfile); a record with
   * another tree is reported and not pulled.
   */
  expect?: Map<Digest, { tree: Digest; instances: string[] }>;
  /** Objects in flight at once (default 4: enough to hide latency, gentle on a shared link). */
  concurrency?: number;
  /** Attempts per object before it is reported (default 3). */
  attempts?: number;
  onProgress?: (line: string) => void;
}

export interface TransferReport {
  objects: number;
  bytes: number;
  actions: number;
  /** Objects and actions the other side already had. */
  present: number;
  problems: string[];
  /** push --repair: broken remote records replaced. */
  repaired?: number;
  /** Records kept though they differ (push --repair: a remote record valid but with another tree). */
  notes?: string[];
}

async function withRetries<T>(attempts: number, fn: (attempt: number) => Promise<T>): Promise<T> {
  for (let a = 1; ; a++) {
    try {
      return await fn(a);
    } catch (e) {
      // A full disk here will still be full on the next attempt.
      if (a >= attempts || e instanceof RemoteNotFound || isDiskFull(e)) throw e;
      await new Promise((r) => setTimeout(r, 100 * 2 ** a));
    }
  }
}

export async function readAll(s: Readable): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const c of s) chunks.push(Buffer.isBuffer(c) ? c : Buffer.from(c as Uint8Array));
  return Buffer.concat(chunks);
}

export async function hashStream(s: Readable): Promise<{ digest: Digest; size: number }> {
  const h = createHash("sha256");
  let size = 0;
  for await (const c of s) {
    const b = c as Buffer;
    h.update(b);
    size += b.length;
  }
  return { digest: ("sha256:" + h.digest("hex")) as Digest, size };
}

/** A remote record whose tree is not the one the lockfile lists. */
export class RecordDiffers extends Error {
  override name = "RecordDiffers";
}

/** A pulled file joins the store only if its bytes hash to its name. */
export class DigestMismatch extends Error {
  override name = "DigestMismatch";
}

/**
 * Moves a downloaded file into objects/ after checking its digest. A file
 * that does not match is deleted, never admitted.
 */
export function admitVerified(store: Store, tmp: string, o: ObjectRef, from: string): number {
  const { digest, size } = hashFileSync(tmp);
  if (digest !== o.digest) {
    unlinkSync(tmp);
    throw new DigestMismatch(
      `${from}: ${objectRel(o)} has digest ${digest} (${size} bytes), expected ${o.digest}`,
    );
  }
  chmodSync(tmp, o.exec ? 0o555 : 0o444);
  const dest = store.objectPath(o.digest, o.exec);
  if (existsSync(dest)) unlinkSync(tmp);
  else {
    mkdirSync(dirname(dest), { recursive: true });
    renameSync(tmp, dest);
  }
  return size;
}

/** Valid local results: the given keys, or every one in the cache. */
function localActions(
  store: Store,
  keys: ActionKey[] | "all",
): { recs: ActionRecord[]; missing: ActionKey[] } {
  const list =
    keys === "all"
      ? readdirSync(store.dir("actions"))
          .filter((f) => /^[0-9a-f]{64}\.json$/.test(f))
          .map((f) => ("sha256:" + f.slice(0, -5)) as ActionKey)
      : keys;
  const recs: ActionRecord[] = [];
  const missing: ActionKey[] = [];
  for (const k of list) {
    // lookupAction checks the tree (trusting files unmodified since the record
    // was written, re-hashing others): its objects need no second check.
    const r = store.lookupAction(k);
    if (r) recs.push(r);
    else missing.push(k);
  }
  return { recs, missing };
}

/**
 * Sends what the remote lacks: objects first (each under a temporary name,
 * renamed when complete), then each action record once all its objects are
 * there, so a remote never holds a record it cannot serve. Re-running after
 * an interruption sends only what is still missing.
 */
export async function push(
  store: Store,
  remote: Backend,
  keys: ActionKey[] | "all",
  opts: TransferOptions = {},
): Promise<TransferReport> {
  const report: TransferReport = { objects: 0, bytes: 0, actions: 0, present: 0, problems: [] };
  const { recs, missing } = localActions(store, keys);
  for (const k of missing)
    report.problems.push(`no valid result for key ${k} in ${store.root}: run the pipeline first`);
  const needs = new Map<Digest, ObjectRef[]>();
  let all: ObjectRef[] = [];
  const checked = new Set<string>();
  for (const rec of recs) {
    let manifest: Manifest;
    try {
      manifest = store.readManifest(rec.outputs.tree);
    } catch {
      report.problems.push(
        `${rec.instance}: manifest ${rec.outputs.tree} is missing locally: run valley verify`,
      );
      continue;
    }
    const refs = objectsOf(rec, manifest);
    for (const o of refs) if (o.digest !== rec.log) checked.add(refKey(o));
    needs.set(rec.key, refs);
    all.push(...refs);
  }
  if (keys === "all") {
    // The whole cache: loose objects too (pinned trees, imported inputs).
    for (const sub of readdirSync(store.dir("objects")))
      for (const f of readdirSync(store.dir("objects") + "/" + sub)) {
        const o = parseObjectRel(`objects/${sub}/${f}`);
        if (o) all.push(o);
      }
  }
  all = dedupe(all);
  const there = await remote.stat(all.map(objectRel));
  const failed = new Set<string>();
  const toSend = all.filter((o) => !there.has(objectRel(o)));
  report.present += all.length - toSend.length;
  await mapLimit(toSend, opts.concurrency ?? 4, async (o) => {
    // Never spread a corrupt local object: objects outside a checked tree are checked here.
    if (!checked.has(refKey(o)) && !store.objectIntact(o.digest, o.exec)) {
      failed.add(refKey(o));
      report.problems.push(
        `local object ${o.digest} is corrupt or missing (run valley verify); not pushed`,
      );
      return;
    }
    const path = store.objectPath(o.digest, o.exec);
    const size = statSync(path).size;
    try {
      await withRetries(opts.attempts ?? 3, () => remote.upload(path, objectRel(o), size));
      report.objects++;
      report.bytes += size;
      opts.onProgress?.(`pushed ${objectRel(o)} (${size} bytes)`);
    } catch (e) {
      failed.add(refKey(o));
      report.problems.push(`${objectRel(o)}: ${(e as Error).message}`);
    }
  });
  const actionsThere = await remote.stat(recs.map((r) => actionRel(r.key)));
  const tmp = store.tmpPath("push-action");
  try {
    for (const rec of recs) {
      const refs = needs.get(rec.key);
      if (!refs) continue;
      if (refs.some((o) => failed.has(refKey(o)))) {
        report.problems.push(
          `${rec.instance}: result not pushed because some of its objects failed`,
        );
        continue;
      }
      if (actionsThere.has(actionRel(rec.key))) {
        const state = opts.repair ? await remoteRecordState(remote, rec) : "same";
        if (state === "differs") {
          (report.notes ??= []).push(
            `${rec.instance}: the remote's result for ${rec.key} is whole but has another tree than this cache's ${rec.outputs.tree}; kept (others may use it)`,
          );
        }
        if (state !== "broken") {
          report.present++;
          continue;
        }
        report.repaired = (report.repaired ?? 0) + 1;
        opts.onProgress?.(`replacing the broken remote record of ${rec.instance}`);
      }
      const bytes = readFileSync(store.actionPath(rec.key));
      writeFileSync(tmp, bytes);
      await withRetries(opts.attempts ?? 3, () =>
        remote.upload(tmp, actionRel(rec.key), bytes.length),
      );
      report.actions++;
      opts.onProgress?.(`pushed result of ${rec.instance}`);
    }
  } finally {
    if (existsSync(tmp)) unlinkSync(tmp);
  }
  // Everything the records need must still be there (a gc that ignores
  // push leases, e.g. an older valley, could have removed it meanwhile).
  const sent = [...needs.values()].flat();
  const still = await remote.stat(sent.map(objectRel));
  const gone = dedupe(sent).filter((o) => !failed.has(refKey(o)) && !still.has(objectRel(o)));
  if (gone.length)
    report.problems.push(
      `${gone.length} object(s) vanished from ${remote.url} during the push (a concurrent gc --remote?): push again`,
    );
  store.stat.save();
  return report;
}

/**
 * Whether the remote's record for `rec.key` is the local one ("same"),
 * whole but with another tree ("differs"), or unusable: unreadable, or its
 * manifest or an object missing ("broken").
 */
async function remoteRecordState(
  remote: Backend,
  rec: ActionRecord,
): Promise<"same" | "differs" | "broken"> {
  let theirs: ActionRecord;
  let manifest: Manifest;
  try {
    theirs = await remoteAction(remote, rec.key);
    const bytes = await readAll(
      await remote.read(objectRel({ digest: theirs.outputs.tree, exec: false })),
    );
    if (sha256Bytes(bytes) !== theirs.outputs.tree) return "broken";
    manifest = JSON.parse(bytes.toString("utf8")) as Manifest;
  } catch {
    return "broken";
  }
  const refs = objectsOf(theirs, manifest);
  const there = await remote.stat(refs.map(objectRel));
  if (refs.some((o) => !there.has(objectRel(o)))) return "broken";
  return theirs.outputs.tree === rec.outputs.tree ? "same" : "differs";
}

/** Downloads one object with its digest checked, retrying a corrupt or cut-short transfer. */
async function fetchObject(
  store: Store,
  remote: Backend,
  o: ObjectRef,
  attempts: number,
): Promise<number> {
  return withRetries(attempts, async () => {
    const tmp = store.tmpPath("pull");
    try {
      await remote.download(objectRel(o), tmp);
      return admitVerified(store, tmp, o, remote.url);
    } catch (e) {
      if (!isDiskFull(e)) throw e;
      const size = (await remote.stat([objectRel(o)])).get(objectRel(o));
      throw new DiskFull(tmp, { doing: `pulling ${objectRel(o)}`, needed: size, cause: e });
    } finally {
      if (existsSync(tmp)) unlinkSync(tmp);
    }
  });
}

async function remoteAction(remote: Backend, key: ActionKey): Promise<ActionRecord> {
  const bytes = await readAll(await remote.read(actionRel(key)));
  let rec: ActionRecord;
  try {
    rec = JSON.parse(bytes.toString("utf8")) as ActionRecord;
  } catch {
    throw new DigestMismatch(`${remote.url}: ${actionRel(key)} is not valid JSON`);
  }
  if (rec.key !== key || !isDigest(rec.outputs?.tree))
    throw new DigestMismatch(`${remote.url}: ${actionRel(key)} does not describe key ${key}`);
  return rec;
}

/**
 * Fetches the result of one key: the record, its manifest, then every object
 * the tree needs (each verified), materialises the tree, and writes the
 * record last, so the local cache never holds a record it cannot serve.
 * Returns undefined if the remote has no record for the key.
 */
export async function pullKey(
  store: Store,
  remote: Backend,
  key: ActionKey,
  opts: TransferOptions = {},
  report: TransferReport = { objects: 0, bytes: 0, actions: 0, present: 0, problems: [] },
): Promise<ActionRecord | undefined> {
  const attempts = opts.attempts ?? 3;
  let rec: ActionRecord;
  try {
    rec = await remoteAction(remote, key);
  } catch (e) {
    if (e instanceof RemoteNotFound) return undefined;
    throw e;
  }
  const want = opts.expect?.get(key);
  if (want && want.tree !== rec.outputs.tree)
    throw new RecordDiffers(
      `${want.instances.join(", ")}: the remote's result for ${key} has tree ${rec.outputs.tree}, the lockfile says ${want.tree}; not pulled`,
    );
  const treeRef: ObjectRef = { digest: rec.outputs.tree, exec: false };
  if (!store.hasObject(treeRef.digest)) {
    const n = await fetchObject(store, remote, treeRef, attempts);
    report.objects++;
    report.bytes += n;
  }
  const manifest = store.readManifest(rec.outputs.tree);
  const refs = objectsOf(rec, manifest).filter((o) => !store.hasObject(o.digest, o.exec));
  const errors: string[] = [];
  await mapLimit(refs, opts.concurrency ?? 4, async (o) => {
    try {
      const n = await fetchObject(store, remote, o, attempts);
      report.objects++;
      report.bytes += n;
      opts.onProgress?.(`pulled ${objectRel(o)} (${n} bytes)`);
    } catch (e) {
      errors.push((e as Error).message);
    }
  });
  if (errors.length)
    throw new Error(
      `${rec.instance}: not pulled (nothing of it was admitted unverified):\n  ${errors.join("\n  ")}`,
    );
  if (!existsSync(store.treePath(rec.outputs.tree))) {
    const m = store.materialize(rec.outputs.tree, manifest);
    if (!m.ok) throw new Error(`${rec.instance}: ${m.reason}`);
  }
  store.putAction(rec);
  report.actions++;
  return store.lookupAction(key);
}

/** Fetches results the local cache lacks: the given keys, or every record on the remote. */
export async function pull(
  store: Store,
  remote: Backend,
  keys: ActionKey[] | "all",
  opts: TransferOptions = {},
): Promise<TransferReport> {
  const report: TransferReport = { objects: 0, bytes: 0, actions: 0, present: 0, problems: [] };
  const list =
    keys === "all"
      ? (await remote.list("actions"))
          .map((f) => /^actions\/([0-9a-f]{64})\.json$/.exec(f.path)?.[1])
          .filter((h): h is string => !!h)
          .map((h) => ("sha256:" + h) as ActionKey)
      : keys;
  // Keys one after another, objects within a key in parallel: a failure names its instance.
  for (const key of list) {
    const local = store.lookupAction(key);
    if (local) {
      const want = opts.expect?.get(key);
      if (want && want.tree !== local.outputs.tree)
        report.problems.push(
          `${want.instances.join(", ")}: this cache's result for ${key} has tree ${local.outputs.tree}, the lockfile says ${want.tree}`,
        );
      report.present++;
      continue;
    }
    try {
      const rec = await pullKey(store, remote, key, opts, report);
      if (!rec)
        report.problems.push(
          `${remote.url} has no result for key ${key}: push it from a cache that has it`,
        );
    } catch (e) {
      report.problems.push((e as Error).message);
    }
  }
  store.stat.save();
  return report;
}

export interface RemoteVerifyReport {
  checked: number;
  corrupt: { path: string; actual: string }[];
  brokenActions: string[];
  leftovers: number;
}

/**
 * Re-hashes every object on the remote (a full read of it) and checks every
 * action record's objects are there. Corrupt objects are deleted unless
 * `keep`, so that the next push from a good cache repairs them.
 */
export async function verifyRemote(
  remote: Backend,
  opts: { keep?: boolean; concurrency?: number } = {},
): Promise<RemoteVerifyReport> {
  const objects = await remote.list("objects");
  const have = new Set(objects.map((o) => o.path));
  const corrupt: RemoteVerifyReport["corrupt"] = [];
  let checked = 0;
  await mapLimit(objects, opts.concurrency ?? 4, async ({ path }) => {
    const o = parseObjectRel(path);
    if (!o) return;
    let actual: string;
    try {
      actual = (await hashStream(await remote.read(path))).digest;
    } catch (e) {
      actual = `unreadable (${(e as Error).message})`;
    }
    checked++;
    if (actual !== o.digest) {
      corrupt.push({ path, actual });
      have.delete(path);
      if (!opts.keep) await remote.delete(path);
    }
  });
  const brokenActions: string[] = [];
  for (const { path } of await remote.list("actions")) {
    const m = /^actions\/([0-9a-f]{64})\.json$/.exec(path);
    if (!m) continue;
    try {
      const rec = await remoteAction(remote, ("sha256:" + m[1]) as ActionKey);
      const treeRel = objectRel({ digest: rec.outputs.tree, exec: false });
      const manifest = have.has(treeRel)
        ? (JSON.parse((await readAll(await remote.read(treeRel))).toString("utf8")) as Manifest)
        : undefined;
      const lacking = manifest
        ? objectsOf(rec, manifest).filter((o) => !have.has(objectRel(o)))
        : [treeRel];
      if (lacking.length)
        brokenActions.push(`${rec.instance} (${path}): ${lacking.length} object(s) missing`);
    } catch (e) {
      brokenActions.push(`${path}: ${(e as Error).message}`);
    }
  }
  const leftovers = (await remote.list("tmp")).length;
  corrupt.sort((a, b) => (a.path < b.path ? -1 : 1));
  return { checked, corrupt, brokenActions, leftovers };
}

export interface RemoteGcReport {
  keptActions: number;
  removedActions: number;
  removedObjects: number;
  freedBytes: number;
  removedTmp: number;
}

/** Remote pins: files under pins/ holding {key}, {keys: […]} or {tree}; push writes one per lockfile. */
async function remotePins(remote: Backend): Promise<{ keys: ActionKey[]; trees: TreeDigest[] }> {
  const keys: ActionKey[] = [];
  const trees: TreeDigest[] = [];
  for (const { path } of await remote.list("pins")) {
    try {
      const p = JSON.parse((await readAll(await remote.read(path))).toString("utf8")) as {
        key?: unknown;
        keys?: unknown[];
        tree?: unknown;
      };
      if (isDigest(p.key)) keys.push(p.key as ActionKey);
      for (const k of p.keys ?? []) if (isDigest(k)) keys.push(k as ActionKey);
      if (isDigest(p.tree)) trees.push(p.tree as TreeDigest);
    } catch {
      // not a pin
    }
  }
  return { keys, trees };
}

/** Pins the keys of a pushed lockfile on the remote, so `gc --remote` run from anywhere keeps them. */
export async function pinOnRemote(
  store: Store,
  remote: Backend,
  name: string,
  keys: ActionKey[],
  about: Record<string, string> = {},
): Promise<void> {
  const tmp = store.tmpPath("pin");
  // Who pinned what, so a lab can audit what gc --remote keeps and why.
  const text =
    JSON.stringify({
      keys: [...keys].sort(),
      ...about,
      host: Store.host(),
      updated: new Date().toISOString(),
    }) + "\n";
  writeFileSync(tmp, text);
  try {
    await remote.upload(
      tmp,
      `pins/${name.replace(/[^A-Za-z0-9@=,._-]/g, "_")}.json`,
      Buffer.byteLength(text),
    );
  } finally {
    unlinkSync(tmp);
  }
}

/**
 * Mark and sweep on a remote with cache/gc.ts's marking. Roots: the given
 * keys and trees (local lockfiles and pins) plus the remote's own pins/.
 * The caller holds a gc lease and found no live push lease (see
 * coordination.ts), so tmp/ holds only files of pushes that died: they go too.
 */
export async function gcRemote(
  remote: Backend,
  roots: { keys: ActionKey[]; trees: TreeDigest[] },
  dryRun: boolean,
): Promise<RemoteGcReport> {
  const pins = await remotePins(remote);
  const keys = [...new Set([...roots.keys, ...pins.keys])];
  const trees = [...new Set([...roots.trees, ...pins.trees])];
  const actions = new Map<Digest, ActionRecord>();
  for (const k of keys) {
    try {
      actions.set(k, await remoteAction(remote, k));
    } catch {
      // not on this remote
    }
  }
  const manifests = new Map<Digest, Manifest>();
  for (const t of [...trees, ...[...actions.values()].map((r) => r.outputs.tree)]) {
    try {
      const bytes = await readAll(await remote.read(objectRel({ digest: t, exec: false })));
      if (sha256Bytes(bytes) === t)
        manifests.set(t, JSON.parse(bytes.toString("utf8")) as Manifest);
    } catch {
      // missing: nothing more to keep for it
    }
  }
  const live = markLive(
    keys,
    trees,
    (k) => actions.get(k),
    (t) => manifests.get(t),
  );
  const r: RemoteGcReport = {
    keptActions: 0,
    removedActions: 0,
    removedObjects: 0,
    freedBytes: 0,
    removedTmp: 0,
  };
  for (const { path } of await remote.list("actions")) {
    const m = /^actions\/([0-9a-f]{64})\.json$/.exec(path);
    if (m && live.actions.has(m[1])) {
      r.keptActions++;
      continue;
    }
    r.removedActions++;
    if (!dryRun) await remote.delete(path);
  }
  for (const { path, size } of await remote.list("objects")) {
    const o = parseObjectRel(path);
    if (o && live.objects.has(refKey(o))) continue;
    r.removedObjects++;
    r.freedBytes += size;
    if (!dryRun) await remote.delete(path);
  }
  // Unfinished uploads of pushes that died (no push holds a live lease).
  for (const { path } of await remote.list("tmp")) {
    r.removedTmp++;
    if (!dryRun) await remote.delete(path);
  }
  return r;
}
