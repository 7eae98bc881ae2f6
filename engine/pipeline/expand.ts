import { readFileSync } from "node:fs";
import { basename, dirname, resolve, extname } from "node:path";
import { Source, type YamlPath } from "./source.js";
import { InvalidPipeline, type Problem, closest, didYouMean } from "../errors.js";
import { compileSchema, listKinds, loadKind, type LoadedKind, type ErrorObject } from "../kinds.js";
import type { Coords, InstanceId, Resources, Scalar } from "../stage-api.js";
import { PACKAGE_ROOT } from "../root.js";
import { join } from "node:path";

/** How an instance reads one named input. */
export type InputSpec =
  | { type: "path"; path: string; ref: string }
  /** One upstream instance (a mapped reference or a pick). */
  | { type: "one"; stage: string; id: InstanceId; ref: string }
  /** Every instance of a matrix stage, in id order. */
  | { type: "all"; stage: string; ids: InstanceId[]; ref: string };

/** One runnable unit: a stage at one point of its matrix. */
export interface Instance {
  id: InstanceId;
  stage: string;
  kind: string;
  coords: Coords;
  /** Params after templates and schema defaults: exactly what is keyed. */
  params: Record<string, unknown>;
  inputs: Record<string, InputSpec>;
  /** Ids of the instances this one reads. */
  deps: InstanceId[];
  resources: Resources;
  retries: number;
  timeoutMs?: number;
  env: string[];
  secrets: string[];
}

export interface Pipeline {
  file: string;
  name: string;
  dir: string;
  source: Source;
  stageOrder: string[];
  instances: Instance[];
  byId: Map<string, Instance>;
  tools: Record<string, { path: string; lib?: string }>;
  kinds: Map<string, LoadedKind>;
  /** Where instances run (`executor:`); never part of a key. */
  executor?: PipelineExecutor;
}

export interface PipelineExecutor {
  kind?: "local" | "slurm";
  slurm?: { partition?: string; account?: string; flags?: string[]; poll?: number };
}

interface RawStage {
  uses: string;
  description?: string;
  with?: Record<string, unknown>;
  inputs?: Record<string, string>;
  matrix?: Record<string, Scalar[] | string> & { include?: CellRule[]; exclude?: Coords[] };
  resources?: { cpu?: number; gpu?: number; memory?: number | string };
  retries?: number;
  timeout?: number | string;
  env?: string[];
  secrets?: string[];
}

/** A matrix `include` entry: for the cells matching its coordinates, extra params and inputs. */
interface CellRule {
  with?: Record<string, unknown>;
  inputs?: Record<string, string>;
  [axis: string]: unknown;
}

interface RawPipeline {
  version: 1;
  name?: string;
  params?: Record<string, unknown>;
  tools?: Record<string, { path: string; lib?: string }>;
  executor?: PipelineExecutor;
  stages: Record<string, RawStage>;
}

type Ref =
  | { type: "path"; path: string }
  | { type: "map"; stage: string }
  | { type: "all"; stage: string }
  | { type: "pick"; stage: string; where: Record<string, string> };

const REF_RE = /^([A-Za-z_][A-Za-z0-9_-]*)(?:\[([^\]]*)\])?$/;
const TEMPLATE_RE = /\$\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_-]*)\s*\}\}/g;
const WHOLE_TEMPLATE_RE = /^\$\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_-]*)\s*\}\}$/;

/** Variable names that look like credentials: they belong under `secrets:`, never `env:`. */
const KEY_LIKE = /(_KEY|_TOKEN)$|SECRET/i;

let pipelineValidator: ReturnType<typeof compileSchema> | undefined;
export function pipelineSchema(): Record<string, unknown> {
  return JSON.parse(
    readFileSync(join(PACKAGE_ROOT, "schemas", "pipeline.schema.json"), "utf8"),
  ) as Record<string, unknown>;
}

