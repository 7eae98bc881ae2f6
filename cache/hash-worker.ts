import { parentPort } from "node:worker_threads";
import { hashFileSync } from "./hash.js";

// Hashes files off the main thread (see hashFile): one request at a time, in order.
parentPort?.on("message", (m: { id: number; path: string }) => {
  try {
    parentPort?.postMessage({ id: m.id, ...hashFileSync(m.path) });
  } catch (e) {
    parentPort?.postMessage({ id: m.id, error: (e as Error).message });
  }
});
