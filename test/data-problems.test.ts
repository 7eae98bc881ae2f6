import { test } from "node:test";
import assert from "node:assert/strict";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { deflateSync } from "node:zlib";
import problems, { dateWindow, type ProblemsParams } from "../stages/problems/index.js";
import { unpickleString } from "../data/pickle.js";
import { BadStageInput } from "../engine/stage-api.js";
import { fingerprintTools } from "../engine/engine.js";
import { StatCache } from "../cache/stat-cache.js";
import { projectRoot } from "../data/root.js";
import type { Problem } from "../data/problem.js";
import { makeCtx, tempDir } from "./helpers/data-ctx.js";
import { project, valley } from "./helpers/valley.js";

const FIX = join(projectRoot(), "test/fixtures/data");

async function load(params: ProblemsParams) {
  const ctx = makeCtx(params);
  const res = await problems.run(ctx);
  const lines = readFileSync(join(ctx.out, "problems.jsonl"), "utf8")
    .trim()
    .split("\n")
    .filter(Boolean);
  return {
    ps: lines.map((l) => JSON.parse(l) as Problem),
    metrics: res?.metrics as Record<string, unknown>,
  };
}

function jsonl<T>(file: string): T[] {
  return readFileSync(file, "utf8")
    .split("\n")
    .filter(Boolean)
    .map((l) => JSON.parse(l) as T);
}

async function rejects(params: ProblemsParams, re: RegExp) {
  await assert.rejects(load(params), (e: Error) => {
    assert.ok(e instanceof BadStageInput, `expected BadStageInput, got ${e.name}: ${e.message}`);
    assert.match(e.message, re);
    return true;
  });
}

test("builtin demo set: ≥ 60 problems in families, each with train and eval members", async () => {
  const { ps, metrics } = await load({ format: "builtin" });
  assert.ok(ps.length >= 60, `${ps.length} problems`);
  const fams = new Map<string, Set<string>>();
  for (const p of ps) {
    assert.ok(p.tests.length >= 5, p.id);
    assert.ok(p.reference_solution && p.reference_trace, p.id);
    assert.ok(p.family && p.split, p.id);
    if (!fams.has(p.family!)) fams.set(p.family!, new Set());
    fams.get(p.family!)!.add(p.split!);
  }
  for (const [f, splits] of fams) assert.deepEqual([...splits].sort(), ["eval", "train"], f);
  assert.equal((metrics.by_source as Record<string, number>).demo, ps.length);
  const evalOnly = await load({ format: "builtin", split: "eval" });
  assert.ok(evalOnly.ps.length > 0 && evalOnly.ps.every((p) => p.split === "eval"));
});

test("LCB: public + pickled private tests, functional tests, date window and release", async () => {
  const { ps } = await load({ format: "lcb", path: join(FIX, "lcb.jsonl") });
  assert.deepEqual(
    ps.map((p) => p.id),
    ["abc300_a", "abc350_b", "abc380_c", "lc-two-sum"],
  );
  assert.equal(ps[0].tests.length, 3);
  assert.deepEqual(ps[0].tests[2], { input: "10 -1\n", output: "9\n", type: "stdin" });
  assert.equal(ps[2].tests[1].output, "x".repeat(300) + "\n"); // BINUNICODE, protocol 2
  assert.equal(ps[3].fn_name, "twoSum");
  assert.equal(ps[3].tests[1].type, "functional");
  const v1 = await load({ format: "lcb", path: join(FIX, "lcb.jsonl"), release: "v1" });
  assert.deepEqual(
    v1.ps.map((p) => p.id),
    ["abc300_a"],
  );
  assert.deepEqual(v1.metrics.window, { from: "2023-05-01", to: "2024-03-31" });
  const win = await load({
    format: "lcb",
    path: join(FIX, "lcb.jsonl"),
    from: "2024-04-01",
    to: "2024-12-31",
  });
  assert.deepEqual(
    win.ps.map((p) => p.id),
    ["abc350_b", "abc380_c"],
  );
  assert.deepEqual(dateWindow({ release: "v6", from: "2025-01-01" }), {
    from: "2025-01-01",
    to: "2025-04-30",
  });
});

test("LCB: a pickle that would run code is refused, nothing executed", async () => {
  const marker = "/tmp/valley-pickle-marker";
  rmSync(marker, { force: true });
  await rejects(
    { format: "lcb", path: join(FIX, "lcb-evil.jsonl") },
    /lcb-evil\.jsonl: record 2: .*private_test_cases.*STACK_GLOBAL/,
  );
  assert.equal(existsSync(marker), false, "the pickle's os.system ran");
});

