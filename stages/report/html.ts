/**
 * index.html: one static, self-contained page (no script, no network): the two
 * plots inlined as SVG, the table, and for every row the digests of the
 * artifacts its numbers came from (shortened; the full digest and instance id
 * in a title attribute).
 */
import type { Row, Layout, Role, Source } from "./rows.js";
import { ciLevel, displayTable, shortDigest } from "./rows.js";
import { pairedHtml } from "./paired-tables.js";
import type { Significance } from "./significance.js";

export function esc(s: string): string {
  return s
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/"/g, "&quot;")
    .replace(/'/g, "&#39;");
}

/**
 * The SVG as it may stand inside HTML: no XML declaration or doctype, and its
 * ids (clip paths, gradients) prefixed so that two inline plots cannot
 * resolve each other's references.
 */
export function inlineSvg(svg: string, label: string, prefix: string): string {
  const body = svg
    .replace(/^<\?xml[^>]*>\s*/, "")
    .replace(/^<!DOCTYPE[^>]*>\s*/, "")
    .replace(/\bid="([^"]+)"/g, `id="${prefix}-$1"`)
    .replace(/url\(#([^)]+)\)/g, `url(#${prefix}-$1)`)
    .replace(/href="#([^"]+)"/g, `href="#${prefix}-$1"`);
  return body.replace(/^<svg\b/, `<svg role="img" aria-label="${esc(label)}"`);
}

function digestChip(role: string, s: Source): string {
  return `<span class="d"><span class="r">${esc(role)}</span> <code title="${esc(
    `${s.id}\n${s.digest}`,
  )}">${esc(shortDigest(s.digest))}</code></span>`;
}

export interface PageInput {
  title: string;
  rows: Row[];
  layout: Layout;
  decimals: number;
  roles: Role[];
  valleySvg: string;
  ratesSvg: string;
  best: Row | undefined;
  /** Every input artifact: [input name, id, digest]. */
  artifacts: [string, string, string][];
  sig: Significance;
  /** The per-problem table (strip.ts), or "" when no evaluation has samples. */
  strip: string;
  /** Stage 2's gain over the start (plots.ts gainSpec), when `start` is set. */
  gainSvg?: string;
}

const STYLE = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 8px}
figure{margin:0;overflow-x:auto}figure svg{max-width:100%;height:auto}
figcaption{color:#555;font-size:13px;margin-top:4px}
table{border-collapse:collapse;font-size:13px}
th,td{border-bottom:1px solid #e3e3e3;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f6f6f6;position:sticky;top:0}
td.n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
tr.base td{background:#fafafa}
.d{white-space:nowrap;margin-right:8px}.r{color:#777}
code{font:12px ui-monospace,monospace}
.muted{color:#666}
tr.sig td{font-weight:600}
table.strip td{text-align:center;padding:1px 4px}table.strip a{color:inherit;text-decoration:none;display:block}
table.strip td.ok{background:#d7f5dd}table.strip td.no{background:#fbe0dc}table.strip td.part{background:#fff1c2}
table.strip td.na{color:#bbb}table.strip th.pid{font-weight:normal;white-space:nowrap}.cv{color:#777;font-weight:normal;font-size:11px}
`;

export function page(p: PageInput): string {
  const t = displayTable(p.rows, p.layout, p.decimals);
  const head = [...t.header, "artifacts behind the numbers"];
  const body = p.rows
    .map((r, i) => {
      const src = `${r.id}\n${r.digest}`;
      const cells = t.cells[i].map((c, j) =>
        j >= t.firstNumeric
          ? `<td class="n" title="${esc(src)}">${esc(c)}</td>`
          : `<td>${esc(c)}</td>`,
      );
      const chips = [digestChip("eval", { id: r.id, digest: r.digest })];
      for (const role of p.roles)
        for (const s of r.provenance[role] ?? []) chips.push(digestChip(role, s));
      cells.push(`<td>${chips.join(" ")}</td>`);
      return `<tr${r.x === null ? ' class="base"' : ""} data-instance="${esc(r.id)}">${cells.join("")}</tr>`;
    })
    .join("\n");
  const best = p.best
    ? `Best pass@1: <b>${esc(p.best.metrics.pass_at_1!.toFixed(p.decimals))}</b> at <code>${esc(p.best.id)}</code>.`
    : "No evaluation reports pass@1.";
  const artifacts = p.artifacts
    .map(
      ([input, id, digest]) =>
        `<tr><td>${esc(input)}</td><td><code>${esc(id)}</code></td><td><code>${esc(digest)}</code></td></tr>`,
    )
    .join("\n");
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${esc(p.title)}</title>
<link rel="icon" href="data:,">
<style>${STYLE}</style>
</head>
<body>
<h1>${esc(p.title)}</h1>
<p class="muted">${p.rows.length} evaluations. ${best} Files: <a href="table.csv">table.csv</a>, <a href="table.json">table.json</a>, <a href="table.md">table.md</a>, <a href="valley.png">valley.png</a>, <a href="rates.png">rates.png</a>.</p>
<h2>pass@1 vs training examples</h2>
<figure id="valley-plot">${inlineSvg(p.valleySvg, "pass@1 against training examples", "valley")}
<figcaption>Log scale; the untuned base at the left (shaded) and as a dashed reference line. Bars: ${esc(ciLevel(p.rows).header.replace(/ CI$/, ""))} interval of pass@1. A ring: the point differs from the base (paired, Holm p &lt; ${p.sig.alpha}); ✱ between two points: the step between them is significant.</figcaption></figure>
${
  p.gainSvg
    ? `<h2>Stage 2: gain over the starting checkpoint</h2>
<figure id="gain-plot">${inlineSvg(p.gainSvg, "gain over the starting checkpoint", "gain")}
<figcaption>Paired Δ pass@1 of each stage-2 run against the evaluation of the checkpoint it started from, with its 95% paired-bootstrap interval; a diamond: Holm p &lt; ${p.sig.alpha}.</figcaption></figure>`
    : ""
}
${pairedHtml(p.sig)}
<h2>Completion and think-tag rates</h2>
<figure id="rates-plot">${inlineSvg(p.ratesSvg, "completion and think-tag rates against training examples", "rates")}
<figcaption>Completion: answers that end within the token budget. Think-tag: answers that begin with &lt;think&gt;.</figcaption></figure>
<h2>Results</h2>
<p class="muted">Numbers as the evaluations' metrics.json hold them, rounded for display; — means not reported. Hover a number or a digest for its source.</p>
<table id="results">
<thead><tr>${head.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead>
<tbody>
${body}
</tbody>
</table>
${p.strip}
<h2>Input artifacts</h2>
<table id="artifacts">
<thead><tr><th>input</th><th>instance</th><th>digest</th></tr></thead>
<tbody>
${artifacts}
</tbody>
</table>
</body>
</html>
`;
}
