import {
  mkdirSync,
  existsSync,
  renameSync,
  rmSync,
  readFileSync,
  openSync,
  writeSync,
  closeSync,
  readdirSync,
} from "node:fs";
import { join } from "node:path";
import { randomBytes } from "node:crypto";
import type { Logger } from "pino";
import { digestHex } from "../../cache/digest.js";
import { Store, type ActionRecord } from "../../cache/store.js";
import type { Engine, ResolvedKey } from "../engine.js";
import type { Instance } from "../pipeline/expand.js";
import { InputError, type StageContext } from "../stage-api.js";
import { ENGINE_VERSION } from "../engine.js";

/** Why an attempt ended without a result. `input` failures are not retried and exit 2. */
export class AttemptFailed extends Error {
  override name = "AttemptFailed";
  constructor(
    message: string,
    readonly error: unknown,
    readonly kind: "input" | "timeout" | "aborted" | "error",
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
  onProgress?: (done: number, total?: number, note?: string) => void;
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
  const attemptName = `${hex}-${process.pid}-${randomBytes(4).toString("hex")}`;
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
    out,
    scratch,
    log,
    progress: (done, total, note) => opts.onProgress?.(done, total, note),
    signal: ac.signal,
    tools: rk.tools,
    env,
    resources: inst.resources,
    requestCache: join(store.root, "requests.sqlite"),
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
      result = await Promise.race([kind.impl.run(ctx), aborted]);
      if (ac.signal.aborted) throw new Error(String(ac.signal.reason));
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
      const why = timedOut
        ? "timeout"
        : opts.signal.aborted
          ? "aborted"
          : e instanceof InputError
            ? "input"
            : "error";
      log.error({ err: e }, `failed: ${(e as Error).message}`);
      dest.close();
      const kept = engine.failedLogPath(rk.key);
      try {
        renameSync(logFile, kept);
      } catch {
        // no log written
      }
      store.discard(out);
      throw new AttemptFailed((e as Error).message, e, why, kept);
    }
    const end = new Date();
    log.info({ seconds: (end.getTime() - start.getTime()) / 1000 }, "done");
    dest.close();
    const admitted = store.admitTree(out);
    const logDigest = existsSync(logFile) ? store.putBytes(readFileSync(logFile)) : undefined;
    const rec: ActionRecord = {
      v: 1,
      key: rk.key,
      fields: rk.fields as unknown as Record<string, unknown>,
      instance: inst.id,
      kind: inst.kind,
      outputs: { tree: admitted.tree, files: admitted.files, entries: admitted.manifest.entries },
      metrics: (result && result.metrics) ?? {},
      log: logDigest,
      ...(result && result.incomplete ? { incomplete: result.incomplete } : {}),
      timings: {
        start: start.toISOString(),
        end: end.toISOString(),
        seconds: (end.getTime() - start.getTime()) / 1000,
        attempts: opts.attempt,
      },
      host: Store.host(),
      engine: ENGINE_VERSION,
    };
    store.putAction(rec);
    rmSync(logFile, { force: true });
    // An empty scratch folder is set aside for gc (cheap); a used one (checkpoints) is removed now.
    if (readdirSync(scratch).length === 0) store.discard(scratch);
    else store.removeTree(scratch);
    if (opts.attempt > 1) rmSync(engine.failedLogPath(rk.key), { force: true });
    return rec;
  } finally {
    if (timer) clearTimeout(timer);
    opts.signal.removeEventListener("abort", onOuter);
  }
}
