import {
  existsSync,
  linkSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  statSync,
  writeFileSync,
  copyFileSync,
} from "node:fs";
import { DiskFull, freeBytes, isDiskFull } from "../disk.js";
import { dirname, join } from "node:path";
import * as tar from "tar";
import {
  type Digest,
  digestHex,
  isDigest,
  sha256Bytes,
  type ActionKey,
  type TreeDigest,
} from "../digest.js";
import { hashFileSync } from "../hash.js";
import type { Store, ActionRecord } from "../store.js";
import {
  type ObjectRef,
  objectRel,
  actionRel,
  objectsOf,
  parseObjectRel,
  admitVerified,
} from "./transfer.js";

/**
 * A bundle is a plain tar:
 *   manifest.json         {"valley-bundle": 1, pipeline, lockfile, digests of everything}
 *   <name>.lock           the lockfile (only the exported instances)
 *   actions/<hex>.json    action records
 *   objects/ab/cdef…      objects, laid out as in the store
 * The sha256 of manifest.json is the bundle's digest: publish it with a paper
 * and `valley import --expect` checks it.
 */
export interface BundleManifest {
  "valley-bundle": 1;
  pipeline: string;
  lockfile: { path: string; digest: Digest };
  actions: Record<string, Digest>;
  objects: string[];
}

/** A bundle that does not match its manifest: nothing of it was imported. Exit 2. */
export class TamperedBundle extends Error {
  override name = "TamperedBundle";
}

export async function exportBundle(
  store: Store,
  lock: { name: string; text: string; keys: ActionKey[] },
  out: string,
): Promise<{ digest: Digest; objects: number; bytes: number }> {
  const stage = store.tmpPath("export");
  mkdirSync(stage);
  try {
    const files: string[] = [];
    const refs = new Map<string, ObjectRef>();
    const actions: Record<string, Digest> = {};
    for (const key of lock.keys) {
      const rec = store.lookupAction(key);
      if (!rec)
        throw new Error(
          `no valid result for key ${key} in ${store.root}: run the pipeline (or pull) first`,
        );
      const bytes = readFileSync(store.actionPath(key));
      const rel = actionRel(key);
      mkdirSync(join(stage, "actions"), { recursive: true });
      writeFileSync(join(stage, rel), bytes);
      actions[rel] = sha256Bytes(bytes);
      for (const o of objectsOf(rec, store.readManifest(rec.outputs.tree)))
        refs.set(objectRel(o), o);
    }
    let bytes = 0;
    for (const [rel, o] of [...refs].sort()) {
      if (!store.objectIntact(o.digest, o.exec))
        throw new Error(`object ${o.digest} is corrupt: run valley verify, then the pipeline`);
      const dest = join(stage, rel);
      mkdirSync(dirname(dest), { recursive: true });
      const src = store.objectPath(o.digest, o.exec);
      try {
        linkSync(src, dest); // objects are read-only: a link is a safe copy
      } catch {
        copyFileSync(src, dest);
      }
      bytes += statSync(dest).size;
      files.push(rel);
    }
    const lockPath = `${lock.name}.lock`;
    writeFileSync(join(stage, lockPath), lock.text);
    const manifest: BundleManifest = {
      "valley-bundle": 1,
      pipeline: lock.name,
      lockfile: { path: lockPath, digest: sha256Bytes(lock.text) },
      actions,
      objects: files,
    };
    const mtext = JSON.stringify(manifest, null, 1) + "\n";
    writeFileSync(join(stage, "manifest.json"), mtext);
    // portable: no uid/gid/mtime noise, so the same results give the same tar.
    await tar.c({ file: out, cwd: stage, portable: true, noMtime: true }, [
      "manifest.json",
      lockPath,
      ...Object.keys(actions).sort(),
      ...files,
    ]);
    return { digest: sha256Bytes(mtext), objects: files.length, bytes };
  } finally {
    store.removeTree(stage);
  }
}

export interface ImportResult {
  digest: Digest;
  pipeline: string;
  lockfileText: string;
  actions: ActionRecord[];
  objects: number;
}

function walk(dir: string, rel = ""): string[] {
  const out: string[] = [];
  for (const n of readdirSync(join(dir, rel)).sort()) {
    const r = rel ? `${rel}/${n}` : n;
    if (statSync(join(dir, r)).isDirectory()) out.push(...walk(dir, r));
    else out.push(r);
  }
  return out;
}

/**
 * Unpacks into a private folder, checks every file against the manifest
 * (objects by their own digest, records and lockfile by the manifest's),
 * and only then admits anything. `checkKey` says whether a record's key is
 * the hash of its fields (the engine knows how keys are computed).
 */
