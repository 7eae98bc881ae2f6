/**
 * A tiny watchdog process. The engine tells it, over stdin, which process
 * groups it started ("+pgid" / "-pgid"). When stdin closes — the engine
 * exited, or was killed with SIGKILL and could not clean up — it kills every
 * group still registered, so no stage child outlives its run.
 */
import { createInterface } from "node:readline";

const groups = new Set<number>();
// The terminal's Ctrl-C reaches us too; the engine handles it, we wait for EOF.
process.on("SIGINT", () => {});
process.on("SIGTERM", () => {});

const rl = createInterface({ input: process.stdin });
rl.on("line", (line) => {
  const pgid = Number(line.slice(1));
  if (!Number.isInteger(pgid) || pgid <= 1) return;
  if (line[0] === "+") groups.add(pgid);
  else groups.delete(pgid);
});
rl.on("close", () => {
  for (const g of groups) {
    try {
      process.kill(-g, "SIGKILL");
    } catch {
      // already gone
    }
  }
  process.exit(0);
});
