import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { PACKAGE_ROOT } from "../engine/root.js";
import { project, valley } from "./helpers/valley.js";

/**
 * `valley lineage` (and `compare`, and the report's export comparison) on the
 * demo. The demo trains on the "train" split and evaluates the "eval" split;
 * here the evaluations read `split: all` (the first 12 problems), which puts
 * training problems into the evaluation on purpose: those must be flagged as
 * contaminated, the held-out ones must not. One size (30) keeps it short.
 * Shares the llama.cpp build with the other tests ($VALLEY_TEST_CACHE).
 */
const cache = process.env.VALLEY_TEST_CACHE ?? join(PACKAGE_ROOT, ".tmp", "test-cache");
const env = { VALLEY_CACHE: cache };

function variant(): string {
  const demo = readFileSync(join(PACKAGE_ROOT, "pipelines", "demo.yaml"), "utf8");
  const v = demo
    .replace("sizes: [10, 30, 79]", "sizes: [30]")
    .replaceAll("split: eval", "split: all\n      limit: 12");
  assert.notEqual(v, demo);
  return v;
}

interface Shown {
  outputs: Record<string, { digest: string; path: string }>;
}

function show(dir: string, id: string): Shown {
  const r = valley(["show", id, "-f", "demo.yaml", "--json"], { cwd: dir, env });
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as Shown;
}

const jsonl = <T>(file: string): T[] =>
  readFileSync(file, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as T);

test(
  "lineage on the demo: answer → model → finetune → dataset → teacher prompt; contamination flag",
  {
    timeout: 45 * 60_000,
  },
  () => {
    mkdirSync(cache, { recursive: true });
    const dir = project({ "demo.yaml": variant() });
    const run = valley(["run", "demo.yaml", "--json"], { cwd: dir, env, timeoutMs: 40 * 60_000 });
    assert.equal(run.code, 0, run.stderr.slice(-3000));

    // The truth, read directly from the outputs: what was trained on and what was evaluated.
    const trained = readFileSync(show(dir, "data@n=30").outputs["ids.txt"].path, "utf8")
      .split("\n")
      .filter(Boolean);
    assert.equal(trained.length, 30);
    const evaluated = jsonl<{ problem_id: string }>(
      show(dir, "evaluate@n=30").outputs["samples.jsonl"].path,
    ).map((s) => s.problem_id);
    assert.equal(evaluated.length, 12);
    const inBoth = evaluated.filter((p) => trained.includes(p));
    const heldOut = evaluated.filter((p) => !trained.includes(p));
    assert.ok(inBoth.length > 0 && heldOut.length > 0, `in both: ${inBoth}; held out: ${heldOut}`);
    const teacherTraces = jsonl<{
      problem_id: string;
      messages: { role: string; content: string }[];
    }>(show(dir, "teacher").outputs["traces.jsonl"].path);
    const builtin = readFileSync(join(PACKAGE_ROOT, "pipelines", "data", "demo", "problems.jsonl"));
    const builtinDigest = "sha256:" + createHash("sha256").update(builtin).digest("hex");

    const lineage = (args: string[]) => {
      const r = valley(["lineage", ...args, "-f", "demo.yaml", "--json"], { cwd: dir, env });
      assert.equal(r.code, 0, r.stderr);
      return JSON.parse(r.stdout) as {
        answer: { text: string; verdict: string; tests: unknown[] };
        model: { id: string } | null;
        finetune: {
          id: string;
          first_loss: number;
          last_loss: number;
          params: { epochs: number };
        } | null;
        dataset: {
          id: string;
          rows: number;
          contains_problem: boolean;
          training_row: {
            row: number;
            trace_id: string;
            request_key: string | null;
            prompt: { role: string; content: string }[];
          } | null;
        } | null;
        contaminated: boolean | null;
        traces: { id: string } | null;
        teacher: { id: string; kind: string } | null;
        problems: { id: string; source_files: Record<string, string> } | null;
        chain: { id: string }[];
      };
    };

    const p = inBoth[0];
    const l = lineage(["evaluate@n=30", p]);
    const sample = jsonl<{ problem_id: string; text: string; verdict: string }>(
      show(dir, "evaluate@n=30").outputs["samples.jsonl"].path,
    ).find((s) => s.problem_id === p)!;
    assert.equal(l.answer.text, sample.text);
    assert.equal(l.answer.verdict, sample.verdict);
    assert.ok(l.answer.tests.length > 0 || sample.verdict === "NO_CODE" || sample.verdict === "CE");
    assert.equal(l.model?.id, "quantized@n=30");
    assert.equal(l.finetune?.id, "tune@n=30");
    assert.equal(l.finetune?.params.epochs, 6);
    assert.ok(
      typeof l.finetune?.first_loss === "number" && typeof l.finetune.last_loss === "number",
    );
    assert.equal(l.dataset?.id, "data@n=30");
    assert.equal(l.dataset?.rows, 30);
    assert.equal(l.contaminated, true);
    assert.equal(l.dataset?.training_row?.row, trained.indexOf(p));
    assert.equal(l.dataset?.training_row?.trace_id, `${p}#0`);
    assert.equal(
      l.dataset?.training_row?.request_key,
      null,
      "imported traces were never requested",
    );
    // The chain reaches the teacher's prompt for this training row.
    const t = teacherTraces.find((x) => x.problem_id === p)!;
    assert.deepEqual(
      l.dataset?.training_row?.prompt,
      t.messages.filter((m) => m.role !== "assistant"),
    );
    assert.equal(l.traces?.id, "verified");
    assert.deepEqual([l.teacher?.id, l.teacher?.kind], ["teacher", "traces"]);
    assert.equal(l.problems?.id, "problems");
    assert.deepEqual(Object.values(l.problems!.source_files), [builtinDigest]);
    for (const id of ["merged@n=30", "student", "llama", "problems"])
      assert.ok(
        l.chain.some((n) => n.id === id),
        `chain lacks ${id}`,
      );

    const clean = lineage(["evaluate@n=30", heldOut[0]]);
    assert.equal(clean.contaminated, false);
    assert.equal(clean.dataset?.training_row, null);
    // The untuned base: no fine-tune, no dataset, nothing to be contaminated by.
    const base = lineage(["base", p]);
    assert.equal(base.finetune, null);
    assert.equal(base.contaminated, null);

    const text = valley(["lineage", "evaluate@n=30", p, "-f", "demo.yaml"], { cwd: dir, env });
    assert.equal(text.code, 0, text.stderr);
    assert.match(
      text.stdout,
      new RegExp(`CONTAMINATED: ${p.replace(/[/.]/g, "\\$&")} is training row`),
    );

    // A fine-tune's rows: problem ids as the dataset holds them, each with its trace.
    const rows = valley(["lineage", "tune@n=30", "--rows", "-f", "demo.yaml", "--json"], {
      cwd: dir,
      env,
    });
    assert.equal(rows.code, 0, rows.stderr);
    const rj = JSON.parse(rows.stdout) as { rows: { problem_id: string; trace_id: string }[] };
    assert.deepEqual(
      rj.rows.map((r) => r.problem_id),
      trained,
    );
    assert.deepEqual(
      rj.rows.map((r) => r.trace_id),
      trained.map((x) => `${x}#0`),
    );

    // Bad input: exit 2 with the closest names.
    const badProblem = valley(["lineage", "evaluate@n=30", p + "x", "-f", "demo.yaml"], {
      cwd: dir,
      env,
    });
    assert.equal(badProblem.code, 2);
    assert.match(badProblem.stderr, /did not evaluate problem .*closest: /);
    const badId = valley(["lineage", "evaluate@n=31", p, "-f", "demo.yaml"], { cwd: dir, env });
    assert.equal(badId.code, 2);
    assert.match(badId.stderr, /no instance "evaluate@n=31".*closest: "evaluate@n=30"/);

    // The artifact that ships: quantized vs merged, by compare and in the report.
    const cmp = valley(
      ["compare", "evalmerged@n=30", "evaluate@n=30", "-f", "demo.yaml", "--json"],
      {
        cwd: dir,
        env,
      },
    );
    assert.equal(cmp.code, 0, cmp.stderr);
    assert.equal((JSON.parse(cmp.stdout) as { n_problems: number }).n_problems, 12);
    const table = JSON.parse(
      readFileSync(show(dir, "report").outputs["table.json"].path, "utf8"),
    ) as {
      paired: { comparisons: { kind: string; a: string; b: string }[]; sentences: unknown[] };
    };
    assert.ok(
      table.paired.comparisons.some(
        (c) =>
          c.kind === "quantized vs merged" && c.a === "evalmerged@n=30" && c.b === "evaluate@n=30",
      ),
    );
    assert.equal(table.paired.sentences.length, 1);
  },
);

