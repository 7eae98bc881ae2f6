import PQueue from "p-queue";
import { isComplete, type ActionRecord } from "../cache/store.js";
import type { ActionKey } from "../cache/digest.js";
import type { LeaseInfo } from "../cache/leases.js";
import { isDiskFull } from "../cache/disk.js";
import type { Engine, ResolvedKey } from "./engine.js";
import type { Instance } from "./pipeline/expand.js";
import { ResourcePool } from "./resources.js";
import { AttemptFailed, runAttempt, type AttemptOptions } from "./executors/local.js";
import { inputAccess, type InstanceId, type Resources } from "./stage-api.js";

export type Outcome =
  | { status: "cached"; key: ActionKey; record: ActionRecord; waited: boolean }
  | { status: "executed"; key: ActionKey; record: ActionRecord }
  | {
      status: "failed";
      key?: ActionKey;
      error: Error;
      inputError: boolean;
      logFile?: string;
      /** The last attempt's own error and number, when an attempt ran. */
      attempt?: { error: Error; n: number };
    }
  | { status: "skipped"; because: string }
  | { status: "cancelled" };

export type RunEvent =
  | { type: "start"; id: string; attempt: number }
  | { type: "cached"; id: string; waited: boolean }
  | { type: "done"; id: string; seconds: number; incomplete?: string }
  | {
      type: "failed";
      id: string;
      error: Error;
      logFile?: string;
      willRetry: boolean;
      attempt: number;
    }
  | { type: "waiting"; id: string; holder: LeaseInfo }
  | { type: "progress"; id: string; done: number; total?: number; note?: string };

/** Runs one attempt somewhere (this machine, a Slurm node). */
export type Executor = (
  engine: Engine,
  inst: Instance,
  rk: ResolvedKey,
  opts: AttemptOptions,
) => Promise<ActionRecord>;

export interface RunOptions {
  jobs: number;
  keepGoing: boolean;
  /** Run only these stages (and what they need). */
  only?: string[];
  /** Re-run these stages even if cached. */
  force?: string[];
  signal: AbortSignal;
  resources?: Partial<Resources>;
  onEvent?: (e: RunEvent) => void;
  executor?: Executor;
  /** First retry waits this long, doubling each time (tests make it small). */
  backoffMs?: number;
  /**
   * `run --pull`: asked, under the key's lease, for a key that has no local
   * result; a record it returns (already admitted to the store) counts as cached.
   */
  fetch?: (key: ActionKey) => Promise<ActionRecord | undefined>;
}

export interface RunSummary {
  instances: number;
  executed: number;
  cached: number;
  failed: number;
  skipped: number;
  cancelled: number;
  outcomes: Map<string, Outcome>;
  /** True if a failure was bad input (exit 2 rather than 1). */
  inputError: boolean;
}

/** The instances `--only` selects, with everything they need. */
export function selectInstances(instances: Instance[], only?: string[]): Instance[] {
  if (!only?.length) return instances;
  const byId = new Map<string, Instance>(instances.map((i) => [i.id, i]));
  const keep = new Set<string>();
  const add = (id: InstanceId) => {
    if (keep.has(id)) return;
    keep.add(id);
    for (const d of byId.get(id)?.deps ?? []) add(d);
  };
  for (const i of instances) if (only.includes(i.stage)) add(i.id);
  return instances.filter((i) => keep.has(i.id));
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((res) => {
    const t = setTimeout(res, ms);
    signal.addEventListener(
      "abort",
      () => {
        clearTimeout(t);
        res();
      },
      { once: true },
    );
  });
}

/**
 * Runs a pipeline's instances in dependency order: an instance whose key has
 * a valid result is cached at once; others queue for a job slot and their
 * resources, take the key's lease (or wait for another run's result), and run
 * with retries and a time-out. A failure stops new launches unless
 * keepGoing; an abort stops launches and aborts running attempts.
 */
