/**
 * From gathered `evaluate` artifacts to report rows: reading and checking each
 * metrics.json, placing it by its coordinates (series, x, facets), matching
 * provenance artifacts, ordering, and the three table formats. Numbers are
 * never recomputed here: a row holds what metrics.json holds.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import {
  BadStageInput,
  type Coords,
  type InputArtifact,
  type Scalar,
} from "../../engine/stage-api.js";

/** Roles of the optional provenance inputs, in display order. */
export const PROVENANCE_ROLES = ["model", "adapter", "dataset", "traces"] as const;
export type Role = (typeof PROVENANCE_ROLES)[number];
/** Input name of each role. */
export const ROLE_INPUT: Record<Role, string> = {
  model: "models",
  adapter: "adapters",
  dataset: "datasets",
  traces: "traces",
};

export interface Metrics {
  pass_at_1: number | null;
  pass_at_1_ci: [number, number] | null;
  /** Confidence level of pass_at_1_ci (e.g. 0.95), when metrics.json states it. */
  pass_at_1_ci_level: number | null;
  pass_at_k: Record<string, number>;
  completion_rate: number | null;
  think_rate: number | null;
  mean_completion_tokens: number | null;
  problems: number | null;
  samples: number | null;
  max_tokens: number | null;
  extraction: string | null;
}

export interface Source {
  id: string;
  digest: string;
}

export interface Row {
  /** Instance id of the evaluation. */
  id: string;
  digest: string;
  coords: Coords;
  /** Value of the series coordinate, or null when the evaluation has none. */
  series: Scalar | null;
  /** Training examples; null for the untuned base. */
  x: number | null;
  facets: Record<string, Scalar | null>;
  metrics: Metrics;
  /** Artifacts behind the row, by role (the evaluation itself not included). */
  provenance: Partial<Record<Role, Source[]>>;
}

export interface Layout {
  x: string;
  series: string;
  facets: string[];
}

function bad(a: InputArtifact, what: string): BadStageInput {
  return new BadStageInput(`evals: ${a.id} (${join(a.path, "metrics.json")}): ${what}`);
}

function num(a: InputArtifact, m: Record<string, unknown>, key: string): number | null {
  const v = m[key];
  if (v === undefined || v === null) return null;
  if (typeof v !== "number" || !Number.isFinite(v)) throw bad(a, `${key} is not a number`);
  return v;
}

/** Reads and checks one evaluation's metrics.json. */
export function readMetrics(a: InputArtifact): Metrics {
  const file = join(a.path, "metrics.json");
  if (!existsSync(file)) throw bad(a, "no metrics.json in this evaluation's output");
  let raw: unknown;
  try {
    raw = JSON.parse(readFileSync(file, "utf8"));
  } catch (e) {
    throw bad(a, `not valid JSON (${(e as Error).message})`);
  }
  if (typeof raw !== "object" || raw === null || Array.isArray(raw)) {
    throw bad(a, "not a JSON object");
  }
  const m = raw as Record<string, unknown>;
  let ci: [number, number] | null = null;
  if (m.pass_at_1_ci !== undefined && m.pass_at_1_ci !== null) {
    const c = m.pass_at_1_ci;
    if (
      !Array.isArray(c) ||
      c.length !== 2 ||
      !c.every((v) => typeof v === "number" && Number.isFinite(v))
    ) {
      throw bad(a, "pass_at_1_ci is not a pair of numbers");
    }
    ci = [c[0] as number, c[1] as number];
  }
  const passAtK: Record<string, number> = {};
  if (m.pass_at_k !== undefined && m.pass_at_k !== null) {
    if (typeof m.pass_at_k !== "object" || Array.isArray(m.pass_at_k)) {
      throw bad(a, "pass_at_k is not an object");
    }
    for (const [k, v] of Object.entries(m.pass_at_k as Record<string, unknown>)) {
      if (!/^[1-9][0-9]*$/.test(k)) throw bad(a, `pass_at_k has a key that is not a k: ${k}`);
      if (typeof v !== "number" || !Number.isFinite(v))
        throw bad(a, `pass_at_k.${k} is not a number`);
      passAtK[k] = v;
    }
  }
  const extraction = m.extraction;
  if (extraction !== undefined && extraction !== null && typeof extraction !== "string") {
    throw bad(a, "extraction is not a string");
  }
  return {
    pass_at_1: num(a, m, "pass_at_1"),
    pass_at_1_ci: ci,
    pass_at_1_ci_level: num(a, m, "pass_at_1_ci_level"),
    pass_at_k: passAtK,
    completion_rate: num(a, m, "completion_rate"),
    think_rate: num(a, m, "think_rate"),
    mean_completion_tokens: num(a, m, "mean_completion_tokens"),
    problems: num(a, m, "problems"),
    samples: num(a, m, "samples"),
    max_tokens: num(a, m, "max_tokens"),
    extraction: (extraction as string | undefined) ?? null,
  };
}

