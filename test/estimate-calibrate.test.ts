/**
 * `valley calibrate` measures grading on the instance's own problems, so it
 * can only do so once they exist. A rerun on the estimate bench's kept cache
 * recorded no `grade` because the built-in problems' key held the absolute
 * path of the valley checkout (the bench ran from another one), so they were
 * not there for this checkout, and calibrate left grading out without a word.
 * Now the built-in set is keyed by its name in the package, and calibrate
 * says what it did not measure and why.
 *
 * Needs the llama.cpp test build (llama-fixture.ts), through VALLEY_LLAMA_BIN.
 */
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { PACKAGE_ROOT } from "../engine/root.js";
import { project, valley, type Result } from "./helpers/valley.js";
import { testLlama } from "./llama-fixture.js";
import { DEFAULT_PROMPT } from "../data/prompt.js";

const out = (r: Result) => r.stdout + r.stderr;
let dir = "";
let env: Record<string, string> = {};

const pipeline = `version: 1
stages:
  problems:
    uses: problems
    with:
      format: builtin
  student:
    uses: model
    with:
      random: { preset: tiny, seed: 4 }
  evaluate:
    uses: evaluate
    inputs: { model: student, problems: problems }
    with:
      samples: 1
      max_tokens: 16
      split: eval
      parallel: 1
      threads: 1
      jobs: 1
`;

before(async () => {
  const llama = await testLlama();
  dir = project({ "p.yaml": pipeline });
  env = {
    VALLEY_CACHE: mkdtempSync(join(tmpdir(), "valley-calibrate-")),
    VALLEY_LLAMA_BIN: llama.bin,
  };
});
after(() => {
  for (const d of [dir, env.VALLEY_CACHE]) if (d) rmSync(d, { recursive: true, force: true });
});

type Calibrated = {
  calibrated: {
    kind: string;
    measured: { what: string; [k: string]: unknown }[];
    skipped?: { what: string; why: string }[];
  }[];
};
function calibrate(): { r: Result; evaluate: Calibrated["calibrated"][number] } {
  const r = valley(["calibrate", "p.yaml", "--seconds", "10", "--json"], { cwd: dir, env });
  assert.equal(r.code, 0, out(r));
  const evaluate = (JSON.parse(r.stdout) as Calibrated).calibrated.find(
    (c) => c.kind === "evaluate",
  );
  assert.ok(evaluate, r.stdout);
  return { r, evaluate };
}

test(
  "calibrate says when grading is not measured (no problems yet), and measures it once they exist",
  { timeout: 5 * 60_000 },
  () => {
    const before = calibrate();
    assert.ok(!before.evaluate.measured.some((m) => m.what === "grade"), before.r.stdout);
    assert.equal(before.evaluate.skipped?.[0]?.what, "grade", before.r.stdout);
    assert.match(before.evaluate.skipped[0].why, /no evaluate instance has its problems yet/);
    assert.match(
      before.r.stderr,
      / {2}grade: not calibrated: no evaluate instance has its problems yet/,
    );

    const problems = valley(["run", "p.yaml", "--only", "problems"], { cwd: dir, env });
    assert.equal(problems.code, 0, out(problems));
    const after = calibrate();
    const grade = after.evaluate.measured.find((m) => m.what === "grade");
    assert.ok(grade, after.r.stdout);
    // 16 samples per sandbox job, so that the first sandbox's start (which a
    // run's many samples share) is not priced into each sample
    assert.equal(grade.samples, 16, after.r.stdout);
    assert.equal(after.evaluate.skipped, undefined);
  },
);

test("the built-in problems have one key whichever checkout of valley plans them", (t) => {
  // a second installation of the package elsewhere: the compiled code, its
  // assets and the built-in data, the dependencies linked
  const other = mkdtempSync(join(tmpdir(), "valley-other-checkout-"));
  t.after(() => rmSync(other, { recursive: true, force: true }));
  for (const f of ["package.json", "schemas", "stages", "pipelines", "dist"])
    cpSync(join(PACKAGE_ROOT, f), join(other, f), {
      recursive: true,
      filter: (src) => !src.includes("/native"),
    });
  symlinkSync(join(PACKAGE_ROOT, "node_modules"), join(other, "node_modules"));
  const cli = join(other, "dist", "engine", "cli.js");
  assert.notEqual(readFileSync(cli, "utf8"), "");

  const run = valley(["run", "p.yaml", "--only", "problems"], { cwd: dir, env });
  assert.equal(run.code, 0, out(run));
  const plan = spawnSync(process.execPath, [cli, "plan", "p.yaml", "--only", "problems", "--why"], {
    cwd: dir,
    env: { ...process.env, ...env },
    encoding: "utf8",
  });
  assert.equal(plan.status, 0, plan.stderr);
  assert.match(plan.stdout, /^cached\s+problems/m, plan.stdout);
});

test(
  "the estimate counts the beginning every prompt shares once per server slot (llama-server keeps a slot's prompt)",
  { timeout: 5 * 60_000 },
  () => {
    // after the first test: the problems exist and the server is calibrated
    const r = valley(["plan", "p.yaml", "--estimate", "--json"], { cwd: dir, env });
    assert.equal(r.code, 0, out(r));
    const row = (
      JSON.parse(r.stdout) as {
        instances: { id: string; estimate: { basis: Record<string, string> } | null }[];
      }
    ).instances.find((i) => i.id === "evaluate");
    assert.ok(row?.estimate, r.stdout);
    // the default template's words before the statement, after the role; the
    // tiny model's vocabulary is a character a token
    const shared = ("user\n" + DEFAULT_PROMPT.user.split("{{statement}}")[0]).length;
    const m =
      /prompts: 47 × (\d+) tokens, less the (\d+) every prompt begins with after each slot's first/.exec(
        row.estimate.basis.hours,
      );
    assert.ok(m, row.estimate.basis.hours);
    assert.ok(Math.abs(Number(m[2]) - shared) <= 1, `${m[2]} vs ${shared}`);
    assert.ok(Number(m[1]) > Number(m[2]), row.estimate.basis.hours);
  },
);
