/**
 * Runs one llama-server (argv after this script) and makes sure it dies with
 * its owner. A child does not die with its parent: if the node process that
 * started a server is killed with SIGKILL, nothing would stop the server. This
 * watchdog holds a pipe from that node process on its stdin; the kernel closes
 * the pipe however the owner ends, and the watchdog then stops the server.
 * On Linux the server also gets PR_SET_PDEATHSIG (via setpriv, when present),
 * so it dies even if the watchdog itself is killed with SIGKILL.
 *
 * Writes the server's pid as a line on fd 3 for the owner.
 */
import { spawn, spawnSync } from "node:child_process";
import { existsSync, writeSync } from "node:fs";

const [cmd, ...args] = process.argv.slice(2);
if (!cmd) {
  process.stderr.write("usage: watchdog <program> [args...]\n");
  process.exit(2);
}

// util-linux < 2.33 has setpriv without --pdeathsig: use it only if it says it has it.
const setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
  .filter((p) => existsSync(p))
  .find((p) => spawnSync(p, ["--help"], { encoding: "utf8" }).stdout?.includes("--pdeathsig"));
const child = setpriv
  ? spawn(setpriv, ["--pdeathsig", "KILL", "--", cmd, ...args], {
      stdio: ["ignore", "inherit", "inherit"],
    })
  : spawn(cmd, args, { stdio: ["ignore", "inherit", "inherit"] });

try {
  writeSync(3, `${child.pid}\n`);
} catch {
  // no control pipe: started by hand
}

let stopping = false;
function stop(): void {
  if (stopping) return;
  stopping = true;
  child.kill("SIGTERM");
  // llama-server finishes its slots on SIGTERM; do not wait long for it.
  setTimeout(() => child.kill("SIGKILL"), 3000).unref();
}

process.stdin.on("end", stop);
process.stdin.on("close", stop);
process.stdin.on("error", stop);
process.stdin.resume();
for (const sig of ["SIGTERM", "SIGINT", "SIGHUP"] as const) process.on(sig, stop);

child.on("error", (e) => {
  process.stderr.write(`watchdog: cannot start ${cmd}: ${e.message}\n`);
  process.exit(127);
});
child.on("exit", (code, signal) => {
  process.exit(code ?? (signal ? 128 + (signal === "SIGKILL" ? 9 : 15) : 1));
});
export {};
