/**
 * The paired comparisons (significance.ts) as Markdown, JSON and HTML: one
 * sentence per curve about the dip, then one row per comparison.
 */
import { esc } from "./html.js";
import { pText, signed, type Significance, type Step } from "./significance.js";

const METHOD: Record<string, string> = {
  "mcnemar-exact": "McNemar exact",
  "sign-flip-exact": "sign-flip exact",
  "sign-flip-monte-carlo": "sign-flip Monte-Carlo",
  none: "no difference",
};

export function explanation(sig: Significance): string {
  return (
    "Δ pass@1 = B − A over the problems both evaluated; 95% paired-bootstrap interval " +
    "(10,000 resamples of problems); p: McNemar's exact test with one sample per problem, " +
    "else a paired sign-flip permutation test (exact up to 20 differing problems, else 100,000 flips); " +
    `Holm-corrected within each curve; * marks Holm p < ${sig.alpha}.`
  );
}

function cells(s: Step): string[] {
  return [
    s.curve,
    s.kind,
    s.a_label,
    s.b_label,
    String(s.stats.n_problems),
    signed(s.stats.delta),
    `[${signed(s.stats.ci95[0])}, ${signed(s.stats.ci95[1])}]`,
    pText(s.stats.p_value),
    pText(s.p_holm) + (s.significant ? " *" : ""),
    METHOD[s.stats.method] ?? s.stats.method,
  ];
}

const HEADER = [
  "curve",
  "comparison",
  "A",
  "B",
  "problems",
  "Δ (B − A)",
  "95% CI",
  "p",
  "Holm p",
  "test",
];

export function pairedMarkdown(sig: Significance): string {
  const esc = (s: string) => s.replace(/\|/g, "\\|").replace(/\n/g, " ");
  const lines = ["", "## Paired differences", "", explanation(sig), ""];
  for (const s of sig.sentences) lines.push(`- ${s.sentence}`);
  if (sig.steps.length) {
    lines.push(
      "",
      "| " + HEADER.join(" | ") + " |",
      "|" + HEADER.map((_, i) => (i >= 4 && i <= 8 ? " ---: |" : " --- |")).join(""),
    );
    for (const s of sig.steps) lines.push("| " + cells(s).map(esc).join(" | ") + " |");
  }
  for (const n of sig.notes) lines.push("", `Note: ${n}`);
  return lines.join("\n") + "\n";
}

export function pairedJson(sig: Significance): unknown {
  return {
    alpha: sig.alpha,
    correction: "holm, within each curve",
    sentences: sig.sentences,
    comparisons: sig.steps.map((s) => ({
      curve: s.curve,
      kind: s.kind,
      a: s.a,
      b: s.b,
      a_label: s.a_label,
      b_label: s.b_label,
      ...s.stats,
      p_holm: s.p_holm,
      significant: s.significant,
    })),
    notes: sig.notes,
  };
}

export function pairedHtml(sig: Significance): string {
  const rows = sig.steps
    .map((s) => {
      const c = cells(s);
      return `<tr${s.significant ? ' class="sig"' : ""} data-a="${esc(s.a)}" data-b="${esc(s.b)}">${c
        .map((v, i) => `<td${i >= 4 && i <= 8 ? ' class="n"' : ""}>${esc(v)}</td>`)
        .join("")}</tr>`;
    })
    .join("\n");
  return `<h2>Is the dip real? Paired differences</h2>
<ul id="dip-sentences">${sig.sentences.map((s) => `<li>${esc(s.sentence)}</li>`).join("")}</ul>
<p class="muted">${esc(explanation(sig))}</p>
${
  sig.steps.length
    ? `<table id="paired">
<thead><tr>${HEADER.map((h) => `<th>${esc(h)}</th>`).join("")}</tr></thead>
<tbody>
${rows}
</tbody>
</table>`
    : ""
}
${sig.notes.map((n) => `<p class="muted">Note: ${esc(n)}</p>`).join("\n")}`;
}
