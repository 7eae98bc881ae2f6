import type { RunValues } from "./run.js";
import type { RunSummary } from "../scheduler.js";
import { lockfilePath, writeLockfile } from "../lockfile.js";
import { asDiskFull, DiskFull } from "../../cache/disk.js";

/**
 * Writes the lockfile; a full disk is returned to be printed after the
 * summary (exit 1), anything else is thrown.
 */
export function writeLockfileReporting(
  ...args: Parameters<typeof writeLockfile>
): DiskFull | undefined {
  try {
    writeLockfile(...args);
    return undefined;
  } catch (e) {
    const full = asDiskFull(e, lockfilePath(args[0].file));
    if (full instanceof DiskFull) return full;
    throw e;
  }
}

/** What a run did, as `valley run` prints it. */
export interface Report extends Pick<
  RunSummary,
  "instances" | "executed" | "cached" | "failed" | "skipped" | "cancelled"
> {
  seconds: number;
  failures: { id: string; error: string; stderr: string[] }[];
  /** Nothing to do, found by the run memo without expanding the pipeline. */
  fastPath: boolean;
}

export function printSummary(
  values: RunValues,
  positionals: string[],
  r: Report,
  lockError: unknown,
): void {
  if (values.json) {
    process.stdout.write(
      JSON.stringify({
        instances: r.instances,
        executed: r.executed,
        cached: r.cached,
        failed: r.failed,
        skipped: r.skipped,
        cancelled: r.cancelled,
        seconds: r.seconds,
        failures: r.failures,
        fast_path: r.fastPath,
      }) + "\n",
    );
  }
  process.stderr.write(
    `${r.instances} instances: ${r.executed} executed, ${r.cached} cached, ${r.failed} failed` +
      (r.skipped ? `, ${r.skipped} skipped` : "") +
      (r.cancelled ? `, ${r.cancelled} cancelled` : "") +
      ` (${r.seconds.toFixed(2)}s${r.fastPath ? "; nothing changed since the last complete run" : ""})\n`,
  );
  const fileArg = values.file ?? positionals[0];
  for (const f of r.failures) {
    // The stage's own last words, where the reason usually is (an OOM, a traceback).
    const tail = f.stderr.length
      ? `  last stderr lines:\n${f.stderr.map((l) => `  │ ${l}`).join("\n")}\n`
      : "";
    process.stderr.write(
      `\n✗ ${f.error}\n${tail}  full log: valley logs ${f.id}${fileArg ? ` -f ${fileArg}` : ""}\n`,
    );
  }
  if (lockError) process.stderr.write(`\nvalley run: ${(lockError as Error).message}\n`);
}
