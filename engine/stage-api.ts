/**
 * The whole contract between the engine and a stage kind. A stage kind is a
 * folder `stages/<kind>/` holding `index.ts` (default export: a StageKind) and
 * `schema.json` (the JSON Schema of its `with:` params). The engine discovers
 * kinds by folder, validates params against the schema, builds the key, and
 * calls `run`. A stage never sees the store: it reads input folders (read-only)
 * and writes into `ctx.out`, which the engine admits only if `run` resolves.
 *
 * Keep module top-levels light: the engine imports only the kinds a pipeline
 * uses, but a no-op run must stay fast, so import heavy libraries (e.g.
 * node-llama-cpp) inside `run`.
 */
import type { Logger } from "pino";
import type { Digest } from "../cache/digest.js";

export type Scalar = string | number | boolean;
/**
 * An instance's id: its stage name, then its matrix coordinates, e.g.
 * `tune@n=1000,subset=easy` (made in engine/pipeline/expand.ts only). A
 * stage name or a free string is not one; look an id typed by a user up in
 * the pipeline's byId.
 */
export type InstanceId = string & { readonly __brand: "InstanceId" };
/** Matrix coordinates of an instance, e.g. {n: 1000, subset: "easy"}. */
export type Coords = Record<string, Scalar>;

export interface Resources {
  /** CPU cores the instance occupies while running. */
  cpu: number;
  /** GPUs the instance occupies. */
  gpu: number;
  /** Memory in MiB. */
  memory: number;
}

/** One upstream artifact as a stage sees it. */
export interface InputArtifact {
  /** Instance id of the producer, e.g. `tune@n=1000`. */
  id: InstanceId;
  coords: Coords;
  /** Digest of the producer's output tree. */
  digest: Digest;
  /** A read-only folder holding the output tree. */
  path: string;
}

/** `x` or `x[k=v]` give one artifact; `x[*]` gives a list, in instance-id order. */
export type StageInput = InputArtifact | InputArtifact[];

/**
 * How every stage reads its inputs (on StageContext and AdmitContext), so
 * that all kinds agree on what a reference may be:
 * - `input(name)`: one artifact: `x`, `x[k=v]`, or a list of exactly one
 *   (`x[*]` over a stage with one instance);
 * - `inputList(name)`: a list: `x[*]`, or one artifact as a list of one.
 * A missing input, or a list of another length where one artifact is needed,
 * is BadStageInput (exit 2, not retried). With `{ optional: true }` a missing
 * input is undefined (`input`) or an empty list (`inputList`).
 */
export interface InputAccess {
  input(name: string): InputArtifact;
  input(name: string, opts: { optional: true }): InputArtifact | undefined;
  inputList(name: string, opts?: { optional?: boolean }): InputArtifact[];
}

/** The InputAccess over one instance's inputs; `kind` names the stage in messages. */
export function inputAccess(kind: string, inputs: Record<string, StageInput>): InputAccess {
  const list = (name: string, optional = false): InputArtifact[] | undefined => {
    const v = inputs[name];
    if (v === undefined) {
      if (optional) return undefined;
      throw new BadStageInput(`${kind} needs an input \`${name}\``);
    }
    return Array.isArray(v) ? v : [v];
  };
  function input(name: string): InputArtifact;
  function input(name: string, opts: { optional: true }): InputArtifact | undefined;
  function input(name: string, opts?: { optional: true }): InputArtifact | undefined {
    const l = list(name, opts?.optional);
    if (l === undefined) return undefined;
    if (l.length !== 1)
      throw new BadStageInput(
        `${kind}'s input \`${name}\` must be one artifact, got a list of ${l.length}`,
      );
    return l[0];
  }
  return {
    input,
    inputList: (name, opts) => list(name, opts?.optional) ?? [],
  };
}

export interface ToolInfo {
  /** Folder with the tool's binaries (e.g. llama.cpp's bin/). */
  bin: string;
  /** Folder with shared libraries, if separate. */
  lib?: string;
  digest: Digest;
}

