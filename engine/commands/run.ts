import { existsSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { lockfilePath, registerRoot } from "../lockfile.js";
import { enterCache } from "../../cache/cache-lock.js";
import { paramOverrides, parse, pipelineFile, waitingForGc } from "./common.js";
import { UsageError } from "../errors.js";
import { cacheRootFor, fingerprintTools, pipelineFileName } from "../engine.js";
import { unchangedRun } from "../run-memo.js";
import { KeyHistory } from "../history.js";
import { Store } from "../../cache/store.js";
import { cachePath } from "../../cache/layout.js";
import { saveMemos } from "../../cache/disk.js";
import { printSummary, writeLockfileReporting } from "./run-summary.js";

// The `run` command. What a run with nothing to do needs is loaded here; the
// full path (expanding the pipeline, the scheduler, executors) is in
// run-full.ts, loaded only when there is something to check or to do.

const USAGE =
  "valley run [file] [--only STAGE]... [--force STAGE]... [--dry-run] [--jobs N] [--keep-going] [--executor local|slurm] [--pull] [--remote R] [--slurm-partition P] [--slurm-account A] [--slurm-flag F]... [--json] [-p name=value]...";

export function parseRun(argv: string[]) {
  return parse(
    argv,
    {
      only: { type: "string", multiple: true },
      force: { type: "string", multiple: true },
      "dry-run": { type: "boolean" },
      jobs: { type: "string", short: "j" },
      "keep-going": { type: "boolean", short: "k" },
      executor: { type: "string" },
      json: { type: "boolean" },
      param: { type: "string", short: "p", multiple: true },
      file: { type: "string", short: "f" },
      pull: { type: "boolean" },
      remote: { type: "string" },
      "slurm-partition": { type: "string" },
      "slurm-account": { type: "string" },
      "slurm-flag": { type: "string", multiple: true },
      "max-usd": { type: "string" },
      "max-gpu-hours": { type: "string" },
      // Internal: how a Slurm job runs one attempt on a compute node (see engine/executors/README.md).
      instance: { type: "string" },
      attempt: { type: "string" },
      key: { type: "string" },
      "job-result": { type: "string" },
    },
    USAGE,
  );
}

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseRun(argv);
  if (values.instance !== undefined)
    return (await import("./run-full.js")).runOneJob(values, positionals);
  if (values["dry-run"])
    return (await import("./plan.js")).plan(
      [...argv.filter((a) => a !== "--dry-run"), "--why"].filter(
        (a) => !["--keep-going", "-k"].includes(a),
      ),
    );
  const jobs = values.jobs !== undefined ? Number(values.jobs) : undefined;
  if (jobs !== undefined && (!Number.isInteger(jobs) || jobs < 1))
    throw new UsageError(`--jobs expects a positive integer`);
  const budgets: { usd?: number; gpuHours?: number } =
    values["max-usd"] !== undefined || values["max-gpu-hours"] !== undefined
      ? await (async () => {
          const { budget } = await import("./estimate.js");
          return {
            usd: budget("--max-usd", values["max-usd"]),
            gpuHours: budget("--max-gpu-hours", values["max-gpu-hours"]),
          };
        })()
      : {};
  // Nothing changed since the last complete run: found without expanding the
  // pipeline. Flags whose errors or effects the full path must show take it.
  const plain =
    !values.only?.length &&
    !values.force?.length &&
    budgets.usd === undefined &&
    budgets.gpuHours === undefined &&
    !values.pull &&
    values.remote === undefined &&
    (values.executor === undefined || values.executor === "local" || values.executor === "slurm");
  // Absolute: the up-to-date check moves to the pipeline's folder, as the full path does.
  const file = resolve(pipelineFile(values.file ?? positionals[0]));
  if (plain) {
    const done = await runUnchanged(values, positionals, file);
    if (done !== undefined) return done;
  }
  return (await import("./run-full.js")).runFull(values, positionals, file, budgets);
}

export type RunValues = ReturnType<typeof parseRun>["values"];

/**
 * `valley run` with nothing to do, found without expanding the pipeline:
 * the last complete run's keys still hold and their results are all there
 * (engine/run-memo.ts). Does what the full path does for such a run (gc
 * root, memos, lockfile, summary); undefined: take the full path.
 */
async function runUnchanged(
  values: RunValues,
  positionals: string[],
  file: string,
): Promise<number | undefined> {
  const root = cacheRootFor(dirname(file));
  if (!existsSync(cachePath(root, "results"))) return undefined;
  const overrides = paramOverrides(values.param);
  // Relative paths in params mean "beside the pipeline file" (as openPipeline
  // has it): the kinds' fingerprint hooks run again from there.
  process.chdir(dirname(file));
  const t0 = Date.now();
  const cacheLock = await enterCache(root, "run", { onWait: waitingForGc("run") });
  try {
    const got = await unchangedRun({
      cacheRoot: root,
      file,
      overrides,
      openStore: (name) => {
        const store = new Store(root);
        store.memoResults(pipelineFileName(name));
        return store;
      },
      fingerprint: async (kind, params, store) => {
        const { loadKind } = await import("../kinds.js");
        const impl = (await loadKind(kind)).impl;
        return impl.fingerprint?.(params, fingerprintTools(store.stat, dirname(file)));
      },
    });
    if (!got) return undefined;
    const { run, store } = got;
    registerRoot(root, lockfilePath(file));
    const history = new KeyHistory(store.dir("history"), pipelineFileName(run.name));
    for (const i of run.instances) history.remember(i.id, i.key);
    saveMemos([() => store.stat.save(), () => history.save(), () => store.saveResults()]);
    const lockError = writeLockfileReporting(
      { file, name: run.name, instances: run.instances },
      run.results,
      root,
      store.resultsUnchangedSince(),
    );
    const n = run.instances.length;
    printSummary(
      values,
      positionals,
      {
        instances: n,
        executed: 0,
        cached: n,
        failed: 0,
        skipped: 0,
        cancelled: 0,
        seconds: (Date.now() - t0) / 1000,
        failures: [],
        fastPath: true,
      },
      lockError,
    );
    return lockError ? 1 : 0;
  } finally {
    cacheLock.release();
  }
}
