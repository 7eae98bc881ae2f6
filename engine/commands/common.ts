import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { parseArgs, type ParseArgsConfig } from "node:util";
import { UsageError } from "../errors.js";
import type { Pipeline } from "../pipeline/expand.js";
import { yaml } from "../pipeline/source.js";
import { PACKAGE_ROOT } from "../root.js";
import { Engine, cacheRootFor } from "../engine.js";
import { describe, type Holder } from "../../cache/cache-lock.js";
import { cachePath } from "../../cache/layout.js";

export function parse<const O extends NonNullable<ParseArgsConfig["options"]>>(
  argv: string[],
  options: O,
  usage: string,
) {
  try {
    return parseArgs({
      args: argv,
      options,
      allowPositionals: true as const,
      strict: true as const,
    });
  } catch (e) {
    throw new UsageError(`${(e as Error).message}\nusage: ${usage}`);
  }
}

/** The pipeline file: the argument, else ./valley.yaml, else the packaged demo. */
export function pipelineFile(arg: string | undefined): string {
  if (arg) {
    if (!existsSync(arg)) throw new UsageError(`no such pipeline file: ${arg}`);
    return arg;
  }
  for (const f of ["valley.yaml", "pipeline.yaml"]) if (existsSync(f)) return f;
  return join(PACKAGE_ROOT, "pipelines", "demo.yaml");
}

/** `-p name=value` overrides; values are parsed as YAML scalars/lists (`-p sizes=[1,2]`). */
export function paramOverrides(list: string[] | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const item of list ?? []) {
    const i = item.indexOf("=");
    if (i <= 0) throw new UsageError(`-p expects name=value, got "${item}"`);
    out[item.slice(0, i)] = yaml().parse(item.slice(i + 1));
  }
  return out;
}

export async function openPipeline(
  file: string | undefined,
  params?: string[],
  opts: { readOnly?: boolean } = {},
): Promise<{ pl: Pipeline; engine: Engine }> {
  const path = pipelineFile(file);
  // Loaded here, not with this module: `run` with nothing to do never expands a pipeline.
  const { loadPipeline } = await import("../pipeline/expand.js");
  const pl = await loadPipeline(path, {
    params: paramOverrides(params),
    // Parsed pipelines are remembered in the cache (see Source); reading costs nothing if absent.
    memo: cachePath(cacheRootFor(dirname(resolve(path))), "parsed"),
  });
  const engine = new Engine(pl, undefined, opts);
  // Relative paths in a pipeline's params mean "beside the pipeline file",
  // whatever folder valley was started from; they stay relative in keys, so
  // moving the project re-runs nothing.
  process.chdir(pl.dir);
  return { pl, engine };
}

/** The cache a command without a pipeline works on: --cache, $VALLEY_CACHE, or ./.valley. */
export function cacheDir(arg: string | undefined, pipelineArg?: string): string {
  if (arg) return resolve(arg);
  if (pipelineArg) return cacheRootFor(resolve(pipelineArg, ".."));
  return cacheRootFor(process.cwd());
}

/** What a command says once when it waits for a gc that holds the cache. */
export function waitingForGc(command: string): (gc: Holder) => void {
  return (gc) =>
    process.stderr.write(`valley ${command}: waiting for valley gc (${describe(gc)}) to finish\n`);
}
