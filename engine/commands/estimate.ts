/**
 * `valley plan --estimate`, `valley calibrate` and the run budgets. The engine
 * knows no stage's cost: it walks the instances in order, asks each kind's
 * `estimate` hook (stage-api.ts) about the instances that would run, hands
 * each hook its upstream estimates' expected outputs, and sums what comes
 * back. Cached instances cost nothing.
 */
import { existsSync, mkdirSync, readdirSync, readFileSync } from "node:fs";
import { cpus } from "node:os";
import { join, resolve } from "node:path";
import type { ActionRecord, StoredResult } from "../../cache/store.js";
import { writeFileAtomic } from "../../cache/atomic.js";
import type { Engine } from "../engine.js";
import type { Instance, Pipeline } from "../pipeline/expand.js";
import {
  inputAccess,
  type Estimate,
  type EstimateContext,
  type InputArtifact,
  type InstanceId,
  type Measurement,
  type Range,
  type StageInput,
  type ToolInfo,
} from "../stage-api.js";
import { UsageError } from "../errors.js";
import { selectInstances } from "../scheduler.js";

export interface EstimateRow {
  id: string;
  stage: string;
  kind: string;
  cached: boolean;
  /** Null for a cached instance, or when the kind cannot estimate (see `note`). */
  estimate: Estimate | null;
  note?: string;
}

export interface Totals {
  /** Sum of every instance's hours (as if run one after another). */
  hours: Range;
  gpu_hours: Range;
  cpu_hours: Range;
  /** Null when no instance to run has a price. */
  usd: Range | null;
  /** Instances to run whose dollars are unknown (no price): not in `usd`. */
  unpriced: string[];
  /** Instances to run that no estimate covers (their kind has no estimate hook, or it failed). */
  not_estimated: string[];
  tokens: Record<string, Range>;
  to_run: number;
  cached: number;
  /** With --executor slurm: the jobs the run would submit (one per instance to run). */
  slurm_jobs?: number;
  by_stage: Record<string, { instances: number; hours: Range; usd: Range | null }>;
}

export interface EstimateReport {
  pipeline: string;
  executor: "local" | "slurm";
  instances: EstimateRow[];
  totals: Totals;
}

/** Measurements by kind: `measured` of past action records, then `valley calibrate`'s. */
export function measurements(engine: Engine): Map<string, Measurement[]> {
  const byKind = new Map<string, Measurement[]>();
  const push = (kind: string, m: Measurement, t: string) => {
    const list = byKind.get(kind) ?? [];
    list.push({ ...m, _t: t });
    byKind.set(kind, list);
  };
  const actions = engine.store.dir("actions");
  if (existsSync(actions)) {
    for (const f of readdirSync(actions)) {
      if (!f.endsWith(".json")) continue;
      let text: string;
      try {
        text = readFileSync(join(actions, f), "utf8");
      } catch {
        continue;
      }
      if (!text.includes('"measured"')) continue;
      try {
        const rec = JSON.parse(text) as ActionRecord;
        for (const m of rec.measured ?? [])
          push(
            rec.kind,
            { source: `run ${rec.instance}`, ...(m as Measurement) },
            rec.timings?.end ?? "",
          );
      } catch {
        // a record being written: skip it
      }
    }
  }
  const cal = calibrationDir(engine);
  if (existsSync(cal)) {
    for (const f of readdirSync(cal).filter((n) => n.endsWith(".json"))) {
      try {
        const list = JSON.parse(readFileSync(join(cal, f), "utf8")) as Measurement[];
        for (const m of list) push(f.replace(/\.json$/, ""), m, String(m.at ?? ""));
      } catch {
        // unreadable: calibrate again
      }
    }
  }
  for (const list of byKind.values()) list.sort((a, b) => String(b._t).localeCompare(String(a._t)));
  return byKind;
}

function calibrationDir(engine: Engine): string {
  return engine.store.dir("calibration");
}

