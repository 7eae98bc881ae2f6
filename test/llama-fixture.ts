/**
 * Shared by the llama tests: a real CPU build of llama.cpp, made once and kept
 * in a cache folder keyed by what goes into it (the stage version, params and
 * fingerprint: patches and native sources), plus a hand-built stage context.
 *
 * Cache folder: $VALLEY_TEST_LLAMA, default <repo>/.tmp/llama-build. A test
 * file that finds no build for the current key builds one (~7 min on 2 cores);
 * test files running at the same time wait on a lock instead of building twice.
 * Scratch (the clone and cmake folder) is kept there too, so a changed patch
 * or native source recompiles only what it touches.
 *
 * VALLEY_LLAMA_BIN (a folder of llama.cpp programs) skips the build and uses
 * that instead, as the engine would.
 */
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { mkdir, mkdtemp, rename, rm, writeFile, readFile } from "node:fs/promises";
import { join } from "node:path";
import { pino } from "pino";
import type { InputArtifact, StageContext, StageInput, ToolInfo } from "../engine/stage-api.js";
import { hashJson, type Digest } from "../cache/digest.js";
import llamaBuild, { type LlamaBuildParams } from "../stages/llama-build/index.js";
import { projectRoot } from "../llama/toolchain.js";

export const TEST_BUILD_PARAMS: LlamaBuildParams = {
  backend: "cpu",
  buildType: "Release",
  cmakeFlags: [],
  jobs: 2,
};

export function cacheRoot(): string {
  return process.env.VALLEY_TEST_LLAMA ?? join(projectRoot(), ".tmp", "llama-build");
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** A lock folder holding the owner's pid; a dead owner's lock is taken over. */
async function withLock<T>(dir: string, fn: () => Promise<T>): Promise<T> {
  for (;;) {
    try {
      await mkdir(dir);
      await writeFile(join(dir, "pid"), String(process.pid));
      break;
    } catch {
      const pid = Number(await readFile(join(dir, "pid"), "utf8").catch(() => "0"));
      if (pid && !alive(pid)) await rm(dir, { recursive: true, force: true });
      else await sleep(2000);
    }
  }
  try {
    return await fn();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

export interface BuiltLlama extends ToolInfo {
  /** The artifact folder (bin/, lib/, build.json). */
  dir: string;
}

let memo: Promise<BuiltLlama> | undefined;

/** The test build of llama.cpp: from the cache, or built now. */
export function testLlama(): Promise<BuiltLlama> {
  memo ??= buildOrReuse();
  return memo;
}

async function buildOrReuse(): Promise<BuiltLlama> {
  // A build of your own, as the engine takes it (bin/ with lib/ beside it):
  // skips the test build, e.g. while iterating on code that only calls llama.cpp.
  const own = process.env.VALLEY_LLAMA_BIN;
  if (own) {
    const dir = join(own, "..");
    const lib = existsSync(join(dir, "lib")) ? join(dir, "lib") : own;
    return { dir, bin: own, lib, digest: hashJson({ own }) };
  }
  const root = cacheRoot();
  await mkdir(root, { recursive: true });
  const fp = await llamaBuild.fingerprint!(TEST_BUILD_PARAMS);
  const key = hashJson({
    kind: llamaBuild.kind,
    version: llamaBuild.version,
    params: TEST_BUILD_PARAMS,
    fp,
  });
  const dir = join(root, key.slice(7, 23));
  const result = (): BuiltLlama => ({
    dir,
    bin: join(dir, "bin"),
    lib: join(dir, "lib"),
    digest: key,
  });
  if (existsSync(join(dir, "build.json"))) return result();
  return withLock(join(root, "build.lock"), async () => {
    if (existsSync(join(dir, "build.json"))) return result();
    const partial = `${dir}.partial`;
    await rm(partial, { recursive: true, force: true });
    await mkdir(partial, { recursive: true });
    process.stderr.write(
      `# building llama.cpp for the tests into ${dir} (about 7 min on 2 cores)\n`,
    );
    let last = -10;
    const { ctx } = await makeCtx(TEST_BUILD_PARAMS, {
      out: partial,
      scratch: join(root, "scratch"),
      progress: (done) => {
        if (done >= last + 10) {
          last = done;
          process.stderr.write(`# llama.cpp build ${done}%\n`);
        }
      },
      cpu: 2,
    });
    await llamaBuild.run(ctx);
    await rename(partial, dir);
    return result();
  });
}

export interface CtxOptions {
  inputs?: Record<string, StageInput>;
  tools?: Record<string, ToolInfo>;
  signal?: AbortSignal;
  out?: string;
  scratch?: string;
  progress?: (done: number, total?: number, note?: string) => void;
  cpu?: number;
  env?: Record<string, string>;
}

/** A stage context as the engine would build it, with fresh temp folders. */
export async function makeCtx<P>(
  params: P,
  o: CtxOptions = {},
): Promise<{ ctx: StageContext<P>; tmp: string }> {
  const base = join(projectRoot(), ".tmp", "test-runs");
  await mkdir(base, { recursive: true });
  const tmp = await mkdtemp(join(base, "ctx-"));
  const out = o.out ?? join(tmp, "out");
  const scratch = o.scratch ?? join(tmp, "scratch");
  await mkdir(out, { recursive: true });
  await mkdir(scratch, { recursive: true });
  const ctx: StageContext<P> = {
    instanceId: "test",
    coords: {},
    params,
    inputs: o.inputs ?? {},
    out,
    scratch,
    log: pino({ level: "silent" }),
    progress: o.progress ?? (() => {}),
    signal: o.signal ?? new AbortController().signal,
    tools: o.tools ?? {},
    env: o.env ?? {},
    resources: { cpu: o.cpu ?? 1, gpu: 0, memory: 0 },
  };
  return { ctx, tmp };
}

/** An input artifact for a folder (digest over its path: good enough for tests). */
export function artifact(path: string, id = "producer"): InputArtifact {
  return { id, coords: {}, digest: hashJson({ path }) as Digest, path };
}

/**
 * Live processes whose command line contains `marker` (zombies have an empty
 * command line, so a dead but unreaped process does not count).
 */
export function processesWith(marker: string): number[] {
  const found: number[] = [];
  for (const e of readdirSync("/proc")) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      const cmd = readFileSync(`/proc/${e}/cmdline`, "utf8");
      if (cmd.includes(marker)) found.push(Number(e));
    } catch {
      // exited while we looked
    }
  }
  return found;
}

/** Waits until no process matches `marker`, up to `ms`; returns what is left. */
export async function waitGone(marker: string, ms = 15000): Promise<number[]> {
  const end = Date.now() + ms;
  for (;;) {
    const left = processesWith(marker);
    if (left.length === 0 || Date.now() > end) return left;
    await sleep(100);
  }
}