/** Maps ajv errors (relative to `base`) to located problems. */
export function ajvProblems(
  src: Source,
  base: YamlPath,
  errors: ErrorObject[] | null | undefined,
): Problem[] {
  const out: Problem[] = [];
  for (const e of errors ?? []) {
    const rel = e.instancePath
      .split("/")
      .slice(1)
      .map((s) => s.replace(/~1/g, "/").replace(/~0/g, "~"));
    const path = [...base, ...rel];
    if (e.keyword === "additionalProperties") {
      const extra = (e.params as { additionalProperty: string }).additionalProperty;
      out.push(src.problem([...path, extra], `unknown key "${extra}"`, { key: true }));
    } else if (e.keyword === "required") {
      const missing = (e.params as { missingProperty: string }).missingProperty;
      out.push(src.problem(path, `missing required key "${missing}"`));
    } else if (e.keyword === "enum") {
      const allowed = (e.params as { allowedValues: unknown[] }).allowedValues;
      out.push(
        src.problem(path, `must be one of ${allowed.map((a) => JSON.stringify(a)).join(", ")}`),
      );
    } else if (e.keyword === "propertyNames") {
      const name = (e.params as { propertyName: string }).propertyName;
      out.push(src.problem([...path, name], `invalid name "${name}"`, { key: true }));
    } else if (e.keyword === "pattern" && e.schemaPath.includes("propertyNames")) {
      continue; // reported by the propertyNames error
    } else {
      out.push(src.problem(path, e.message ?? "is invalid"));
    }
  }
  return out;
}

