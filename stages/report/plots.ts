/**
 * The two plots as Vega-Lite specs, rendered server-side: Vega-Lite → Vega →
 * SVG (vega's headless "none" renderer), SVG → PNG with resvg. The heavy
 * libraries are imported by `render`, never at module top level.
 *
 * The x axis is training examples on a log scale. The untuned base has no
 * place on a log scale, so it sits at a synthetic position left of the
 * smallest size, on a shaded band, with its tick labelled "base"; its pass@1
 * is also drawn as a dashed horizontal reference line across the panel.
 */
import { existsSync } from "node:fs";
import type { Row, Layout } from "./rows.js";
import { ciLevel, scalarText } from "./rows.js";
import type { Significance } from "./significance.js";

export interface PlotOptions {
  title: string;
  width: number;
  height: number;
  columns: number;
}

interface XAxis {
  basePos: number;
  domain: [number, number];
  ticks: number[];
  /** Right edge of the shaded base band. */
  bandEnd: number;
}

function xAxis(rows: Row[]): XAxis {
  const xs = [...new Set(rows.filter((r) => r.x !== null).map((r) => r.x as number))].sort(
    (a, b) => a - b,
  );
  const min = xs.length ? xs[0] : 1000;
  const max = xs.length ? xs[xs.length - 1] : 1000;
  // Base sits 0.6 decades left of the smallest size; margins of 0.2 decades.
  const basePos = min / 4;
  const lo = basePos / 1.6;
  const hi = max * 1.6;
  return {
    basePos,
    domain: [lo, hi],
    ticks: [basePos, ...xs],
    bandEnd: Math.sqrt(basePos * min),
  };
}

/** A panel per combination of facet values; a base row joins every panel it agrees with. */
function panels(rows: Row[], layout: Layout): Map<Row, string[]> {
  const label = (r: Row) =>
    layout.facets
      .filter((f) => r.facets[f] !== null && r.facets[f] !== undefined)
      .map((f) => `${f}=${scalarText(r.facets[f])}`)
      .join(" · ") || "all";
  const tuned = rows.filter((r) => r.x !== null);
  const names = new Map<string, Row>();
  for (const r of tuned) if (!names.has(label(r))) names.set(label(r), r);
  const out = new Map<Row, string[]>();
  for (const r of tuned) out.set(r, [label(r)]);
  for (const r of rows) {
    if (r.x !== null) continue;
    const fits = [...names.entries()]
      .filter(([, p]) =>
        layout.facets.every(
          (f) =>
            r.facets[f] === null ||
            r.facets[f] === undefined ||
            String(r.facets[f]) === String(p.facets[f]),
        ),
      )
      .map(([n]) => n);
    out.set(r, fits.length ? fits : [label(r)]);
  }
  return out;
}

const SERIES_FIELD = "series";

function seriesName(r: Row): string {
  return scalarText(r.series);
}

/** Wraps a layer list in a facet when there is more than one panel. */
function wrap(
  values: Record<string, unknown>[],
  layer: unknown[],
  opts: PlotOptions,
  title: string,
): Record<string, unknown> {
  const panelNames = [...new Set(values.map((v) => v.panel as string))];
  const common = {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title,
    background: "white",
    config: { font: "sans-serif", view: { stroke: "#ddd" } },
    data: { values },
  };
  if (panelNames.length <= 1) {
    return { ...common, width: opts.width, height: opts.height, layer };
  }
  return {
    ...common,
    columns: Math.min(opts.columns, panelNames.length),
    facet: { field: "panel", type: "nominal", title: null, sort: panelNames },
    spec: { width: opts.width, height: opts.height, layer },
    resolve: { axis: { x: "independent", y: "independent" } },
  };
}

function xEncoding(ax: XAxis, layout: Layout) {
  return {
    field: "xpos",
    type: "quantitative",
    scale: { type: "log", domain: ax.domain, nice: false },
    axis: {
      values: ax.ticks,
      labelExpr: `datum.value <= ${ax.basePos * 1.0001} ? 'base' : format(datum.value, '~s')`,
      title: `training examples (${layout.x}, log scale)`,
      grid: true,
      labelOverlap: false,
    },
  };
}

function baseBand(ax: XAxis) {
  return {
    transform: [{ aggregate: [{ op: "count", as: "count" }] }],
    mark: { type: "rect", color: "#f2f2f2" },
    encoding: {
      x: { datum: ax.domain[0], type: "quantitative" },
      x2: { datum: ax.bandEnd },
    },
  };
}