/** The training-example count of an evaluation, or null for the untuned base. */
export function xOf(a: InputArtifact, name: string): number | null {
  const v = a.coords[name];
  if (v === undefined) return null;
  if (typeof v === "string" && v.trim().toLowerCase() === "base") return null;
  const n = typeof v === "number" ? v : typeof v === "string" && v.trim() !== "" ? Number(v) : NaN;
  if (!Number.isFinite(n) || n < 0) {
    throw new BadStageInput(
      `evals: ${a.id}: coordinate ${name}=${JSON.stringify(v)} is not a number of training examples (nor 0 or "base" for the untuned base)`,
    );
  }
  return n === 0 ? null : n;
}

/** Default facets: every coordinate but x and series, in order of first appearance. */
export function defaultFacets(evals: InputArtifact[], x: string, series: string): string[] {
  const seen: string[] = [];
  for (const a of evals)
    for (const k of Object.keys(a.coords))
      if (k !== x && k !== series && !seen.includes(k)) seen.push(k);
  return seen;
}

/**
 * Provenance artifacts of one role for an evaluation: those whose coordinates
 * all agree with the evaluation's (a model at {student} fits every evaluation
 * of that student), keeping only the most specific (most shared coordinates).
 * The untuned base gets only its model: no adapter, data or traces went into it.
 */
export function matchProvenance(
  evalCoords: Coords,
  isBase: boolean,
  role: Role,
  candidates: InputArtifact[],
): Source[] {
  if (isBase && role !== "model") return [];
  let best: InputArtifact[] = [];
  let bestShared = -1;
  for (const c of candidates) {
    const keys = Object.keys(c.coords);
    if (!keys.every((k) => k in evalCoords && String(evalCoords[k]) === String(c.coords[k])))
      continue;
    if (keys.length > bestShared) {
      best = [c];
      bestShared = keys.length;
    } else if (keys.length === bestShared) best.push(c);
  }
  return best.map((c) => ({ id: c.id, digest: c.digest }));
}

function cmpScalar(a: Scalar | null, b: Scalar | null): number {
  if (a === b) return 0;
  if (a === null) return -1;
  if (b === null) return 1;
  if (typeof a === "number" && typeof b === "number") return a - b;
  return String(a).localeCompare(String(b), "en", { numeric: true });
}

/** Series, then facets, then training examples (base first): each curve is contiguous. */
export function compareRows(a: Row, b: Row, layout: Layout): number {
  let c = cmpScalar(a.series, b.series);
  if (c) return c;
  for (const f of layout.facets) {
    c = cmpScalar(a.facets[f] ?? null, b.facets[f] ?? null);
    if (c) return c;
  }
  c = cmpScalar(a.x, b.x);
  if (c) return c;
  return a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
}

/** The pass@k columns: every k any evaluation reports, except 1 (shown as pass@1). */
export function kColumns(rows: Row[]): string[] {
  const ks = new Set<string>();
  for (const r of rows) for (const k of Object.keys(r.metrics.pass_at_k)) if (k !== "1") ks.add(k);
  return [...ks].sort((a, b) => Number(a) - Number(b));
}

export const MISSING = "—";

export function fixed(v: number | null, decimals: number): string {
  return v === null ? MISSING : v.toFixed(decimals);
}

export function scalarText(v: Scalar | null | undefined): string {
  return v === null || v === undefined ? MISSING : String(v);
}

/** A displayed table: header and cells (already formatted), shared by Markdown and HTML. */
export interface DisplayTable {
  header: string[];
  /** Index of the first numeric column (right-aligned). */
  firstNumeric: number;
  cells: string[][];
}

/**
 * The interval's level for the header: the one every row states (95% when none
 * says); when rows disagree the header says "CI" and each cell its own level.
 */
export function ciLevel(rows: Row[]): { header: string; perCell: boolean } {
  const levels = new Set(
    rows.filter((r) => r.metrics.pass_at_1_ci).map((r) => r.metrics.pass_at_1_ci_level ?? 0.95),
  );
  if (levels.size <= 1) {
    const l = levels.size ? [...levels][0] : 0.95;
    return { header: `${+(l * 100).toFixed(2)}% CI`, perCell: false };
  }
  return { header: "CI", perCell: true };
}

