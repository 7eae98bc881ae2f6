/**
 * Is the dip real? Paired comparisons between the points of each curve, from
 * the evaluations' samples.jsonl (grader/paired.ts has the statistics):
 *
 * - every adjacent pair of points (base → first size → next size …),
 * - every point against the untuned base,
 * - with `start`, every stage-2 point against its starting checkpoint,
 * - with `unquantized` evaluations, each quantized point against its merged model.
 *
 * p-values are Holm-corrected within each curve (the family a reader scans when
 * asking "where does this curve move?"); the export comparisons form a family
 * of their own. Nothing here reads metrics.json: Δ comes from the samples.
 */
import { existsSync, statSync } from "node:fs";
import { join } from "node:path";
import { BadStageInput, type Scalar } from "../../engine/stage-api.js";
import { compare, holm, pair, rates, type Comparison } from "../../grader/paired.js";
import { RecordError } from "../../grader/records.js";
import { readPassRecords } from "../../grader/samples.js";
import { scalarText, type Layout, type Row } from "./rows.js";

export type StepKind = "adjacent" | "vs base" | "vs start" | "quantized vs merged";

export interface Step {
  /** The curve (series and facet values), as a label. */
  curve: string;
  kind: StepKind;
  /** A is the earlier point (or the reference), B the later one: Δ = B − A. */
  a: string;
  b: string;
  a_label: string;
  b_label: string;
  stats: Comparison;
  p_holm: number;
  significant: boolean;
}

export interface CurveSummary {
  curve: string;
  sentence: string;
}

export interface Significance {
  alpha: number;
  steps: Step[];
  sentences: CurveSummary[];
  /** Why some comparisons could not be made (no samples.jsonl, no shared problem). */
  notes: string[];
}

/** Where an evaluation's samples live, by instance id. */
export type SamplesOf = (id: string) => string | undefined;

/** The point's name on its curve: "base" or "n=1000". */
export function pointLabel(r: Row, layout: Layout): string {
  return r.x === null ? "base" : `${layout.x}=${r.x}`;
}

export function curveLabel(r: Row, layout: Layout): string {
  // No series coordinate (one student, as in the demo): the facets alone, or "all".
  const parts = r.series === null ? [] : [`${layout.series}=${scalarText(r.series)}`];
  for (const f of layout.facets)
    if (r.facets[f] !== null && r.facets[f] !== undefined)
      parts.push(`${f}=${scalarText(r.facets[f])}`);
  return parts.join(", ") || "all";
}

const same = (a: Scalar | null | undefined, b: Scalar | null | undefined) =>
  String(a ?? "") === String(b ?? "");

/** The base row of a curve: same series, and every facet it names agrees. */
function baseFor(tuned: Row, bases: Row[], layout: Layout): Row | undefined {
  return bases.find(
    (b) =>
      same(b.series, tuned.series) &&
      layout.facets.every(
        (f) =>
          b.facets[f] === null || b.facets[f] === undefined || same(b.facets[f], tuned.facets[f]),
      ),
  );
}

export interface SignificanceInput {
  rows: Row[];
  layout: Layout;
  samplesOf: SamplesOf;
  alpha: number;
  seed: number;
  /** Stage 2: the coordinate naming the starting point, and the start value → its evaluation's id. */
  start?: { coordinate: string; from: Record<string, string> };
  /** Evaluations of the merged (unquantized) models, with the coordinates of their quantized twin. */
  unquantized?: Row[];
}