function parseRef(ref: string): Ref | undefined {
  if (ref.startsWith("./") || ref.startsWith("../") || ref.startsWith("/"))
    return { type: "path", path: ref };
  const m = REF_RE.exec(ref.trim());
  if (!m) return undefined;
  const [, stage, sel] = m;
  if (sel === undefined) return { type: "map", stage };
  if (sel.trim() === "*") return { type: "all", stage };
  const where: Record<string, string> = {};
  for (const part of sel.split(",")) {
    const kv = /^\s*([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$/.exec(part);
    if (!kv) return undefined;
    where[kv[1]] = kv[2];
  }
  return { type: "pick", stage, where };
}

/** The one place instance ids are made. */
export function instanceId(stage: string, coords: Coords): InstanceId {
  const parts = Object.entries(coords).map(([k, v]) => `${k}=${String(v)}`);
  return (parts.length ? `${stage}@${parts.join(",")}` : stage) as InstanceId;
}

export function parseMemory(m: number | string | undefined): number {
  if (m === undefined) return 0;
  if (typeof m === "number") return m;
  const r = /^([0-9.]+)\s*([KMGT])/.exec(m.trim().toUpperCase());
  if (!r) return 0;
  const n = parseFloat(r[1]);
  return Math.round(
    n * { K: 1 / 1024, M: 1, G: 1024, T: 1024 * 1024 }[r[2] as "K" | "M" | "G" | "T"],
  );
}

/**
 * Templates are expanded in `with:` (and include cells' `with:`) and in a
 * matrix axis given as a string; anywhere else a `${{` would reach a stage or
 * a path literally. Every `${{` must start a well-formed template.
 */
function templateProblems(src: Source, raw: RawPipeline): Problem[] {
  const out: Problem[] = [];
  const expanded = (path: YamlPath): boolean =>
    path[0] === "stages" &&
    (path[2] === "with" ||
      (path[2] === "matrix" && path.length === 4 && path[3] !== "include") ||
      (path[2] === "matrix" && path[3] === "include" && path[5] === "with"));
  const free = (path: YamlPath): boolean =>
    path[path.length - 1] === "description" && (path.length === 1 || path[0] === "stages");
  const walk = (v: unknown, path: YamlPath): void => {
    if (typeof v === "string") {
      if (!v.includes("${{") || free(path)) return;
      if (!expanded(path)) {
        out.push(
          src.problem(
            path,
            "templates (${{ … }}) are expanded only in `with:` and in a matrix axis; this value would be used literally",
          ),
        );
        return;
      }
      const bad = malformedTemplate(v);
      if (bad !== undefined)
        out.push(
          src.problem(
            path,
            `unclosed or malformed template "${bad}": write \${{ params.name }} or \${{ matrix.name }}`,
          ),
        );
    } else if (Array.isArray(v)) v.forEach((x, i) => walk(x, [...path, i]));
    else if (v && typeof v === "object")
      for (const [k, x] of Object.entries(v)) walk(x, [...path, k]);
  };
  walk(raw, []);
  return out;
}

/** The first `${{ …` in `s` that does not start a well-formed template, cut short for messages. */
function malformedTemplate(s: string): string | undefined {
  const one = new RegExp(TEMPLATE_RE.source, "y");
  for (let i = s.indexOf("${{"); i >= 0; i = s.indexOf("${{", i + 3)) {
    one.lastIndex = i;
    if (!one.test(s)) {
      const rest = s.slice(i);
      return rest.length > 40 ? rest.slice(0, 40) + "…" : rest;
    }
  }
  return undefined;
}

export function parseDuration(t: number | string | undefined): number | undefined {
  if (t === undefined) return undefined;
  if (typeof t === "number") return t * 1000;
  const r = /^([0-9.]+)\s*(ms|s|m|h|d)?$/.exec(t.trim());
  if (!r) return undefined;
  const mult = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[(r[2] ?? "s") as "s"];
  return parseFloat(r[1]) * mult;
}

/** Substitutes `${{ scope.name }}` templates; a whole-value template keeps its type. */
function substitute(
  value: unknown,
  scopes: Record<string, Record<string, unknown>>,
  onError: (rel: YamlPath, msg: string) => void,
  rel: YamlPath = [],
): unknown {
  if (typeof value === "string") {
    const lookup = (scope: string, name: string): unknown => {
      const s = scopes[scope];
      if (!s) {
        onError(rel, `unknown template scope "${scope}" (use params.* or matrix.*)`);
        return undefined;
      }
      if (!(name in s)) {
        const keys = Object.keys(s);
        onError(
          rel,
          scope === "matrix"
            ? `template names unknown matrix key "${name}"${didYouMean(name, keys)}; this instance's matrix keys: ${keys.join(", ") || "(none)"}`
            : `template names unknown ${scope} "${name}"${didYouMean(name, keys)}`,
        );
        return undefined;
      }
      return s[name];
    };
    const whole = WHOLE_TEMPLATE_RE.exec(value);
    if (whole) return lookup(whole[1], whole[2]);
    return value.replace(TEMPLATE_RE, (_m, scope: string, name: string) => {
      const v = lookup(scope, name);
      return typeof v === "object" && v !== null ? JSON.stringify(v) : String(v);
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => substitute(v, scopes, onError, [...rel, i]));
  if (value && typeof value === "object") {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value))
      out[k] = substitute(v, scopes, onError, [...rel, k]);
    return out;
  }
  return value;
}

function deepMerge(base: unknown, over: unknown): unknown {
  if (
    base &&
    over &&
    typeof base === "object" &&
    typeof over === "object" &&
    !Array.isArray(base) &&
    !Array.isArray(over)
  ) {
    const out: Record<string, unknown> = { ...(base as Record<string, unknown>) };
    for (const [k, v] of Object.entries(over)) out[k] = deepMerge(out[k], v);
    return out;
  }
  return over;
}

/** The axis keys of an include/exclude entry (everything but `with` and `inputs`). */
function selector(entry: Record<string, unknown>): Coords {
  const out: Coords = {};
  for (const [k, v] of Object.entries(entry))
    if (k !== "with" && k !== "inputs") out[k] = v as Scalar;
  return out;
}

function matches(coords: Coords, sel: Coords): boolean {
  return Object.entries(sel).every(([k, v]) => k in coords && String(coords[k]) === String(v));
}

function product(axes: [string, Scalar[]][]): Coords[] {
  let out: Coords[] = [{}];
  for (const [k, vs] of axes) out = out.flatMap((c) => vs.map((v) => ({ ...c, [k]: v })));
  return out;
}

function compatible(a: Coords, b: Coords): boolean {
  for (const k of Object.keys(b)) if (k in a && String(a[k]) !== String(b[k])) return false;
  return true;
}

/**
 * Loads, validates and expands a pipeline file, in five named steps:
 * readPipeline, loadStageKinds, parseReferences, stageOrder, expandStages.
 * Throws InvalidPipeline with every problem a step found (a later step runs
 * only on what the earlier ones accepted).
 */
export async function loadPipeline(
  file: string,
  opts: { params?: Record<string, unknown>; text?: string; memo?: string } = {},
): Promise<Pipeline> {
  const abs = resolve(file);
  const { src, raw, params } = readPipeline(file, opts);
  const problems: Problem[] = [];
  const kinds = await loadStageKinds(src, raw.stages, problems);
  const stageRefs = parseReferences(src, raw.stages, problems);
  if (problems.length) throw new InvalidPipeline(problems);
  const order = stageOrder(src, raw.stages, stageRefs, problems);
  if (problems.length) throw new InvalidPipeline(problems);
  const instances = expandStages(src, raw.stages, {
    dir: dirname(abs),
    order,
    kinds,
    params,
    stageRefs,
    problems,
  });

  const byId = new Map(instances.map((i) => [i.id, i]));
  const name = raw.name ?? basename(abs, extname(abs));
  const tools: Record<string, { path: string; lib?: string }> = {};
  for (const [t, spec] of Object.entries(raw.tools ?? {})) {
    tools[t] = {
      path: resolve(dirname(abs), spec.path),
      lib: spec.lib ? resolve(dirname(abs), spec.lib) : undefined,
    };
  }
  return {
    file: abs,
    name,
    dir: dirname(abs),
    source: src,
    stageOrder: order,
    instances,
    byId,
    tools,
    kinds,
    executor: raw.executor,
  };
}

/**
 * Step 1: the YAML read and checked against the pipeline schema and for
 * template syntax, and `-p` overrides checked against the declared params.
 */
function readPipeline(
  file: string,
  opts: { params?: Record<string, unknown>; text?: string; memo?: string },
): { src: Source; raw: RawPipeline; params: Record<string, unknown> } {
  const src = Source.load(file, opts.text, { memo: opts.memo });
  pipelineValidator ??= (() => {
    const { $schema: _s, $id: _i, ...body } = pipelineSchema();
    return compileSchema(body);
  })();
  const raw = structuredClone(src.data) as RawPipeline;
  if (!pipelineValidator(raw))
    throw new InvalidPipeline(ajvProblems(src, [], pipelineValidator.errors));

  const problems: Problem[] = templateProblems(src, raw);
  const declaredParams = Object.keys(raw.params ?? {});
  for (const name of Object.keys(opts.params ?? {})) {
    if (declaredParams.includes(name)) continue;
    // A typo in -p would otherwise run silently with the default.
    const near = closest(name, declaredParams);
    problems.push({
      message:
        `-p ${name}: the pipeline declares no param "${name}"` +
        (near ? `; did you mean "${near}"?` : "") +
        (declaredParams.length
          ? ` (declared: ${declaredParams.join(", ")})`
          : " (it has no `params:`)"),
    });
  }
  if (problems.length) throw new InvalidPipeline(problems);
  const params = { ...(raw.params ?? {}), ...(opts.params ?? {}) };
  return { src, raw, params };
}

/** Step 2: the kind of every stage, loaded (an unknown kind is a problem). */
async function loadStageKinds(
  src: Source,
  stages: Record<string, RawStage>,
  problems: Problem[],
): Promise<Map<string, LoadedKind>> {
  const names = Object.keys(stages);
  const known = listKinds();
  const kinds = new Map<string, LoadedKind>();
  for (const name of names) {
    const uses = stages[name].uses;
    if (!known.includes(uses)) {
      problems.push(
        src.problem(
          ["stages", name, "uses"],
          `unknown stage kind "${uses}"${didYouMean(uses, known)}; known kinds: ${known.join(", ")}`,
        ),
      );
    } else if (!kinds.has(uses)) kinds.set(uses, await loadKind(uses));
  }

  return kinds;
}

/** The parsed references of every stage: its own inputs, and those of its matrix `include` cells. */
interface StageRefs {
  refs: Map<string, Map<string, Ref>>;
  cellRefs: Map<
    string,
    {
      sel: Coords;
      inputs: Map<string, Ref>;
      with?: Record<string, unknown>;
      at: YamlPath;
      used: boolean;
    }[]
  >;
}

/** Step 3: every input reference parsed, and checked against the stages there are. */
function parseReferences(
  src: Source,
  stages: Record<string, RawStage>,
  problems: Problem[],
): StageRefs {
  const names = Object.keys(stages);
  const refs = new Map<string, Map<string, Ref>>();
  const cellRefs = new Map<
    string,
    {
      sel: Coords;
      inputs: Map<string, Ref>;
      with?: Record<string, unknown>;
      at: YamlPath;
      used: boolean;
    }[]
  >();
  const parseInputs = (
    name: string,
    inputs: Record<string, string>,
    base: YamlPath,
  ): Map<string, Ref> => {
    const m = new Map<string, Ref>();
    for (const [input, text] of Object.entries(inputs)) {
      const r = parseRef(text);
      const at: YamlPath = [...base, input];
      if (!r) {
        problems.push(
          src.problem(
            at,
            `invalid reference "${text}": use stage, stage[*], stage[key=value] or ./path`,
          ),
        );
        continue;
      }
      if (r.type !== "path" && !(r.stage in stages)) {
        problems.push(src.problem(at, `unknown stage "${r.stage}"${didYouMean(r.stage, names)}`));
        continue;
      }
      if (r.type !== "path" && r.stage === name) {
        problems.push(src.problem(at, `stage "${name}" reads itself (a cycle)`));
        continue;
      }
      m.set(input, r);
    }
    return m;
  };
  for (const name of names) {
    refs.set(name, parseInputs(name, stages[name].inputs ?? {}, ["stages", name, "inputs"]));
    const rules = (stages[name].matrix?.include ?? []).map((rule, i) => {
      const at: YamlPath = ["stages", name, "matrix", "include", i];
      return {
        sel: selector(rule),
        inputs: parseInputs(name, rule.inputs ?? {}, [...at, "inputs"]),
        with: rule.with,
        at,
        used: false,
      };
    });
    cellRefs.set(name, rules);
  }
  return { refs, cellRefs };
}

function allRefs({ refs, cellRefs }: StageRefs, name: string): [string, Ref][] {
  return [...(refs.get(name) ?? []), ...(cellRefs.get(name) ?? []).flatMap((c) => [...c.inputs])];
}

/** Step 4: the stages in dependency order; a cycle is reported at the input that closes it. */
function stageOrder(
  src: Source,
  stages: Record<string, RawStage>,
  stageRefs: StageRefs,
  problems: Problem[],
): string[] {
  const names = Object.keys(stages);
  const order: string[] = [];
  const state = new Map<string, "visiting" | "done">();
  const visit = (name: string, trail: string[]): void => {
    if (state.get(name) === "done") return;
    state.set(name, "visiting");
    for (const [input, r] of allRefs(stageRefs, name)) {
      if (r.type === "path") continue;
      if (state.get(r.stage) === "visiting") {
        const cycle = [...trail.slice(trail.indexOf(r.stage)), name, r.stage];
        problems.push(
          src.problem(["stages", name, "inputs", input], `cycle: ${cycle.join(" → ")}`),
        );
        continue;
      }
      visit(r.stage, [...trail, name]);
    }
    state.set(name, "done");
    order.push(name);
  };
  for (const name of names) visit(name, []);
  return order;
}

/** Step 5: each stage's instances (matrix, include/exclude cells, inputs, params, resources), in dependency order. */
function expandStages(
  src: Source,
  stages: Record<string, RawStage>,
  a: {
    /** The pipeline's folder: path references are relative to it. */
    dir: string;
    order: string[];
    kinds: Map<string, LoadedKind>;
    params: Record<string, unknown>;
    stageRefs: StageRefs;
    problems: Problem[];
  },
): Instance[] {
  const { dir, order, kinds, params, problems } = a;
  const { refs, cellRefs } = a.stageRefs;
  const byStage = new Map<string, Instance[]>();
  const instances: Instance[] = [];
  const seen = new Set<string>();
  const report = (p: Problem) => {
    const k = `${p.loc?.line}:${p.loc?.col}:${p.message}`;
    if (!seen.has(k)) {
      seen.add(k);
      problems.push(p);
    }
  };
  // Mapped inputs resolve by coordinates; an index keeps wide matrices linear.
  const indexes = new Map<string, { axes: string[]; byCoords: Map<string, Instance[]> }>();
  const lookupMapped = (stage: string, coords: Coords): Instance[] => {
    let ix = indexes.get(stage);
    const ups = byStage.get(stage) ?? [];
    if (!ix) {
      const axes = Object.keys(ups[0]?.coords ?? {});
      const byCoords = new Map<string, Instance[]>();
      for (const u of ups) {
        const k = axes.map((a) => String(u.coords[a])).join("\0");
        byCoords.set(k, [...(byCoords.get(k) ?? []), u]);
      }
      ix = { axes, byCoords };
      indexes.set(stage, ix);
    }
    if (!ix.axes.every((a) => a in coords)) return ups.filter((u) => compatible(coords, u.coords));
    return ix.byCoords.get(ix.axes.map((a) => String(coords[a])).join("\0")) ?? [];
  };
  const isMatrix = (stage: string) =>
    (byStage.get(stage) ?? []).some((i) => Object.keys(i.coords).length > 0);

  for (const name of order) {
    const st = stages[name];
    const base: YamlPath = ["stages", name];
    const kind = kinds.get(st.uses);
    const stageRefs = refs.get(name) ?? new Map<string, Ref>();
    for (const [i, n] of (st.env ?? []).entries())
      if (KEY_LIKE.test(n))
        report(
          src.problem(
            [...base, "env", i],
            `${n} looks like a credential: list it under secrets: (env: values are stored in action records, the lockfile and remotes)`,
          ),
        );

    // Coordinates inherited from mapped matrix inputs (a natural join).
    let combos: Coords[] = [{}];
    for (const [, r] of stageRefs) {
      if (r.type !== "map" || !isMatrix(r.stage)) continue;
      const ups = byStage.get(r.stage) ?? [];
      combos = combos.flatMap((c) =>
        ups.filter((u) => compatible(c, u.coords)).map((u) => ({ ...c, ...u.coords })),
      );
    }
    const inherited = new Set(combos.flatMap((c) => Object.keys(c)));

    // Own matrix.
    const axes: [string, Scalar[]][] = [];
    for (const [axis, vals] of Object.entries(st.matrix ?? {})) {
      if (axis === "include" || axis === "exclude") continue;
      const at: YamlPath = [...base, "matrix", axis];
      let list: unknown = vals;
      if (typeof vals === "string")
        list = substitute(vals, { params }, (_r, msg) => report(src.problem(at, msg)));
      if (!Array.isArray(list)) {
        report(
          src.problem(at, "a matrix axis must be a list of values (or a template giving one)"),
        );
        continue;
      }
      if (list.length === 0) {
        report(
          src.problem(at, `matrix axis "${axis}" is empty: the stage would have no instances`),
        );
        continue;
      }
      if (inherited.has(axis)) {
        report(
          src.problem(at, `matrix axis "${axis}" is already an axis of an input stage`, {
            key: true,
          }),
        );
        continue;
      }
      const odd = list.findIndex((v) => !["string", "number", "boolean"].includes(typeof v));
      if (odd >= 0) {
        report(
          src.problem(
            at,
            `matrix axis "${axis}": value ${odd + 1} is not a string, number or boolean`,
          ),
        );
        continue;
      }
      // Values that print alike (1 and "1") would give two instances one id.
      const printed = new Set<string>();
      const dup = list.find((v) => {
        if (printed.has(String(v))) return true;
        printed.add(String(v));
        return false;
      });
      if (dup !== undefined) {
        report(src.problem(at, `matrix axis "${axis}" lists ${JSON.stringify(dup)} twice`));
        continue;
      }
      axes.push([axis, list as Scalar[]]);
    }
    combos = combos.flatMap((c) => product(axes).map((o) => ({ ...c, ...o })));
    const axisNames = new Set([...inherited, ...axes.map(([a]) => a)]);
    for (const [i, ex] of (st.matrix?.exclude ?? []).entries()) {
      for (const k of Object.keys(ex)) {
        if (!axisNames.has(k))
          report(
            src.problem(
              [...base, "matrix", "exclude", i, k],
              `"${k}" is not a matrix axis of this stage`,
              { key: true },
            ),
          );
      }
      const before = combos.length;
      combos = combos.filter((c) => !matches(c, ex));
      if (combos.length === before)
        report(
          src.problem([...base, "matrix", "exclude", i], "this exclude entry matches no instance"),
        );
    }
    const rules = cellRefs.get(name) ?? [];
    for (const rule of rules) {
      for (const k of Object.keys(rule.sel)) {
        if (!axisNames.has(k))
          report(
            src.problem([...rule.at, k], `"${k}" is not a matrix axis of this stage`, {
              key: true,
            }),
          );
      }
    }
    if (combos.length === 0) {
      report(
        src.problem(base, "no instances: the matrices of its inputs have no combination in common"),
      );
    }

    const timeoutMs = parseDuration(st.timeout);
    if (st.timeout !== undefined && !(timeoutMs !== undefined && timeoutMs > 0))
      report(src.problem([...base, "timeout"], "must be a duration greater than 0"));

    const list: Instance[] = [];
    for (const coords of combos) {
      const id = instanceId(name, coords);
      const inputs: Record<string, InputSpec> = {};
      const deps: InstanceId[] = [];
      const cell = rules.length ? rules.filter((rule) => matches(coords, rule.sel)) : rules;
      // Copies only for an instance that an `include` cell gives inputs of its own.
      const effective = cell.length ? new Map(stageRefs) : stageRefs;
      const origin = new Map<string, { at: YamlPath; text: string }>();
      for (const rule of cell) {
        rule.used = true;
        for (const [input, r] of rule.inputs) {
          effective.set(input, r);
          const text = (st.matrix?.include?.[rule.at[4] as number]?.inputs ?? {})[input] ?? "";
          origin.set(input, { at: [...rule.at, "inputs", input], text });
        }
      }
      for (const [input, r] of effective) {
        const from = origin.get(input);
        const text = from?.text ?? st.inputs?.[input] ?? "";
        const inputAt = (): YamlPath => from?.at ?? [...base, "inputs", input];
        if (r.type === "path") {
          inputs[input] = { type: "path", path: resolve(dir, r.path), ref: text };
          continue;
        }
        const ups = byStage.get(r.stage) ?? [];
        if (r.type === "all") {
          if (!isMatrix(r.stage)) {
            report(
              src.problem(
                inputAt(),
                `"${text}" gathers a stage that has no matrix; write "${r.stage}" instead`,
              ),
            );
            continue;
          }
          inputs[input] = {
            type: "all",
            stage: r.stage,
            ids: ups.map((u) => u.id).sort(),
            ref: text,
          };
          deps.push(...ups.map((u) => u.id));
          continue;
        }
        let match: Instance[];
        if (r.type === "pick") {
          for (const k of Object.keys(r.where)) {
            if (!ups.some((u) => k in u.coords)) {
              report(src.problem(inputAt(), `"${r.stage}" has no matrix key "${k}"`));
            }
          }
          match = ups.filter((u) =>
            Object.entries(r.where).every(([k, v]) => String(u.coords[k]) === v),
          );
          if (match.length > 1) match = match.filter((u) => compatible(coords, u.coords));
        } else {
          match = lookupMapped(r.stage, coords);
        }
        if (match.length !== 1) {
          report(
            src.problem(
              inputAt(),
              match.length === 0
                ? `"${text}" matches no instance of "${r.stage}"`
                : `"${text}" matches ${match.length} instances of "${r.stage}" (${match.map((m) => m.id).join(", ")}); pick one with ${r.stage}[key=value] or gather with ${r.stage}[*]`,
            ),
          );
          continue;
        }
        inputs[input] = { type: "one", stage: r.stage, id: match[0].id, ref: text };
        deps.push(match[0].id);
      }

      const withAt: YamlPath = [...base, "with"];
      let templateFailed = false;
      const withRaw = cell.reduce<unknown>(
        (acc, rule) => (rule.with ? deepMerge(acc, rule.with) : acc),
        st.with ?? {},
      );
      const p = substitute(withRaw, { params, matrix: coords }, (rel, msg) => {
        templateFailed = true;
        report(src.problem([...withAt, ...rel], msg));
      }) as Record<string, unknown>;
      if (kind && !templateFailed) {
        if (!kind.validate(p))
          for (const pr of ajvProblems(src, withAt, kind.validate.errors)) report(pr);
        else
          for (const issue of kind.impl.check?.(p, {
            env: st.env ?? [],
            secrets: st.secrets ?? [],
          }) ?? [])
            report(src.problem([...withAt, ...issue.path], issue.message));
      }
      const declared = kind?.impl.resources?.(p) ?? {};
      const resources: Resources = {
        cpu: st.resources?.cpu ?? declared.cpu ?? 1,
        gpu: st.resources?.gpu ?? declared.gpu ?? 0,
        memory:
          st.resources?.memory !== undefined
            ? parseMemory(st.resources.memory)
            : (declared.memory ?? 0),
      };
      list.push({
        id,
        stage: name,
        kind: st.uses,
        coords,
        params: p,
        inputs,
        deps: [...new Set(deps)],
        resources,
        retries: st.retries ?? 0,
        timeoutMs,
        env: st.env ?? [],
        secrets: st.secrets ?? [],
      });
    }
    for (const rule of rules) {
      if (!rule.used)
        report(src.problem(rule.at, "this include entry matches no instance of the matrix"));
    }
    byStage.set(name, list);
    instances.push(...list);
  }
  if (problems.length) throw new InvalidPipeline(problems);

  return instances;
}