export interface StageContext<P> extends InputAccess {
  instanceId: InstanceId;
  coords: Coords;
  /** Params after templates and schema defaults. */
  params: P;
  /** The inputs as resolved; read them with `input` / `inputList`. */
  inputs: Record<string, StageInput>;
  /** An empty folder; what is here when `run` resolves becomes the output. */
  out: string;
  /**
   * A folder kept across attempts and runs for the same key (checkpoints, a
   * resumable request log); removed once the output is admitted.
   */
  scratch: string;
  log: Logger;
  /** Report progress; shown by the CLI. */
  progress(done: number, total?: number, note?: string): void;
  /** Aborted on Ctrl-C or time-out: kill children and return promptly. */
  signal: AbortSignal;
  /** Tools the kind declared, resolved (their digests are in the key). */
  tools: Record<string, ToolInfo>;
  /** The declared environment variables (and secrets) with their values. */
  env: Record<string, string>;
  resources: Resources;
  /**
   * A SQLite file shared by every run on this cache, for stages that cache
   * each model request (teacher traces, student answers): an interrupted
   * stage resumes without re-sending answered requests, and a larger N sends
   * only the new ones. Not part of any key.
   */
  requestCache?: string;
}

/**
 * What `admit` sees: the instance once its inputs exist, before it queues for
 * resources (and before any executor, local or Slurm, is involved).
 */
export interface AdmitContext<P> extends InputAccess {
  instanceId: InstanceId;
  params: P;
  inputs: Record<string, StageInput>;
  tools: Record<string, ToolInfo>;
  /** What the instance will be given (its `resources:` or the kind's declaration). */
  resources: Resources;
}

export interface StageResult {
  /** Headline numbers, stored in the action record and the lockfile. */
  metrics?: Record<string, unknown>;
  /**
   * Set when the output is usable but short of what the params ask (requests
   * that failed within a failure budget): says what is missing. The result is
   * admitted and read downstream, but it is not a cache hit for the next run,
   * which runs the stage again to fill the gap.
   */
  incomplete?: string;
  /**
   * Throughput the stage measured (tokens/s, with the model shape and device),
   * kept in the action record so later estimates use the closest one.
   */
  measured?: Measurement[];
}

/** What a stage declares beside `with:`, for checks that need it. */
export interface StageDeclarations {
  /** Names listed under `env:` (their values are keyed). */
  env: readonly string[];
  /** Names listed under `secrets:` (passed to the stage, never stored). */
  secrets: readonly string[];
}

export interface ParamIssue {
  /** Path under `with:`, e.g. ["lora", "rank"]. */
  path: (string | number)[];
  message: string;
}

/** What a fingerprint hook may ask of the engine. */
export interface FingerprintTools {
  /**
   * SHA-256 of a local file's bytes as a reader sees them (symbolic links
   * followed), through the engine's stat cache: a file unchanged since the
   * last run is not read again, however large. A relative path is relative
   * to the pipeline's folder. Null when it is not a readable regular file
   * (the stage reports that when it runs).
   */
  digestFile(path: string): Digest | null;
}

export interface StageKind<P = Record<string, unknown>> {
  kind: string;
  /**
   * Implementation version, part of every key of this kind: bump it when a
   * change to `run` would change outputs for the same params and inputs.
   */
  version: string;
  /** Names of tools the kind calls (see ToolInfo); their digests join the key. */
  tools?: string[];
  /**
   * Top-level params that change how a result is computed, never what it is
   * (parallelism: compile jobs, samples graded at once). They are left out of
   * the key, so changing them re-runs nothing. List a param here only when its
   * value cannot change an output byte.
   */
  unkeyedParams?: readonly string[];
  /** Resources an instance needs, given its params; defaults cpu 1, gpu 0, memory 0. */
  resources?(params: P): Partial<Resources>;
  /**
   * Extra key material the params alone do not capture, e.g. the digests of
   * patch or source files kept in the repo that a build applies, or of a
   * local file a param names. Say in a comment why each field invalidates
   * results.
   */
  fingerprint?(
    params: P,
    tools: FingerprintTools,
  ): Promise<Record<string, unknown>> | Record<string, unknown>;
  /** Checks the schema cannot express; each issue is reported at its YAML location. */
  check?(params: P, stage?: StageDeclarations): ParamIssue[];
  /**
   * Checks that need the inputs (a model's shape, say), run when they exist and
   * before the instance queues for resources. Each message returned fails the
   * instance as bad input (exit 2) without running it. Read headers, not data:
   * it runs on the engine's machine.
   */
  admit?(ctx: AdmitContext<P>): Promise<string[]> | string[];
  /**
   * What running the instance would cost (`valley plan --estimate`, the run
   * budgets). Runs on the engine's machine before anything is computed: read
   * headers and small files, never run a model. The engine only sums and
   * prints what it returns.
   */
  estimate?(ctx: EstimateContext<P>): Promise<Estimate> | Estimate;
  /**
   * Short micro-benchmarks on this machine (`valley calibrate`), for the
   * shapes the pipeline's instances of this kind would use; what they return
   * is kept in the cache and read back as `EstimateContext.measured`.
   */
  calibrate?(ctx: CalibrateContext<P>): Promise<Measurement[]>;
  run(ctx: StageContext<P>): Promise<StageResult | void>;
}

