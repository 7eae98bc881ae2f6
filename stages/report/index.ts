/**
 * report: gathers `evaluate` artifacts into tables (Markdown, CSV, JSON), the
 * valley plot and a rates plot (SVG + PNG), and a static HTML page that shows,
 * for every row, the digests of the artifacts behind its numbers.
 *
 * Inputs: `evals` (required; `evaluate[*]`), and optionally `models`,
 * `adapters`, `datasets`, `traces`, matched to each evaluation by shared
 * coordinates. Vega, Vega-Lite and resvg are imported inside `run`.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { BadStageInput, type InputArtifact, type StageKind } from "../../engine/stage-api.js";
import { page } from "./html.js";
import { significance, samplesPaths } from "./significance.js";
import { stripView } from "./strip.js";
import { pairedJson, pairedMarkdown } from "./paired-tables.js";
import { gainSpec, ratesSpec, toPng, toSvg, valleySpec, fontOptions } from "./plots.js";
import {
  PROVENANCE_ROLES,
  ROLE_INPUT,
  compareRows,
  csv,
  defaultFacets,
  jsonTable,
  markdown,
  matchProvenance,
  readMetrics,
  xOf,
  type Layout,
  type Role,
  type Row,
} from "./rows.js";

export interface ReportParams {
  x: string;
  series: string;
  facets?: string[];
  title: string;
  decimals: number;
  width: number;
  height: number;
  pngScale: number;
  columns: number;
  alpha: number;
  start?: { coordinate: string; from: Record<string, string> };
}

const report: StageKind<ReportParams> = {
  kind: "report",
  // 2: paired comparisons (table.md, table.json, index.html, plot marks).
  version: "2",
  resources: () => ({ cpu: 1, memory: 512 }),
  check(params) {
    const issues = [];
    if (params.x === params.series)
      issues.push({ path: ["series"], message: "series and x name the same coordinate" });
    for (const [i, f] of (params.facets ?? []).entries())
      if (f === params.x || f === params.series)
        issues.push({ path: ["facets", i], message: `${f} is already the x or series coordinate` });
    return issues;
  },
  // tables and plots from the inputs' metrics (samples files, a few MB): seconds,
  // plus the PNG renderer's start; nothing here scales with a model
  estimate: () => ({
    // the demo's report took 0.8 s (test/bench/estimate.mjs, 2026-12-03)
    hours: [0.5 / 3600, 60 / 3600],
    device: "cpu",
    usd: null,
    basis: { hours: "assumed: 0.5-60 s (tables and plots from the inputs' metrics and samples)" },
    output: {},
  }),
  async run(ctx) {
    const p = ctx.params;
    // Every input named evals* (e.g. stage-1 and stage-2 evaluations from two
    // stages), and `base`: evaluations of untuned models (no x coordinate, so
    // they land at the left).
    const evalInputs = Object.keys(ctx.inputs)
      .filter((n) => n === "evals" || n === "base" || /^evals\w+$/.test(n))
      .sort();
    const evals = evalInputs.flatMap((n) => ctx.inputList(n, { optional: true }));
    if (evals.length === 0) {
      throw new BadStageInput(
        "report: input `evals` is missing or empty (use `evals: evaluate[*]`)",
      );
    }
    const layout: Layout = {
      x: p.x,
      series: p.series,
      facets: p.facets ?? defaultFacets(evals, p.x, p.series),
    };
    const roles: Role[] = PROVENANCE_ROLES.filter((r) => ctx.inputs[ROLE_INPUT[r]] !== undefined);
    const total = evals.length + 3;
    ctx.progress(0, total, "reading metrics");

    const toRow = (a: InputArtifact, i: number): Row => {
      ctx.signal.throwIfAborted();
      const metrics = readMetrics(a);
      const x = xOf(a, p.x);
      const provenance: Row["provenance"] = {};
      for (const role of roles) {
        provenance[role] = matchProvenance(
          a.coords,
          x === null,
          role,
          ctx.inputList(ROLE_INPUT[role], { optional: true }),
        );
      }
      ctx.progress(i + 1, total, a.id);
      return {
        id: a.id,
        digest: a.digest,
        coords: a.coords,
        series: a.coords[p.series] ?? null,
        x,
        facets: Object.fromEntries(layout.facets.map((f) => [f, a.coords[f] ?? null])),
        metrics,
        provenance,
      };
    };
    const rows: Row[] = evals.map(toRow);
    rows.sort((a, b) => compareRows(a, b, layout));
    for (let i = 1; i < rows.length; i++) {
      if (compareRows({ ...rows[i - 1], id: "" }, { ...rows[i], id: "" }, layout) === 0) {
        throw new BadStageInput(
          `evals: ${rows[i - 1].id} and ${rows[i].id} sit at the same place (${layout.series}, ${layout.x}, ${layout.facets.join(", ") || "no facets"}); name the coordinate that tells them apart in \`facets\``,
        );
      }
    }

    // Merged (unquantized) twins of some evaluations: compared, not plotted.
    const unquantized = ctx.inputList("unquantized", { optional: true }).map(toRow);
    const paths = new Map(
      [...evals, ...ctx.inputList("unquantized", { optional: true })].map(
        (a) => [a.id, a.path] as const,
      ),
    );
    ctx.progress(evals.length, total, "paired comparisons");
    const sig = await significance({
      rows,
      layout,
      samplesOf: samplesPaths(paths),
      alpha: p.alpha,
      seed: 0,
      start: p.start,
      unquantized,
    });

    let best: Row | undefined;
    for (const r of rows)
      if (r.metrics.pass_at_1 !== null && (!best || r.metrics.pass_at_1 > best.metrics.pass_at_1!))
        best = r;

    writeFileSync(
      join(ctx.out, "table.md"),
      markdown(rows, layout, p.decimals, p.title) + pairedMarkdown(sig),
    );
    writeFileSync(join(ctx.out, "table.csv"), csv(rows, layout, roles));
    writeFileSync(
      join(ctx.out, "table.json"),
      JSON.stringify(
        { ...(jsonTable(rows, layout, best) as object), paired: pairedJson(sig) },
        null,
        2,
      ) + "\n",
    );

    const opts = { title: p.title, width: p.width, height: p.height, columns: p.columns };
    const font = fontOptions();
    if (!font.file) ctx.log.warn("no DejaVu Sans font found; PNG text uses system fonts");
    const plots: Record<string, string> = {};
    const gain = gainSpec(sig, opts);
    for (const [name, spec] of [
      ["valley", valleySpec(rows, layout, opts, sig)],
      ["rates", ratesSpec(rows, layout, opts)],
      ...(gain ? [["gain", gain] as const] : []),
    ] as const) {
      ctx.signal.throwIfAborted();
      ctx.progress(evals.length + (name === "valley" ? 1 : 2), total, `plot ${name}`);
      const svg = await toSvg(spec);
      plots[name] = svg;
      writeFileSync(join(ctx.out, `${name}.vl.json`), JSON.stringify(spec, null, 2) + "\n");
      writeFileSync(join(ctx.out, `${name}.svg`), svg);
      writeFileSync(join(ctx.out, `${name}.png`), await toPng(svg, p.pngScale));
    }

    const artifacts: [string, string, string][] = [];
    for (const name of ["evals", ...roles.map((r) => ROLE_INPUT[r])])
      for (const a of ctx.inputList(name, { optional: true }))
        artifacts.push([name, a.id, a.digest]);
    const strip = await stripView(ctx.out, rows, layout, samplesPaths(paths));
    writeFileSync(
      join(ctx.out, "index.html"),
      page({
        title: p.title,
        rows,
        layout,
        decimals: p.decimals,
        roles,
        valleySvg: plots.valley,
        ratesSvg: plots.rates,
        best,
        artifacts,
        sig,
        strip,
        gainSvg: plots.gain,
      }),
    );
    ctx.progress(total, total, "done");
    ctx.log.info(
      { rows: rows.length, best: best?.id, pass_at_1: best?.metrics.pass_at_1 },
      "report written",
    );
    return {
      metrics: {
        rows: rows.length,
        best_pass_at_1: best?.metrics.pass_at_1 ?? null,
        best_instance: best?.id ?? null,
        best_coords: best?.coords ?? null,
        significant_steps: sig.steps.filter((s) => s.significant).length,
      },
    };
  },
};

export default report;
