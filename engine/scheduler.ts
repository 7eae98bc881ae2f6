import { isComplete, type ActionRecord, type StoredResult } from "../cache/store.js";
import type { ActionKey } from "../cache/digest.js";
import type { LeaseInfo } from "../cache/leases.js";
import { saveMemos } from "../cache/disk.js";
import type { Engine, ResolvedKey } from "./engine.js";
import type { Instance } from "./pipeline/expand.js";
import { ResourcePool } from "./resources.js";
import { JobQueue } from "./job-queue.js";
import { AttemptFailed, runAttempt, type AttemptOptions } from "./executors/local.js";
import { inputAccess, type InstanceId, type Resources } from "./stage-api.js";

export type Outcome =
  | { status: "cached"; key: ActionKey; record: StoredResult; waited: boolean }
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
  const run = new Run(engine, opts);
  await run.start();
  run.saveMemos();
  return run.summary();
}

/**
 * One `runInstances` call. Its steps, in the order an instance meets them:
 * `drain` (resolve the key; a cached result completes at once, the rest
 * queue), `runOne` (admission checks, resources, the key's lease, a result
 * found meanwhile), `attempts` (the executor, with retries and backoff), then
 * `complete` or `fail`, which release dependents or skip them. `settle` records
 * each instance's outcome and is the one place outcome events are emitted.
 */
class Run {
  private readonly selected: Instance[];
  private readonly ids: Set<string>;
  private readonly emit: (e: RunEvent) => void;
  private readonly executor: Executor;
  private readonly pool: ResourcePool;
  private readonly queue: JobQueue;
  private readonly force: Set<string>;
  private readonly results = new Map<string, StoredResult>();
  private readonly outcomes = new Map<string, Outcome>();
  /** Instances reading each instance, and how many of its inputs each still waits for. */
  private readonly dependents = new Map<string, Instance[]>();
  private readonly waitingOn = new Map<string, number>();
  /** Instances whose inputs are all there, waiting for `drain`. */
  private readonly ready: Instance[] = [];
  private readonly started = new Set<string>();
  private stopLaunching = false;
  private inputError = false;
  private draining = false;
  private finish: () => void = () => {};
  private readonly allDone = new Promise<void>((res) => (this.finish = res));

  constructor(
    private readonly engine: Engine,
    private readonly opts: RunOptions,
  ) {
    this.selected = selectInstances(engine.pipeline.instances, opts.only);
    this.ids = new Set(this.selected.map((i) => i.id));
    this.emit = opts.onEvent ?? (() => {});
    this.executor = opts.executor ?? runAttempt;
    this.pool = ResourcePool.detect(
      opts.resources,
      this.selected.some((i) => i.resources.gpu > 0),
    );
    this.queue = new JobQueue(Math.max(1, opts.jobs));
    this.force = new Set(opts.force ?? []);
    for (const inst of this.selected) {
      this.waitingOn.set(inst.id, inst.deps.filter((d) => this.ids.has(d)).length);
      for (const d of inst.deps) {
        if (!this.dependents.has(d)) this.dependents.set(d, []);
        this.dependents.get(d)?.push(inst);
      }
    }
  }

  /** Runs everything selected; resolves when every instance has an outcome. */
  async start(): Promise<void> {
    const onAbort = () => this.abort();
    this.opts.signal.addEventListener("abort", onAbort, { once: true });
    for (const inst of this.selected)
      if ((this.waitingOn.get(inst.id) ?? 0) === 0) this.ready.push(inst);
    if (this.selected.length === 0) this.finish();
    void this.drain();
    await this.allDone;
    await this.queue.onIdle();
    this.opts.signal.removeEventListener("abort", onAbort);
  }

  /**
   * The one place an instance's outcome is recorded, and so the one place its
   * outcome event is emitted: no path to a result can forget to report it.
   * (Events of an attempt in flight — start, progress, waiting, a retry — are
   * emitted where they happen.)
   */
  private settle(id: string, o: Outcome): void {
    if (this.outcomes.has(id)) return;
    this.outcomes.set(id, o);
    if (o.status === "cached") this.emit({ type: "cached", id, waited: o.waited });
    else if (o.status === "executed")
      this.emit({
        type: "done",
        id,
        seconds: o.record.timings.seconds,
        incomplete: o.record.incomplete,
      });
    else if (o.status === "failed")
      this.emit({
        type: "failed",
        id,
        error: o.attempt?.error ?? o.error,
        logFile: o.logFile,
        willRetry: false,
        attempt: o.attempt?.n ?? 1,
      });
    if (this.outcomes.size === this.selected.length) this.finish();
  }