/** The valley plot: pass@1 (with 95% interval bars) against training examples. */
export function valleySpec(
  rows: Row[],
  layout: Layout,
  opts: PlotOptions,
  sig?: Significance,
): Record<string, unknown> {
  const ax = xAxis(rows);
  const where = panels(rows, layout);
  const values: Record<string, unknown>[] = [];
  const steps = (sig?.steps ?? []).filter((s) => s.significant);
  const vsBase = new Set(
    steps
      .filter((s) => s.kind === "vs base" || (s.kind === "adjacent" && s.a_label === "base"))
      .map((s) => s.b),
  );
  const byId = new Map(rows.map((r) => [r.id, r]));
  for (const r of rows) {
    if (r.metrics.pass_at_1 === null) continue;
    for (const panel of where.get(r) ?? []) {
      values.push({
        kind: "point",
        sig_base: vsBase.has(r.id),
        panel,
        [SERIES_FIELD]: seriesName(r),
        base: r.x === null,
        xpos: r.x ?? ax.basePos,
        n: r.x === null ? "base" : r.x,
        pass: r.metrics.pass_at_1,
        lo: r.metrics.pass_at_1_ci?.[0] ?? null,
        hi: r.metrics.pass_at_1_ci?.[1] ?? null,
        instance: r.id,
      });
    }
  }
  // A significant step between adjacent points: ✱ at the segment's middle (log x).
  for (const s of steps) {
    if (s.kind !== "adjacent") continue;
    const a = byId.get(s.a);
    const b = byId.get(s.b);
    if (!a || !b || a.metrics.pass_at_1 === null || b.metrics.pass_at_1 === null) continue;
    const xa = a.x ?? ax.basePos;
    const xb = b.x ?? ax.basePos;
    for (const panel of where.get(b) ?? [])
      values.push({
        kind: "step",
        panel,
        [SERIES_FIELD]: seriesName(b),
        xpos: Math.sqrt(xa * xb),
        pass: (a.metrics.pass_at_1 + b.metrics.pass_at_1) / 2,
        label: "✱",
        instance: `${s.a} → ${s.b}`,
      });
  }
  const color = { field: SERIES_FIELD, type: "nominal", title: layout.series };
  const y = {
    field: "pass",
    type: "quantitative",
    title: `pass@1 (${ciLevel(rows).header})`,
    scale: { zero: true, nice: true },
    axis: { format: ".0%" },
  };
  const hasBase = values.some((v) => v.base);
  const layer: unknown[] = [];
  if (hasBase) layer.push(baseBand(ax));
  if (hasBase)
    layer.push({
      transform: [{ filter: "datum.base" }],
      mark: { type: "rule", strokeDash: [5, 4], strokeWidth: 1.5, opacity: 0.8 },
      encoding: { y, color },
    });
  layer.push(
    {
      transform: [{ filter: "isValid(datum.lo) && isValid(datum.hi)" }],
      mark: { type: "errorbar", ticks: { size: 8 }, thickness: 1.5 },
      encoding: {
        x: xEncoding(ax, layout),
        y: { field: "lo", type: "quantitative", title: `pass@1 (${ciLevel(rows).header})` },
        y2: { field: "hi" },
        color,
      },
    },
    {
      transform: [{ filter: "!datum.base" }],
      mark: { type: "line", point: { filled: true, size: 60 }, strokeWidth: 2 },
      encoding: { x: xEncoding(ax, layout), y, color, order: { field: "xpos" } },
    },
    {
      transform: [{ filter: "datum.base" }],
      mark: { type: "point", filled: true, shape: "diamond", size: 110 },
      encoding: { x: xEncoding(ax, layout), y, color },
    },
  );
  // Marks only when there is something to mark (an empty layer still draws a group).
  if (values.some((v) => v.sig_base))
    layer.push({
      transform: [{ filter: "datum.sig_base" }],
      mark: { type: "point", filled: false, shape: "circle", size: 320, strokeWidth: 2 },
      encoding: { x: xEncoding(ax, layout), y, color },
    });
  // Every layer above draws points only; the step marks get a text layer of their own.
  const pointsOnly: unknown[] = layer.map((l) => {
    const o = l as { transform?: unknown[] };
    return { ...o, transform: [{ filter: "datum.kind === 'point'" }, ...(o.transform ?? [])] };
  });
  if (values.some((v) => v.kind === "step"))
    pointsOnly.push({
      transform: [{ filter: "datum.kind === 'step'" }],
      mark: { type: "text", fontSize: 16, dy: -10 },
      encoding: { x: xEncoding(ax, layout), y, color, text: { field: "label" } },
    });
  return wrap(values, pointsOnly, opts, `${opts.title}: pass@1 vs training examples`);
}

/**
 * Stage 2: each run's gain over its starting checkpoint (paired Δ pass@1 with
 * its interval), one line per run, a rule at 0. Undefined without `start`.
 */