test("pickle parser: accepts only opcodes that build one str", () => {
  // PROTO 4, BINUNICODE8 "hi", MEMOIZE, STOP
  const b8 = Buffer.from([0x80, 4, 0x8d, 2, 0, 0, 0, 0, 0, 0, 0, 0x68, 0x69, 0x94, 0x2e]);
  assert.equal(unpickleString(b8), "hi");
  assert.throws(() => unpickleString(Buffer.from([0x80, 4, 0x4b, 1, 0x2e])), /BININT1/);
  assert.throws(() => unpickleString(Buffer.from("cos\nsystem\n.", "latin1")), /GLOBAL/);
  assert.throws(() => unpickleString(Buffer.from([0x80, 4, 0x8c, 5, 0x61])), /truncated/);
  assert.throws(
    () => unpickleString(Buffer.from([0x8c, 1, 0x61, 0x8c, 1, 0x62, 0x2e])),
    /2 values/,
  );
});

test("TACO: input_output, 5 labels → 3 levels, raw label kept, unknown skipped", async () => {
  const { ps, metrics } = await load({ format: "taco", path: join(FIX, "taco.jsonl") });
  assert.deepEqual(
    ps.map((p) => [p.difficulty, p.difficulty_raw]),
    [
      ["easy", "EASY"],
      ["medium", "MEDIUM"],
      ["hard", "MEDIUM_HARD"],
      ["hard", "HARD"],
      ["hard", "VERY_HARD"],
      ["easy", "EASY"],
    ],
  );
  assert.equal(ps[0].time_limit_s, 2);
  assert.equal(ps[0].memory_limit_mb, 256);
  assert.equal(ps[5].fn_name, "add");
  assert.deepEqual(ps[5].tests[0], { input: "1\n2", output: "3", type: "functional" });
  assert.deepEqual(metrics.skipped, { "unknown difficulty": 1 });
  await rejects(
    { format: "taco", path: join(FIX, "taco.jsonl"), unknownDifficulty: "error" },
    /record 7: has no difficulty label/,
  );
});

test("OCR2 (JSONL and zstd Parquet): '-' questions rebuilt from a TACO source by (dataset, split, index), generations streamed beside", async () => {
  // TACO as a source folder: its train split as one shard.
  const taco = tempDir();
  copyFileSync(join(FIX, "taco.jsonl"), join(taco, "train.jsonl"));
  for (const file of ["ocr2.jsonl", "ocr2.parquet"]) {
    const ctx = makeCtx({
      format: "ocr",
      path: join(FIX, file),
      sources: { taco },
    } as ProblemsParams);
    const metrics = (await problems.run(ctx))!.metrics as Record<string, unknown>;
    const ps = jsonl<Problem>(join(ctx.out, "problems.jsonl"));
    assert.deepEqual(
      ps.map((p) => p.id),
      ["q1", "q2"],
      file,
    );
    // q1: TACO train row 1 (0-based), with its tests; q2 carries its own text.
    assert.equal(ps[0].statement, "Print a*b.");
    assert.deepEqual(ps[0].tests, [{ input: "2 3\n", output: "6\n", type: "stdin" }]);
    assert.deepEqual(ps[0].extra, {
      dataset: "taco",
      split: "train",
      index: 1,
      license: "apache-2.0",
      generations: 2,
    });
    assert.equal(ps[1].statement, "Print hello.");
    assert.equal(ps[1].difficulty, "easy"); // CodeContests 7 = Codeforces A
    const gens = jsonl<Record<string, unknown>>(join(ctx.out, "generations.jsonl"));
    assert.deepEqual(
      gens.map((g) => [g.problem_id, g.sample, g.judgement]),
      [
        ["q1", 0, "right"],
        ["q1", 1, "wrong"],
        ["q2", 0, "right"],
      ],
    );
    assert.equal("qwq_critique" in gens[0], false);
    assert.equal(metrics.generations, 3);
    assert.deepEqual(metrics.unresolved, {});
  }
  // No TACO source: q1's two rows are counted and skipped, q2 stays.
  const ctx = makeCtx({ format: "ocr", path: join(FIX, "ocr2.jsonl") } as ProblemsParams);
  const metrics = (await problems.run(ctx))!.metrics as Record<string, unknown>;
  assert.deepEqual(metrics.unresolved, { taco: 2 });
  assert.deepEqual(metrics.unresolved_questions, { "no source": 1 });
  assert.deepEqual(
    jsonl<Record<string, unknown>>(join(ctx.out, "generations.jsonl")).map((g) => g.problem_id),
    ["q2"],
  );
  // An index past the split's end: unresolved too.
  const short = tempDir();
  writeFileSync(
    join(short, "train.jsonl"),
    readFileSync(join(FIX, "taco.jsonl"), "utf8").split("\n")[0] + "\n",
  );
  const ctx2 = makeCtx({
    format: "ocr",
    path: join(FIX, "ocr2.jsonl"),
    sources: { taco: short },
  } as ProblemsParams);
  const m2 = (await problems.run(ctx2))!.metrics as Record<string, unknown>;
  assert.deepEqual(m2.unresolved, { taco: 2 });
  assert.deepEqual(m2.unresolved_questions, { "index out of range": 1 });
  await rejects(
    { format: "ocr", path: join(FIX, "ocr2.jsonl"), onUnresolved: "fail" },
    /ocr2\.jsonl: record 1: question "q1" cannot be rebuilt: no entry for dataset "taco" in sources/,
  );
  await rejects(
    { format: "ocr", path: join(FIX, "ocr2.jsonl"), sources: { taco: join(short, "nope") } },
    /sources\.taco: .*nope does not exist/,
  );
});

