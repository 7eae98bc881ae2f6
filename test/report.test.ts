/** The report stage, driven by hand the way the engine drives it. */
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { BadStageInput, type InputArtifact, type StageResult } from "../engine/stage-api.js";
import report from "../stages/report/index.js";
import { inlineSvg } from "../stages/report/html.js";
import { ciLevel, type Row } from "../stages/report/rows.js";
import {
  artifact,
  ctxFor,
  fakeInputs,
  metricsFor,
  PAPER,
  SIZES,
} from "./helpers/report-fixture.js";
import { countPixels, decodePng } from "./helpers/report-png.js";

/** Parses our CSV (quoted cells allowed, no newlines inside cells). */
function parseCsv(text: string): Record<string, string>[] {
  const lines = text.trimEnd().split("\n");
  const split = (l: string) => {
    const cells: string[] = [];
    let cur = "";
    let quoted = false;
    for (let i = 0; i < l.length; i++) {
      const ch = l[i];
      if (quoted) {
        if (ch === '"' && l[i + 1] === '"') {
          cur += '"';
          i++;
        } else if (ch === '"') quoted = false;
        else cur += ch;
      } else if (ch === '"') quoted = true;
      else if (ch === ",") {
        cells.push(cur);
        cur = "";
      } else cur += ch;
    }
    cells.push(cur);
    return cells;
  };
  const header = split(lines[0]);
  return lines.slice(1).map((l) => Object.fromEntries(split(l).map((c, i) => [header[i], c])));
}

