/**
 * The report's paired comparisons on fixtures with known per-problem outcomes:
 * one student whose dip below base is real (40 of 400 problems lost), one whose
 * dip is noise (3 lost, 1 gained); the sentence, the marks on the plot, the
 * Holm correction, quantized vs merged, and stage 2 against its start.
 */
import assert from "node:assert/strict";
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { BadStageInput, type InputArtifact } from "../engine/stage-api.js";
import { compare, holm, pair, rates, type PassRecord } from "../grader/paired.js";
import report from "../stages/report/index.js";
import { artifact, ctxFor } from "./helpers/report-fixture.js";

const PROBLEMS = 400;

/** One sample per problem; problem i passes when `passes(i)`. */
function outcomes(passes: (i: number) => boolean): PassRecord[] {
  return Array.from({ length: PROBLEMS }, (_, i) => ({
    problem_id: `p${i}`,
    sample: 0,
    passed: passes(i),
  }));
}

const pass = (rs: PassRecord[]) => rs.filter((r) => r.passed).length / rs.length;

/** The samples of each point, by student and n (0 = base). */
const CURVES: Record<string, Record<number, PassRecord[]>> = {
  // Base solves p0..p119 (30%); n=1000 loses 40 of them (a real dip); then rises.
  deep: {
    0: outcomes((i) => i < 120),
    1000: outcomes((i) => i >= 40 && i < 120),
    10000: outcomes((i) => i < 150),
    30000: outcomes((i) => i < 200),
  },
  // Base solves 30%; n=1000 loses 3 and gains 1: below base, but noise.
  shallow: {
    0: outcomes((i) => i < 120),
    1000: outcomes((i) => (i >= 3 && i < 120) || i === 300),
    10000: outcomes((i) => i < 122),
    30000: outcomes((i) => i < 170),
  },
};

function evalArtifact(
  root: string,
  id: string,
  coords: Record<string, string | number>,
  rs: PassRecord[],
) {
  return artifact(root, id, coords, {
    "metrics.json": JSON.stringify({
      pass_at_1: pass(rs),
      pass_at_1_ci: [pass(rs) - 0.04, pass(rs) + 0.04],
      pass_at_1_ci_level: 0.95,
      problems: PROBLEMS,
      samples: PROBLEMS,
    }),
    "samples.jsonl": rs
      .map((r) => JSON.stringify({ ...r, text: "```python\nprint(1)\n```" }) + "\n")
      .join(""),
  });
}

