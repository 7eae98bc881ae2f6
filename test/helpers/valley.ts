import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, writeFileSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { PACKAGE_ROOT } from "../../engine/root.js";

export const CLI = join(PACKAGE_ROOT, "dist", "bin", "valley.js");

export interface Result {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs the real CLI in a child process, as a user would. */
export function valley(
  args: string[],
  opts: { cwd?: string; env?: Record<string, string>; timeoutMs?: number } = {},
): Result {
  const env = { ...process.env, ...(opts.env ?? {}) };
  delete env.VALLEY_CACHE;
  if (opts.env?.VALLEY_CACHE) env.VALLEY_CACHE = opts.env.VALLEY_CACHE;
  const r = spawnSync(process.execPath, [CLI, ...args], {
    cwd: opts.cwd,
    env,
    encoding: "utf8",
    timeout: opts.timeoutMs ?? 300_000,
  });
  return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
}

export function valleyChild(
  args: string[],
  opts: { cwd?: string; env?: Record<string, string> } = {},
): {
  child: ChildProcess;
  done: Promise<Result>;
} {
  const env = { ...process.env, ...(opts.env ?? {}) };
  if (!opts.env?.VALLEY_CACHE) delete env.VALLEY_CACHE;
  const child = spawn(process.execPath, [CLI, ...args], {
    cwd: opts.cwd,
    env,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout?.on("data", (d: Buffer) => (stdout += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (stderr += d.toString()));
  const done = new Promise<Result>((res) =>
    child.on("close", (code, sig) => res({ code: code ?? (sig ? 128 : -1), stdout, stderr })),
  );
  return { child, done };
}

/** A temporary project folder holding the given files. */
export function project(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), "valley-test-"));
  for (const [name, text] of Object.entries(files)) {
    mkdirSync(dirname(join(dir, name)), { recursive: true });
    writeFileSync(join(dir, name), text);
  }
  return dir;
}

/** Processes whose command line contains `marker` (scanning /proc). */
export function processesWith(marker: string): number[] {
  const out: number[] = [];
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p) || Number(p) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${p}/cmdline`, "utf8").replace(/\0/g, " ");
      if (cmd.includes(marker)) out.push(Number(p));
    } catch {
      // exited meanwhile
    }
  }
  return out;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}

export async function waitFor(cond: () => boolean, ms = 30_000, what = "condition"): Promise<void> {
  const t0 = Date.now();
  while (!cond()) {
    if (Date.now() - t0 > ms) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

export function lines(path: string): string[] {
  try {
    return readFileSync(path, "utf8").split("\n").filter(Boolean);
  } catch {
    return [];
  }
}
