import { closeSync, openSync, readFileSync, writeFileSync, unlinkSync, writeSync } from "node:fs";
import { resolve } from "node:path";
import { hostname } from "node:os";
import { randomBytes } from "node:crypto";
import { digestHex, sha256Bytes } from "../digest.js";
import type { Store } from "../store.js";
import type { Backend } from "./backend.js";
import { readAll } from "./transfer.js";

/**
 * How machines sharing a remote stay out of each other's way (see
 * cache/README.md): a random id per cache, pins named by cache id and
 * lockfile path, and leases that keep `gc --remote` and pushes apart.
 */

/** This cache's random id, created on first use; names its pins and leases on remotes. */
export function cacheId(store: Store): string {
  const file = store.dir("id");
  try {
    const id = readFileSync(file, "utf8").trim();
    if (/^[0-9a-f]{16}$/.test(id)) return id;
  } catch {
    // first use
  }
  const id = randomBytes(8).toString("hex");
  try {
    const fd = openSync(file, "wx");
    writeSync(fd, id + "\n");
    closeSync(fd);
    return id;
  } catch {
    // another process created it first: use theirs
    return readFileSync(file, "utf8").trim();
  }
}

/** The remote pin of a lockfile pushed from this cache: unique per (cache, lockfile path). */
export function pinName(store: Store, pipeline: string, lockfile: string): string {
  const where = digestHex(sha256Bytes(resolve(lockfile))).slice(0, 16);
  return `${pipeline.replace(/[^A-Za-z0-9=,._-]/g, "_")}@${cacheId(store)}-${where}`;
}

export interface RemoteLeaseInfo {
  op: "push" | "gc";
  cache: string;
  host: string;
  pid: number;
  pidStart: string;
  since: string;
  /** Milliseconds since the epoch, by the holder's clock. */
  expires: number;
}

// A lease is renewed every minute and lasts ten: a holder that died is
// forgotten after ten minutes, and that much clock skew is tolerated.
const TTL_MS = 10 * 60_000;
const RENEW_MS = 60_000;

function procStart(pid: number): string {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    return stat.slice(stat.lastIndexOf(")") + 2).split(" ")[19] ?? "";
  } catch {
    return "";
  }
}

/** Live: not expired, and (on this host) its process still runs. */
function isLive(l: RemoteLeaseInfo): boolean {
  if (l.expires < Date.now()) return false;
  if (l.host === hostname() && l.pid > 0) {
    const s = procStart(l.pid);
    return s !== "" && s === l.pidStart;
  }
  return true;
}

export const describeLease = (l: RemoteLeaseInfo): string =>
  `${l.op} from ${l.host} pid ${l.pid} (cache ${l.cache}) since ${l.since}`;

export interface HeldRemoteLease {
  release(): Promise<void>;
}

async function readLeases(
  remote: Backend,
): Promise<{ path: string; lease: RemoteLeaseInfo | undefined }[]> {
  const out: { path: string; lease: RemoteLeaseInfo | undefined }[] = [];
  for (const { path } of await remote.list("leases")) {
    try {
      out.push({
        path,
        lease: JSON.parse((await readAll(await remote.read(path))).toString("utf8")),
      });
    } catch {
      out.push({ path, lease: undefined }); // deleted meanwhile, or not a lease
    }
  }
  return out;
}

/**
 * Takes a lease on the remote for `op`, then looks for a conflicting one
 * (a push conflicts with a gc and vice versa). A push waits for the gc to
 * end; a gc gives up and returns who is in the way.
 */
export async function takeRemoteLease(
  store: Store,
  remote: Backend,
  op: "push" | "gc",
  opts: { onWait?: (l: RemoteLeaseInfo) => void } = {},
): Promise<HeldRemoteLease | { busy: RemoteLeaseInfo[] }> {
  const id = cacheId(store);
  const path = `leases/${id}-${op}-${randomBytes(4).toString("hex")}.json`;
  const since = new Date().toISOString();
  const write = async () => {
    const info: RemoteLeaseInfo = {
      op,
      cache: id,
      host: hostname(),
      pid: process.pid,
      pidStart: procStart(process.pid),
      since,
      expires: Date.now() + TTL_MS,
    };
    const text = JSON.stringify(info) + "\n";
    const tmp = store.tmpPath("lease");
    writeFileSync(tmp, text);
    try {
      // A gc --remote sweeping tmp/ as this starts can remove the upload's temporary file: retry.
      for (let a = 1; ; a++) {
        try {
          await remote.upload(tmp, path, Buffer.byteLength(text));
          break;
        } catch (e) {
          if (a >= 3) throw e;
        }
      }
    } finally {
      unlinkSync(tmp);
    }
  };
  let told = false;
  for (;;) {
    await write();
    const others = (await readLeases(remote)).filter((l) => l.path !== path);
    const busy = others
      .map((l) => l.lease)
      .filter((l): l is RemoteLeaseInfo => !!l && l.op !== op && isLive(l));
    if (busy.length === 0) {
      // Leases of holders that are gone are removed by gc (nobody else deletes others' files).
      if (op === "gc")
        for (const l of others) if (!l.lease || !isLive(l.lease)) await remote.delete(l.path);
      let renewing: Promise<void> = Promise.resolve();
      const timer = setInterval(() => {
        renewing = write().catch(() => {});
      }, RENEW_MS);
      timer.unref();
      return {
        release: async () => {
          clearInterval(timer);
          await renewing;
          await remote.delete(path);
        },
      };
    }
    await remote.delete(path);
    if (op === "gc") return { busy };
    if (!told) {
      opts.onWait?.(busy[0]);
      told = true;
    }
    await new Promise((r) => setTimeout(r, 2_000));
  }
}