describe("report: paired differences", () => {
  const root = mkdtempSync(join(tmpdir(), "valley-report-paired-"));
  after(() => rmSync(root, { recursive: true, force: true }));
  const out = join(root, "out");
  // deep@n=30000 quantized lost 10 problems against its merged twin.
  const merged = outcomes((i) => i < 210);
  // Stage 2 from deep@n=30000: +30 problems.
  const stage2 = outcomes((i) => i < 230);
  let json: {
    paired: {
      sentences: { curve: string; sentence: string }[];
      comparisons: {
        curve: string;
        kind: string;
        a: string;
        b: string;
        delta: number;
        ci95: [number, number];
        p_value: number;
        p_holm: number;
        significant: boolean;
      }[];
    };
  };

  before(async () => {
    const evals: InputArtifact[] = [];
    for (const [student, pts] of Object.entries(CURVES))
      for (const [n, rs] of Object.entries(pts)) {
        const coords: Record<string, string | number> = Number(n)
          ? { student, n: Number(n) }
          : { student };
        const id = Number(n) ? `evaluate@n=${n},student=${student}` : `base@student=${student}`;
        evals.push(evalArtifact(join(root, "in"), id, coords, rs));
      }
    const evals2 = [
      evalArtifact(
        join(root, "in"),
        "eval2@n=4000,start=s30k,student=deep",
        { student: "deep", n: 4000, start: "s30k" },
        stage2,
      ),
    ];
    const unquantized = [
      evalArtifact(
        join(root, "in"),
        "evalmerged@n=30000,student=deep",
        { student: "deep", n: 30000 },
        merged,
      ),
    ];
    mkdirSync(out);
    await report.run(
      ctxFor(
        out,
        { evals, evals2, unquantized },
        {
          title: "paired",
          start: { coordinate: "start", from: { s30k: "evaluate@n=30000,student=deep" } },
        },
      ),
    );
    json = JSON.parse(readFileSync(join(out, "table.json"), "utf8")) as typeof json;
  });

  it("one sentence per curve: a significant dip and one that may be noise", () => {
    const s = Object.fromEntries(json.paired.sentences.map((x) => [x.curve, x.sentence]));
    assert.match(
      s["student=deep"],
      /^student=deep: n=1000 is below base: Δ −0\.100 \[−0\.1\d\d, −0\.0\d\d\], Holm p<0\.001; significant at 0\.05\.$/,
    );
    assert.match(
      s["student=shallow"],
      /^student=shallow: n=1000 is below base: Δ −0\.005 \[−0\.0\d\d, \+0\.0\d\d\], Holm p=1\.000; not significant at 0\.05: the dip may be noise\.$/,
    );
    const md = readFileSync(join(out, "table.md"), "utf8");
    assert.ok(md.includes(s["student=deep"]) && md.includes(s["student=shallow"]));
    const html = readFileSync(join(out, "index.html"), "utf8");
    assert.ok(html.includes("n=1000 is below base: Δ −0.100"));
  });

  it("adjacent pairs and every point vs base, Holm-corrected within the curve", () => {
    for (const student of ["deep", "shallow"]) {
      // The export comparison shares the curve's label but is a family of its own.
      const fam = json.paired.comparisons.filter(
        (c) => c.curve === `student=${student}` && c.kind !== "quantized vs merged",
      );
      const pts = CURVES[student];
      const id = (n: number) =>
        n ? `evaluate@n=${n},student=${student}` : `base@student=${student}`;
      assert.deepEqual(
        fam.filter((c) => c.kind === "adjacent").map((c) => [c.a, c.b]),
        [
          [id(0), id(1000)],
          [id(1000), id(10000)],
          [id(10000), id(30000)],
        ],
      );
      assert.deepEqual(
        fam.filter((c) => c.kind === "vs base").map((c) => c.b),
        [id(10000), id(30000)],
      );
      for (const c of fam) {
        const n = (x: string) => Number(/n=(\d+)/.exec(x)?.[1] ?? 0);
        const want = compare(pair(rates(pts[n(c.a)]), rates(pts[n(c.b)])));
        assert.ok(Math.abs(c.delta - want.delta) < 1e-12, `${c.a} ${c.b} ${c.delta} ${want.delta}`);
        assert.equal(c.p_value, want.p_value);
      }
      const adj = holm(fam.map((c) => c.p_value));
      fam.forEach((c, i) => assert.equal(c.p_holm, adj[i]));
      assert.ok(fam.every((c) => c.p_holm >= c.p_value));
    }
    const deep = json.paired.comparisons.filter((c) => c.curve === "student=deep");
    assert.ok(deep.find((c) => c.kind === "adjacent" && c.b.includes("n=1000"))!.significant);
    const shallow = json.paired.comparisons.filter((c) => c.curve === "student=shallow");
    assert.equal(shallow.find((c) => c.b.includes("n=1000"))!.significant, false);
  });

  it("the plot marks significant differences, and only those", () => {
    const spec = JSON.parse(readFileSync(join(out, "valley.vl.json"), "utf8")) as {
      data: { values: { kind: string; instance: string; sig_base?: boolean }[] };
    };
    const ringed = spec.data.values
      .filter((v) => v.sig_base)
      .map((v) => v.instance)
      .sort();
    // deep: n=1000 (below), n=10000 (+30/400), n=30000, and its stage-2 run;
    // shallow: n=30000 only.
    assert.deepEqual(ringed, [
      "eval2@n=4000,start=s30k,student=deep",
      "evaluate@n=1000,student=deep",
      "evaluate@n=10000,student=deep",
      "evaluate@n=30000,student=deep",
      "evaluate@n=30000,student=shallow",
    ]);
    const stars = spec.data.values.filter((v) => v.kind === "step").map((v) => v.instance);
    assert.ok(stars.includes("base@student=deep → evaluate@n=1000,student=deep"));
    assert.ok(!stars.some((s) => s.includes("n=1000,student=shallow")));
    const svg = readFileSync(join(out, "valley.svg"), "utf8");
    assert.ok(svg.includes("✱"), "step marks drawn");
  });

  it("per-problem strip: a cell per evaluation, each linking to that answer's text", () => {
    const html = readFileSync(join(out, "index.html"), "utf8");
    const table = /<table id="strip-table"[\s\S]*?<\/table>/.exec(html)![0];
    const rows = [...table.matchAll(/<tr><th class="pid">([^<]+)<\/th>(.*?)<\/tr>/g)];
    assert.equal(rows.length, PROBLEMS);
    const header = [...table.matchAll(/<th title="([^"]+)">/g)].map((m) => m[1]);
    assert.equal(header.length, 9, "8 curve points + the stage-2 run");
    // p50: base solves it, deep@n=1000 does not (p40..p119 kept), shallow keeps it.
    const p50 = rows.find((r) => r[1] === "p50")!;
    const cells = [...p50[2].matchAll(/<td class="(\w+)"><a href="([^"]+)"[^>]*>([^<]+)<\/a>/g)];
    const byCol = new Map(header.map((h, i) => [h, cells[i]]));
    assert.equal(byCol.get("base@student=deep")![3], "✓");
    assert.equal(byCol.get("evaluate@n=1000,student=deep")![3], "✓");
    const p10 = rows.find((r) => r[1] === "p10")!;
    const c10 = [...p10[2].matchAll(/<td class="(\w+)"><a href="([^"]+)"[^>]*>([^<]+)<\/a>/g)];
    const k = header.indexOf("evaluate@n=1000,student=deep");
    assert.equal(c10[k][1], "no");
    assert.equal(c10[k][3], "✗");
    // The link resolves: the page exists and holds the anchor with the text.
    const [page, anchor] = c10[k][2].split("#");
    const answers = readFileSync(join(out, page), "utf8");
    assert.ok(answers.includes(`<h2 id="${anchor}">p10 `));
    assert.ok(answers.includes("print(1)"));
    assert.ok(answers.includes("valley lineage evaluate@n=1000,student=deep p10 --sample 0"));
  });

  it("quantized vs merged, and stage 2 against its start", () => {
    const q = json.paired.comparisons.find((c) => c.kind === "quantized vs merged")!;
    assert.equal(q.a, "evalmerged@n=30000,student=deep");
    assert.equal(q.b, "evaluate@n=30000,student=deep");
    assert.ok(Math.abs(q.delta - -10 / PROBLEMS) < 1e-12);
    const s = json.paired.comparisons.find((c) => c.kind === "vs start")!;
    assert.equal(s.a, "evaluate@n=30000,student=deep");
    assert.equal(s.b, "eval2@n=4000,start=s30k,student=deep");
    assert.ok(Math.abs(s.delta - 30 / PROBLEMS) < 1e-12);
    assert.ok(s.significant);
    // The stage-2 panel: the gain over the start, plotted and on the page.
    const gain = JSON.parse(readFileSync(join(out, "gain.vl.json"), "utf8")) as {
      data: { values: { instance: string; delta: number; lo: number; hi: number }[] };
    };
    assert.deepEqual(
      gain.data.values.map((v) => [v.instance, v.delta, v.lo, v.hi]),
      [[s.b, s.delta, s.ci95[0], s.ci95[1]]],
    );
    assert.ok(readFileSync(join(out, "gain.svg"), "utf8").includes("<svg"));
    assert.match(readFileSync(join(out, "index.html"), "utf8"), /id="gain-plot"/);
  });

  it("a start that names no evaluation is bad input", async () => {
    const o = join(root, "out-bad");
    mkdirSync(o);
    const a = evalArtifact(
      join(root, "in2"),
      "eval2@n=4000,start=s30k,student=deep",
      { student: "deep", n: 4000, start: "s30k" },
      stage2,
    );
    await assert.rejects(
      report.run(
        ctxFor(
          o,
          { evals: [a] },
          { start: { coordinate: "start", from: { s30k: "evaluate@n=3000,student=deep" } } },
        ),
      ),
      (e: Error) =>
        e instanceof BadStageInput &&
        /start\.from\.s30k names evaluate@n=3000,student=deep, which is not among/.test(e.message),
    );
  });
});