export function displayTable(rows: Row[], layout: Layout, decimals: number): DisplayTable {
  const ks = kColumns(rows);
  const level = ciLevel(rows);
  const header = [
    layout.series,
    layout.x,
    ...layout.facets,
    "pass@1",
    level.header,
    ...ks.map((k) => `pass@${k}`),
    "completion",
    "think-tag",
    "mean tokens",
    "problems",
    "samples",
  ];
  const cells = rows.map((r) => {
    const m = r.metrics;
    return [
      scalarText(r.series),
      r.x === null ? "base" : String(r.x),
      ...layout.facets.map((f) => scalarText(r.facets[f])),
      fixed(m.pass_at_1, decimals),
      m.pass_at_1_ci
        ? `[${m.pass_at_1_ci[0].toFixed(decimals)}, ${m.pass_at_1_ci[1].toFixed(decimals)}]` +
          (level.perCell ? ` (${+((m.pass_at_1_ci_level ?? 0.95) * 100).toFixed(2)}%)` : "")
        : MISSING,
      ...ks.map((k) => fixed(m.pass_at_k[k] ?? null, decimals)),
      fixed(m.completion_rate, decimals),
      fixed(m.think_rate, decimals),
      fixed(m.mean_completion_tokens, 1),
      fixed(m.problems, 0),
      fixed(m.samples, 0),
    ];
  });
  return { header, firstNumeric: 2 + layout.facets.length, cells };
}

export function shortDigest(d: string): string {
  return d.replace(/^sha256:/, "").slice(0, 12);
}

export function markdown(rows: Row[], layout: Layout, decimals: number, title: string): string {
  const t = displayTable(rows, layout, decimals);
  const esc = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");
  const header = [...t.header, "evaluation", "digest"];
  const lines = [
    `# ${title}`,
    "",
    `${rows.length} evaluations. pass@1 with its ${ciLevel(rows).header.replace(/ CI$/, "")} interval; completion and think-tag rates; mean completion tokens. ${MISSING}: not reported.`,
    "",
    "| " + header.map(esc).join(" | ") + " |",
    "|" +
      header
        .map((_, i) => (i >= t.firstNumeric && i < t.header.length ? " ---: |" : " --- |"))
        .join(""),
  ];
  rows.forEach((r, i) => {
    const cells = [...t.cells[i], r.id, `\`${shortDigest(r.digest)}\``];
    lines.push("| " + cells.map(esc).join(" | ") + " |");
  });
  return lines.join("\n") + "\n";
}

function csvCell(v: Scalar | null): string {
  if (v === null) return "";
  const s = String(v);
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** CSV with the values as metrics.json holds them; a missing value is an empty cell. */
export function csv(rows: Row[], layout: Layout, roles: Role[]): string {
  const ks = kColumns(rows);
  const header = [
    layout.series,
    layout.x,
    ...layout.facets,
    "pass_at_1",
    "pass_at_1_ci_low",
    "pass_at_1_ci_high",
    "pass_at_1_ci_level",
    ...ks.map((k) => `pass_at_${k}`),
    "completion_rate",
    "think_rate",
    "mean_completion_tokens",
    "problems",
    "samples",
    "max_tokens",
    "extraction",
    "instance",
    "eval_digest",
    ...roles.map((r) => `${r}_digest`),
  ];
  const lines = [header.map(csvCell).join(",")];
  for (const r of rows) {
    const m = r.metrics;
    const cells: (Scalar | null)[] = [
      r.series,
      r.x === null ? "base" : r.x,
      ...layout.facets.map((f) => r.facets[f] ?? null),
      m.pass_at_1,
      m.pass_at_1_ci?.[0] ?? null,
      m.pass_at_1_ci?.[1] ?? null,
      m.pass_at_1_ci_level,
      ...ks.map((k) => m.pass_at_k[k] ?? null),
      m.completion_rate,
      m.think_rate,
      m.mean_completion_tokens,
      m.problems,
      m.samples,
      m.max_tokens,
      m.extraction,
      r.id,
      r.digest,
      ...roles.map((role) => (r.provenance[role] ?? []).map((s) => s.digest).join(" ") || null),
    ];
    lines.push(cells.map(csvCell).join(","));
  }
  return lines.join("\n") + "\n";
}

export function jsonTable(rows: Row[], layout: Layout, best: Row | undefined): unknown {
  return {
    x: layout.x,
    series: layout.series,
    facets: layout.facets,
    pass_at_k: kColumns(rows),
    best_pass_at_1: best
      ? { value: best.metrics.pass_at_1, instance: best.id, coords: best.coords }
      : null,
    rows: rows.map((r) => ({
      instance: r.id,
      coords: r.coords,
      series: r.series,
      x: r.x,
      base: r.x === null,
      facets: Object.fromEntries(layout.facets.map((f) => [f, r.facets[f] ?? null])),
      metrics: r.metrics,
      digests: {
        eval: r.digest,
        ...Object.fromEntries(
          Object.entries(r.provenance).map(([role, srcs]) => [role, srcs.map((s) => s.digest)]),
        ),
      },
      sources: {
        eval: r.id,
        ...Object.fromEntries(
          Object.entries(r.provenance).map(([role, srcs]) => [role, srcs.map((s) => s.id)]),
        ),
      },
    })),
  };
}
