import { execFile } from "node:child_process";
import {
  appendFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { hostname } from "node:os";
import { dirname, join } from "node:path";
import { digestHex, type Digest } from "../../cache/digest.js";
import type { StoredResult } from "../../cache/store.js";
import { writeFileAtomic } from "../../cache/atomic.js";
import type { Engine, ResolvedKey } from "../engine.js";
import type { Instance, Pipeline } from "../pipeline/expand.js";
import type { Executor } from "../scheduler.js";
import { AttemptFailed, runAttempt, type AttemptOptions } from "./local.js";
import { detectGpus } from "../resources.js";
import { DIST_ROOT } from "../root.js";

/** `executor.slurm` in a pipeline, merged with `--slurm-*` flags. */
export interface SlurmConfig {
  partition?: string;
  account?: string;
  /** Extra sbatch arguments, passed as they are (e.g. `--qos=high`, `--constraint=a100`). */
  flags?: string[];
  /** Seconds between squeue polls (default 3). */
  poll?: number;
}

/** What the submitter passes on to the job so it can open the same pipeline. */
export interface SlurmSubmitter {
  /** Absolute path of the pipeline file (must be readable on the compute node). */
  pipelineFile: string;
  /** The `-p name=value` overrides of this run, passed on unchanged. */
  params: string[];
}

/** The file a job writes when its attempt ends: the submitter reads it after the job. */
export interface JobResult {
  status: "done" | "cached" | "failed";
  kind?: AttemptFailed["kind"];
  message?: string;
  logFile?: string;
}

// Slurm states after which the job will never run again (we submit with
// --no-requeue, so a pre-empted job ends too and our retry policy decides).
const FAILED_STATES = new Set([
  "FAILED",
  "TIMEOUT",
  "NODE_FAIL",
  "PREEMPTED",
  "CANCELLED",
  "OUT_OF_MEMORY",
  "BOOT_FAIL",
  "DEADLINE",
  "REVOKED",
  "SPECIAL_EXIT",
]);

const CLI = join(DIST_ROOT, "engine", "cli.js");

interface Exec {
  code: number;
  stdout: string;
  stderr: string;
  missing?: boolean;
}

function exec(cmd: string, args: string[], env?: NodeJS.ProcessEnv): Promise<Exec> {
  return new Promise((res) => {
    execFile(cmd, args, { env, timeout: 60_000, encoding: "utf8" }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: string | number }) | null;
      res({
        code: e ? (typeof e.code === "number" ? e.code : 1) : 0,
        stdout,
        stderr: stderr || (e && typeof e.code === "string" ? e.message : ""),
        missing: e?.code === "ENOENT",
      });
    });
  });
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((res) => {
    if (signal.aborted) return res();
    const t = setTimeout(done, ms);
    function done() {
      clearTimeout(t);
      signal.removeEventListener("abort", done);
      res();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}

const quote = (s: string) => `'${s.replace(/'/g, `'\\''`)}'`;

/** The sbatch arguments for one attempt's resources and config (exported for tests). */
export function sbatchArgs(inst: Instance, cfg: SlurmConfig, files: { log: string }): string[] {
  const r = inst.resources;
  const args = [
    "--parsable",
    `--job-name=valley:${inst.id}`,
    `--output=${files.log}`,
    // Our retry policy decides about pre-empted or failed jobs, not Slurm's requeue.
    "--no-requeue",
    "--nodes=1",
    "--ntasks=1",
    `--cpus-per-task=${Math.max(1, Math.ceil(r.cpu))}`,
  ];
  if (r.memory > 0) args.push(`--mem=${Math.ceil(r.memory)}`);
  if (r.gpu > 0) args.push(`--gres=gpu:${r.gpu}`);
  // valley enforces the stage's time-out inside the job (and cleans up); Slurm's
  // limit is a backstop a minute later, for start-up and admission into the store.
  if (inst.timeoutMs !== undefined) args.push(`--time=${Math.ceil(inst.timeoutMs / 60_000) + 1}`);
  if (cfg.partition) args.push(`--partition=${cfg.partition}`);
  if (cfg.account) args.push(`--account=${cfg.account}`);
  args.push(...(cfg.flags ?? []));
  return args;
}

function tail(file: string, lines = 40): string {
  try {
    const all = readFileSync(file, "utf8").split("\n");
    while (all.length && all[all.length - 1] === "") all.pop();
    return all.slice(-lines).join("\n");
  } catch {
    return "(no output file)";
  }
}

/**
 * An executor that runs each attempt as one sbatch job. The job runs valley
 * itself (`valley run <file> --instance <id> --attempt N --key K`) against the
 * same cache, which must be on a filesystem the compute nodes share. The
 * submitter keeps holding the key's lease (and its heartbeat) while the job
 * runs, follows the job with squeue, and reads the action record when the job
 * completes; a failed, cancelled, pre-empted or timed-out job is a failed
 * attempt, so the scheduler's retry policy applies. On abort it scancels.
 */
export function slurmExecutor(cfg: SlurmConfig, sub: SlurmSubmitter): Executor {
  const pollMs = Math.max(200, (cfg.poll ?? 3) * 1000);
  return async (engine, inst, rk, opts) => {
    const root = engine.store.root;
    const dir = engine.store.dir("slurm");
    mkdirSync(dir, { recursive: true });
    const hex = digestHex(rk.key);
    const base = join(dir, `${hex}-a${opts.attempt}`);
    const script = `${base}.sh`;
    const log = join(dir, `${hex}-%j.log`);
    const resultOf = (id: string) => join(dir, `${hex}-${id}.result.json`);
    const failedLog = engine.failedLogPath(rk.key);
    const fail = (msg: string, kind: AttemptFailed["kind"]) =>
      new AttemptFailed(msg, new Error(msg), kind, failedLog);

    const cmd = [
      process.execPath,
      CLI,
      "run",
      sub.pipelineFile,
      "--instance",
      inst.id,
      "--attempt",
      String(opts.attempt),
      "--key",
      rk.key,
      "--job-result",
      join(dir, `${hex}-%j.result.json`),
      ...sub.params.flatMap((p) => ["-p", p]),
    ];
    writeFileSync(
      script,
      `#!/bin/sh\n# valley ${inst.id}, attempt ${opts.attempt}, key ${rk.key}\nexec ${cmd.map(quote).join(" ")}\n`,
      { mode: 0o755 },
    );
    // sbatch exports the submitter's environment (declared env vars are part of
    // the key, secrets are read from it); VALLEY_CACHE points the job at our cache.
    const env = { ...process.env, VALLEY_CACHE: root };
    const args = [
      ...sbatchArgs(inst, cfg, { log }),
      `--chdir=${dirname(sub.pipelineFile)}`,
      script,
    ];
    if (opts.signal.aborted) throw fail("interrupted before submission", "aborted");
    const sb = await exec("sbatch", args, env);
    if (sb.missing)
      throw fail(
        "sbatch not found: --executor slurm needs the Slurm client commands (sbatch, squeue, scancel) on PATH",
        "input",
      );
    if (sb.code !== 0) {
      const why = (sb.stderr || sb.stdout).trim();
      // A request Slurm can never satisfy is the pipeline's or config's fault: no retry.
      const bad =
        /invalid|not available|unrecognized|unknown|not permitted|requested node configuration/i.test(
          why,
        );
      throw fail(`sbatch failed: ${why}\n  sbatch ${args.join(" ")}`, bad ? "input" : "error");
    }
    const jobId = sb.stdout.trim().split(";")[0];
    if (!/^\d+(_\d+)?$/.test(jobId)) throw fail(`sbatch printed no job id: ${sb.stdout}`, "error");
    const outFile = log.replace("%j", jobId);
    opts.onProgress?.(0, undefined, `slurm job ${jobId} SUBMITTED`);

    let cancelledAt: number | undefined;
    let shown = "SUBMITTED";
    let unknownSince: number | undefined;
    let errorSince: number | undefined;
    let state = "";
    let reason = "";
    let ran = false;
    const never = new AbortController().signal;
    for (;;) {
      if (opts.signal.aborted && cancelledAt === undefined) {
        cancelledAt = Date.now();
        await exec("scancel", [jobId], env);
      }
      const q = await exec("squeue", ["-h", "-j", jobId, "-t", "all", "-o", "%T|%r"], env);
      const line = q.stdout.trim().split("\n")[0] ?? "";
      if (q.code === 0 && line) {
        [state, reason] = line.split("|");
        if (state === "RUNNING" || state === "COMPLETING") ran = true;
        unknownSince = errorSince = undefined;
      } else if (q.code === 0 || /invalid job id/i.test(q.stderr)) {
        // Gone from the controller (MinJobAge passed): ask accounting, else the job's own result file.
        errorSince = undefined;
        const s = await exec("sacct", ["-n", "-P", "-X", "-j", jobId, "-o", "State"], env);
        const acct =
          s.code === 0 ? ((s.stdout.trim().split("\n")[0] ?? "").split(" ")[0] ?? "") : "";
        if (acct) state = acct;
        else if (existsSync(resultOf(jobId))) state = "ENDED";
        else {
          unknownSince ??= Date.now();
          // A job may take a moment to show up; one unknown for long has vanished.
          if (Date.now() - unknownSince > Math.max(30_000, 5 * pollMs)) state = "VANISHED";
        }
      } else {
        errorSince ??= Date.now();
        if (Date.now() - errorSince > 300_000) {
          await exec("scancel", [jobId], env);
          throw fail(`squeue has failed for 5 minutes: ${q.stderr.trim()}`, "error");
        }
      }
      const done =
        state === "COMPLETED" ||
        state === "ENDED" ||
        state === "VANISHED" ||
        FAILED_STATES.has(state);
      if (!done && state && state !== shown) {
        shown = state;
        const why = reason && reason !== "None" ? ` (${reason})` : "";
        opts.onProgress?.(0, undefined, `slurm job ${jobId} ${state}${why}`);
      }
      // After scancel, wait (briefly) for the job to end, so that its output is cleaned up.
      if (done || (cancelledAt !== undefined && Date.now() - cancelledAt > 30_000)) break;
      await sleep(
        cancelledAt === undefined ? pollMs : 300,
        cancelledAt === undefined ? opts.signal : never,
      );
    }
    // A cancelled job is CANCELLED at once while its processes still clean up:
    // give it a moment to write its result file.
    for (
      let i = 0;
      (ran || existsSync(outFile)) &&
      i < 20 &&
      state !== "COMPLETED" &&
      !existsSync(resultOf(jobId));
      i++
    )
      await sleep(250, never);

    let result: JobResult | undefined;
    try {
      result = JSON.parse(readFileSync(resultOf(jobId), "utf8")) as JobResult;
    } catch {
      // the job never got to write it (cancelled while pending, killed, node lost)
    }
    // The action record is the truth: a job cancelled just after it stored its result succeeded.
    const rec = engine.store.lookupAction(rk.key);
    if (rec) {
      rmSync(script, { force: true });
      rmSync(resultOf(jobId), { force: true });
      return rec;
    }
    if (state === "COMPLETED" || result?.status === "done" || result?.status === "cached") {
      throw fail(
        `slurm job ${jobId} completed but left no result for ${rk.key} in ${root}: ` +
          `the cache must be on a filesystem the compute nodes share (set VALLEY_CACHE)\n` +
          `--- slurm output ${outFile} ---\n${tail(outFile)}`,
        "error",
      );
    }
    // A failed attempt: keep the Slurm output beside the stage's own log so
    // `valley logs` shows both.
    const out = tail(outFile);
    try {
      appendFileSync(failedLog, `\n--- slurm job ${jobId} ${state}: ${outFile} ---\n${out}\n`);
    } catch {
      // the cache is gone or read-only: the message still carries the output
    }
    if (opts.signal.aborted) throw fail(`slurm job ${jobId} cancelled (interrupted)`, "aborted");
    // A job stopped from outside (scancel, pre-emption) reads "aborted" inside; to us it is a failed attempt.
    const inner = result?.kind === "aborted" ? "error" : result?.kind;
    const kind: AttemptFailed["kind"] = state === "TIMEOUT" ? "timeout" : (inner ?? "error");
    const what =
      state === "ENDED"
        ? `slurm job ${jobId} failed`
        : state === "VANISHED"
          ? `slurm job ${jobId} disappeared from squeue without a result (sacct unavailable)`
          : `slurm job ${jobId} ended ${state}${reason && reason !== "None" ? ` (${reason})` : ""}`;
    throw fail(
      `${what}${result?.message ? `: ${result.message}` : ""}\n--- slurm output ${outFile} (last lines) ---\n${out}`,
      kind,
    );
  };
}

