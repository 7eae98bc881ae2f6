/**
 * A tiny watchdog process. The engine appends to a file (our argument) the
 * process groups it starts and ends ("+pgid" / "-pgid", one per line). When
 * stdin closes — the engine exited, or was killed with SIGKILL and could not
 * clean up — it kills every group still registered, so no stage child
 * outlives its run, and removes the file.
 */
import { readFileSync, unlinkSync } from "node:fs";

const file = process.argv[2];
// The terminal's Ctrl-C reaches us too; the engine handles it, we wait for EOF.
process.on("SIGINT", () => {});
process.on("SIGTERM", () => {});

process.stdin.on("data", () => {});
process.stdin.on("close", () => {
  const groups = new Set<number>();
  let text = "";
  try {
    text = readFileSync(file, "utf8");
  } catch {
    // nothing registered
  }
  for (const line of text.split("\n")) {
    const pgid = Number(line.slice(1));
    if (!Number.isInteger(pgid) || pgid <= 1) continue;
    if (line[0] === "+") groups.add(pgid);
    else groups.delete(pgid);
  }
  for (const g of groups) {
    try {
      process.kill(-g, "SIGKILL");
    } catch {
      // already gone
    }
  }
  try {
    unlinkSync(file);
  } catch {
    // already gone
  }
  process.exit(0);
});