export async function significance(inp: SignificanceInput): Promise<Significance> {
  const { rows, layout, alpha } = inp;
  const notes: string[] = [];
  // Each evaluation's per-problem tallies, read once (streamed) up front.
  const cache = new Map<string, Map<string, [number, number]> | null>();
  const all = [...rows, ...(inp.unquantized ?? [])];
  for (const r of all) {
    const file = inp.samplesOf(r.id);
    if (!file || !existsSync(file) || statSync(file).size === 0) {
      notes.push(`${r.id}: no samples.jsonl records, so no paired comparison with it`);
      cache.set(r.id, null);
      continue;
    }
    try {
      cache.set(r.id, rates(await readPassRecords(file)));
    } catch (e) {
      if (e instanceof RecordError) throw new BadStageInput(`evals: ${r.id}: ${e.message}`);
      throw e;
    }
  }
  const load = (id: string) => cache.get(id) ?? null;
  const byId = new Map([...rows, ...(inp.unquantized ?? [])].map((r) => [r.id, r]));
  const label = (r: Row) => pointLabel(r, layout);
  const stepOf = (curve: string, kind: StepKind, a: Row, b: Row, aLabel?: string) => {
    const ra = load(a.id);
    const rb = load(b.id);
    if (!ra || !rb) return undefined;
    const p = pair(ra, rb);
    if (p.ids.length === 0) {
      notes.push(`${a.id} and ${b.id}: no problem in common`);
      return undefined;
    }
    return {
      curve,
      kind,
      a: a.id,
      b: b.id,
      a_label: aLabel ?? label(a),
      b_label: label(b),
      stats: compare(p, { seed: inp.seed }),
      p_holm: NaN,
      significant: false,
    } satisfies Step;
  };

  const tuned = rows.filter((r) => r.x !== null);
  const bases = rows.filter((r) => r.x === null);
  const curves = new Map<string, Row[]>();
  for (const r of tuned) {
    const k = curveLabel(r, layout);
    curves.set(k, [...(curves.get(k) ?? []), r]);
  }
  const steps: Step[] = [];
  const sentences: CurveSummary[] = [];
  for (const [curve, points] of curves) {
    points.sort((a, b) => a.x! - b.x!);
    const base = baseFor(points[0], bases, layout);
    const family: Step[] = [];
    const push = (s: Step | undefined) => s && family.push(s);
    const chain = base ? [base, ...points] : points;
    for (let i = 1; i < chain.length; i++) push(stepOf(curve, "adjacent", chain[i - 1], chain[i]));
    // base → first point is already an adjacent step.
    if (base) for (const r of points.slice(1)) push(stepOf(curve, "vs base", base, r));
    if (inp.start) {
      for (const r of points) {
        const v = r.coords[inp.start.coordinate];
        const fromId = v === undefined ? undefined : inp.start.from[String(v)];
        if (fromId === undefined) continue;
        const from = byId.get(fromId);
        if (!from)
          throw new BadStageInput(
            `start.from.${String(v)} names ${fromId}, which is not among the report's evaluations` +
              ` (they are: ${[...byId.keys()].slice(0, 8).join(", ")}${byId.size > 8 ? ", …" : ""})`,
          );
        push(stepOf(curve, "vs start", from, r, `start (${from.id})`));
      }
    }
    const adj = holm(family.map((s) => s.stats.p_value));
    family.forEach((s, i) => {
      s.p_holm = adj[i];
      s.significant = adj[i] < alpha;
    });
    steps.push(...family);
    sentences.push({ curve, sentence: dipSentence(curve, base, points, family, alpha) });
  }

  // The artifact that ships: quantized (B) against its merged model (A).
  if (inp.unquantized?.length) {
    const family: Step[] = [];
    for (const m of inp.unquantized) {
      const q = rows.find(
        (r) =>
          r.x === m.x &&
          same(r.series, m.series) &&
          layout.facets.every((f) => same(r.facets[f], m.facets[f])),
      );
      if (!q) {
        notes.push(`unquantized: ${m.id} has no evaluation at the same place among evals`);
        continue;
      }
      const s = stepOf(curveLabel(q, layout), "quantized vs merged", m, q, `merged ${label(m)}`);
      if (s) {
        s.b_label = `quantized ${label(q)}`;
        family.push(s);
      }
    }
    const adj = holm(family.map((s) => s.stats.p_value));
    family.forEach((s, i) => {
      s.p_holm = adj[i];
      s.significant = adj[i] < alpha;
    });
    steps.push(...family);
  }
  return { alpha, steps, sentences, notes };
}

export function signed(x: number, decimals = 3): string {
  return (x < 0 ? "−" : "+") + Math.abs(x).toFixed(decimals);
}

export function pText(p: number): string {
  return p < 0.001 ? "<0.001" : p.toFixed(3);
}

/** "Δ −0.072 [−0.110, −0.031], Holm p=0.002" */
export function stepText(s: Step): string {
  return `Δ ${signed(s.stats.delta)} [${signed(s.stats.ci95[0])}, ${signed(s.stats.ci95[1])}], Holm p${s.p_holm < 0.001 ? "<0.001" : `=${s.p_holm.toFixed(3)}`}`;
}

/** One sentence per curve: is there a point below base, and is that significant? */
function dipSentence(
  curve: string,
  base: Row | undefined,
  points: Row[],
  family: Step[],
  alpha: number,
): string {
  if (!base) return `${curve}: no untuned base evaluation, so no dip to test.`;
  const vsBase = points
    .map((r) => family.find((s) => s.b === r.id && s.a === base.id))
    .filter((s): s is Step => s !== undefined);
  if (vsBase.length === 0)
    return `${curve}: no paired comparison with the base (see the notes below).`;
  const below = vsBase.filter((s) => s.stats.delta < 0);
  if (below.length === 0) {
    const low = vsBase.reduce((m, s) => (s.stats.delta < m.stats.delta ? s : m));
    return `${curve}: no dip: no point is below base (smallest gain at ${low.b_label}: ${stepText(low)}).`;
  }
  const sig = below.filter((s) => s.significant);
  const deepest = (xs: Step[]) => xs.reduce((m, s) => (s.stats.delta < m.stats.delta ? s : m));
  if (sig.length) {
    const d = deepest(sig);
    const others = sig.length > 1 ? ` (${sig.length} points significantly below base)` : "";
    return `${curve}: ${d.b_label} is below base: ${stepText(d)}; significant at ${alpha}${others}.`;
  }
  const d = deepest(below);
  return `${curve}: ${d.b_label} is below base: ${stepText(d)}; not significant at ${alpha}: the dip may be noise.`;
}

/** The samples.jsonl of each input evaluation folder. */
export function samplesPaths(paths: Map<string, string>): SamplesOf {
  return (id) => {
    const p = paths.get(id);
    return p === undefined ? undefined : join(p, "samples.jsonl");
  };
}
