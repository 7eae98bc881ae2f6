import { cpus } from "node:os";
import { runInstances, selectInstances, type RunSummary } from "../scheduler.js";
import { lockfilePath, registerRoot } from "../lockfile.js";
import { enterCache } from "../../cache/cache-lock.js";
import { isComplete, type StoredResult } from "../../cache/store.js";
import { Progress } from "../progress.js";
import { runJob, slurmExecutor } from "../executors/slurm.js";
import { openPipeline, paramOverrides, waitingForGc } from "./common.js";
import { UsageError } from "../errors.js";
import { stderrTail } from "../process.js";
import { Engine } from "../engine.js";
import { saveRunMemo, type MemoInstance } from "../run-memo.js";
import type { Pipeline } from "../pipeline/expand.js";
import type { RunValues } from "./run.js";
import { printSummary, writeLockfileReporting } from "./run-summary.js";

/** `valley run` the full way: the pipeline expanded, every key computed, what misses run. */
export async function runFull(
  values: RunValues,
  positionals: string[],
  /** The pipeline file, absolute. */
  file: string,
  budgets: { usd?: number; gpuHours?: number },
): Promise<number> {
  const budgeted = budgets.usd !== undefined || budgets.gpuHours !== undefined;
  // Under a budget the estimate comes first, from a cache opened read-only: a
  // refused run leaves no trace (not even an empty cache folder).
  const opened = await openPipeline(file, values.param, { readOnly: budgeted });
  const pl = opened.pl;
  let engine = opened.engine;
  if (budgeted) {
    const refused = await refuseOverBudget(values, pl, engine, budgets);
    if (refused !== undefined) return refused;
    engine = new Engine(pl);
  }
  // The cache's lock for the whole run (a gc in progress finishes first), and
  // the lockfile a root before anything is computed: whatever this run
  // writes is kept by any later gc, even if the run fails (cache/README.md).
  const cacheLock = await enterCache(engine.store.root, "run", { onWait: waitingForGc("run") });
  try {
    registerRoot(engine.store.root, lockfilePath(pl.file));
    return await runLocked(values, positionals, pl, engine);
  } finally {
    cacheLock.release();
  }
}

/** --max-usd / --max-gpu-hours: exit 2 with the estimate when its high end is over a budget. */
async function refuseOverBudget(
  values: RunValues,
  pl: Pipeline,
  engine: Engine,
  budgets: { usd?: number; gpuHours?: number },
): Promise<number | undefined> {
  const { estimatePipeline, overBudget, printReport } = await import("./estimate.js");
  await engine.prepareFingerprints();
  const executor = (values.executor ?? pl.executor?.kind ?? "local") as "local" | "slurm";
  const report = await estimatePipeline(pl, engine, {
    executor,
    only: values.only,
    force: values.force,
  });
  const why = overBudget(report, budgets);
  if (!why) return undefined;
  printReport(report, (s) => process.stderr.write(s));
  process.stderr.write(`\nvalley run: not started: ${why}\n`);
  return 2;
}