  private skipDescendants(id: string, because: string): void {
    for (const d of this.dependents.get(id) ?? []) {
      if (!this.ids.has(d.id) || this.outcomes.has(d.id)) continue;
      this.settle(d.id, { status: "skipped", because });
      this.skipDescendants(d.id, because);
    }
  }

  private cancel(inst: Instance): void {
    this.settle(inst.id, { status: "cancelled" });
    this.skipDescendants(inst.id, "run stopped");
  }

  /** A result (cached or executed): recorded, and dependents whose inputs are all there become ready. */
  private complete(inst: Instance, o: Outcome & { record: StoredResult }, rk: ResolvedKey): void {
    this.results.set(inst.id, o.record);
    this.engine.remember(inst.id, rk.key);
    this.settle(inst.id, o);
    for (const d of this.dependents.get(inst.id) ?? []) {
      if (!this.ids.has(d.id)) continue;
      const left = (this.waitingOn.get(d.id) ?? 1) - 1;
      this.waitingOn.set(d.id, left);
      if (left === 0) this.ready.push(d);
    }
  }

  private fail(
    inst: Instance,
    error: Error,
    extra: {
      key?: ActionKey;
      input?: boolean;
      logFile?: string;
      attempt?: { error: Error; n: number };
    } = {},
  ): void {
    if (extra.input) this.inputError = true;
    this.settle(inst.id, {
      status: "failed",
      key: extra.key,
      error,
      inputError: !!extra.input,
      logFile: extra.logFile,
      attempt: extra.attempt,
    });
    this.skipDescendants(inst.id, `${inst.id} failed`);
    if (!this.opts.keepGoing) this.stopLaunching = true;
  }

  private get stopped(): boolean {
    return this.stopLaunching || this.opts.signal.aborted;
  }

  /**
   * Takes instances off `ready`: resolves each key (which may hash, and copy
   * in, a path input, awaiting a worker for large files), completes a cached
   * one at once and queues the rest. One drain loop at a time; whoever finds
   * it running leaves the new instances to it.
   */
  private async drain(): Promise<void> {
    if (this.draining) return;
    this.draining = true;
    try {
      while (this.ready.length) {
        const inst = this.ready.shift() as Instance;
        if (this.outcomes.has(inst.id)) continue;
        if (this.stopped) {
          this.cancel(inst);
          continue;
        }
        let rk: ResolvedKey | undefined;
        try {
          rk = await this.engine.resolveKey(inst, this.results, { admit: true });
        } catch (e) {
          this.fail(inst, e as Error, { input: true });
          continue;
        }
        if (!rk) {
          this.fail(inst, new Error(`${inst.id}: an input has no result`));
          continue;
        }
        const rec = this.force.has(inst.stage) ? undefined : this.engine.lookup(rk.key);
        if (rec) {
          this.complete(inst, { status: "cached", key: rk.key, record: rec, waited: false }, rk);
          continue;
        }
        const key = rk;
        this.queue.add(async (free) => {
          this.started.add(inst.id);
          try {
            await this.runOne(inst, key, free);
          } catch (e) {
            this.fail(inst, e as Error);
          }
          void this.drain();
        });
      }
    } finally {
      this.draining = false;
    }
  }

  /** The kind's `admit` checks on the inputs: what they find fails the instance as bad input. */
  private async admissionIssues(inst: Instance, rk: ResolvedKey): Promise<string[]> {
    const admit = this.engine.pipeline.kinds.get(inst.kind)?.impl.admit;
    if (!admit) return [];
    try {
      return await admit({
        instanceId: inst.id,
        params: structuredClone(inst.params),
        inputs: rk.inputs,
        ...inputAccess(inst.kind, rk.inputs),
        tools: rk.tools,
        resources: inst.resources,
      });
    } catch (e) {
      return [(e as Error).message];
    }
  }