export async function importBundle(
  store: Store,
  file: string,
  opts: { expect?: string; checkKey?: (rec: ActionRecord) => boolean } = {},
): Promise<ImportResult> {
  const stage = store.tmpPath("import-bundle");
  // tar does not always report a write that failed for space (a file is cut
  // short, then looks tampered): check the room first, and again on failure.
  const size = statSync(file).size;
  const room = freeBytes(store.dir("tmp"));
  if (room && room.free < size)
    throw new DiskFull(store.dir("tmp"), { doing: `unpacking ${file}`, needed: size });
  mkdirSync(stage);
  try {
    const odd: string[] = [];
    try {
      await tar.x({
        file,
        cwd: stage,
        strict: true,
        // Plain files and folders only: a link could point outside the bundle.
        filter: (p, e) => {
          const type = "type" in e ? e.type : e.isDirectory() ? "Directory" : "File";
          const ok =
            (type === "File" || type === "OldFile" || type === "Directory") &&
            !p.split("/").includes("..");
          if (!ok) odd.push(`${p} (${type})`);
          return ok;
        },
      });
    } catch (e) {
      // A full disk is not a bad bundle (exit 1, not 2).
      if (isDiskFull(e))
        throw new DiskFull(stage, {
          doing: `unpacking ${file}`,
          needed: size,
          cause: e,
        });
      throw new TamperedBundle(`${file} is not a readable tar: ${(e as Error).message}`);
    }
    if (odd.length)
      throw new TamperedBundle(`${file} holds entries a bundle never has: ${odd.join(", ")}`);
    const problems: string[] = [];
    let manifest: BundleManifest;
    let mtext: string;
    try {
      mtext = readFileSync(join(stage, "manifest.json"), "utf8");
      manifest = JSON.parse(mtext) as BundleManifest;
      if (manifest["valley-bundle"] !== 1) throw new Error("not a version-1 valley bundle");
    } catch (e) {
      throw new TamperedBundle(
        `${file}: manifest.json is missing or unreadable: ${(e as Error).message}`,
      );
    }
    const digest = sha256Bytes(mtext);
    if (opts.expect && opts.expect !== digest)
      throw new TamperedBundle(`${file}: bundle digest is ${digest}, expected ${opts.expect}`);
    const listed = new Set([
      "manifest.json",
      manifest.lockfile.path,
      ...Object.keys(manifest.actions),
      ...manifest.objects,
    ]);
    for (const f of walk(stage)) if (!listed.has(f)) problems.push(`${f} is not in the manifest`);
    const refs: ObjectRef[] = [];
    for (const rel of manifest.objects) {
      const o = parseObjectRel(rel);
      if (!o) {
        problems.push(`${rel} is not an object name`);
        continue;
      }
      refs.push(o);
      const p = join(stage, rel);
      if (!existsSync(p)) problems.push(`${rel} is missing`);
      else {
        const got = hashFileSync(p).digest;
        if (got !== o.digest) problems.push(`${rel} has digest ${got}, expected ${o.digest}`);
      }
    }
    const have = new Set(manifest.objects);
    const actions: ActionRecord[] = [];
    for (const [rel, d] of Object.entries(manifest.actions)) {
      const p = join(stage, rel);
      const m = /^actions\/([0-9a-f]{64})\.json$/.exec(rel);
      if (!m || !existsSync(p) || !isDigest(d)) {
        problems.push(`${rel} is missing or misnamed`);
        continue;
      }
      const bytes = readFileSync(p);
      if (sha256Bytes(bytes) !== d) {
        problems.push(`${rel} has digest ${sha256Bytes(bytes)}, expected ${d}`);
        continue;
      }
      let rec: ActionRecord;
      try {
        rec = JSON.parse(bytes.toString("utf8")) as ActionRecord;
      } catch {
        problems.push(`${rel} is not valid JSON`);
        continue;
      }
      if (digestHex(rec.key) !== m[1] || (opts.checkKey && !opts.checkKey(rec))) {
        problems.push(`${rel}: its key is not the hash of its fields`);
        continue;
      }
      const treeRel = objectRel({ digest: rec.outputs.tree, exec: false });
      if (!have.has(treeRel))
        problems.push(`${rel}: its tree ${rec.outputs.tree} is not in the bundle`);
      else if (!problems.some((x) => x.startsWith(treeRel))) {
        const manifestOfTree = JSON.parse(readFileSync(join(stage, treeRel), "utf8")) as Parameters<
          typeof objectsOf
        >[1];
        for (const o of objectsOf(rec, manifestOfTree))
          if (!have.has(objectRel(o)))
            problems.push(`${rel}: ${objectRel(o)} is not in the bundle`);
      }
      actions.push(rec);
    }
    let lockfileText = "";
    try {
      lockfileText = readFileSync(join(stage, manifest.lockfile.path), "utf8");
      if (sha256Bytes(lockfileText) !== manifest.lockfile.digest)
        problems.push(`${manifest.lockfile.path} does not match its digest`);
      const lock = JSON.parse(lockfileText) as {
        instances: Record<string, { key: ActionKey; tree: TreeDigest }>;
      };
      const byKey = new Map(actions.map((a) => [a.key, a]));
      for (const [id, i] of Object.entries(lock.instances)) {
        const a = byKey.get(i.key);
        if (!a) problems.push(`lockfile: ${id}'s result ${i.key} is not in the bundle`);
        else if (a.outputs.tree !== i.tree)
          problems.push(`lockfile: ${id}'s tree differs from its action record`);
      }
    } catch (e) {
      problems.push(`${manifest.lockfile.path}: ${(e as Error).message}`);
    }
    const after = freeBytes(stage);
    if (problems.length && after && after.free < 1 << 20)
      throw new DiskFull(stage, { doing: `unpacking ${file}`, needed: size });
    if (problems.length)
      throw new TamperedBundle(
        `${file} does not match its manifest; nothing was imported:\n  ${problems.slice(0, 20).join("\n  ")}` +
          (problems.length > 20 ? `\n  … and ${problems.length - 20} more` : ""),
      );
    // Everything checked: admit objects, then trees, then records (records last).
    for (const o of refs) {
      if (store.hasObject(o.digest, o.exec)) continue;
      admitVerified(store, join(stage, objectRel(o)), o, file);
    }
    for (const rec of actions) {
      if (!existsSync(store.treePath(rec.outputs.tree))) {
        const r = store.materialize(rec.outputs.tree);
        if (!r.ok) throw new Error(r.reason);
      }
      store.putAction(rec);
    }
    return { digest, pipeline: manifest.pipeline, lockfileText, actions, objects: refs.length };
  } finally {
    store.removeTree(stage);
  }
}
