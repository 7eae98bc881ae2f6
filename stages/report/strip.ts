/**
 * The per-problem view: one row per problem, one cell per curve point (pass,
 * fail, or the share of samples passed), each cell a link to that answer's
 * text on a page of its evaluation (answers/<k>.html#p<i>). Texts are cut to
 * `ANSWER_CHARS` (head and tail) so the report stays small on 32K-token
 * answers; `valley lineage <evaluation> <problem>` prints the whole answer
 * and where it came from.
 */
import { createReadStream, existsSync, mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { esc } from "./html.js";
import type { Layout, Row } from "./rows.js";
import { curveLabel, pointLabel, type SamplesOf } from "./significance.js";

export const ANSWER_CHARS = 4000;

interface Cell {
  n: number;
  c: number;
  /** Sample 0 (the lowest sample index seen), cut to ANSWER_CHARS. */
  text: string;
  sample: number;
  verdict: string;
}

function cut(s: string): string {
  if (s.length <= ANSWER_CHARS) return s;
  const half = ANSWER_CHARS / 2;
  return `${s.slice(0, half)}\n\n[… ${s.length - ANSWER_CHARS} characters left out …]\n\n${s.slice(-half)}`;
}

/** Streams one samples.jsonl, keeping tallies and one cut text per problem. */
async function readCells(file: string): Promise<Map<string, Cell>> {
  const out = new Map<string, Cell>();
  if (!existsSync(file)) return out;
  const rl = createInterface({ input: createReadStream(file, "utf8"), crlfDelay: Infinity });
  for await (const line of rl) {
    if (line.trim() === "") continue;
    const r = JSON.parse(line) as {
      problem_id: string;
      sample: number;
      passed: boolean;
      text?: string;
      verdict?: string;
    };
    let c = out.get(r.problem_id);
    if (!c) {
      c = { n: 0, c: 0, text: "", sample: Infinity, verdict: "" };
      out.set(r.problem_id, c);
    }
    c.n++;
    if (r.passed) c.c++;
    if (r.sample < c.sample) {
      c.sample = r.sample;
      c.text = cut(r.text ?? "");
      c.verdict = r.verdict ?? (r.passed ? "AC" : "");
    }
  }
  return out;
}

const PAGE_STYLE = `body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222}
pre{background:#f7f7f7;padding:8px;white-space:pre-wrap;word-break:break-word;font:12px ui-monospace,monospace}
h2{font-size:15px;margin:24px 0 4px}.pass{color:#1a7f37}.fail{color:#b42318}:target{outline:2px solid #f0b400}`;

/**
 * Writes answers/<k>.html for each evaluation and returns the strip table's
 * HTML (empty when no evaluation has samples).
 */
export async function stripView(
  out: string,
  rows: Row[],
  layout: Layout,
  samplesOf: SamplesOf,
): Promise<string> {
  const cols: { row: Row; cells: Map<string, Cell>; page: string }[] = [];
  for (const [k, r] of rows.entries()) {
    const file = samplesOf(r.id);
    const cells = file ? await readCells(file) : new Map<string, Cell>();
    cols.push({ row: r, cells, page: `answers/${k}.html` });
  }
  const problems: string[] = [];
  const seen = new Set<string>();
  for (const c of cols)
    for (const id of c.cells.keys())
      if (!seen.has(id)) {
        seen.add(id);
        problems.push(id);
      }
  if (problems.length === 0) return "";
  const index = new Map(problems.map((p, i) => [p, i]));

  mkdirSync(join(out, "answers"), { recursive: true });
  for (const c of cols) {
    if (c.cells.size === 0) continue;
    const body = [...c.cells.entries()]
      .map(([id, cell]) => {
        const cls = cell.c === cell.n ? "pass" : cell.c === 0 ? "fail" : "";
        return `<h2 id="p${index.get(id)}">${esc(id)} <span class="${cls}">${cell.c}/${cell.n} passed</span></h2>
<p>sample ${cell.sample}: ${esc(cell.verdict)}. Full answer and its lineage: <code>valley lineage ${esc(c.row.id)} ${esc(id)} --sample ${cell.sample}</code></p>
<pre>${esc(cell.text)}</pre>`;
      })
      .join("\n");
    writeFileSync(
      join(out, c.page),
      `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>${esc(c.row.id)}: answers</title>
<link rel="icon" href="data:,"><style>${PAGE_STYLE}</style></head>
<body><h1>${esc(c.row.id)}</h1><p><a href="../index.html#strip">back to the report</a>. Answers cut to ${ANSWER_CHARS} characters (head and tail).</p>
${body}
</body></html>
`,
    );
  }

  const head = cols
    .map(
      (c) =>
        `<th title="${esc(c.row.id)}"><span class="cv">${esc(curveLabel(c.row, layout))}</span><br>${esc(pointLabel(c.row, layout))}</th>`,
    )
    .join("");
  const body = problems
    .map((p) => {
      const i = index.get(p)!;
      const cells = cols
        .map((c) => {
          const cell = c.cells.get(p);
          if (!cell) return `<td class="na" title="not evaluated">·</td>`;
          const cls = cell.c === cell.n ? "ok" : cell.c === 0 ? "no" : "part";
          const label = cell.n === 1 ? (cell.c ? "✓" : "✗") : `${cell.c}/${cell.n}`;
          return `<td class="${cls}"><a href="${c.page}#p${i}" title="${esc(`${c.row.id} · ${p}: ${cell.c}/${cell.n} passed`)}">${label}</a></td>`;
        })
        .join("");
      return `<tr><th class="pid">${esc(p)}</th>${cells}</tr>`;
    })
    .join("\n");
  return `<h2 id="strip">Per problem</h2>
<p class="muted">One row per problem, one cell per evaluation (✓ passed, ✗ failed, or samples passed / samples); a cell links to that answer's text.</p>
<table id="strip-table" class="strip">
<thead><tr><th>problem</th>${head}</tr></thead>
<tbody>
${body}
</tbody>
</table>`;
}