test("generic Parquet (snappy, zstd) and JSONL with a field mapping", async () => {
  const fields = { id: "pid", statement: "text", difficulty: "level" };
  for (const f of ["generic-snappy.parquet", "generic-zstd.parquet"]) {
    const { ps } = await load({ format: "parquet", path: join(FIX, f), fields, source: "mine" });
    assert.deepEqual(
      ps.map((p) => [p.id, p.difficulty, p.tests.length, p.source]),
      [
        ["g1", "easy", 1, "mine"],
        ["g2", "hard", 1, "mine"],
        ["g3", "medium", 1, "mine"],
      ],
    );
  }
  const dir = tempDir();
  const file = join(dir, "p.jsonl");
  writeFileSync(
    file,
    JSON.stringify({ q: { body: "S" }, d: "hard", t: [{ input: "1", output: "1" }] }) + "\n",
  );
  const { ps } = await load({
    format: "jsonl",
    path: file,
    fields: { statement: "q.body", difficulty: "d", tests: "t" },
  });
  assert.equal(ps[0].id, "jsonl/0");
  assert.equal(ps[0].statement, "S");
});

test("bad input: clear errors naming the file and record", async () => {
  const dir = tempDir();
  const w = (name: string, recs: unknown[]) => {
    const f = join(dir, name);
    writeFileSync(f, recs.map((r) => JSON.stringify(r)).join("\n") + "\n");
    return f;
  };
  const ok = { statement: "s", difficulty: "easy", tests: [{ input: "1", output: "1" }] };
  await rejects(
    { format: "jsonl", path: w("missing.jsonl", [ok, { difficulty: "easy", tests: [] }]) },
    /missing\.jsonl: record 2: missing field "statement"/,
  );
  await rejects(
    { format: "jsonl", path: w("label.jsonl", [{ ...ok, difficulty: "SUPER_HARD" }]) },
    /record 1: unknown difficulty label "SUPER_HARD"/,
  );
  await rejects(
    { format: "jsonl", path: w("zero.jsonl", [ok, ok, { ...ok, tests: [] }]) },
    /zero\.jsonl: record 3: has zero tests/,
  );
  await rejects(
    {
      format: "jsonl",
      path: w("dup.jsonl", [
        { ...ok, id: "a" },
        { ...ok, id: "a" },
      ]),
    },
    /duplicate problem id "a"/,
  );
  writeFileSync(join(dir, "notjson.jsonl"), "{\n");
  await rejects({ format: "jsonl", path: join(dir, "notjson.jsonl") }, /line 1 is not valid JSON/);
  await rejects(
    { format: "parquet", path: join(FIX, "truncated.parquet") },
    /truncated\.parquet: not a readable Parquet file/,
  );
  await rejects(
    { format: "parquet", path: join(FIX, "garbled.parquet") },
    /garbled\.parquet: corrupted Parquet data in row group 1 of 1 \(rows 1\.\.3\)/,
  );
  await rejects({ format: "lcb", path: join(dir, "nope.jsonl") }, /no such file/);
  const lcbBad = w("lcb-bad.jsonl", [
    {
      question_id: "x",
      question_content: "c",
      difficulty: "easy",
      public_test_cases: "[]",
      private_test_cases: Buffer.from(deflateSync(Buffer.from("junk"))).toString("base64"),
    },
  ]);
  await rejects(
    { format: "lcb", path: lcbBad },
    /lcb-bad\.jsonl: record 1: field "private_test_cases".*pickle opcode/,
  );
});

