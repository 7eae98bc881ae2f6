import {
  unlinkSync,
  mkdirSync,
  renameSync,
  rmSync,
  openSync,
  writeSync,
  closeSync,
  readdirSync,
} from "node:fs";
import { join } from "node:path";
import { uniqueSuffix } from "../../cache/atomic.js";
import type { Logger } from "pino";
import { digestHex } from "../../cache/digest.js";
import { Store, type ActionRecord } from "../../cache/store.js";
import type { Engine, ResolvedKey } from "../engine.js";
import type { Instance } from "../pipeline/expand.js";
import { BadStageInput, inputAccess, type StageContext } from "../stage-api.js";
import { ENGINE_VERSION } from "../engine.js";
import { DiskFull, bytesUnder, freeBytes, human, isDiskFull } from "../../cache/disk.js";

/** A scratch folder under this size is moved to trash/ rather than deleted (see runAttempt). */
const SMALL_SCRATCH = 1 << 20;

/** Less than 1 MiB (or 0.1 %) left: a stage that failed there most likely failed for it. */
function nearlyFull(path: string): boolean {
  const s = freeBytes(path);
  return !!s && s.free < Math.max(1 << 20, s.total / 1000);
}
import { placement } from "../process.js";

/** Why an attempt ended without a result. `input` failures are not retried and exit 2. */
export class AttemptFailed extends Error {
  override name = "AttemptFailed";
  constructor(
    message: string,
    readonly error: unknown,
    /** "disk": the cache's filesystem is full; a retry would fail the same way. */
    readonly kind: "input" | "timeout" | "aborted" | "error" | "disk",
    readonly logFile: string,
  ) {
    super(message);
  }
}

/** A pino destination that writes synchronously to one open file and blanks secret values. */
function scrubbingDestination(file: string, secrets: string[]) {
  const values = secrets.filter((s) => s.length >= 4);
  const fd = openSync(file, "a");
  return {
    write(chunk: string) {
      let s = chunk;
      for (const v of values) s = s.split(v).join("***");
      writeSync(fd, s);
    },
    close() {
      closeSync(fd);
    },
  };
}

export interface AttemptOptions {
  signal: AbortSignal;
  timeoutMs?: number;
  attempt: number;
  /** GPU device ids reserved for this attempt (given to its programs as CUDA_VISIBLE_DEVICES). */
  gpus?: string[];
  /**
   * CPUs reserved for this attempt: the instance's request, clamped to the
   * machine (a larger one runs alone, on all of it). The stage sees them in
   * ctx.resources.cpu, so that it starts no more threads than there are cores.
   */
  cpus?: number;
  onProgress?: (done: number, total?: number, note?: string) => void;
  /**
   * Called once the stage's run() has resolved, before its output is stored:
   * the scheduler may then give its job slot and resources to the next
   * instance while this one's bookkeeping finishes.
   */
  onStageDone?: () => void;
}

/**
 * Runs one attempt of one instance on this machine: a fresh output folder,
 * the stage's run(), then admission of the output and the log into the store
 * and the action record. Nothing enters the store unless run() resolved.
 */