describe("report stage", () => {
  const root = mkdtempSync(join(tmpdir(), "valley-report-"));
  after(() => rmSync(root, { recursive: true, force: true }));
  const out = join(root, "out");
  let result: StageResult | void;
  let inputs: ReturnType<typeof fakeInputs>;

  before(async () => {
    inputs = fakeInputs(join(root, "in"));
    mkdirSync(out);
    result = await report.run(ctxFor(out, inputs, { title: "valley test" }));
  });

  it("writes every output", () => {
    for (const f of [
      "table.md",
      "table.csv",
      "table.json",
      "valley.svg",
      "valley.png",
      "rates.svg",
      "rates.png",
      "index.html",
    ])
      assert.ok(existsSync(join(out, f)), f);
  });

  it("returns rows and the best pass@1 with where", () => {
    assert.deepEqual(result, {
      metrics: {
        rows: 8,
        best_pass_at_1: 0.299,
        best_instance: "evaluate@student=llama,n=30000,subset=all,stage=1",
        best_coords: { student: "llama", n: 30000, subset: "all", stage: 1 },
        // The fixture's evaluations hold no samples: nothing to pair.
        significant_steps: 0,
      },
    });
  });

  it("CSV: one row per evaluation, ordered, values as metrics.json holds them", () => {
    const rows = parseCsv(readFileSync(join(out, "table.csv"), "utf8"));
    assert.equal(rows.length, 8);
    assert.deepEqual(
      rows.map((r) => `${r.student}/${r.n}/${r.subset}/${r.stage}`),
      [
        "llama/base//",
        "llama/1000/all/1",
        "llama/10000/all/1",
        "llama/30000/all/1",
        "qwen/base//",
        "qwen/1000/all/1",
        "qwen/10000/all/1",
        "qwen/30000/all/1",
      ],
    );
    for (const r of rows) {
      const i = r.n === "base" ? 0 : SIZES.indexOf(Number(r.n)) + 1;
      const m = metricsFor(r.student, i);
      assert.equal(Number(r.pass_at_1), PAPER[r.student][i]);
      assert.equal(Number(r.pass_at_1_ci_low), (m.pass_at_1_ci as number[])[0]);
      assert.equal(Number(r.pass_at_1_ci_high), (m.pass_at_1_ci as number[])[1]);
      assert.equal(r.pass_at_1_ci_level, "0.95");
      assert.equal(Number(r.pass_at_5), (m.pass_at_k as Record<string, number>)["5"]);
      assert.equal(Number(r.completion_rate), m.completion_rate);
      assert.equal(Number(r.mean_completion_tokens), m.mean_completion_tokens);
      assert.equal(r.think_rate, m.think_rate === undefined ? "" : String(m.think_rate));
      assert.match(r.eval_digest, /^sha256:[0-9a-f]{64}$/);
      assert.match(r.model_digest, /^sha256:[0-9a-f]{64}$/);
      // Base rows: only the model is behind them.
      if (r.n === "base") {
        assert.equal(r.adapter_digest, "");
        assert.equal(r.dataset_digest, "");
        assert.equal(r.traces_digest, "");
      } else {
        assert.match(r.adapter_digest, /^sha256:/);
        assert.match(r.dataset_digest, /^sha256:/);
        assert.match(r.traces_digest, /^sha256:/);
      }
    }
    // pass@1 appears once (pass_at_k's "1" is not repeated as a column).
    assert.ok(!Object.keys(rows[0]).includes("pass_at_1_1"));
    assert.ok(Object.values(rows[0]).every((v) => v !== "undefined" && v !== "NaN"));
  });

  it("provenance: each row names the artifacts that match its coordinates", () => {
    const t = JSON.parse(readFileSync(join(out, "table.json"), "utf8")) as {
      rows: {
        instance: string;
        sources: Record<string, string[]>;
        digests: Record<string, string[] | string>;
      }[];
    };
    const row = t.rows.find(
      (r) => r.instance === "evaluate@student=qwen,n=10000,subset=all,stage=1",
    )!;
    assert.deepEqual(row.sources, {
      eval: "evaluate@student=qwen,n=10000,subset=all,stage=1",
      model: ["model@student=qwen"],
      adapter: ["tune@student=qwen,n=10000,subset=all,stage=1"],
      dataset: ["subsample@n=10000"],
      traces: ["traces"],
    });
    const byId = new Map<string, string>(
      Object.values(inputs)
        .flatMap((l) => l as InputArtifact[])
        .map((a) => [a.id, a.digest]),
    );
    assert.equal(row.digests.eval, byId.get(row.instance));
    assert.deepEqual(row.digests.adapter, [
      byId.get("tune@student=qwen,n=10000,subset=all,stage=1"),
    ]);
    const base = t.rows.find((r) => r.instance === "evaluate@student=qwen")!;
    assert.deepEqual(base.sources, {
      eval: "evaluate@student=qwen",
      model: ["model@student=qwen"],
      adapter: [],
      dataset: [],
      traces: [],
    });
  });

  it("Markdown: fixed decimals, missing values as —", () => {
    const md = readFileSync(join(out, "table.md"), "utf8");
    const lines = md.split("\n").filter((l) => l.startsWith("| "));
    assert.equal(lines.length, 10, "header, rule, 8 rows");
    assert.match(
      lines[0],
      /^\| student \| n \| subset \| stage \| pass@1 \| 95% CI \| pass@5 \| completion \| think-tag \| mean tokens \|/,
    );
    const llama1k = lines.find((l) => l.startsWith("| llama | 1000 |"))!;
    assert.match(llama1k, /\| 0\.019 \| \[0\.000, 0\.059\] \| 0\.034 \| 0\.550 \| — \| 900\.0 \|/);
    const qwenBase = lines.find((l) => l.startsWith("| qwen | base |"))!;
    assert.match(qwenBase, /^\| qwen \| base \| — \| — \| 0\.127 \|/);
  });

  it("valley.svg: one line per student, a point per evaluation, base reference lines", () => {
    const svg = readFileSync(join(out, "valley.svg"), "utf8");
    const group = (cls: string) =>
      [
        ...svg.matchAll(new RegExp(`<g class="mark-${cls} role-mark[^"]*"[^>]*>(.*?)</g>`, "gs")),
      ].map((m) => m[1]);
    const lines = group("line").join("");
    assert.equal((lines.match(/<path /g) ?? []).length, 2, "two student lines");
    const symbols = group("symbol").join("");
    assert.equal((symbols.match(/<path /g) ?? []).length, 8, "6 tuned points + 2 base points");
    // Base reference lines (dashed rules) and CI bars.
    const rules = group("rule").join("");
    assert.ok((rules.match(/stroke-dasharray/g) ?? []).length >= 2, "dashed base rules");
    assert.ok((rules.match(/<line /g) ?? []).length >= 2 + 8, "rules: base lines + error bars");
    assert.match(svg, />base</);
    assert.match(svg, />10k</);
    assert.match(svg, />qwen</);
    assert.match(svg, />llama</);
  });

  it("rates.svg: completion and think-tag lines per student", () => {
    const svg = readFileSync(join(out, "rates.svg"), "utf8");
    const lines = [...svg.matchAll(/<g class="mark-line role-mark[^"]*"[^>]*>(.*?)<\/g>/gs)]
      .map((m) => m[1])
      .join("");
    assert.equal((lines.match(/<path /g) ?? []).length, 4, "2 students × 2 rates");
    assert.match(svg, /think-tag rate/);
  });

  it("PNGs: valid, of the SVG's size × pngScale, with a drawn plot", () => {
    for (const name of ["valley", "rates"]) {
      const svg = readFileSync(join(out, `${name}.svg`), "utf8");
      const [, w, h] = svg.match(/<svg[^>]* width="(\d+)" height="(\d+)"/)!;
      const img = decodePng(readFileSync(join(out, `${name}.png`)));
      assert.equal(img.width, Number(w) * 2);
      assert.equal(img.height, Number(h) * 2);
      const c = countPixels(img);
      assert.ok(c.ink > c.total * 0.02, `${name}: ink ${c.ink}/${c.total}`);
      assert.ok(c.colored > 500, `${name}: coloured pixels ${c.colored}`);
      assert.ok(c.ink < c.total * 0.5, `${name}: not mostly dark`);
    }
  });

  it("index.html: plots inline, a row per evaluation, digests shortened with full ones in titles", () => {
    const html = readFileSync(join(out, "index.html"), "utf8");
    assert.equal((html.match(/<svg /g) ?? []).length, 2);
    assert.equal((html.match(/<tr[^>]* data-instance=/g) ?? []).length, 8);
    const d = (inputs.evals as InputArtifact[])[0].digest;
    assert.ok(
      html.includes(
        `title="${(inputs.evals as InputArtifact[])[0].id}\n${d}">${d.slice(7, 19)}</code>`,
      ),
    );
    assert.doesNotMatch(html, /<script/);
    assert.doesNotMatch(html, /https?:\/\/(?!www\.w3\.org)/);
  });

  it("an evaluation without metrics.json is an BadStageInput naming it", async () => {
    const dir = join(root, "bad");
    const good = artifact(
      dir,
      "evaluate@student=qwen,n=1000",
      { student: "qwen", n: 1000 },
      {
        "metrics.json": JSON.stringify(metricsFor("qwen", 1)),
      },
    );
    const empty = artifact(
      dir,
      "evaluate@student=qwen,n=10000",
      { student: "qwen", n: 10000 },
      {
        "samples.jsonl": "",
      },
    );
    mkdirSync(join(dir, "out"));
    await assert.rejects(
      () => Promise.resolve(report.run(ctxFor(join(dir, "out"), { evals: [good, empty] }))),
      (e: Error) =>
        e instanceof BadStageInput &&
        e.message.includes("evaluate@student=qwen,n=10000") &&
        e.message.includes("metrics.json"),
    );
  });

  it("a wrongly typed metric and an x that is no number are InputErrors", async () => {
    const dir = join(root, "bad2");
    const typed = artifact(
      dir,
      "evaluate@n=1000",
      { n: 1000 },
      {
        "metrics.json": JSON.stringify({ pass_at_1: "0.2" }),
      },
    );
    mkdirSync(join(dir, "out"));
    await assert.rejects(
      () => Promise.resolve(report.run(ctxFor(join(dir, "out"), { evals: [typed] }))),
      (e: Error) =>
        e instanceof BadStageInput && /evaluate@n=1000.*pass_at_1 is not a number/.test(e.message),
    );
    const word = artifact(
      dir,
      "evaluate@n=lots",
      { n: "lots" },
      {
        "metrics.json": JSON.stringify({ pass_at_1: 0.2 }),
      },
    );
    await assert.rejects(
      () => Promise.resolve(report.run(ctxFor(join(dir, "out"), { evals: [word] }))),
      (e: Error) => e instanceof BadStageInput && e.message.includes("evaluate@n=lots"),
    );
  });
  it("facets: stage-2 runs become their own panels, the base joins each", async () => {
    const dir = join(root, "facets");
    const evals = [...(fakeInputs(join(dir, "in")).evals as InputArtifact[])];
    for (const subset of ["correct", "incorrect"])
      evals.push(
        artifact(
          join(dir, "in"),
          `evaluate@student=qwen,n=6000,subset=${subset},stage=2`,
          { student: "qwen", n: 6000, subset, stage: 2 },
          { "metrics.json": JSON.stringify(metricsFor("qwen", subset === "correct" ? 2 : 3)) },
        ),
      );
    mkdirSync(join(dir, "out"));
    const res = await report.run(ctxFor(join(dir, "out"), { evals }, { pngScale: 1 }));
    assert.equal((res as StageResult).metrics?.rows, 10);
    const rows = parseCsv(readFileSync(join(dir, "out", "table.csv"), "utf8"));
    assert.deepEqual(
      rows.filter((r) => r.student === "qwen").map((r) => `${r.n}/${r.subset}/${r.stage}`),
      ["base//", "1000/all/1", "10000/all/1", "30000/all/1", "6000/correct/2", "6000/incorrect/2"],
    );
    const svg = readFileSync(join(dir, "out", "valley.svg"), "utf8");
    for (const panel of [
      "subset=all · stage=1",
      "subset=correct · stage=2",
      "subset=incorrect · stage=2",
    ])
      assert.ok(svg.includes(`>${panel}<`), panel);
    // Base diamonds: 2 students × 3 panels; tuned points: 6 + 2.
    const symbols = [...svg.matchAll(/<g class="mark-symbol role-mark[^"]*"[^>]*>(.*?)<\/g>/gs)]
      .map((m) => m[1])
      .join("");
    assert.equal((symbols.match(/<path /g) ?? []).length, 6 + 8);
  });

  it("two evaluations at one place are an BadStageInput", async () => {
    const dir = join(root, "dup");
    const a = artifact(
      dir,
      "evaluate@n=1000,seed=1",
      { n: 1000, seed: 1 },
      { "metrics.json": "{}" },
    );
    const b = artifact(
      dir,
      "evaluate@n=1000,seed=2",
      { n: 1000, seed: 2 },
      { "metrics.json": "{}" },
    );
    mkdirSync(join(dir, "out"));
    await assert.rejects(
      () =>
        Promise.resolve(report.run(ctxFor(join(dir, "out"), { evals: [a, b] }, { facets: [] }))),
      (e: Error) => e instanceof BadStageInput && /seed=1 and .*seed=2/.test(e.message),
    );
  });

  it("inline SVG ids are prefixed per plot", () => {
    const s = inlineSvg(
      '<svg a="1"><clipPath id="clip1"/><g clip-path="url(#clip1)"/></svg>',
      "x",
      "valley",
    );
    assert.equal(
      s,
      '<svg role="img" aria-label="x" a="1"><clipPath id="valley-clip1"/><g clip-path="url(#valley-clip1)"/></svg>',
    );
  });
  it("the interval's level comes from metrics.json", () => {
    const row = (level: number | null) =>
      ({ metrics: { pass_at_1_ci: [0.1, 0.2], pass_at_1_ci_level: level } }) as unknown as Row;
    assert.deepEqual(ciLevel([row(0.9), row(0.9)]), { header: "90% CI", perCell: false });
    assert.deepEqual(ciLevel([row(null)]), { header: "95% CI", perCell: false });
    assert.deepEqual(ciLevel([row(0.9), row(0.95)]), { header: "CI", perCell: true });
  });
});