/** Keeps a kind's calibration: new measurements replace older ones of the same what, shape and device. */
export function saveCalibration(engine: Engine, kind: string, list: Measurement[]): void {
  const dir = calibrationDir(engine);
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${kind}.json`);
  let old: Measurement[] = [];
  try {
    old = JSON.parse(readFileSync(file, "utf8")) as Measurement[];
  } catch {
    // first calibration of this kind
  }
  const same = (a: Measurement, b: Measurement) =>
    a.what === b.what &&
    a.device === b.device &&
    a.threads === b.threads &&
    JSON.stringify(a.shape) === JSON.stringify(b.shape);
  const kept = old.filter((o) => !list.some((n) => same(o, n)));
  writeFileAtomic(file, JSON.stringify([...kept, ...list], null, 1) + "\n");
}

interface Walk {
  rows: EstimateRow[];
  /** A context for every instance (cached ones too), for calibrate. */
  contexts: Map<string, EstimateContext<Record<string, unknown>>>;
}

/** Walks the instances in order: cached or not, and each one to run estimated by its kind. */
async function walk(
  pl: Pipeline,
  engine: Engine,
  opts: { executor: "local" | "slurm"; force?: string[]; only?: string[]; call: boolean },
): Promise<Walk> {
  const measured = measurements(engine);
  const results = new Map<string, StoredResult>();
  const outputs = new Map<string, Record<string, unknown>>();
  const rows: EstimateRow[] = [];
  const contexts: Walk["contexts"] = new Map();
  const keep = new Set(selectInstances(pl.instances, opts.only).map((i) => i.id));
  for (const inst of pl.instances) {
    const rk = await engine.resolveKey(inst, results, { admit: false });
    const rec = rk && !opts.force?.includes(inst.stage) ? engine.lookup(rk.key) : undefined;
    if (rec) results.set(inst.id, rec);
    const ctx = await contextFor(engine, inst, results, outputs, measured, opts.executor, rk);
    contexts.set(inst.id, ctx);
    if (!keep.has(inst.id)) continue;
    const row: EstimateRow = {
      id: inst.id,
      stage: inst.stage,
      kind: inst.kind,
      cached: rec !== undefined,
      estimate: null,
    };
    rows.push(row);
    if (rec || !opts.call) continue;
    const impl = pl.kinds.get(inst.kind)?.impl;
    if (!impl?.estimate) {
      row.note = `no estimate: the ${inst.kind} kind does not estimate itself`;
      continue;
    }
    try {
      row.estimate = await impl.estimate(ctx);
      if (row.estimate.output) outputs.set(inst.id, row.estimate.output);
    } catch (e) {
      row.note = `no estimate: ${(e as Error).message}`;
    }
  }
  return { rows, contexts };
}

async function contextFor(
  engine: Engine,
  inst: Instance,
  results: Map<string, StoredResult>,
  outputs: Map<string, Record<string, unknown>>,
  measured: Map<string, Measurement[]>,
  executor: "local" | "slurm",
  rk: Awaited<ReturnType<Engine["resolveKey"]>>,
): Promise<EstimateContext<Record<string, unknown>>> {
  const artifact = (id: string): InputArtifact | undefined => {
    const rec = results.get(id);
    const up = engine.pipeline.byId.get(id);
    if (!rec || !up) return undefined;
    return {
      id: id as InstanceId,
      coords: up.coords,
      digest: rec.outputs.tree,
      path: engine.store.treePath(rec.outputs.tree),
    };
  };
  const inputs: Record<string, StageInput | undefined> = {};
  const expected: EstimateContext<unknown>["expected"] = {};
  for (const [name, spec] of Object.entries(inst.inputs)) {
    if (spec.type === "path") {
      // the source itself: plan hashes a path input but does not copy it into the store
      if (!existsSync(spec.path)) continue;
      const d = rk
        ? (rk.inputs[name] as InputArtifact).digest
        : await engine.store.pathDigest(spec.path);
      inputs[name] = {
        id: spec.ref as InstanceId,
        coords: {},
        digest: d,
        path: resolve(spec.path),
      };
    } else if (rk) inputs[name] = rk.inputs[name];
    else if (spec.type === "one") {
      inputs[name] = artifact(spec.id);
      if (!inputs[name]) expected[name] = outputs.get(spec.id);
    } else {
      const list = spec.ids.map(artifact);
      if (list.every((a) => a !== undefined)) inputs[name] = list as InputArtifact[];
      else expected[name] = spec.ids.map((id) => outputs.get(id) ?? {});
    }
  }
  const tools: Record<string, ToolInfo> = {};
  for (const t of engine.pipeline.kinds.get(inst.kind)?.impl.tools ?? []) {
    try {
      const info = engine.tool(t);
      if (info) tools[t] = info;
    } catch {
      // a tool path that does not exist: the run reports it
    }
  }
  const present = Object.fromEntries(
    Object.entries(inputs).filter((e): e is [string, StageInput] => e[1] !== undefined),
  );
  return {
    ...inputAccess(inst.kind, present),
    instanceId: inst.id,
    params: structuredClone(inst.params),
    inputs,
    expected,
    // run here, an instance asking for more CPUs than the machine has is given them all
    resources:
      executor === "local"
        ? { ...inst.resources, cpu: Math.min(inst.resources.cpu, cpus().length) }
        : inst.resources,
    tools,
    requestCache: engine.store.dir("requests.sqlite"),
    measured: measured.get(inst.kind) ?? [],
    executor,
  };
}

const ZERO: Range = [0, 0];
const plus = (a: Range, b: Range): Range => [a[0] + b[0], a[1] + b[1]];

function totalsOf(rows: EstimateRow[], executor: "local" | "slurm"): Totals {
  const t: Totals = {
    hours: ZERO,
    gpu_hours: ZERO,
    cpu_hours: ZERO,
    usd: null,
    unpriced: [],
    not_estimated: [],
    tokens: {},
    to_run: 0,
    cached: 0,
    by_stage: {},
  };
  for (const r of rows) {
    if (r.cached) {
      t.cached++;
      continue;
    }
    t.to_run++;
    const e = r.estimate;
    if (!e) {
      t.not_estimated.push(r.id);
      continue;
    }
    t.hours = plus(t.hours, e.hours);
    if (e.device === "gpu") {
      const g = e.gpus ?? 1;
      t.gpu_hours = plus(t.gpu_hours, [e.hours[0] * g, e.hours[1] * g]);
    } else t.cpu_hours = plus(t.cpu_hours, e.hours);
    if (e.usd) t.usd = plus(t.usd ?? ZERO, e.usd);
    else if (e.basis.usd !== undefined) t.unpriced.push(r.id);
    for (const [k, v] of Object.entries(e.tokens ?? {})) t.tokens[k] = plus(t.tokens[k] ?? ZERO, v);
    const s = (t.by_stage[r.stage] ??= { instances: 0, hours: ZERO, usd: null });
    s.instances++;
    s.hours = plus(s.hours, e.hours);
    if (e.usd) s.usd = plus(s.usd ?? ZERO, e.usd);
  }
  if (executor === "slurm") t.slurm_jobs = t.to_run;
  return t;
}

export async function estimatePipeline(
  pl: Pipeline,
  engine: Engine,
  opts: { executor: "local" | "slurm"; force?: string[]; only?: string[] },
): Promise<EstimateReport> {
  const { rows } = await walk(pl, engine, { ...opts, call: true });
  return {
    pipeline: pl.name,
    executor: opts.executor,
    instances: rows,
    totals: totalsOf(rows, opts.executor),
  };
}

// ---- printing -----------------------------------------------------------------

const fmtRange = (r: Range, f: (x: number) => string) =>
  f(r[0]) === f(r[1]) ? f(r[0]) : `${f(r[0])}–${f(r[1])}`;
export const fmtH = (h: number) =>
  h * 3600 < 90
    ? `${(h * 3600).toFixed(0)}s`
    : h * 60 < 90
      ? `${(h * 60).toFixed(0)}min`
      : `${h < 10 ? h.toFixed(1) : h.toFixed(0)}h`;
const fmtTok = (n: number) =>
  n >= 1e9
    ? `${(n / 1e9).toFixed(1)}G`
    : n >= 1e6
      ? `${(n / 1e6).toFixed(1)}M`
      : n >= 1e3
        ? `${(n / 1e3).toFixed(1)}K`
        : n.toFixed(0);
const fmtUsd = (u: Range | null) =>
  u ? fmtRange(u, (x) => `$${x < 10 ? x.toFixed(2) : x.toFixed(0)}`) : "—";
const gib = (b: number) => `${(b / 2 ** 30).toFixed(b < 2 ** 30 ? 2 : 1)} GiB`;

export function printReport(r: EstimateReport, out: (s: string) => void): void {
  out(`estimate for ${r.pipeline} (executor ${r.executor}); ranges are low–high\n`);
  for (const row of r.instances) {
    if (row.cached) {
      out(`cached  ${row.id}  (costs nothing)\n`);
      continue;
    }
    const e = row.estimate;
    if (!e) {
      out(`run     ${row.id}  ${row.kind}: ${row.note ?? "no estimate"}\n`);
      continue;
    }
    const parts = [
      `${fmtRange(e.hours, fmtH)} ${e.device}${e.device === "gpu" && (e.gpus ?? 1) > 1 ? ` ×${e.gpus}` : ""}`,
      ...Object.entries(e.tokens ?? {}).map(([k, v]) => `${k} ${fmtRange(v, fmtTok)} tokens`),
      `${fmtUsd(e.usd)}`,
      ...(e.peak_memory_bytes !== undefined
        ? [
            `peak ${gib(e.peak_memory_bytes)}${e.fits === undefined ? "" : e.fits ? " (fits)" : " (DOES NOT FIT)"}`,
          ]
        : []),
    ];
    out(`run     ${row.id}  ${row.kind}: ${parts.join(", ")}\n`);
    for (const [k, v] of Object.entries(e.extra ?? {}))
      out(
        `          ${k}: ${
          Array.isArray(v) && v.length === 2 && v.every((x) => typeof x === "number")
            ? fmtRange(v as Range, (x) => (x < 10 ? x.toPrecision(2) : fmtTok(x)))
            : typeof v === "string"
              ? v
              : JSON.stringify(v)
        }\n`,
      );
    for (const [k, v] of Object.entries(e.basis)) out(`          ${k} — ${v}\n`);
  }
  const t = r.totals;
  out(`\n${t.to_run} to run, ${t.cached} cached\n`);
  for (const [stage, s] of Object.entries(t.by_stage))
    out(
      `  ${stage.padEnd(16)} ${String(s.instances).padStart(4)} × → ${fmtRange(s.hours, fmtH)}, ${fmtUsd(s.usd)}\n`,
    );
  out(
    `total: ${fmtRange(t.hours, fmtH)} of instance time (${fmtRange(t.gpu_hours, fmtH)} GPU, ${fmtRange(t.cpu_hours, fmtH)} CPU), ` +
      `${fmtUsd(t.usd)}` +
      (t.unpriced.length ? ` (+ ${t.unpriced.length} instance(s) without a price)` : "") +
      "\n",
  );
  for (const [k, v] of Object.entries(t.tokens)) out(`  ${k}: ${fmtRange(v, fmtTok)} tokens\n`);
  if (t.not_estimated.length)
    out(`not estimated (${t.not_estimated.length}): ${t.not_estimated.join(", ")}\n`);
  if (t.slurm_jobs !== undefined) out(`slurm: ${t.slurm_jobs} job(s) would be submitted\n`);
}

// ---- budgets ------------------------------------------------------------------

/** A budget flag's value: a finite number ≥ 0, or a UsageError naming the flag (exit 2). */
export function budget(flag: string, value: string | undefined): number | undefined {
  if (value === undefined) return undefined;
  const n = Number(value);
  if (value.trim() === "" || !Number.isFinite(n) || n < 0)
    throw new UsageError(`${flag} ${JSON.stringify(value)}: expected a number ≥ 0`);
  return n;
}

/** Null when the high estimates stay within the budgets; else why not. */
export function overBudget(
  r: EstimateReport,
  b: { usd?: number; gpuHours?: number },
): string | null {
  const why: string[] = [];
  const t = r.totals;
  if (b.usd !== undefined) {
    if (t.usd && t.usd[1] > b.usd)
      why.push(`up to $${t.usd[1].toFixed(2)} of teacher requests, over --max-usd ${b.usd}`);
    if (t.unpriced.length)
      why.push(
        `${t.unpriced.length} instance(s) to run have no price (${t.unpriced.join(", ")}), so --max-usd cannot be checked: give them a price`,
      );
  }
  if (b.gpuHours !== undefined && t.gpu_hours[1] > b.gpuHours)
    why.push(`up to ${t.gpu_hours[1].toFixed(2)} GPU-hours, over --max-gpu-hours ${b.gpuHours}`);
  if ((b.usd !== undefined || b.gpuHours !== undefined) && t.not_estimated.length)
    why.push(
      `${t.not_estimated.length} instance(s) to run are not estimated (${t.not_estimated.join(", ")})`,
    );
  return why.length ? why.join("; ") : null;
}

// ---- calibrate ----------------------------------------------------------------

export async function calibratePipeline(
  pl: Pipeline,
  engine: Engine,
  opts: { gpu: boolean; budgetSeconds: number; out: (s: string) => void },
): Promise<
  {
    kind: string;
    measured: Measurement[];
    skipped?: { what: string; why: string }[];
    error?: string;
  }[]
> {
  // Estimate first: a calibration benchmarks the shapes that the estimates
  // would need, and a model not made yet (merged, quantized) has its shape
  // only in its producer's estimate.
  const { contexts } = await walk(pl, engine, { executor: "local", call: true });
  const kinds = [...pl.kinds.values()].filter((k) => k.impl.calibrate);
  const out: {
    kind: string;
    measured: Measurement[];
    skipped?: { what: string; why: string }[];
    error?: string;
  }[] = [];
  // Loaded here, not at the top: `run` imports this module, and a no-op run logs nothing.
  const { pino } = await import("pino");
  const log = pino({ level: process.env.VALLEY_LOG_LEVEL ?? "warn" }, pino.destination(2));
  const ac = new AbortController();
  const stop = () => ac.abort(new Error("interrupted"));
  process.once("SIGINT", stop);
  try {
    for (const k of kinds) {
      const instances = pl.instances
        .filter((i) => i.kind === k.name)
        .map((i) => contexts.get(i.id)!)
        .filter(Boolean);
      if (!instances.length) continue;
      const scratch = join(engine.store.dir("tmp"), `calibrate-${k.name}-${process.pid}`);
      mkdirSync(scratch, { recursive: true });
      const tools: Record<string, ToolInfo> = {};
      for (const t of k.impl.tools ?? []) {
        try {
          const info = engine.tool(t);
          if (info) tools[t] = info;
        } catch {
          // reported by the kind if it needs it
        }
      }
      const t0 = Date.now();
      const skipped: { what: string; why: string }[] = [];
      try {
        const measured = await k.impl.calibrate!({
          instances,
          tools,
          scratch,
          log,
          signal: ac.signal,
          budgetSeconds: opts.budgetSeconds / kinds.length,
          gpu: opts.gpu,
          skip: (what, why) => skipped.push({ what, why }),
        });
        const at = new Date().toISOString();
        const stamped: Measurement[] = measured.map((m) => ({ source: "calibrate", ...m, at }));
        if (stamped.length) saveCalibration(engine, k.name, stamped);
        opts.out(
          `${k.name}: ${stamped.length} measurement(s) in ${((Date.now() - t0) / 1000).toFixed(1)} s\n` +
            stamped
              .map(
                (m) =>
                  `  ${m.what} ${m.device}${m.threads ? ` ${m.threads} threads` : ""}: ` +
                  (typeof m.tokens_per_s === "number"
                    ? `${m.tokens_per_s.toFixed(1)} tokens/s`
                    : typeof m.seconds_per_sample === "number"
                      ? `${m.seconds_per_sample.toFixed(3)} s per sample`
                      : JSON.stringify(m)) +
                  (m.shape ? ` (${m.shape.nLayer} layers × ${m.shape.nEmbd})` : ""),
              )
              .join("\n") +
            "\n" +
            skipped.map((x) => `  ${x.what}: not calibrated: ${x.why}\n`).join(""),
        );
        out.push({ kind: k.name, measured: stamped, ...(skipped.length ? { skipped } : {}) });
      } catch (e) {
        opts.out(`${k.name}: not calibrated: ${(e as Error).message}\n`);
        out.push({ kind: k.name, measured: [], error: (e as Error).message });
      } finally {
        engine.store.removeTree(scratch);
      }
    }
  } finally {
    process.off("SIGINT", stop);
  }
  return out;
}
