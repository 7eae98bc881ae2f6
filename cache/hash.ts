import { openSync, readSync, closeSync, fstatSync } from "node:fs";
import { createHash } from "node:crypto";
import { Worker } from "node:worker_threads";
import type { Digest } from "./digest.js";

// 4 MiB reads: large enough that the per-call cost vanishes next to SHA-256
// itself (~1 GiB/s with SHA-NI), small enough to stay in cache.
const CHUNK = 4 << 20;
let buffer: Buffer | undefined;

/** SHA-256 of a file's bytes, read synchronously in large chunks. */
export function hashFileSync(path: string): { digest: Digest; size: number } {
  buffer ??= Buffer.allocUnsafe(CHUNK);
  const fd = openSync(path, "r");
  try {
    const h = createHash("sha256");
    let size = 0;
    for (;;) {
      const n = readSync(fd, buffer, 0, CHUNK, null);
      if (n === 0) break;
      h.update(n === CHUNK ? buffer : buffer.subarray(0, n));
      size += n;
    }
    return { digest: ("sha256:" + h.digest("hex")) as Digest, size };
  } finally {
    closeSync(fd);
  }
}

/** Size of an open file, for callers that only need to compare. */
export function fileSize(fd: number): number {
  return fstatSync(fd).size;
}

/**
 * Files at least this large are hashed in a worker thread: SHA-256 runs at
 * ~1 GB/s, and a 30 GB model hashed on the main thread would stop the event
 * loop, and with it the lease heartbeats (a lease goes stale after 60 s),
 * for half a minute. Smaller files cost less than a message round trip.
 */
export const WORKER_MIN_BYTES = 16 << 20;

let worker: Worker | undefined;
let nextId = 0;
const pending = new Map<
  number,
  { resolve: (r: { digest: Digest; size: number }) => void; reject: (e: Error) => void }
>();

function hashWorker(): Worker {
  if (worker) return worker;
  const w = new Worker(new URL("./hash-worker.js", import.meta.url));
  w.on("message", (m: { id: number; digest?: Digest; size?: number; error?: string }) => {
    const p = pending.get(m.id);
    pending.delete(m.id);
    if (pending.size === 0) w.unref();
    if (!p) return;
    if (m.error !== undefined) p.reject(new Error(m.error));
    else p.resolve({ digest: m.digest as Digest, size: m.size as number });
  });
  w.on("error", (e) => {
    for (const p of pending.values()) p.reject(e);
    pending.clear();
    worker = undefined;
  });
  w.unref();
  worker = w;
  return w;
}

/**
 * SHA-256 of a file's bytes without blocking the event loop for long: a
 * large file (`size` at least WORKER_MIN_BYTES) is read and hashed in a
 * worker thread, a small one here.
 */
export function hashFile(path: string, size: number): Promise<{ digest: Digest; size: number }> {
  if (size < WORKER_MIN_BYTES) {
    try {
      return Promise.resolve(hashFileSync(path));
    } catch (e) {
      return Promise.reject(e as Error);
    }
  }
  const w = hashWorker();
  const id = nextId++;
  // The worker keeps the process alive only while it has work.
  if (pending.size === 0) w.ref();
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    w.postMessage({ id, path });
  });
}