export async function runAttempt(
  engine: Engine,
  inst: Instance,
  rk: ResolvedKey,
  opts: AttemptOptions,
): Promise<ActionRecord> {
  const store = engine.store;
  const kind = engine.pipeline.kinds.get(inst.kind);
  if (!kind) throw new Error(`kind ${inst.kind} not loaded`);
  const hex = digestHex(rk.key);
  // The output folder is renamed into the store on success, so it is created
  // directly under work/ (no wrapper folder to remove: see Store.discard).
  const attemptName = `${hex}-${uniqueSuffix()}`;
  const out = join(store.dir("work"), attemptName);
  const logFile = join(store.dir("work"), attemptName + ".log");
  const scratch = join(store.dir("scratch"), hex);
  mkdirSync(out);
  mkdirSync(scratch, { recursive: true });

  // pino is loaded on first execution only: a no-op run never needs it.
  const { pino } = await import("pino");
  const secretValues = inst.secrets.map((n) => process.env[n] ?? "").filter(Boolean);
  const dest = scrubbingDestination(logFile, secretValues);
  const log: Logger = pino(
    { base: { instance: inst.id }, level: process.env.VALLEY_LOG_LEVEL ?? "info" },
    dest,
  );
  const env = { ...rk.env };
  for (const n of inst.secrets) if (process.env[n] !== undefined) env[n] = process.env[n] as string;

  const ac = new AbortController();
  // Reasons are strings, so a stage that throws `signal.reason` still says why.
  const onOuter = () => {
    const r: unknown = opts.signal.reason;
    ac.abort(
      `interrupted${r === undefined ? "" : ` (${r instanceof Error ? r.message : String(r)})`}`,
    );
  };
  if (opts.signal.aborted) onOuter();
  opts.signal.addEventListener("abort", onOuter, { once: true });
  let timedOut = false;
  const timer =
    opts.timeoutMs !== undefined
      ? setTimeout(() => {
          timedOut = true;
          ac.abort(`timed out after ${opts.timeoutMs} ms`);
        }, opts.timeoutMs)
      : undefined;

  const ctx: StageContext<Record<string, unknown>> = {
    instanceId: inst.id,
    coords: inst.coords,
    params: structuredClone(inst.params),
    inputs: rk.inputs,
    ...inputAccess(inst.kind, rk.inputs),
    out,
    scratch,
    log,
    progress: (done, total, note) => opts.onProgress?.(done, total, note),
    signal: ac.signal,
    tools: rk.tools,
    env,
    resources: opts.cpus === undefined ? inst.resources : { ...inst.resources, cpu: opts.cpus },
    requestCache: store.dir("requests.sqlite"),
  };
  const start = new Date();
  log.info({ attempt: opts.attempt, key: rk.key }, `start ${inst.id}`);
  try {
    let result: Awaited<ReturnType<typeof kind.impl.run>>;
    try {
      const aborted = new Promise<never>((_, rej) =>
        ac.signal.addEventListener(
          "abort",
          () => setTimeout(() => rej(new Error(String(ac.signal.reason))), 10_000).unref(),
          {
            once: true,
          },
        ),
      );
      // A stage gets 10 s after abort to clean up and return; then we stop waiting.
      const gpus = opts.gpus ?? [];
      result = await Promise.race([placement.run({ gpus }, () => kind.impl.run(ctx)), aborted]);
      if (ac.signal.aborted) throw new Error(String(ac.signal.reason));
      opts.onStageDone?.();
    } catch (thrown) {
      // A stage may throw a signal's reason as it is: a string, or nothing.
      const e =
        thrown instanceof Error && thrown.message
          ? thrown
          : new Error(
              ac.signal.aborted
                ? String(ac.signal.reason)
                : String((thrown as Error)?.message || thrown || "failed without a reason"),
            );
      // A full disk shows as ENOSPC (a TypeScript stage) or as a tool's
      // "No space left on device" (a shell stage), or as a full filesystem.
      const written = bytesUnder(out);
      const full = !opts.signal.aborted && (isDiskFull(e) || nearlyFull(out));
      const why = timedOut
        ? "timeout"
        : opts.signal.aborted
          ? "aborted"
          : e instanceof BadStageInput
            ? "input"
            : full
              ? "disk"
              : "error";
      try {
        log.error({ err: e }, `failed: ${(e as Error).message}`);
      } catch {
        // the log cannot be written either (full disk)
      }
      dest.close();
      const kept = engine.failedLogPath(rk.key);
      try {
        renameSync(logFile, kept);
      } catch {
        // no log written
      }
      // Measured before the partial output goes, so the message shows the disk as the stage saw it.
      const diskFull = full
        ? new DiskFull(out, {
            doing: written ? "for the stage's output" : "when the stage failed",
            needed: written || undefined,
            note: written ? `the partial output, ${human(written)}, was deleted` : undefined,
          })
        : undefined;
      // Deleted, not moved to trash/: on a full filesystem the trash would keep it full.
      store.removeTree(out);
      const message = diskFull
        ? `${(e as Error).message}\n  ${diskFull.message}`
        : (e as Error).message;
      throw new AttemptFailed(message, e, why, kept);
    }
    const end = new Date();
    log.info({ seconds: (end.getTime() - start.getTime()) / 1000 }, "done");
    dest.close();
    let admitted: Awaited<ReturnType<Store["admitTree"]>>;
    let logDigest: Awaited<ReturnType<Store["adoptFile"]>>;
    try {
      admitted = await store.admitTree(out);
      logDigest = await store.adoptFile(logFile);
    } catch (e) {
      if (!isDiskFull(e)) throw e;
      // What was linked into objects/ is unreferenced: gc collects it.
      const written = bytesUnder(out);
      store.removeTree(out);
      rmSync(logFile, { force: true });
      const full = new DiskFull((e as NodeJS.ErrnoException).path ?? out, {
        doing: "storing the stage's output",
        needed: written,
        cause: e,
      });
      throw new AttemptFailed(full.message, full, "disk", logFile);
    }
    const rec: ActionRecord = {
      v: 1,
      key: rk.key,
      fields: rk.fields as unknown as Record<string, unknown>,
      instance: inst.id,
      kind: inst.kind,
      outputs: { tree: admitted.tree, files: admitted.files, entries: admitted.manifest.entries },
      metrics: (result && result.metrics) ?? {},
      ...(result && result.measured?.length ? { measured: result.measured } : {}),
      log: logDigest,
      ...(result && result.incomplete ? { incomplete: result.incomplete } : {}),
      timings: {
        start: start.toISOString(),
        end: end.toISOString(),
        seconds: (end.getTime() - start.getTime()) / 1000,
        attempts: opts.attempt,
      },
      host: Store.host(),
      ...(opts.gpus?.length ? { gpus: opts.gpus } : {}),
      engine: ENGINE_VERSION,
    };
    store.putAction(rec);
    // unlink, not rmSync: rmSync stats twice first, on every job.
    try {
      unlinkSync(logFile);
    } catch {
      // no log was written
    }
    // A small scratch folder (empty, or links to inputs) is set aside for gc:
    // a rename, where unlinking a thousand links cost seconds on this disk. A
    // large one (checkpoints) is removed now, so it does not fill the disk until gc.
    if (readdirSync(scratch).length === 0 || bytesUnder(scratch) < SMALL_SCRATCH)
      store.discard(scratch);
    else store.removeTree(scratch);
    if (opts.attempt > 1) rmSync(engine.failedLogPath(rk.key), { force: true });
    return rec;
  } finally {
    if (timer) clearTimeout(timer);
    opts.signal.removeEventListener("abort", onOuter);
  }
}