/** A low and a high value: an estimate is never one number. */
export type Range = [low: number, high: number];

/**
 * One throughput measurement: what a stage measured (a run's action record)
 * or a calibration micro-benchmark. Free-form beyond these fields; the kind
 * that wrote it reads it back.
 */
export interface Measurement {
  /** What was measured, in the kind's terms ("train", "generate", "grade"). */
  what: string;
  tokens_per_s?: number;
  /** The model's dimensions, so an estimate can pick the closest shape. */
  shape?: Record<string, number | string>;
  /** "cpu", or "gpu" with the device's name after a colon. */
  device: string;
  /** "run <instance>" or "calibrate". */
  source?: string;
  [k: string]: unknown;
}

/** What a stage estimates for one instance that would run. */
export interface Estimate {
  /** Wall-clock hours of the instance. */
  hours: Range;
  /** Where it runs: "cpu" or "gpu" (GPU-hours are hours × gpus). */
  device: "cpu" | "gpu";
  gpus?: number;
  /** Token counts by name (prompt, completion, training, generated). */
  tokens?: Record<string, Range>;
  /**
   * Dollars; null when unknown or when nothing is paid per use. A stage that
   * pays per use (API tokens) says how in `basis.usd`: then null means "no
   * price given", which `--max-usd` refuses to guess. Never 0 for unknown.
   */
  usd: Range | null;
  peak_memory_bytes?: number;
  /** Whether the peak fits the memory the instance may use; absent when unknown. */
  fits?: boolean;
  /** Per number: "measured: …", "calibrated: …" or "assumed: …", in words. */
  basis: Record<string, string>;
  /** Other figures worth showing (requests still to send, CPU-hours of grading). */
  extra?: Record<string, unknown>;
  /** What the output is expected to hold, for downstream estimates (opaque to the engine). */
  output?: Record<string, unknown>;
}

/** What `estimate` sees. */
export interface EstimateContext<P> extends InputAccess {
  instanceId: string;
  params: P;
  /** Inputs whose producers have a result; an input still to be computed is absent. */
  inputs: Record<string, StageInput | undefined>;
  /** For each input still to be computed: its producers' `Estimate.output` (a list for `x[*]`). */
  expected: Record<string, Record<string, unknown> | Record<string, unknown>[] | undefined>;
  resources: Resources;
  tools: Record<string, ToolInfo>;
  /** The shared per-request cache (may not exist yet). */
  requestCache: string;
  /** Measurements of this kind from past runs and calibrations, newest first. */
  measured: Measurement[];
  /** Where the run would execute. */
  executor: "local" | "slurm";
}

/** What `calibrate` sees: this kind's instances in the pipeline, estimated as for plan. */
export interface CalibrateContext<P> {
  instances: EstimateContext<P>[];
  tools: Record<string, ToolInfo>;
  /** An empty folder for models and data made up for the benchmark. */
  scratch: string;
  log: Logger;
  signal: AbortSignal;
  /** Seconds the kind may spend (on the CPU, the whole calibration stays under a minute). */
  budgetSeconds: number;
  gpu: boolean;
  /**
   * Says that a measurement (`what`: "grade", "train", …) was not made, and
   * why; `valley calibrate` prints it (and lists it under `skipped` with
   * --json), so that a calibration that leaves a number to assumption says so.
   */
  skip(what: string, why: string): void;
}

/**
 * Thrown by a stage, while it runs, when an artifact it reads is unusable (a
 * truncated GGUF, a record with a missing field): the attempt is not retried
 * and the run exits 2, like any other bad input, not 1. (A pipeline file that
 * is wrong is InvalidPipeline, found before anything runs.)
 */
export class BadStageInput extends Error {
  override name = "BadStageInput";
}