test("lineage --rows without llama.cpp: a dataset's rows traced to the teacher's traces", () => {
  const dir = project({
    "p.yaml": `version: 1
name: rows
stages:
  problems:
    uses: problems
    with: { format: builtin }
  teacher:
    uses: traces
    inputs: { problems: problems }
    with: { backend: import }
  data:
    uses: subsample
    inputs: { traces: teacher, problems: problems }
    with: { n: 10, seed: 3, split: train }
`,
  });
  const run = valley(["run", "p.yaml"], { cwd: dir });
  assert.equal(run.code, 0, run.stderr);
  const shown = JSON.parse(
    valley(["show", "data", "-f", "p.yaml", "--json"], { cwd: dir }).stdout,
  ) as Shown;
  const ids = readFileSync(shown.outputs["ids.txt"].path, "utf8").split("\n").filter(Boolean);
  const r = valley(["lineage", "data", "--rows", "-f", "p.yaml", "--json"], { cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  const j = JSON.parse(r.stdout) as {
    dataset: string;
    rows: { row: number; problem_id: string; trace_id: string; prompt: { role: string }[] }[];
  };
  assert.equal(j.dataset, "data");
  assert.deepEqual(
    j.rows.map((x) => x.problem_id),
    ids,
  );
  assert.deepEqual(
    j.rows.map((x) => x.trace_id),
    ids.map((x) => `${x}#0`),
  );
  assert.ok(
    j.rows.every((x) => x.prompt.length > 0 && x.prompt.every((m) => m.role !== "assistant")),
  );
  const text = valley(["lineage", "data", "--rows", "-f", "p.yaml"], { cwd: dir });
  assert.match(text.stdout, /^data: 10 training rows from data\n/);
  // Not an evaluation: exit 2, saying what to name instead.
  const bad = valley(["lineage", "data", ids[0], "-f", "p.yaml"], { cwd: dir });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /no samples\.jsonl: name an evaluation/);
  const teacher = valley(["lineage", "teacher", "--rows", "-f", "p.yaml"], { cwd: dir });
  assert.equal(teacher.code, 2);
  assert.match(teacher.stderr, /--rows needs a finetune/);
});
