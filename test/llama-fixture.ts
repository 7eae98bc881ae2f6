/**
 * Shared by the tests that need llama.cpp: a real CPU build, made once by the
 * engine (the demo pipeline's `llama` stage) in the shared test cache, plus a
 * hand-built stage context for calling a stage's run() directly.
 *
 * Cache: $VALLEY_TEST_CACHE, default <repo>/.tmp/test-cache. The first test
 * needing llama.cpp builds it (~7 min on 2 cores); the demo test and later
 * test runs reuse it.
 *
 * VALLEY_LLAMA_BIN (a folder of llama.cpp programs) skips the build and uses
 * that instead, as the engine would.
 */
import { existsSync, readdirSync, readFileSync, rmSync } from "node:fs";
import { spawnSync } from "node:child_process";
import { mkdir, mkdtemp } from "node:fs/promises";
import { join } from "node:path";
import { pino } from "pino";
import {
  inputAccess,
  type InputArtifact,
  type InstanceId,
  type StageContext,
  type StageInput,
  type ToolInfo,
} from "../engine/stage-api.js";
import { hashJson, type Digest } from "../cache/digest.js";
import { projectRoot } from "../llama/toolchain.js";

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

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
  // The build the demo pipeline uses, made by the engine itself in the
  // shared test cache: the demo test and every test file needing llama.cpp
  // reuse one build, and concurrent test processes wait on the engine's lease
  // instead of building twice.
  const cache = testCache();
  await mkdir(cache, { recursive: true });
  const demo = join(projectRoot(), "pipelines", "demo.yaml");
  const cli = join(projectRoot(), "dist", "bin", "valley.js");
  const env = { ...process.env, VALLEY_CACHE: cache };
  process.stderr.write(
    `# llama.cpp for the tests: the demo's llama stage in ${cache} (a first build takes ~7 min)\n`,
  );
  const built = spawnSync(process.execPath, [cli, "run", demo, "--only", "llama", "--json"], {
    env,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
  });
  if (built.status !== 0)
    throw new Error(
      `building llama.cpp failed (exit ${built.status}):\n${built.stderr.slice(-4000)}`,
    );
  const show = spawnSync(process.execPath, [cli, "show", "llama", "-f", demo, "--json"], {
    env,
    encoding: "utf8",
  });
  if (show.status !== 0) throw new Error(`valley show llama failed: ${show.stderr}`);
  const info = JSON.parse(show.stdout) as { tree: { path: string; digest: Digest } };
  const dir = info.tree.path;
  return { dir, bin: join(dir, "bin"), lib: join(dir, "lib"), digest: info.tree.digest };
}

/** The valley cache shared by tests: $VALLEY_TEST_CACHE, default <repo>/.tmp/test-cache. */
export function testCache(): string {
  return process.env.VALLEY_TEST_CACHE ?? join(projectRoot(), ".tmp", "test-cache");
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

let run: string | undefined;

/** This process's folder for contexts, removed when the process exits. */
async function runDir(): Promise<string> {
  if (!run) {
    const base = join(projectRoot(), ".tmp", "test-runs");
    await mkdir(base, { recursive: true });
    const dir = await mkdtemp(join(base, "run-"));
    run = dir;
    process.on("exit", () => rmSync(dir, { recursive: true, force: true }));
  }
  return run;
}

/** A stage context as the engine would build it, with fresh temp folders. */
export async function makeCtx<P>(
  params: P,
  o: CtxOptions = {},
): Promise<{ ctx: StageContext<P>; tmp: string }> {
  const tmp = await mkdtemp(join(await runDir(), "ctx-"));
  const out = o.out ?? join(tmp, "out");
  const scratch = o.scratch ?? join(tmp, "scratch");
  await mkdir(out, { recursive: true });
  await mkdir(scratch, { recursive: true });
  const ctx: StageContext<P> = {
    instanceId: "test" as InstanceId,
    coords: {},
    params,
    inputs: o.inputs ?? {},
    ...inputAccess("test", o.inputs ?? {}),
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
  return { id: id as InstanceId, coords: {}, digest: hashJson({ path }) as Digest, path };
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
