import { readFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import type { ActionRecord } from "../../cache/store.js";
import { UsageError, didYouMean } from "../errors.js";
import { openPipeline, parse } from "./common.js";
import type { Engine } from "../engine.js";
import type { Pipeline, Instance } from "../pipeline/expand.js";

/** The recorded result of an instance: its last key (history) if still valid. */
function findRecord(
  pl: Pipeline,
  engine: Engine,
  id: string,
): { inst: Instance; rec?: ActionRecord; key?: string } {
  const inst = pl.byId.get(id);
  if (!inst)
    throw new UsageError(`no instance "${id}" in ${pl.file}${didYouMean(id, pl.byId.keys())}`);
  const h = engine.history(id);
  if (!h) return { inst };
  return { inst, rec: engine.store.getAction(h.key), key: h.key };
}

export async function show(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    {
      json: { type: "boolean" },
      file: { type: "string", short: "f" },
      param: { type: "string", short: "p", multiple: true },
    },
    "valley show <instance> [-f file] [--json]",
  );
  const id = positionals[0];
  if (!id) throw new UsageError("usage: valley show <instance> [-f file] [--json]");
  const { pl, engine } = await openPipeline(values.file ?? positionals[1], values.param, {
    readOnly: true,
  });
  const { inst, rec, key } = findRecord(pl, engine, id);
  if (!rec) {
    if (values.json)
      process.stdout.write(
        JSON.stringify({
          id,
          stage: inst.stage,
          kind: inst.kind,
          params: inst.params,
          key: key ?? null,
          status: "not run",
        }) + "\n",
      );
    else process.stdout.write(`${id}: no result yet (run the pipeline first)\n`);
    return 1;
  }
  const fields = rec.fields as { inputs?: Record<string, unknown> };
  const outputs: Record<string, { digest: string; path: string }> = {};
  const treePath = engine.store.treePath(rec.outputs.tree);
  for (const [name, d] of Object.entries(rec.outputs.files))
    outputs[name] = { digest: d, path: join(treePath, name) };
  const obj = {
    id,
    stage: inst.stage,
    kind: inst.kind,
    key: rec.key,
    params: inst.params,
    inputs: fields.inputs ?? {},
    outputs,
    tree: { digest: rec.outputs.tree, path: treePath },
    metrics: rec.metrics,
    timings: rec.timings,
    // throughput, shape and device the run measured: what later estimates read
    measured: rec.measured ?? [],
    host: rec.host,
    log: rec.log ?? null,
  };
  if (values.json) {
    process.stdout.write(JSON.stringify(obj, null, 1) + "\n");
    return 0;
  }
  const lines = [
    `instance  ${id}  (${inst.kind})`,
    `key       ${rec.key}`,
    `params    ${JSON.stringify(inst.params)}`,
    ...Object.entries(obj.inputs).map(
      ([n, d]) => `input     ${n} = ${typeof d === "string" ? d : JSON.stringify(d)}`,
    ),
    `output    ${treePath}  (${rec.outputs.tree})`,
    ...Object.entries(outputs).map(([n, o]) => `          ${n}  ${o.digest}`),
    ...Object.entries(rec.metrics).map(([k, v]) => `metric    ${k} = ${JSON.stringify(v)}`),
    `ran       ${rec.timings.start} for ${rec.timings.seconds.toFixed(2)}s on ${rec.host} (attempts: ${rec.timings.attempts})`,
  ];
  process.stdout.write(lines.join("\n") + "\n");
  return 0;
}

function formatLog(text: string, raw: boolean): string {
  if (raw) return text;
  return (
    text
      .split("\n")
      .filter(Boolean)
      .map((l) => {
        try {
          const o = JSON.parse(l) as {
            time?: number;
            level?: number;
            msg?: string;
            stream?: string;
          };
          const t = o.time ? new Date(o.time).toISOString().slice(11, 23) : "";
          const lvl =
            (
              {
                10: "trace",
                20: "debug",
                30: "info",
                40: "warn",
                50: "error",
                60: "fatal",
              } as Record<number, string>
            )[o.level ?? 30] ?? "";
          return `${t} ${o.stream ?? lvl} ${o.msg ?? ""}`;
        } catch {
          return l;
        }
      })
      .join("\n") + "\n"
  );
}

export async function logs(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    {
      raw: { type: "boolean" },
      file: { type: "string", short: "f" },
      param: { type: "string", short: "p", multiple: true },
    },
    "valley logs <instance> [-f file] [--raw]",
  );
  const id = positionals[0];
  if (!id) throw new UsageError("usage: valley logs <instance> [-f file] [--raw]");
  const { pl, engine } = await openPipeline(values.file ?? positionals[1], values.param, {
    readOnly: true,
  });
  await engine.prepareFingerprints();
  const { rec } = findRecord(pl, engine, id);
  // A failed last attempt is more interesting than an older success.
  const inst = pl.byId.get(id) as Instance;
  const results = new Map<string, ActionRecord>();
  for (const i of pl.instances) {
    const h = engine.history(i.id);
    const r = h ? engine.store.getAction(h.key) : undefined;
    if (r) results.set(i.id, r);
  }
  const rk = await engine.resolveKey(inst, results, { admit: false });
  const failed = rk ? engine.failedLogPath(rk.key) : undefined;
  if (failed && existsSync(failed) && !engine.store.getAction(rk!.key)) {
    process.stdout.write(formatLog(readFileSync(failed, "utf8"), !!values.raw));
    return 0;
  }
  if (!rec?.log) {
    process.stderr.write(`${id}: no log recorded yet\n`);
    return 1;
  }
  process.stdout.write(formatLog(engine.store.readObject(rec.log).toString("utf8"), !!values.raw));
  return 0;
}

export async function dag(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    {
      format: { type: "string" },
      file: { type: "string", short: "f" },
      param: { type: "string", short: "p", multiple: true },
    },
    "valley dag [file] [--format mermaid|dot]",
  );
  const format = values.format ?? "mermaid";
  if (format !== "mermaid" && format !== "dot")
    throw new UsageError(`--format must be mermaid or dot`);
  const { pl } = await openPipeline(values.file ?? positionals[0], values.param, {
    readOnly: true,
  });
  const n = new Map(pl.instances.map((i, k) => [i.id, `n${k}`]));
  const out: string[] = [];
  if (format === "mermaid") {
    out.push("flowchart LR");
    for (const i of pl.instances) out.push(`  ${n.get(i.id)}["${i.id.replace(/"/g, "'")}"]`);
    for (const i of pl.instances)
      for (const d of i.deps) out.push(`  ${n.get(d)} --> ${n.get(i.id)}`);
  } else {
    out.push("digraph valley {", "  rankdir=LR;");
    for (const i of pl.instances) out.push(`  ${n.get(i.id)} [label=${JSON.stringify(i.id)}];`);
    for (const i of pl.instances)
      for (const d of i.deps) out.push(`  ${n.get(d)} -> ${n.get(i.id)};`);
    out.push("}");
  }
  process.stdout.write(out.join("\n") + "\n");
  return 0;
}