export async function runInstances(engine: Engine, opts: RunOptions): Promise<RunSummary> {
  await engine.prepareFingerprints();
  const selected = selectInstances(engine.pipeline.instances, opts.only);
  const ids = new Set(selected.map((i) => i.id));
  const emit = opts.onEvent ?? (() => {});
  const executor = opts.executor ?? runAttempt;
  const pool = ResourcePool.detect(
    opts.resources,
    selected.some((i) => i.resources.gpu > 0),
  );
  const queue = new PQueue({ concurrency: Math.max(1, opts.jobs) });
  const results = new Map<string, ActionRecord>();
  const outcomes = new Map<string, Outcome>();
  const dependents = new Map<string, Instance[]>();
  const waitingOn = new Map<string, number>();
  for (const inst of selected) {
    waitingOn.set(inst.id, inst.deps.filter((d) => ids.has(d)).length);
    for (const d of inst.deps) {
      if (!dependents.has(d)) dependents.set(d, []);
      dependents.get(d)?.push(inst);
    }
  }
  const force = new Set(opts.force ?? []);
  let stopLaunching = false;
  let inputError = false;
  let finish: () => void = () => {};
  const allDone = new Promise<void>((res) => (finish = res));
  // The one place an instance's outcome is recorded, and so the one place
  // its outcome event is emitted: no path to a result can forget to report it.
  // (Events of an attempt in flight — start, progress, waiting, a retry — are
  // emitted where they happen.)
  const settle = (id: string, o: Outcome) => {
    if (outcomes.has(id)) return;
    outcomes.set(id, o);
    if (o.status === "cached") emit({ type: "cached", id, waited: o.waited });
    else if (o.status === "executed")
      emit({
        type: "done",
        id,
        seconds: o.record.timings.seconds,
        incomplete: o.record.incomplete,
      });
    else if (o.status === "failed")
      emit({
        type: "failed",
        id,
        error: o.attempt?.error ?? o.error,
        logFile: o.logFile,
        willRetry: false,
        attempt: o.attempt?.n ?? 1,
      });
    if (outcomes.size === selected.length) finish();
  };
  const ready: Instance[] = [];
  const started = new Set<string>();

  const skipDescendants = (id: string, because: string) => {
    for (const d of dependents.get(id) ?? []) {
      if (!ids.has(d.id) || outcomes.has(d.id)) continue;
      settle(d.id, { status: "skipped", because });
      skipDescendants(d.id, because);
    }
  };
  const cancel = (inst: Instance) => {
    settle(inst.id, { status: "cancelled" });
    skipDescendants(inst.id, "run stopped");
  };
  const complete = (inst: Instance, o: Outcome & { record: ActionRecord }, rk: ResolvedKey) => {
    results.set(inst.id, o.record);
    engine.remember(inst.id, rk.key);
    settle(inst.id, o);
    for (const d of dependents.get(inst.id) ?? []) {
      if (!ids.has(d.id)) continue;
      const left = (waitingOn.get(d.id) ?? 1) - 1;
      waitingOn.set(d.id, left);
      if (left === 0) ready.push(d);
    }
  };
  const fail = (
    inst: Instance,
    error: Error,
    extra: {
      key?: ActionKey;
      input?: boolean;
      logFile?: string;
      attempt?: { error: Error; n: number };
    } = {},
  ) => {
    if (extra.input) inputError = true;
    settle(inst.id, {
      status: "failed",
      key: extra.key,
      error,
      inputError: !!extra.input,
      logFile: extra.logFile,
      attempt: extra.attempt,
    });
    skipDescendants(inst.id, `${inst.id} failed`);
    if (!opts.keepGoing) stopLaunching = true;
  };

  const runOne = async (inst: Instance, rk: ResolvedKey): Promise<void> => {
    if (stopLaunching || opts.signal.aborted) return cancel(inst);
    if (inst.resources.gpu > pool.total.gpu) {
      return fail(
        inst,
        new Error(
          `${inst.id} needs ${inst.resources.gpu} GPU(s); this machine has ${pool.total.gpu} (found through VALLEY_GPUS, else CUDA_VISIBLE_DEVICES, else /proc/driver/nvidia/gpus or nvidia-smi -L)`,
        ),
        { input: true },
      );
    }
    const admit = engine.pipeline.kinds.get(inst.kind)?.impl.admit;
    if (admit) {
      let issues: string[];
      try {
        issues = await admit({
          instanceId: inst.id,
          params: structuredClone(inst.params),
          inputs: rk.inputs,
          ...inputAccess(inst.kind, rk.inputs),
          tools: rk.tools,
          resources: inst.resources,
        });
      } catch (e) {
        issues = [(e as Error).message];
      }
      if (issues.length)
        return fail(inst, new Error(`${inst.id}: ${issues.join("; ")}`), { input: true });
    }
    const need = pool.clamp(inst.resources);
    const gpus = await pool.acquire(need);
    try {
      if (stopLaunching || opts.signal.aborted) return cancel(inst);
      const forced = force.has(inst.stage);
      const got = await engine.leases.acquire(rk.key, {
        signal: opts.signal,
        ready: () => !forced && isComplete(engine.store.getAction(rk.key)),
        onWait: (holder) => emit({ type: "waiting", id: inst.id, holder }),
      });
      if (got === "ready") {
        const rec = engine.lookup(rk.key);
        if (rec) {
          return complete(inst, { status: "cached", key: rk.key, record: rec, waited: true }, rk);
        }
        return runOne(inst, rk); // the other run's result was invalid: compute it ourselves
      }
      try {
        const prior = forced ? undefined : engine.lookup(rk.key);
        if (prior) {
          return complete(inst, { status: "cached", key: rk.key, record: prior, waited: true }, rk);
        }
        const pulled = forced || !opts.fetch ? undefined : await opts.fetch(rk.key);
        if (pulled) {
          return complete(
            inst,
            { status: "cached", key: rk.key, record: pulled, waited: false },
            rk,
          );
        }
        for (let attempt = 1; ; attempt++) {
          emit({ type: "start", id: inst.id, attempt });
          try {
            const rec = await executor(engine, inst, rk, {
              signal: opts.signal,
              timeoutMs: inst.timeoutMs,
              attempt,
              gpus,
              onProgress: (done, total, note) =>
                emit({ type: "progress", id: inst.id, done, total, note }),
            });
            return complete(inst, { status: "executed", key: rk.key, record: rec }, rk);
          } catch (e) {
            const af = e instanceof AttemptFailed ? e : undefined;
            const retry =
              attempt <= inst.retries &&
              af?.kind !== "input" &&
              af?.kind !== "aborted" &&
              af?.kind !== "disk" &&
              !opts.signal.aborted;
            // An attempt that will be retried, or one stopped by the abort
            // (whose instance ends cancelled), is reported here; a final
            // failure is reported by settle().
            if (retry || opts.signal.aborted)
              emit({
                type: "failed",
                id: inst.id,
                error: e as Error,
                logFile: af?.logFile,
                willRetry: retry,
                attempt,
              });
            if (opts.signal.aborted) return cancel(inst);
            if (!retry) {
              const n = attempt > 1 ? ` (after ${attempt} attempts)` : "";
              const err = new Error(`${inst.id} failed${n}: ${(e as Error).message}`);
              return fail(inst, err, {
                key: rk.key,
                input: af?.kind === "input",
                logFile: af?.logFile,
                attempt: { error: e as Error, n: attempt },
              });
            }
            // Exponential backoff with jitter, capped at a minute.
            const base = opts.backoffMs ?? 1000;
            await sleep(
              Math.min(60_000, base * 2 ** (attempt - 1)) * (0.5 + Math.random()),
              opts.signal,
            );
          }
        }
      } finally {
        engine.leases.release(got);
      }
    } finally {
      pool.release(need, gpus);
    }
  };

  // Resolving a key may hash (and copy in) a path input, which awaits a
  // worker for large files: one drain loop at a time takes instances off
  // `ready`, and whoever finds it running leaves the new ones to it.
  let draining = false;
  const drain = async (): Promise<void> => {
    if (draining) return;
    draining = true;
    try {
      while (ready.length) {
        const inst = ready.shift() as Instance;
        if (outcomes.has(inst.id)) continue;
        if (stopLaunching || opts.signal.aborted) {
          cancel(inst);
          continue;
        }
        let rk: ResolvedKey | undefined;
        try {
          rk = await engine.resolveKey(inst, results, { admit: true });
        } catch (e) {
          fail(inst, e as Error, { input: true });
          continue;
        }
        if (!rk) {
          fail(inst, new Error(`${inst.id}: an input has no result`));
          continue;
        }
        const rec = force.has(inst.stage) ? undefined : engine.lookup(rk.key);
        if (rec) {
          complete(inst, { status: "cached", key: rk.key, record: rec, waited: false }, rk);
          continue;
        }
        const key = rk;
        void queue.add(async () => {
          started.add(inst.id);
          try {
            await runOne(inst, key);
          } catch (e) {
            fail(inst, e as Error);
          }
          void drain();
        });
      }
    } finally {
      draining = false;
    }
  };

  const onAbort = () => {
    stopLaunching = true;
    queue.clear();
    // Everything not started ends as cancelled; running attempts are aborted
    // through the same signal and settle when they return.
    for (const inst of selected)
      if (!outcomes.has(inst.id) && !started.has(inst.id)) settle(inst.id, { status: "cancelled" });
  };
  opts.signal.addEventListener("abort", onAbort, { once: true });

  for (const inst of selected) if ((waitingOn.get(inst.id) ?? 0) === 0) ready.push(inst);
  if (selected.length === 0) finish();
  void drain();
  await allDone;
  await queue.onIdle();
  opts.signal.removeEventListener("abort", onAbort);
  // Both are memos (re-hashing, plan --why): on a full disk the run's results still stand.
  for (const save of [() => engine.store.stat.save(), () => engine.saveHistory()]) {
    try {
      save();
    } catch (e) {
      if (!isDiskFull(e)) throw e;
    }
  }

  const count = (s: Outcome["status"]) =>
    [...outcomes.values()].filter((o) => o.status === s).length;
  return {
    instances: selected.length,
    executed: count("executed"),
    cached: count("cached"),
    failed: count("failed"),
    skipped: count("skipped"),
    cancelled: count("cancelled"),
    outcomes,
    inputError,
  };
}
