/**
 * The differential suite: valley's `lcb` and `taco` semantics against the
 * verdicts LiveCodeBench's and TACO's own harnesses gave for the same answers
 * and tests (test/fixtures/semantics/*-cases.json, computed once by
 * scripts/semantics-reference.py from their code at the commits the files
 * record). This file runs valley only.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { gradeMany } from "../grader/grade.js";
import { projectRoot } from "../grader/paths.js";
import { probeSandbox } from "../grader/sandbox.js";
import { LCB_COMMIT, TACO_COMMIT, pyRound3, tacoStdoutOk } from "../grader/semantics.js";
import type { Problem, SampleResult } from "../grader/types.js";

interface Case {
  name: string;
  problem: Problem;
  answer: string;
  strict_passes: boolean;
  reference: { passed: boolean; results: unknown[] };
}
interface Fixture {
  reference: string;
  commit: string;
  python: string;
  cases: Case[];
}

const load = (name: string): Fixture =>
  JSON.parse(
    readFileSync(join(projectRoot(), "test", "fixtures", "semantics", name), "utf8"),
  ) as Fixture;

for (const [file, semantics, commit, least] of [
  ["lcb-cases.json", "lcb", LCB_COMMIT, 40],
  ["taco-cases.json", "taco", TACO_COMMIT, 15],
] as const) {
  describe(`${semantics} semantics against ${file}`, { skip: process.platform !== "linux" }, () => {
    const fx = load(file);
    let mine: SampleResult[] = [];
    let strict: SampleResult[] = [];
    let unavailable: string | null = null;

    before(async () => {
      unavailable = await probeSandbox("bwrap");
      if (unavailable) return;
      const jobs = fx.cases.map((c) => ({ problem: c.problem, text: c.answer }));
      mine = await gradeMany(jobs, { semantics, jobs: 2 });
      strict = await gradeMany(jobs, { semantics: "strict", jobs: 2 });
    });

    it("the sandbox starts", () => assert.equal(unavailable, null));

    it(`the verdicts come from ${fx.reference} at the commit valley matches`, () => {
      assert.equal(fx.commit, commit);
      assert.ok(fx.cases.length >= least, `${fx.cases.length} cases, want ≥ ${least}`);
    });

    it("the cases differ from strict in both directions", () => {
      const pass = (r: SampleResult) => r.verdict === "AC";
      const refOnly = fx.cases.filter((c, k) => c.reference.passed && !pass(strict[k]));
      const strictOnly = fx.cases.filter((c, k) => !c.reference.passed && pass(strict[k]));
      assert.ok(refOnly.length >= 3, `${semantics} passes, strict fails: ${refOnly.length}`);
      assert.ok(strictOnly.length >= 3, `strict passes, ${semantics} fails: ${strictOnly.length}`);
    });

    for (const [k, c] of fx.cases.entries()) {
      it(`${c.name}: ${c.reference.passed ? "passes" : "fails"} as in ${fx.reference}`, () => {
        const r = mine[k];
        assert.ok(r, "graded");
        assert.notEqual(r.verdict, "IE", r.message);
        assert.equal(r.semantics, semantics);
        assert.equal(
          r.verdict === "AC",
          c.reference.passed,
          `${c.name}: valley ${r.verdict} ${JSON.stringify(r.tests.at(-1) ?? r.message)}, reference ${JSON.stringify(c.reference)}`,
        );
        assert.equal(strict[k].verdict === "AC", c.strict_passes, `strict: ${strict[k].verdict}`);
      });
    }
  });
}

describe("TACO's stdout comparison (pure parts)", () => {
  it("Python's round(x, 3): ties to even, otherwise correctly rounded", () => {
    assert.equal(pyRound3(0.0625), 0.062);
    assert.equal(pyRound3(0.1875), 0.188);
    assert.equal(pyRound3(2.0005), 2.001); // above the tie in binary, as Python says
    assert.equal(pyRound3(1.0005), 1.0); // below it
    assert.equal(pyRound3(-0.0625), -0.062);
  });
  it("accepts what TACO accepts from a string and rejects the rest", () => {
    assert.equal(tacoStdoutOk("6\n", "6"), true);
    assert.equal(tacoStdoutOk("12", "1 2"), true); // characters of a token vs tokens of a line
    assert.equal(tacoStdoutOk("2 1\n", "1\n2\n"), true); // lines as a set
    assert.equal(tacoStdoutOk("2\n", "2.000\n"), true); // rounded floats
    assert.equal(tacoStdoutOk("0.5\n", "0.50001\n"), false);
    assert.equal(tacoStdoutOk("1 2\n", "1 3\n"), false);
  });
});
