/**
 * Reading recorded results by instance id, for commands that look at outputs
 * (compare, lineage): the same read path as `valley show`: the instance's last
 * key from the engine's history, its action record from the store, its output
 * tree as a read-only folder. Nothing here computes or writes.
 */
import { join } from "node:path";
import type { ActionRecord } from "../../cache/store.js";
import { UsageError, nearest } from "../errors.js";
import type { Engine } from "../engine.js";
import type { Instance, Pipeline } from "../pipeline/expand.js";

export interface Recorded {
  inst: Instance;
  rec: ActionRecord;
  /** The output tree, read-only. */
  dir: string;
}

/** The instance, or a usage error listing the nearest ids. */
export function instanceOf(pl: Pipeline, id: string): Instance {
  const inst = pl.byId.get(id);
  if (inst) return inst;
  const near = nearest(id, pl.byId.keys(), 3);
  throw new UsageError(
    `no instance "${id}" in ${pl.file}` +
      (near.length ? `; closest: ${near.map((n) => `"${n}"`).join(", ")}` : ""),
  );
}

/** The instance's recorded result, or undefined when it has not run. */
export function recordOf(engine: Engine, inst: Instance): Recorded | undefined {
  const h = engine.history(inst.id);
  const rec = h ? engine.store.getAction(h.key) : undefined;
  return rec ? { inst, rec, dir: engine.store.treePath(rec.outputs.tree) } : undefined;
}

/** The recorded result of an instance that must exist and have run. */
export function requireRecord(pl: Pipeline, engine: Engine, id: string): Recorded {
  const inst = instanceOf(pl, id);
  const r = recordOf(engine, inst);
  if (!r)
    throw new UsageError(`${id} has no recorded result yet: run the pipeline first (valley run)`);
  return r;
}

/**
 * A file of an evaluation's output (e.g. samples.jsonl). Any instance whose
 * output holds the file qualifies (a `shell` stage may write evaluate's format).
 */
export function evaluationOutput(pl: Pipeline, engine: Engine, id: string, file: string): string {
  const r = requireRecord(pl, engine, id);
  if (!(file in r.rec.outputs.files))
    throw new UsageError(
      `${id}'s recorded output has no ${file}` +
        (r.inst.kind === "evaluate" ? "" : ` (it is a ${r.inst.kind} instance, not an evaluation)`),
    );
  return join(r.dir, file);
}
