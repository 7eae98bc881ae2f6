import { test } from "node:test";
import assert from "node:assert/strict";
import { readdirSync, readFileSync, existsSync, copyFileSync, mkdtempSync } from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { PACKAGE_ROOT } from "../engine/root.js";
import { valley, project } from "./helpers/valley.js";

const BAD = join(PACKAGE_ROOT, "test", "fixtures", "bad");

test("every malformed pipeline exits 2 with file:line:col and the key, and writes no cache", () => {
  const files = readdirSync(BAD).filter((f) => f.endsWith(".yaml"));
  assert.ok(files.length >= 25, `corpus has ${files.length} pipelines`);
  for (const f of files) {
    const dir = mkdtempSync(join(tmpdir(), "valley-bad-"));
    const file = join(dir, f);
    copyFileSync(join(BAD, f), file);
    const header = readFileSync(file, "utf8").split("\n")[0];
    const m = /^# expect: (\d+:\d+) (.*)$/.exec(header);
    assert.ok(m, `${f}: header "# expect: LINE:COL text"`);
    for (const cmd of [
      ["plan", file],
      ["run", file],
    ]) {
      const r = valley(cmd, { cwd: dir });
      assert.equal(r.code, 2, `${f} (${cmd[0]}): exit ${r.code}\n${r.stderr}`);
      const hit = r.stderr
        .split("\n")
        .find((l) => l.startsWith(`${file}:${m[1]}:`) && l.includes(m[2]));
      assert.ok(hit, `${f} (${cmd[0]}): expected "${file}:${m[1]}: … ${m[2]}" in:\n${r.stderr}`);
    }
    assert.equal(existsSync(join(dir, ".valley")), false, `${f}: a cache was created`);
    assert.equal(
      existsSync(file.replace(/\.yaml$/, ".lock")),
      false,
      `${f}: a lockfile was written`,
    );
  }
});

