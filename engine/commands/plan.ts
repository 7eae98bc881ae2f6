import type { StoredResult } from "../../cache/store.js";
import { selectInstances } from "../scheduler.js";
import { openPipeline, parse } from "./common.js";
import { UsageError } from "../errors.js";
import { diffFields } from "../key.js";
import type { Engine } from "../engine.js";
import type { Pipeline } from "../pipeline/expand.js";

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