async function runLocked(
  values: RunValues,
  positionals: string[],
  pl: Pipeline,
  engine: Engine,
): Promise<number> {
  const jobs = values.jobs !== undefined ? Number(values.jobs) : undefined;
  pl.source.remember();
  // --pull / --remote R: a key that misses locally is fetched from the remote before it is computed.
  const fetcher =
    values.pull || values.remote !== undefined
      ? (await import("./remote.js")).remoteFetcher(engine.store, values.remote, pl.dir)
      : undefined;
  const executor = values.executor ?? pl.executor?.kind ?? "local";
  if (executor !== "local" && executor !== "slurm")
    throw new UsageError(`--executor ${executor}: expected local or slurm`);
  // Slurm arbitrates resources between jobs: this machine's size limits nothing.
  const slurm =
    executor === "slurm"
      ? {
          executor: slurmExecutor(
            {
              ...pl.executor?.slurm,
              partition: values["slurm-partition"] ?? pl.executor?.slurm?.partition,
              account: values["slurm-account"] ?? pl.executor?.slurm?.account,
              flags: [...(pl.executor?.slurm?.flags ?? []), ...(values["slurm-flag"] ?? [])],
            },
            { pipelineFile: pl.file, params: values.param ?? [] },
          ),
          resources: { cpu: Infinity, gpu: Infinity, memory: Infinity },
        }
      : {};
  for (const s of [...(values.only ?? []), ...(values.force ?? [])]) {
    if (!pl.stageOrder.includes(s)) throw new UsageError(`no stage "${s}" in ${pl.file}`);
  }

  const ac = new AbortController();
  let interrupts = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    interrupts++;
    if (interrupts > 1) process.exit(130);
    process.stderr.write(`\n${sig}: stopping; running stages are being killed (again to force)\n`);
    ac.abort(sig);
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  const selected = selectInstances(pl.instances, values.only);
  const progress = new Progress(selected.length, process.stderr, false);
  const t0 = Date.now();
  let summary: RunSummary;
  try {
    summary = await runInstances(engine, {
      // With Slurm, --jobs bounds the jobs this run keeps queued or running at once.
      jobs: jobs ?? (executor === "slurm" ? 64 : Math.max(1, cpus().length)),
      ...slurm,
      keepGoing: !!values["keep-going"],
      fetch: fetcher?.fetch,
      only: values.only,
      force: values.force,
      signal: ac.signal,
      onEvent: (e) => progress.event(e),
      // For tests and impatient users: the first retry's delay (doubles each time).
      backoffMs: process.env.VALLEY_BACKOFF_MS ? Number(process.env.VALLEY_BACKOFF_MS) : undefined,
    });
  } finally {
    progress.finish();
    engine.leases.releaseAll();
    await fetcher?.close();
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
  const results = new Map<string, StoredResult>();
  for (const [id, o] of summary.outcomes)
    if (o.status === "cached" || o.status === "executed") results.set(id, o.record);
  // The lockfile lists every instance with a result, including ones this run did not select.
  // On a full disk the summary is still printed, then the disk-full message (exit 1).
  const lockError = values.only
    ? undefined
    : writeLockfileReporting(pl, results, engine.store.root, engine.store.resultsUnchangedSince());
  const seconds = (Date.now() - t0) / 1000;
  const failures = [...summary.outcomes].flatMap(([id, o]) =>
    o.status === "failed"
      ? [{ id, error: o.error.message, stderr: o.logFile ? stderrTail(o.logFile) : [] }]
      : [],
  );
  if (!values.only && !values.force && !lockError && !ac.signal.aborted)
    rememberCompleteRun(values, pl, engine, summary);
  printSummary(values, positionals, { ...summary, seconds, failures, fastPath: false }, lockError);
  if (ac.signal.aborted) return 130;
  if (lockError) return 1;
  if (summary.inputError) return 2;
  return summary.failed > 0 ? 1 : 0;
}

/**
 * After a run in which every instance of the pipeline has a complete
 * result: what the keys were computed from, for the next run's up-to-date
 * check (engine/run-memo.ts).
 */
function rememberCompleteRun(
  values: RunValues,
  pl: Pipeline,
  engine: Engine,
  summary: RunSummary,
): void {
  const instances: MemoInstance[] = [];
  for (const inst of pl.instances) {
    const o = summary.outcomes.get(inst.id);
    if (!o || (o.status !== "cached" && o.status !== "executed") || !isComplete(o.record)) return;
    instances.push({
      id: inst.id,
      stage: inst.stage,
      kind: inst.kind,
      key: o.key,
      tree: o.record.outputs.tree,
    });
  }
  saveRunMemo({
    cacheRoot: engine.store.root,
    file: pl.file,
    text: pl.source.textDigest(),
    overrides: paramOverrides(values.param),
    name: pl.name,
    consulted: engine.consulted,
    tools: engine.toolsUsed(),
    instances,
  });
}

/** `valley run <file> --instance ID --attempt N --key K`: one attempt inside a Slurm job. */
export async function runOneJob(
  values: {
    instance?: string;
    attempt?: string;
    key?: string;
    "job-result"?: string;
    param?: string[];
    file?: string;
  },
  positionals: string[],
): Promise<number> {
  const attempt = Number(values.attempt ?? "1");
  if (!values.key || !/^sha256:[0-9a-f]{64}$/.test(values.key))
    throw new UsageError("--instance needs --key sha256:<hex> (the key the submitter computed)");
  if (!Number.isInteger(attempt) || attempt < 1)
    throw new UsageError("--attempt expects a positive integer");
  const { pl, engine } = await openPipeline(values.file ?? positionals[0], values.param);
  // scancel (and pre-emption) send SIGTERM: abort the attempt so its output is discarded cleanly.
  const ac = new AbortController();
  const onSignal = (sig: NodeJS.Signals) => ac.abort(sig);
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);
  try {
    return await runJob(engine, pl, {
      instance: values.instance as string,
      attempt,
      key: values.key,
      resultFile: values["job-result"],
      signal: ac.signal,
    });
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
  }
}