export function gainSpec(
  sig: Significance,
  opts: PlotOptions,
): Record<string, unknown> | undefined {
  const steps = sig.steps.filter((s) => s.kind === "vs start");
  if (steps.length === 0) return undefined;
  const values = steps.map((s) => ({
    run: `${s.curve}, ${s.b_label}`,
    start: s.a_label,
    delta: s.stats.delta,
    lo: s.stats.ci95[0],
    hi: s.stats.ci95[1],
    significant: s.significant ? `Holm p < ${sig.alpha}` : "not significant",
    instance: s.b,
  }));
  const y = { field: "run", type: "nominal", title: null, sort: null, axis: { labelLimit: 400 } };
  const x = {
    type: "quantitative",
    title: "gain over the starting checkpoint (Δ pass@1, 95% CI)",
    axis: { format: "+.0%" },
  };
  return {
    $schema: "https://vega.github.io/schema/vega-lite/v6.json",
    title: `${opts.title}: stage 2, gain over the start`,
    background: "white",
    config: { font: "sans-serif", view: { stroke: "#ddd" }, legend: { labelLimit: 400 } },
    data: { values },
    width: opts.width,
    height: Math.max(60, 28 * values.length),
    layer: [
      {
        mark: { type: "rule", strokeDash: [4, 3], color: "#888" },
        encoding: { x: { datum: 0, type: "quantitative" } },
      },
      {
        mark: { type: "rule", strokeWidth: 2 },
        encoding: {
          y,
          x: { ...x, field: "lo" },
          x2: { field: "hi" },
          color: { field: "start", type: "nominal", title: "start" },
        },
      },
      {
        mark: { type: "point", filled: true, size: 70 },
        encoding: {
          y,
          x: { ...x, field: "delta" },
          color: { field: "start", type: "nominal", title: "start" },
          shape: {
            field: "significant",
            type: "nominal",
            title: null,
            scale: {
              domain: [`Holm p < ${sig.alpha}`, "not significant"],
              range: ["diamond", "circle"],
            },
          },
        },
      },
    ],
  };
}

/** Completion rate and think-tag rate against training examples. */
export function ratesSpec(rows: Row[], layout: Layout, opts: PlotOptions): Record<string, unknown> {
  const ax = xAxis(rows);
  const where = panels(rows, layout);
  const values: Record<string, unknown>[] = [];
  const metrics: [string, (r: Row) => number | null][] = [
    ["completion rate", (r) => r.metrics.completion_rate],
    ["think-tag rate", (r) => r.metrics.think_rate],
  ];
  for (const r of rows)
    for (const [metric, get] of metrics) {
      const v = get(r);
      if (v === null) continue;
      for (const panel of where.get(r) ?? [])
        values.push({
          panel,
          [SERIES_FIELD]: seriesName(r),
          metric,
          base: r.x === null,
          xpos: r.x ?? ax.basePos,
          value: v,
          instance: r.id,
        });
    }
  const color = { field: SERIES_FIELD, type: "nominal", title: layout.series };
  const y = {
    field: "value",
    type: "quantitative",
    title: "rate",
    scale: { domain: [0, 1] },
    axis: { format: ".0%" },
  };
  const shape = {
    field: "metric",
    type: "nominal",
    title: "rate",
    scale: { domain: ["completion rate", "think-tag rate"], range: ["circle", "triangle-up"] },
  };
  const layer: unknown[] = [];
  if (values.some((v) => v.base)) layer.push(baseBand(ax));
  layer.push(
    {
      transform: [{ filter: "!datum.base" }],
      mark: { type: "line", strokeWidth: 2 },
      encoding: {
        x: xEncoding(ax, layout),
        y,
        color,
        strokeDash: {
          field: "metric",
          type: "nominal",
          title: "rate",
          scale: {
            domain: ["completion rate", "think-tag rate"],
            range: [
              [1, 0],
              [6, 4],
            ],
          },
        },
        detail: { field: "metric" },
        order: { field: "xpos" },
      },
    },
    {
      mark: { type: "point", filled: true, size: 60 },
      encoding: { x: xEncoding(ax, layout), y, color, shape },
    },
  );
  return wrap(values, layer, opts, `${opts.title}: completion and think-tag rates`);
}

/** Vega-Lite spec → SVG text. */
export async function toSvg(spec: Record<string, unknown>): Promise<string> {
  const vl = await import("vega-lite");
  const vega = await import("vega");
  const compiled = vl.compile(spec as unknown as Parameters<typeof vl.compile>[0]).spec;
  const view = new vega.View(vega.parse(compiled), { renderer: "none" });
  try {
    return await view.toSVG();
  } finally {
    view.finalize();
  }
}

const FONT_CANDIDATES = [
  "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", // Debian, Ubuntu
  "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf", // Fedora
  "/usr/share/fonts/dejavu/DejaVuSans.ttf", // Alpine, Arch
  "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/** resvg font options: DejaVu Sans when present (fast, same output everywhere), else system fonts. */
export function fontOptions(): {
  font: Record<string, unknown>;
  file: string | null;
} {
  const file = FONT_CANDIDATES.find((f) => existsSync(f)) ?? null;
  if (file) {
    return {
      file,
      font: {
        fontFiles: [file],
        loadSystemFonts: false,
        defaultFontFamily: "DejaVu Sans",
        sansSerifFamily: "DejaVu Sans",
      },
    };
  }
  return { file: null, font: { loadSystemFonts: true } };
}

/** SVG text → PNG bytes, `scale` PNG pixels per SVG pixel, on white. */
export async function toPng(svg: string, scale: number): Promise<Buffer> {
  const { Resvg } = await import("@resvg/resvg-js");
  const r = new Resvg(svg, {
    fitTo: { mode: "zoom", value: scale },
    background: "white",
    font: fontOptions().font,
  });
  return r.render().asPng();
}
