/**
 * `valley compare` and the paired statistics behind it (grader/paired.ts):
 * known effects on synthetic samples, exact p-values checked against binomial
 * sums computed here with BigInt, and the CLI's bad-input exits.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import {
  compare,
  holm,
  mcnemarExact,
  pair,
  rates,
  signFlipTest,
  type PassRecord,
} from "../grader/paired.js";
import { project, valley } from "./helpers/valley.js";

/** A seeded stream in [0, 1), independent of the one under test. */
function lcg(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

/** Samples for `problems` problems, each passing with probability `rate(problem)`. */
function samples(
  problems: number,
  perProblem: number,
  rate: (i: number) => number,
  seed: number,
): PassRecord[] {
  const r = lcg(seed);
  const out: PassRecord[] = [];
  for (let i = 0; i < problems; i++)
    for (let s = 0; s < perProblem; s++)
      out.push({ problem_id: `p${i}`, sample: s, passed: r() < rate(i) });
  return out;
}

const jsonl = (rs: PassRecord[]) => rs.map((r) => JSON.stringify(r) + "\n").join("");

function choose(n: number, k: number): bigint {
  let c = 1n;
  for (let i = 1; i <= k; i++) c = (c * BigInt(n - k + i)) / BigInt(i);
  return c;
}

/** Two-sided P(|2K − m| ≥ t) for K ~ Binomial(m, ½), as an exact fraction → number. */
function binomTwoSided(m: number, t: number): number {
  let hits = 0n;
  for (let k = 0; k <= m; k++) if (Math.abs(2 * k - m) >= t) hits += choose(m, k);
  // Scale before dividing: BigInt division truncates.
  const scale = 10n ** 18n;
  return Number((hits * scale) / 2n ** BigInt(m)) / 1e18;
}

test("a strong effect: p < 0.001 and an interval that excludes 0 (one and several samples)", () => {
  // Problems differ in difficulty (shared by A and B); B is better on every one.
  const hard = (i: number) => (i % 10) / 10;
  for (const per of [1, 4]) {
    const a = samples(300, per, (i) => 0.3 * (1 - hard(i)), 1);
    const b = samples(300, per, (i) => 0.3 * (1 - hard(i)) + 0.35, 2);
    const c = compare(pair(rates(a), rates(b)), { seed: 3 });
    assert.equal(c.n_problems, 300);
    assert.ok(c.delta > 0.25 && c.delta < 0.45, `delta ${c.delta}`);
    assert.ok(c.p_value < 0.001, `p ${c.p_value} (${per} per problem)`);
    assert.ok(c.ci95[0] > 0 && c.ci95[1] > c.ci95[0], `ci ${c.ci95}`);
    assert.ok(c.ci95[0] < c.delta && c.delta < c.ci95[1]);
    assert.equal(c.method, per === 1 ? "mcnemar-exact" : "sign-flip-monte-carlo");
    assert.equal(c.both + c.neither + c.discordant.a_only + c.discordant.b_only, 300);
  }
});

test("no effect: identical inputs give Δ = 0, p = 1, a zero-width interval", () => {
  for (const per of [1, 3]) {
    const a = samples(120, per, () => 0.4, 9);
    const c = compare(pair(rates(a), rates(a)));
    assert.equal(c.delta, 0);
    assert.equal(c.p_value, 1);
    assert.deepEqual(c.ci95, [0, 0]);
    assert.equal(c.discordant.a_only + c.discordant.b_only, 0);
  }
  // Same rates, different draws: no strong evidence either way.
  const c = compare(
    pair(rates(samples(200, 1, () => 0.4, 1)), rates(samples(200, 1, () => 0.4, 2))),
  );
  assert.ok(c.p_value > 0.01, `p ${c.p_value}`);
  assert.ok(c.ci95[0] < 0 && c.ci95[1] > 0);
});

test("McNemar's exact p equals the two-sided binomial sum", () => {
  for (const [b, c] of [
    [3, 9],
    [0, 7],
    [5, 5],
    [12, 30],
    [1, 0],
  ]) {
    assert.ok(
      Math.abs(mcnemarExact(b, c) - Math.min(1, binomTwoSided(b + c, Math.abs(b - c)))) < 1e-12,
      `b=${b} c=${c}`,
    );
  }
  // Built from samples: 3 problems only A passes, 9 only B, 20 both, 40 neither.
  const a: PassRecord[] = [];
  const bb: PassRecord[] = [];
  const add = (n: number, pa: boolean, pb: boolean) => {
    for (let i = 0; i < n; i++) {
      const id = `q${a.length}`;
      a.push({ problem_id: id, sample: 0, passed: pa });
      bb.push({ problem_id: id, sample: 0, passed: pb });
    }
  };
  add(3, true, false);
  add(9, false, true);
  add(20, true, true);
  add(40, false, false);
  const r = compare(pair(rates(a), rates(bb)));
  assert.deepEqual(r.discordant, { a_only: 3, b_only: 9 });
  assert.equal(r.both, 20);
  assert.equal(r.neither, 40);
  assert.ok(Math.abs(r.p_value - binomTwoSided(12, 6)) < 1e-12);
  assert.ok(Math.abs(r.delta - 6 / 72) < 1e-12);
});

test("the exact sign-flip test equals the binomial sum when differences share one size", () => {
  // Two samples per problem, differences of ±½: the sign-flip distribution of
  // the sum is ½·(2K − m) with K ~ Binomial(m, ½).
  for (const [up, down] of [
    [11, 4],
    [7, 7],
    [16, 2],
  ]) {
    const d = [...Array(up).fill(0.5), ...Array(down).fill(-0.5), 0, 0, 0];
    const t = signFlipTest(d);
    assert.equal(t.method, "sign-flip-exact");
    assert.equal(t.flips, 2 ** (up + down));
    assert.ok(Math.abs(t.p - binomTwoSided(up + down, Math.abs(up - down))) < 1e-12);
  }
  // Above 20 non-zero differences: Monte-Carlo, close to the exact value.
  const d = [...Array(17).fill(0.5), ...Array(8).fill(-0.5)];
  const mc = signFlipTest(d, { seed: 4 });
  assert.equal(mc.method, "sign-flip-monte-carlo");
  assert.equal(mc.flips, 100_000);
  assert.ok(Math.abs(mc.p - binomTwoSided(25, 9)) < 0.01, `${mc.p} vs ${binomTwoSided(25, 9)}`);
  // Unequal sizes, enumerated by hand: sum 1.5; |±1 ± .5| ≥ 1.5 in 2 of 4.
  assert.equal(signFlipTest([1, 0.5]).p, 0.5);
});

test("Holm's adjustment", () => {
  const adj = holm([0.01, 0.04, 0.03, 0.005]);
  assert.deepEqual(
    adj.map((x) => +x.toFixed(10)),
    [0.03, 0.06, 0.06, 0.02],
  );
});

test("valley compare: files, --json shape, seed, and bad input (exit 2)", () => {
  const a = samples(60, 1, (i) => (i % 3 === 0 ? 0.9 : 0.1), 5);
  const b = samples(60, 1, (i) => (i % 3 === 0 ? 0.95 : 0.6), 6);
  const dir = project({
    "a.jsonl": jsonl(a),
    "b.jsonl": jsonl(b),
    "data/a.jsonl": jsonl(a),
    "data/b.jsonl": jsonl(b),
    "other.jsonl": jsonl(a.map((r) => ({ ...r, problem_id: "x" + r.problem_id }))),
    "bad.jsonl": jsonl(a.slice(0, 3)) + '{"problem_id": "p9", "sample": 0}\n' + jsonl(a.slice(3)),
    "valley.yaml": `version: 1
name: cmp
stages:
  ev:
    uses: shell
    matrix: { side: [a, b] }
    with:
      run: cp $IN_SRC/\${{ matrix.side }}.jsonl $OUT/samples.jsonl
    inputs: { src: ./data }
`,
  });
  const r = valley(["compare", "a.jsonl", "b.jsonl", "--json"], { cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as Record<string, unknown>;
  assert.deepEqual(Object.keys(j).sort(), [
    "both",
    "ci95",
    "delta",
    "discordant",
    "method",
    "n_problems",
    "neither",
    "p_value",
    "pass_a",
    "pass_b",
  ]);
  const expected = compare(pair(rates(a), rates(b)));
  assert.deepEqual(j, JSON.parse(JSON.stringify(expected)));
  const again = valley(["compare", "a.jsonl", "b.jsonl", "--json"], { cwd: dir });
  assert.equal(again.stdout, r.stdout, "same seed, same interval");
  const seeded = JSON.parse(
    valley(["compare", "a.jsonl", "b.jsonl", "--json", "--seed", "7"], { cwd: dir }).stdout,
  ) as { ci95: number[]; delta: number };
  assert.equal(seeded.delta, j.delta);
  assert.deepEqual(seeded.ci95, compare(pair(rates(a), rates(b)), { seed: 7 }).ci95);

  const t = valley(["compare", "a.jsonl", "b.jsonl"], { cwd: dir });
  assert.equal(t.code, 0);
  assert.match(t.stdout, /Δ \(B − A\)\s+\+0\.\d{3}\s+95% CI \[/);
  assert.match(t.stdout, /McNemar exact; sign-flip (exact|Monte-Carlo)/);

  const none = valley(["compare", "a.jsonl", "other.jsonl"], { cwd: dir });
  assert.equal(none.code, 2);
  assert.match(none.stderr, /no problem in common/);

  const bad = valley(["compare", "a.jsonl", "bad.jsonl"], { cwd: dir });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /bad\.jsonl:4: "passed" must be true or false/);
  writeFileSync(join(dir, "bad2.jsonl"), jsonl(a.slice(0, 2)) + "{not json\n");
  const bad2 = valley(["compare", "bad2.jsonl", "b.jsonl"], { cwd: dir });
  assert.equal(bad2.code, 2);
  assert.match(bad2.stderr, /bad2\.jsonl:3: not valid JSON/);

  // Instances: by id from the pipeline's recorded results.
  const run = valley(["run", "valley.yaml"], { cwd: dir });
  assert.equal(run.code, 0, run.stderr);
  const byId = valley(["compare", "ev@side=a", "ev@side=b", "--json"], { cwd: dir });
  assert.equal(byId.code, 0, byId.stderr);
  assert.deepEqual(JSON.parse(byId.stdout), j);
  const unknown = valley(["compare", "ev@side=c", "ev@side=b"], { cwd: dir });
  assert.equal(unknown.code, 2);
  assert.match(unknown.stderr, /no instance "ev@side=c".*closest: "ev@side=a", "ev@side=b"/);
});
