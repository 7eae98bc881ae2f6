import { test } from "node:test";
import assert from "node:assert/strict";
import {
  mkdtempSync,
  mkdirSync,
  readFileSync,
  existsSync,
  statSync,
  unlinkSync,
  openSync,
  ftruncateSync,
  closeSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { Leases, type Lease } from "../cache/leases.js";
import { Store } from "../cache/store.js";
import { hashFileSync } from "../cache/hash.js";
import { sha256Bytes, type ActionKey } from "../cache/digest.js";

const KEY = sha256Bytes("some action") as ActionKey;

test("a lease taken over from its holder is not deleted when the old holder releases it", () => {
  const dir = mkdtempSync(join(tmpdir(), "valley-leases-"));
  const old = new Leases(dir);
  const got = old.tryAcquire(KEY);
  assert.ok("path" in got);
  const lease = got as Lease;
  // Another run judged the old holder dead and took the key over (what takeOver
  // ends in: the old file gone, a new one naming the new holder).
  const fresh = new Leases(dir);
  unlinkSync(lease.path);
  const taken = fresh.tryAcquire(KEY);
  assert.ok("path" in taken, "the new run holds the key");
  old.release(lease);
  assert.ok(existsSync(lease.path), "the old holder left the new holder's lease alone");
  assert.equal((JSON.parse(readFileSync(lease.path, "utf8")) as { run: string }).run, fresh.runId);
  fresh.release(taken as Lease);
  assert.equal(existsSync(lease.path), false, "its own holder releases it");
  // Our own lease, untouched, is removed on release.
  const mine = old.tryAcquire(KEY) as Lease;
  old.release(mine);
  assert.equal(existsSync(mine.path), false);
});

test("heartbeats keep ticking while a large file is admitted (hashed in a worker thread)", async () => {
  const root = mkdtempSync(join(tmpdir(), "valley-admit-"));
  const store = new Store(root);
  const beat = 40;
  const leases = new Leases(store.dir("leases"), { heartbeatMs: beat });
  const lease = leases.tryAcquire(KEY) as Lease;
  assert.ok("path" in lease);
  // A large output (sparse: its size costs hashing time, not disk).
  const out = join(store.dir("work"), "big-output");
  mkdirSync(out);
  const big = join(out, "model.gguf");
  const fd = openSync(big, "w");
  ftruncateSync(fd, 1536 << 20);
  closeSync(fd);
  writeFileSync(join(out, "small.json"), "{}");
  const expected = hashFileSync(big).digest;

  const touches: number[] = [];
  let last = statSync(lease.path).mtimeMs;
  const probe = setInterval(() => {
    const m = statSync(lease.path).mtimeMs;
    if (m !== last) touches.push(Date.now());
    last = m;
  }, 10);
  const t0 = Date.now();
  const admitted = await store.admitTree(out);
  const t1 = Date.now();
  clearInterval(probe);
  leases.release(lease);

  assert.equal(admitted.files["model.gguf"], expected);
  const took = t1 - t0;
  assert.ok(took > 5 * beat, `hashing 1.5 GiB took ${took} ms: too quick to show anything`);
  // Blocked hashing would show no touch at all until it ended; the gaps between
  // touches stay near the heartbeat interval instead.
  const stamps = [t0, ...touches, t1];
  const gaps = stamps.slice(1).map((t, i) => t - stamps[i]);
  assert.ok(touches.length >= 3, `${touches.length} heartbeats in ${took} ms`);
  assert.ok(
    Math.max(...gaps) < took / 2,
    `longest gap between heartbeats ${Math.max(...gaps)} ms of ${took} ms`,
  );
});