test("fingerprint changes when the file named in params changes, even within one clock tick", async () => {
  const dir = tempDir();
  const f = join(dir, "p.jsonl");
  // The engine's stat cache, persisted between the two "runs": the second
  // write has the same size and, on a coarse clock, the same mtime.
  const statFile = join(dir, "stat.json");
  writeFileSync(f, "a\n");
  const first = new StatCache(statFile);
  const a = await problems.fingerprint!({ format: "jsonl", path: f }, fingerprintTools(first, dir));
  first.save();
  writeFileSync(f, "b\n");
  const b = await problems.fingerprint!(
    { format: "jsonl", path: f },
    fingerprintTools(new StatCache(statFile), dir),
  );
  assert.notDeepEqual(a, b);
  // An old, unchanged file is trusted by its stat fields: the cache remembers it.
  utimesSync(f, new Date(Date.now() - 60_000), new Date(Date.now() - 60_000));
  const stat = new StatCache(statFile);
  const c = await problems.fingerprint!({ format: "jsonl", path: f }, fingerprintTools(stat, dir));
  assert.equal(stat.digest(f).hashed, false);
  assert.notDeepEqual(c, a);
});

test("fingerprint covers exactly the data files the stage reads, through symbolic links", async () => {
  const dir = tempDir();
  const tools = fingerprintTools(new StatCache(join(dir, "stat.json")), dir);
  const real = join(dir, "scratch");
  mkdirSync(join(real, ".git"), { recursive: true });
  writeFileSync(join(real, "train.jsonl"), "a\n");
  writeFileSync(join(real, ".git", "HEAD"), "ref: x\n");
  writeFileSync(join(real, "notes.txt"), "not data\n");
  // A folder of links, and a link to the folder: both read the same bytes.
  mkdirSync(join(dir, "links"));
  symlinkSync(join(real, "train.jsonl"), join(dir, "links", "train.jsonl"));
  symlinkSync(real, join(dir, "data"));
  const fp = async (path: string) =>
    JSON.stringify(await problems.fingerprint!({ format: "jsonl", path }, tools));
  const before = [await fp(join(dir, "links")), await fp(join(dir, "data"))];
  // Not read by the stage: changes nothing.
  writeFileSync(join(real, ".git", "HEAD"), "ref: y\n");
  writeFileSync(join(real, "notes.txt"), "still not data\n");
  assert.deepEqual([await fp(join(dir, "links")), await fp(join(dir, "data"))], before);
  // The data behind the links: changes both (another size, so no clock-tick race).
  writeFileSync(join(real, "train.jsonl"), "bb\n");
  const after = [await fp(join(dir, "links")), await fp(join(dir, "data"))];
  assert.notEqual(after[0], before[0]);
  assert.notEqual(after[1], before[1]);
  // A missing path is left for the stage to report.
  assert.match(await fp(join(dir, "nope")), /null/);
});

test("through the CLI: a corrupt Parquet file or a missing source exits 2 naming it, and nothing enters the store", () => {
  const dir = project({
    "bad.yaml": `version: 1
stages:
  p:
    uses: problems
    with: { format: parquet, path: ./garbled.parquet, fields: { id: pid, statement: text, difficulty: level } }
`,
    "nosource.yaml": `version: 1
stages:
  p:
    uses: problems
    with: { format: ocr, path: ./ocr2.parquet, sources: { taco: ./taco, apps: ./no-apps-here } }
`,
  });
  copyFileSync(join(FIX, "garbled.parquet"), join(dir, "garbled.parquet"));
  copyFileSync(join(FIX, "ocr2.parquet"), join(dir, "ocr2.parquet"));
  mkdirSync(join(dir, "taco"));
  const env = { VALLEY_CACHE: join(dir, "cache") };
  const bad = valley(["run", join(dir, "bad.yaml")], { env });
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(
    bad.stderr,
    /garbled\.parquet: corrupted Parquet data in row group 1 of 1 \(rows 1\.\.3\)/,
  );
  const missing = valley(["run", join(dir, "nosource.yaml")], { env });
  assert.equal(missing.code, 2, missing.stderr);
  assert.match(missing.stderr, /sources\.apps: .*no-apps-here does not exist/);
  const actions = join(dir, "cache", "actions");
  assert.deepEqual(existsSync(actions) ? readdirSync(actions) : [], []);
});