/**
 * The job side: runs exactly one attempt of one instance with the local
 * executor, after checking that the key computed here (from the cached
 * upstream results, this node's environment and tools) is the key the
 * submitter holds the lease for. The submitter keeps that lease; the job
 * takes none, since taking it would make the submitter's heartbeat and
 * release act on a lease it no longer owns. Returns the exit code:
 * 0 result stored (or already there), 1 the stage failed, 2 bad input or
 * key mismatch.
 */
export async function runJob(
  engine: Engine,
  pl: Pipeline,
  job: { instance: string; attempt: number; key: string; resultFile?: string; signal: AbortSignal },
): Promise<number> {
  const resultFile = job.resultFile?.replace("%j", process.env.SLURM_JOB_ID ?? `pid${process.pid}`);
  const finish = (code: number, r: JobResult): number => {
    if (resultFile) writeFileAtomic(resultFile, JSON.stringify(r));
    // The Slurm output file is all a user sees of a job: say what happened.
    process.stderr.write(
      `valley job ${job.instance} attempt ${job.attempt} on ${hostname()}: ${r.status}${r.message ? `: ${r.message}` : ""}\n`,
    );
    return code;
  };
  const inst = pl.byId.get(job.instance);
  if (!inst)
    return finish(2, {
      status: "failed",
      kind: "input",
      message: `no instance "${job.instance}" in ${pl.file}`,
    });
  await engine.prepareFingerprints();
  // Upstream results, in pipeline order (dependencies come first).
  const need = new Set<string>();
  const add = (id: string) => {
    if (need.has(id)) return;
    need.add(id);
    for (const d of pl.byId.get(id)?.deps ?? []) add(d);
  };
  for (const d of inst.deps) add(d);
  const results = new Map<string, StoredResult>();
  for (const up of pl.instances) {
    if (!need.has(up.id)) continue;
    const urk = await engine.resolveKey(up, results, { admit: false });
    const rec = urk && engine.lookup(urk.key);
    if (!rec)
      return finish(2, {
        status: "failed",
        kind: "input",
        message: `upstream ${up.id} has no result in ${engine.store.root} on this node: is the cache shared with the submitting host?`,
      });
    results.set(up.id, rec);
  }
  let rk: ResolvedKey | undefined;
  try {
    rk = await engine.resolveKey(inst, results, { admit: true });
  } catch (e) {
    return finish(2, { status: "failed", kind: "input", message: (e as Error).message });
  }
  if (!rk)
    return finish(2, {
      status: "failed",
      kind: "input",
      message: `${inst.id}: an input has no result`,
    });
  if (rk.key !== (job.key as Digest))
    return finish(2, {
      status: "failed",
      kind: "input",
      message:
        `key mismatch for ${inst.id}: the submitter computed ${job.key}, this node computes ${rk.key}. ` +
        `Something keyed differs between the hosts: a declared env variable, a tool binary, ` +
        `the valley version or stage code, or a path input; refusing to store a result under the wrong key`,
    });
  if (engine.lookup(rk.key)) return finish(0, { status: "cached" });
  const opts: AttemptOptions = {
    signal: job.signal,
    timeoutMs: inst.timeoutMs,
    attempt: job.attempt,
    // The devices Slurm's --gres gave this job (its CUDA_VISIBLE_DEVICES).
    gpus: inst.resources.gpu > 0 ? detectGpus().slice(0, inst.resources.gpu) : undefined,
  };
  try {
    await runAttempt(engine, inst, rk, opts);
    return finish(0, { status: "done" });
  } catch (e) {
    const af = e instanceof AttemptFailed ? e : undefined;
    const kind = af?.kind ?? "error";
    return finish(kind === "input" ? 2 : 1, {
      status: "failed",
      kind,
      message: job.signal.aborted
        ? `stopped by ${String(job.signal.reason)}`
        : (e as Error).message,
      logFile: af?.logFile,
    });
  }
}
