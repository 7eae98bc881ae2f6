/**
 * Finding and running llama.cpp binaries for stage kinds that declare
 * `tools: ["llama"]`.
 */
import { createReadStream, existsSync } from "node:fs";
import { createHash } from "node:crypto";
import { dirname, join, delimiter } from "node:path";
import { fileURLToPath } from "node:url";
import type { Logger } from "pino";
import type { InputArtifact, StageContext, ToolInfo } from "../engine/stage-api.js";
import type { Digest } from "../cache/digest.js";
import { runCommand } from "../engine/process.js";

/** The repository root (the folder holding package.json), for schema and patch files. */
export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, "package.json"))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error("cannot find the valley project root (no package.json above)");
    dir = up;
  }
}

export const HOW_TO_PROVIDE_LLAMA =
  "provide llama.cpp in one of three ways: an input named `llama` from a `llama-build` stage " +
  "(inputs: { llama: build }), `tools.llama.path` in the pipeline naming a folder of llama.cpp " +
  "binaries, or the environment variable VALLEY_LLAMA_BIN";

/**
 * The llama.cpp build a stage should call: the `llama` input (a llama-build
 * artifact) if the stage has one, else the engine-resolved `ctx.tools.llama`.
 */
export function resolveLlama(ctx: Pick<StageContext<unknown>, "input" | "tools">): ToolInfo {
  const input = ctx.input("llama", { optional: true });
  if (input !== undefined) return llamaFromArtifact(input);
  const tool = ctx.tools.llama;
  if (tool) return tool;
  throw new Error(`no llama.cpp build: ${HOW_TO_PROVIDE_LLAMA}`);
}

export function llamaFromArtifact(a: InputArtifact): ToolInfo {
  const bin = join(a.path, "bin");
  if (!existsSync(bin)) {
    throw new Error(`input \`llama\` (${a.id}) has no bin/ folder: is it a llama-build artifact?`);
  }
  const lib = join(a.path, "lib");
  return { bin, lib: existsSync(lib) ? lib : undefined, digest: a.digest };
}

/**
 * Threads for a llama.cpp program: `threads`, or for 0 the CPUs the instance
 * was given, and never more than those. More threads than cores make ggml's
 * workers wait on each other: llama-server decoded 3-10× slower with 4
 * threads than with 2 on a 2-core machine, its speed varying 3× between runs.
 */
export function llamaThreads(threads: number, cpus: number): number {
  const given = Math.max(1, Math.floor(cpus));
  return threads > 0 ? Math.min(threads, given) : given;
}

/** Path of one llama.cpp program, with an error naming the build if missing. */
export function llamaExe(tool: ToolInfo, name: string): string {
  const p = join(tool.bin, name);
  if (!existsSync(p)) {
    throw new Error(
      `${name} not found in ${tool.bin}: the llama.cpp build lacks this program ` +
        `(llama-build builds it; a custom build must include it)`,
    );
  }
  return p;
}

/** Environment for llama.cpp programs: their shared libraries are found even without RPATH. */
export function llamaEnv(tool: ToolInfo, base: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const dirs = [tool.lib, tool.bin].filter((d): d is string => !!d);
  const old = base.LD_LIBRARY_PATH;
  return { ...base, LD_LIBRARY_PATH: [...dirs, ...(old ? [old] : [])].join(delimiter) };
}

/** The process environment as plain strings (what the engine's runCommand takes). */
export function envStrings(env: NodeJS.ProcessEnv = process.env): Record<string, string> {
  const out: Record<string, string> = {};
  for (const [k, v] of Object.entries(env)) if (v !== undefined) out[k] = v;
  return out;
}

export interface LlamaRunOptions {
  signal: AbortSignal;
  log: Logger;
  cwd?: string;
  onLine?: (line: string) => void;
}

/**
 * Runs one llama.cpp program through the engine's runCommand: its own process
 * group, killed on abort and by the engine's reaper if the engine dies.
 */
export async function runLlama(
  tool: ToolInfo,
  program: string,
  args: string[],
  opts: LlamaRunOptions,
): Promise<void> {
  await runCommand(llamaExe(tool, program), args, {
    ...opts,
    env: envStrings(llamaEnv(tool)),
    onLine: opts.onLine && ((line) => opts.onLine?.(line)),
  });
}

/** sha256 of a file's bytes, streamed. */
export function hashFile(path: string): Promise<Digest> {
  return new Promise((resolve, reject) => {
    const h = createHash("sha256");
    createReadStream(path)
      .on("data", (c) => h.update(c))
      .on("error", reject)
      .on("end", () => resolve(("sha256:" + h.digest("hex")) as Digest));
  });
}
