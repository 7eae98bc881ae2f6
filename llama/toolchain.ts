/**
 * Finding and running llama.cpp binaries for stage kinds that declare
 * `tools: ["llama"]`.
 */
import { spawn } from "node:child_process";
import { createReadStream, existsSync } from "node:fs";
import { createHash } from "node:crypto";
import { dirname, join, delimiter } from "node:path";
import { fileURLToPath } from "node:url";
import type { Logger } from "pino";
import type { InputArtifact, StageContext, ToolInfo } from "../engine/stage-api.js";
import type { Digest } from "../cache/digest.js";

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
export function resolveLlama(ctx: Pick<StageContext<unknown>, "inputs" | "tools">): ToolInfo {
  const input = ctx.inputs.llama;
  if (input !== undefined) {
    if (Array.isArray(input)) {
      throw new Error(
        `input \`llama\` must be one llama-build artifact, got a list of ${input.length}`,
      );
    }
    return llamaFromArtifact(input);
  }
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

export class CommandError extends Error {
  override name = "CommandError";
  constructor(
    message: string,
    readonly code: number | null,
    readonly output: string,
  ) {
    super(message);
  }
}

export interface RunOptions {
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  signal?: AbortSignal;
  log?: Logger;
  /** Called with each output line (stdout and stderr). */
  onLine?: (line: string) => void;
}

/**
 * Runs a program to completion, logging its output at debug level. On abort it
 * gets SIGTERM, then SIGKILL after 5 s, and the promise rejects with the
 * signal's reason. A non-zero exit rejects with the last lines of output.
 */
export function runCommand(cmd: string, args: string[], opts: RunOptions = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    opts.signal?.throwIfAborted();
    const child = spawn(cmd, args, {
      cwd: opts.cwd,
      env: opts.env ?? process.env,
      stdio: ["ignore", "pipe", "pipe"],
    });
    const tail: string[] = [];
    let partial = "";
    const onData = (chunk: Buffer) => {
      const text = partial + chunk.toString("utf8");
      const lines = text.split("\n");
      partial = lines.pop() ?? "";
      for (const line of lines) {
        tail.push(line);
        if (tail.length > 60) tail.shift();
        opts.log?.debug({ cmd: cmd.split("/").pop() }, line);
        opts.onLine?.(line);
      }
    };
    child.stdout.on("data", onData);
    child.stderr.on("data", onData);
    let killTimer: NodeJS.Timeout | undefined;
    const onAbort = () => {
      child.kill("SIGTERM");
      killTimer = setTimeout(() => child.kill("SIGKILL"), 5000);
    };
    opts.signal?.addEventListener("abort", onAbort, { once: true });
    child.on("error", (err) => {
      opts.signal?.removeEventListener("abort", onAbort);
      reject(new CommandError(`cannot run ${cmd}: ${err.message}`, null, ""));
    });
    child.on("close", (code, sig) => {
      opts.signal?.removeEventListener("abort", onAbort);
      if (killTimer) clearTimeout(killTimer);
      if (partial) tail.push(partial);
      const output = tail.join("\n");
      if (opts.signal?.aborted) return reject(opts.signal.reason);
      if (code === 0) return resolve(output);
      const how = sig ? `was killed by ${sig}` : `exited with code ${code}`;
      reject(
        new CommandError(
          `${cmd.split("/").pop()} ${how}; last output:\n${tail.slice(-20).join("\n")}`,
          code,
          output,
        ),
      );
    });
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