  /** A queued instance: admission, resources, the key's lease, then a result found meanwhile or the attempts. */
  private async runOne(inst: Instance, rk: ResolvedKey, freeSlot: () => void): Promise<void> {
    if (this.stopped) return this.cancel(inst);
    const pool = this.pool;
    if (inst.resources.gpu > pool.total.gpu) {
      return this.fail(
        inst,
        new Error(
          `${inst.id} needs ${inst.resources.gpu} GPU(s); this machine has ${pool.total.gpu} (found through VALLEY_GPUS, else CUDA_VISIBLE_DEVICES, else /proc/driver/nvidia/gpus or nvidia-smi -L)`,
        ),
        { input: true },
      );
    }
    const issues = await this.admissionIssues(inst, rk);
    if (issues.length)
      return this.fail(inst, new Error(`${inst.id}: ${issues.join("; ")}`), { input: true });
    const need = pool.clamp(inst.resources);
    const gpus = await pool.acquire(need);
    // The job slot and the resources go back once, when the stage's program
    // is done (its output still being stored) or at the latest here.
    let held = true;
    const letGo = () => {
      if (!held) return;
      held = false;
      pool.release(need, gpus);
      freeSlot();
    };
    try {
      if (this.stopped) return this.cancel(inst);
      const forced = this.force.has(inst.stage);
      const got = await this.engine.leases.acquire(rk.key, {
        signal: this.opts.signal,
        ready: () => !forced && isComplete(this.engine.store.getAction(rk.key)),
        onWait: (holder) => this.emit({ type: "waiting", id: inst.id, holder }),
      });
      if (got === "ready") {
        const rec = this.engine.lookup(rk.key);
        if (rec) {
          return this.complete(
            inst,
            { status: "cached", key: rk.key, record: rec, waited: true },
            rk,
          );
        }
        // The other run's result was invalid: compute it ourselves, in this job slot.
        held = false;
        pool.release(need, gpus);
        return this.runOne(inst, rk, freeSlot);
      }
      try {
        const prior = forced ? undefined : this.engine.lookup(rk.key);
        if (prior) {
          return this.complete(
            inst,
            { status: "cached", key: rk.key, record: prior, waited: true },
            rk,
          );
        }
        const pulled = forced || !this.opts.fetch ? undefined : await this.opts.fetch(rk.key);
        if (pulled) {
          return this.complete(
            inst,
            { status: "cached", key: rk.key, record: pulled, waited: false },
            rk,
          );
        }
        return await this.attempts(inst, rk, gpus, need.cpu, letGo);
      } finally {
        this.engine.leases.release(got);
      }
    } finally {
      letGo();
    }
  }

  /** The attempts of one instance under its lease: retried with backoff unless the failure says a retry cannot help. */
  private async attempts(
    inst: Instance,
    rk: ResolvedKey,
    gpus: string[],
    cpus: number,
    letGo: () => void,
  ): Promise<void> {
    const opts = this.opts;
    for (let attempt = 1; ; attempt++) {
      this.emit({ type: "start", id: inst.id, attempt });
      try {
        const rec = await this.executor(this.engine, inst, rk, {
          signal: opts.signal,
          timeoutMs: inst.timeoutMs,
          attempt,
          gpus,
          cpus,
          onProgress: (done, total, note) =>
            this.emit({ type: "progress", id: inst.id, done, total, note }),
          // Only the last attempt gives its slot back early: a retry must still hold one.
          onStageDone: attempt > inst.retries ? letGo : undefined,
        });
        return this.complete(inst, { status: "executed", key: rk.key, record: rec }, rk);
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
          this.emit({
            type: "failed",
            id: inst.id,
            error: e as Error,
            logFile: af?.logFile,
            willRetry: retry,
            attempt,
          });
        if (opts.signal.aborted) return this.cancel(inst);
        if (!retry) {
          const n = attempt > 1 ? ` (after ${attempt} attempts)` : "";
          const err = new Error(`${inst.id} failed${n}: ${(e as Error).message}`);
          return this.fail(inst, err, {
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
  }

  /** Stops launching; everything not started ends cancelled, running attempts are aborted through the signal and settle when they return. */
  private abort(): void {
    this.stopLaunching = true;
    this.queue.clear();
    for (const inst of this.selected)
      if (!this.outcomes.has(inst.id) && !this.started.has(inst.id))
        this.settle(inst.id, { status: "cancelled" });
  }

  /** The stat cache and the key history: memos (re-hashing, plan --why), so on a full disk the run's results still stand. */
  saveMemos(): void {
    const store = this.engine.store;
    saveMemos([
      () => store.stat.save(),
      () => this.engine.saveHistory(),
      () => store.saveResults(),
    ]);
  }

  summary(): RunSummary {
    const count = (s: Outcome["status"]) =>
      [...this.outcomes.values()].filter((o) => o.status === s).length;
    return {
      instances: this.selected.length,
      executed: count("executed"),
      cached: count("cached"),
      failed: count("failed"),
      skipped: count("skipped"),
      cancelled: count("cancelled"),
      outcomes: this.outcomes,
      inputError: this.inputError,
    };
  }
}