test("matrix expansion: readable ids, mapping, natural join, gather and pick", () => {
  const dir = project({
    "p.yaml": `
version: 1
stages:
  data:
    uses: shell
    matrix: {n: [100, 300], subset: [easy, hard]}
    with: {run: "true"}
  tune:
    uses: shell
    inputs: {d: data}
    matrix: {lr: [0.1]}
    with: {run: "echo \${{ matrix.n }} \${{ matrix.subset }} \${{ matrix.lr }}"}
  base:
    uses: shell
    matrix: {n: [100, 300]}
    with: {run: "true"}
  joined:
    uses: shell
    inputs: {t: tune, b: base}
    with: {run: "true"}
  picked:
    uses: shell
    inputs: {t: "tune[n=300,subset=easy]"}
    with: {run: "true"}
  report:
    uses: shell
    inputs: {all: "joined[*]"}
    with: {run: "true"}
`,
  });
  const r = valley(["plan", "p.yaml", "--json"], { cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  const rows = (JSON.parse(r.stdout) as { instances: { id: string; params: { run: string } }[] })
    .instances;
  const ids = rows.map((x) => x.id);
  assert.deepEqual(ids.filter((i) => i.startsWith("tune@")).sort(), [
    "tune@n=100,subset=easy,lr=0.1",
    "tune@n=100,subset=hard,lr=0.1",
    "tune@n=300,subset=easy,lr=0.1",
    "tune@n=300,subset=hard,lr=0.1",
  ]);
  // joined: tune × base joined on n → 4 instances, not 8.
  assert.equal(ids.filter((i) => i.startsWith("joined@")).length, 4);
  assert.ok(ids.includes("picked"));
  assert.ok(ids.includes("report"));
  const t = rows.find((x) => x.id === "tune@n=300,subset=hard,lr=0.1");
  assert.equal(t?.params.run, "echo 300 hard 0.1");
  assert.equal(
    existsSync(join(dir, ".valley", "actions")) &&
      readdirSync(join(dir, ".valley", "actions")).length > 0,
    false,
  );
});

test("matrix include/exclude: per-cell params and inputs, dropped combinations", () => {
  const dir = project({
    "p.yaml": `
version: 1
stages:
  pick:
    uses: shell
    with: {run: "echo picked > $OUT/p"}
  data:
    uses: shell
    matrix:
      subset: [correct, hard]
      n: [4000, 6000]
      exclude:
        - {subset: correct, n: 4000}
        - {subset: hard, n: 6000}
    with: {run: "echo \${{ matrix.subset }} > $OUT/d"}
  tune:
    uses: shell
    inputs: {d: data, from: data}
    matrix:
      start: [a, b]
      include:
        - start: b
          inputs: {from: pick}
          with: {shell: sh}
    with: {run: "cat $IN_D/d $IN_FROM/* > $OUT/t"}
`,
  });
  const r = valley(["plan", "p.yaml", "--json"], { cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  const rows = (JSON.parse(r.stdout) as { instances: { id: string; params: { shell: string } }[] })
    .instances;
  assert.deepEqual(
    rows.map((x) => x.id).filter((i) => i.startsWith("data@")),
    ["data@subset=correct,n=6000", "data@subset=hard,n=4000"],
  );
  const tunes = rows.filter((x) => x.id.startsWith("tune@"));
  assert.equal(tunes.length, 4);
  for (const t of tunes) assert.equal(t.params.shell, t.id.endsWith("start=b") ? "sh" : "bash");
  const run = valley(["run", "p.yaml"], { cwd: dir });
  assert.equal(run.code, 0, run.stderr);
  const show = JSON.parse(
    valley(["show", "tune@subset=hard,n=4000,start=b", "-f", "p.yaml", "--json"], { cwd: dir })
      .stdout,
  ) as { outputs: Record<string, { path: string }> };
  assert.equal(readFileSync(show.outputs.t.path, "utf8"), "hard\npicked\n");
});

test("valley schema prints the pipeline schema with every stage kind folded in; the committed copy is current", () => {
  const r = valley(["schema"]);
  assert.equal(r.code, 0, r.stderr);
  const s = JSON.parse(r.stdout) as {
    definitions: { stage: { allOf: unknown[]; properties: { uses: { enum: string[] } } } };
  };
  assert.ok(s.definitions.stage.properties.uses.enum.includes("shell"));
  assert.equal(s.definitions.stage.allOf.length, s.definitions.stage.properties.uses.enum.length);
  const committed = JSON.parse(
    readFileSync(join(PACKAGE_ROOT, "schemas", "valley.schema.json"), "utf8"),
  ) as unknown;
  assert.deepEqual(
    committed,
    JSON.parse(r.stdout),
    "schemas/valley.schema.json is stale: run `npm run docs`",
  );
  const md = valley(["schema", "--markdown"]);
  const readme = readFileSync(join(PACKAGE_ROOT, "README.md"), "utf8");
  // Prettier re-pads the tables: compare without whitespace and dash runs.
  const norm = (t: string) => t.replace(/\s+/g, "").replace(/-{3,}/g, "---");
  assert.ok(
    norm(readme).includes(norm(md.stdout)),
    "README's YAML reference is stale: run `npm run docs`",
  );
  assert.equal(valley(["schema", "shell"]).code, 0);
  assert.equal(valley(["schema", "nope"]).code, 2);
});

test("usage errors exit 2", () => {
  assert.equal(valley(["frobnicate"]).code, 2);
  assert.equal(valley(["run", "/nonexistent.yaml"]).code, 2);
  assert.equal(valley(["run", "--jobs", "zero", "/nonexistent.yaml"]).code, 2);
});

test("pipelines/valley.yaml plans without any model or data: 14 fine-tunes, their evaluations, base evaluations, the report", () => {
  const r = valley(["plan", join(PACKAGE_ROOT, "pipelines", "valley.yaml"), "--json"]);
  assert.equal(r.code, 0, r.stderr);
  const rows = (
    JSON.parse(r.stdout) as {
      instances: { id: string; kind: string; params: Record<string, unknown> }[];
    }
  ).instances;
  const count = (kind: string) => rows.filter((x) => x.kind === kind).length;
  assert.equal(count("finetune"), 14);
  assert.equal(count("evaluate"), 14 + 2);
  assert.equal(count("report"), 1);
  const t = rows.find((x) => x.id === "tune1@student=Qwen2.5-7B-Instruct,n=30000");
  assert.equal(t?.params.epochs, 5);
  assert.equal(t?.params.lr, 0.00008);
  assert.equal(t?.params.warmup, 0.1);
  assert.equal(t?.params.maxSeqLen, 32768);
  const text = valley(["plan", join(PACKAGE_ROOT, "pipelines", "valley.yaml")]);
  assert.match(text.stdout, /tune2@subset=hard,n=4000,start=base\n\s+finetune \{/);
});

test("-p naming an undeclared param exits 2, names the closest declared one, runs nothing", () => {
  const dir = project({
    "p.yaml": `
version: 1
params: {sizes: [1, 2], seed: 0}
stages:
  a:
    uses: shell
    matrix: {n: "\${{ params.sizes }}"}
    with: {run: "echo \${{ matrix.n }} > $OUT/x"}
`,
  });
  for (const cmd of ["run", "plan"]) {
    const r = valley([cmd, "p.yaml", "-p", "size=[3]"], { cwd: dir });
    assert.equal(r.code, 2, r.stderr);
    assert.match(
      r.stderr,
      /-p size: the pipeline declares no param "size"; did you mean "sizes"\?/,
    );
  }
  const far = valley(["run", "p.yaml", "-p", "nosuch=1"], { cwd: dir });
  assert.equal(far.code, 2, far.stderr);
  assert.match(far.stderr, /no param "nosuch".*declared: sizes, seed/);
  assert.equal(existsSync(join(dir, ".valley")), false, "nothing cached");
  const ok = valley(["run", "p.yaml", "-p", "sizes=[3]"], { cwd: dir });
  assert.equal(ok.code, 0, ok.stderr);
  assert.match(ok.stderr, /1 instances: 1 executed/);
});
