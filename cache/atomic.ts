import { writeFileSync, renameSync, unlinkSync } from "node:fs";
import { randomBytes } from "node:crypto";

// Random once per process (pids repeat across hosts sharing a cache), then a
// counter: unique names without a call into the random source per write.
const PROCESS_TAG = `${process.pid}-${randomBytes(4).toString("hex")}`;
let counter = 0;

/** A name part no other write, in this process or another, uses at the same time. */
export function uniqueSuffix(): string {
  return `${PROCESS_TAG}-${(counter++).toString(36)}`;
}

/**
 * Writes to a temporary file beside `path` and renames it into place, so a
 * reader (or a crash) sees the old content or the new, never a partial file.
 * No fsync: this protects against killed processes, not power loss.
 */
export function writeFileAtomic(path: string, data: string | Uint8Array, mode = 0o644): void {
  const tmp = `${path}.tmp-${uniqueSuffix()}`;
  try {
    writeFileSync(tmp, data, { mode });
    renameSync(tmp, path);
  } catch (e) {
    try {
      unlinkSync(tmp);
    } catch {
      // already gone
    }
    throw e;
  }
}
