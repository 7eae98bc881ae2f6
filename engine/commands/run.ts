import { cpus } from "node:os";
import type { StoredResult } from "../../cache/store.js";
import { runInstances, selectInstances, type RunSummary } from "../scheduler.js";
import { lockfilePath, registerRoot, writeLockfile } from "../lockfile.js";
import { enterCache } from "../../cache/cache-lock.js";
import { asDiskFull, DiskFull } from "../../cache/disk.js";
import { Progress } from "../progress.js";
import { runJob, slurmExecutor } from "../executors/slurm.js";
import { openPipeline, parse, waitingForGc } from "./common.js";
import { UsageError } from "../errors.js";
import { diffFields } from "../key.js";
import { stderrTail } from "../process.js";
import type { Engine } from "../engine.js";
import type { Pipeline } from "../pipeline/expand.js";
import { budget } from "./estimate.js";

const USAGE =
  "valley run [file] [--only STAGE]... [--force STAGE]... [--dry-run] [--jobs N] [--keep-going] [--executor local|slurm] [--pull] [--remote R] [--slurm-partition P] [--slurm-account A] [--slurm-flag F]... [--json] [-p name=value]...";

function parseRun(argv: string[]) {
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
  if (values.instance !== undefined) return runOneJob(values, positionals);
  if (values["dry-run"])
    return plan(
      [...argv.filter((a) => a !== "--dry-run"), "--why"].filter(
        (a) => !["--keep-going", "-k"].includes(a),
      ),
    );
  const jobs = values.jobs !== undefined ? Number(values.jobs) : undefined;
  if (jobs !== undefined && (!Number.isInteger(jobs) || jobs < 1))
    throw new UsageError(`--jobs expects a positive integer`);
  const budgets = {
    usd: budget("--max-usd", values["max-usd"]),
    gpuHours: budget("--max-gpu-hours", values["max-gpu-hours"]),
  };
  const { pl, engine } = await openPipeline(values.file ?? positionals[0], values.param);
  if (budgets.usd !== undefined || budgets.gpuHours !== undefined) {
    const refused = await refuseOverBudget(values, pl, engine, budgets);
    if (refused !== undefined) return refused;
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

type RunValues = ReturnType<typeof parseRun>["values"];

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
  let lockError: unknown;
  try {
    if (!values.only)
      writeLockfile(pl, results, engine.store.root, engine.store.resultsUnchangedSince());
  } catch (e) {
    lockError = asDiskFull(e, lockfilePath(pl.file));
    if (!(lockError instanceof DiskFull)) throw e;
  }
  const seconds = (Date.now() - t0) / 1000;
  const failures = [...summary.outcomes].flatMap(([id, o]) =>
    o.status === "failed"
      ? [{ id, error: o.error.message, stderr: o.logFile ? stderrTail(o.logFile) : [] }]
      : [],
  );
  if (values.json) {
    process.stdout.write(
      JSON.stringify({
        instances: summary.instances,
        executed: summary.executed,
        cached: summary.cached,
        failed: summary.failed,
        skipped: summary.skipped,
        cancelled: summary.cancelled,
        seconds,
        failures,
      }) + "\n",
    );
  }
  process.stderr.write(
    `${summary.instances} instances: ${summary.executed} executed, ${summary.cached} cached, ${summary.failed} failed` +
      (summary.skipped ? `, ${summary.skipped} skipped` : "") +
      (summary.cancelled ? `, ${summary.cancelled} cancelled` : "") +
      ` (${seconds.toFixed(2)}s)\n`,
  );
  const fileArg = values.file ?? positionals[0];
  for (const f of failures) {
    // The stage's own last words, where the reason usually is (an OOM, a traceback).
    const tail = f.stderr.length
      ? `  last stderr lines:\n${f.stderr.map((l) => `  │ ${l}`).join("\n")}\n`
      : "";
    process.stderr.write(
      `\n✗ ${f.error}\n${tail}  full log: valley logs ${f.id}${fileArg ? ` -f ${fileArg}` : ""}\n`,
    );
  }
  if (lockError) process.stderr.write(`\nvalley run: ${(lockError as Error).message}\n`);
  if (ac.signal.aborted) return 130;
  if (lockError) return 1;
  if (summary.inputError) return 2;
  return summary.failed > 0 ? 1 : 0;
}

/** `valley run <file> --instance ID --attempt N --key K`: one attempt inside a Slurm job. */
async function runOneJob(
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

export interface PlanRow {
  id: string;
  stage: string;
  kind: string;
  params: Record<string, unknown>;
  key: string | null;
  status: "hit" | "miss";
  /** For a miss: which key fields differ from the last key recorded for this id. */
  changed: string[];
  reason: string;
}

/** What would run, without running or writing anything. */
export async function planRows(
  pl: Pipeline,
  engine: Engine,
  force: string[] = [],
): Promise<PlanRow[]> {
  const results = new Map<string, StoredResult>();
  const rows: PlanRow[] = [];
  const missing = new Set<string>();
  for (const inst of pl.instances) {
    const row: PlanRow = {
      id: inst.id,
      stage: inst.stage,
      kind: inst.kind,
      params: inst.params,
      key: null,
      status: "miss",
      changed: [],
      reason: "",
    };
    rows.push(row);
    const rk = await engine.resolveKey(inst, results, { admit: false });
    if (!rk) {
      const ups = inst.deps.filter((d) => missing.has(d));
      row.reason = `runs after ${ups.join(", ")} (its key depends on their outputs)`;
      row.changed = ["inputs"];
      missing.add(inst.id);
      continue;
    }
    row.key = rk.key;
    const rec = force.includes(inst.stage) ? undefined : engine.lookup(rk.key);
    if (rec) {
      row.status = "hit";
      results.set(inst.id, rec);
      continue;
    }
    missing.add(inst.id);
    const prev = engine.history(inst.id);
    if (force.includes(inst.stage)) row.reason = "forced";
    else if (!prev) row.reason = "never run";
    else if (prev.key === rk.key) {
      const incomplete = engine.store.getAction(rk.key)?.incomplete;
      row.reason = incomplete
        ? `incomplete: ${incomplete}`
        : "result missing or corrupt in the cache";
    } else if (!prev.fields)
      row.reason = "changed (the previous result is no longer in the cache to compare)";
    else {
      row.changed = diffFields(prev.fields, rk.fields);
      row.reason = `changed: ${row.changed.join(", ")}`;
    }
  }
  return rows;
}

export async function plan(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    {
      why: { type: "boolean" },
      json: { type: "boolean" },
      estimate: { type: "boolean" },
      executor: { type: "string" },
      only: { type: "string", multiple: true },
      force: { type: "string", multiple: true },
      jobs: { type: "string", short: "j" },
      param: { type: "string", short: "p", multiple: true },
      file: { type: "string", short: "f" },
    },
    "valley plan [file] [--why] [--estimate [--executor local|slurm]] [--json] [-p name=value]...",
  );
  const { pl, engine } = await openPipeline(values.file ?? positionals[0], values.param, {
    readOnly: true,
  });
  await engine.prepareFingerprints();
  if (values.estimate) {
    const executor = values.executor ?? pl.executor?.kind ?? "local";
    if (executor !== "local" && executor !== "slurm")
      throw new UsageError(`--executor ${executor}: expected local or slurm`);
    const { estimatePipeline, printReport } = await import("./estimate.js");
    const report = await estimatePipeline(pl, engine, {
      executor,
      only: values.only,
      force: values.force,
    });
    if (values.json) process.stdout.write(JSON.stringify(report, null, 1) + "\n");
    else printReport(report, (s) => process.stdout.write(s));
    return 0;
  }
  const keep = new Set<string>(selectInstances(pl.instances, values.only).map((i) => i.id));
  const rows = (await planRows(pl, engine, values.force ?? [])).filter((r) => keep.has(r.id));
  if (values.json) {
    process.stdout.write(JSON.stringify({ pipeline: pl.name, instances: rows }, null, 1) + "\n");
    return 0;
  }
  const misses = rows.filter((r) => r.status === "miss");
  for (const r of rows) {
    if (r.status === "hit" && !values.why) continue;
    const tag = r.status === "hit" ? "cached" : "run   ";
    process.stdout.write(`${tag}  ${r.id}${values.why && r.reason ? `  — ${r.reason}` : ""}\n`);
    if (!values.why) process.stdout.write(`        ${r.kind} ${JSON.stringify(r.params)}\n`);
  }
  process.stdout.write(
    `${rows.length} instances: ${misses.length} to run, ${rows.length - misses.length} cached\n`,
  );
  return 0;
}

export async function status(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    {
      json: { type: "boolean" },
      param: { type: "string", short: "p", multiple: true },
      file: { type: "string", short: "f" },
    },
    "valley status [file] [--json]",
  );
  const { pl, engine } = await openPipeline(values.file ?? positionals[0], values.param, {
    readOnly: true,
  });
  await engine.prepareFingerprints();
  const rows = await planRows(pl, engine);
  engine.store.stat.save();
  const byStage = new Map<string, { hit: number; miss: number }>();
  for (const r of rows) {
    const s = byStage.get(r.stage) ?? { hit: 0, miss: 0 };
    s[r.status === "hit" ? "hit" : "miss"]++;
    byStage.set(r.stage, s);
  }
  if (values.json) {
    process.stdout.write(
      JSON.stringify({
        pipeline: pl.name,
        stages: Object.fromEntries(byStage),
        instances: rows.map((r) => ({ id: r.id, status: r.status, key: r.key })),
      }) + "\n",
    );
    return 0;
  }
  for (const [stage, s] of byStage) {
    process.stdout.write(
      `${stage.padEnd(24)} ${String(s.hit).padStart(5)} cached ${String(s.miss).padStart(5)} to run\n`,
    );
  }
  return 0;
}
