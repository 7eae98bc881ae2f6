import { test } from "node:test";
import assert from "node:assert/strict";
import {
  readFileSync,
  writeFileSync,
  existsSync,
  statSync,
  readdirSync,
  mkdirSync,
  utimesSync,
  symlinkSync,
  unlinkSync,
  renameSync,
} from "node:fs";
import { join } from "node:path";
import { valley, project, lines } from "./helpers/valley.js";

/** A pipeline whose commands append to `side` so tests can count executions. */
function pipeline(
  side: string,
  opts: { greeting?: string; sizes?: string; extra?: string } = {},
): string {
  return `
version: 1
name: demo
params:
  greeting: ${opts.greeting ?? "hello"}
stages:
  gen:
    uses: shell
    matrix:
      n: ${opts.sizes ?? "[1, 2, 3]"}
    with:
      run: echo gen \${{ matrix.n }} >> ${side}; echo "\${{ params.greeting }} \${{ matrix.n }}" > $OUT/x.txt
  sub:
    uses: shell
    inputs:
      g: gen
    with:
      run: echo sub >> ${side}; tr a-z A-Z < $IN_G/x.txt > $OUT/y.txt
  all:
    uses: shell
    inputs:
      s: sub[*]
    with:
      run: echo all >> ${side}; for d in $IN_S/*; do cat $d/y.txt; done > $OUT/all.txt
${opts.extra ?? ""}`;
}

function runJson(dir: string, args: string[] = []) {
  const r = valley(["run", "p.yaml", "--json", ...args], { cwd: dir });
  assert.ok(r.code === 0, `exit ${r.code}: ${r.stderr}`);
  return JSON.parse(r.stdout) as {
    instances: number;
    executed: number;
    cached: number;
    failed: number;
  };
}

test("run, then a no-op re-run; lockfile, show, logs, dag, status", () => {
  const dir = project({});
  const side = join(dir, "side.log");
  writeFileSync(join(dir, "p.yaml"), pipeline(side));
  const first = runJson(dir);
  assert.deepEqual(first, { ...first, instances: 7, executed: 7, cached: 0, failed: 0 });
  assert.equal(lines(side).length, 7);
  const again = runJson(dir);
  assert.deepEqual(again, { ...again, instances: 7, executed: 0, cached: 7, failed: 0 });
  assert.equal(lines(side).length, 7, "a no-op run executed something");

  const lock = JSON.parse(readFileSync(join(dir, "p.lock"), "utf8")) as {
    instances: Record<string, { key: string; tree: string; files: Record<string, string> }>;
  };
  assert.deepEqual(Object.keys(lock.instances), [
    "all",
    "gen@n=1",
    "gen@n=2",
    "gen@n=3",
    "sub@n=1",
    "sub@n=2",
    "sub@n=3",
  ]);
  assert.match(lock.instances.all.key, /^sha256:[0-9a-f]{64}$/);

  const show = valley(["show", "all", "-f", "p.yaml", "--json"], { cwd: dir });
  assert.equal(show.code, 0, show.stderr);
  const s = JSON.parse(show.stdout) as {
    key: string;
    params: { run: string };
    inputs: { s: { coords: { n: number }; digest: string }[] };
    outputs: Record<string, { digest: string; path: string }>;
    timings: { seconds: number };
  };
  assert.equal(s.key, lock.instances.all.key);
  assert.equal(s.inputs.s.length, 3);
  const out = s.outputs["all.txt"];
  assert.equal(readFileSync(out.path, "utf8"), "HELLO 1\nHELLO 2\nHELLO 3\n");
  assert.equal(statSync(out.path).mode & 0o222, 0, "stored outputs are read-only");
  assert.equal(out.digest, lock.instances.all.files["all.txt"]);

  const logs = valley(["logs", "sub@n=2", "-f", "p.yaml"], { cwd: dir });
  assert.equal(logs.code, 0, logs.stderr);
  assert.match(logs.stdout, /start sub@n=2/);

  const mermaid = valley(["dag", "p.yaml"], { cwd: dir }).stdout;
  assert.match(mermaid, /^flowchart LR/);
  assert.equal((mermaid.match(/-->/g) ?? []).length, 6);
  const dot = valley(["dag", "p.yaml", "--format", "dot"], { cwd: dir }).stdout;
  assert.match(dot, /digraph valley/);
  const st = valley(["status", "p.yaml", "--json"], { cwd: dir });
  assert.deepEqual(JSON.parse(st.stdout).stages.sub, { hit: 3, miss: 0 });
});

test("changing one matrix cell re-runs that cell and its descendants only; plan --why names the field", () => {
  const dir = project({});
  const side = join(dir, "side.log");
  writeFileSync(join(dir, "p.yaml"), pipeline(side, { sizes: "[1, 2, 3]" }));
  runJson(dir);
  writeFileSync(join(dir, "p.yaml"), pipeline(side, { sizes: "[1, 2, 4]" }));
  const plan = valley(["plan", "p.yaml", "--json"], { cwd: dir });
  const rows = (
    JSON.parse(plan.stdout) as { instances: { id: string; status: string; changed: string[] }[] }
  ).instances;
  const miss = rows.filter((r) => r.status === "miss").map((r) => r.id);
  assert.deepEqual(miss.sort(), ["all", "gen@n=4", "sub@n=4"]);
  const before = lines(side).length;
  const r = runJson(dir);
  assert.equal(r.executed, 3);
  assert.deepEqual(lines(side).slice(before).sort(), ["all", "gen 4", "sub"]);

  // A param every gen reads: all of them re-run; --why says which field.
  writeFileSync(join(dir, "p.yaml"), pipeline(side, { sizes: "[1, 2, 4]", greeting: "bye" }));
  const why = valley(["plan", "p.yaml", "--why"], { cwd: dir });
  assert.match(why.stdout, /run\s+gen@n=1\s+— changed: params\.run\n/);
  assert.match(why.stdout, /sub@n=1\s+— runs after gen@n=1 /);
});

test("reformatting, reordering keys, comments and renaming a stage re-run nothing", () => {
  const dir = project({});
  const side = join(dir, "side.log");
  writeFileSync(join(dir, "p.yaml"), pipeline(side));
  runJson(dir);
  const n = lines(side).length;
  const variant = `
# a comment
version: 1
name: demo
params: {greeting: "hello"}   # flow style now
stages:
  all:    # moved first
    with: {run: 'echo all >> ${side}; for d in $IN_S/*; do cat $d/y.txt; done > $OUT/all.txt'}
    inputs: {s: "tr[*]"}
    uses: shell
  tr:                      # was "sub"
    inputs: {g: generate}
    uses: shell
    with:
      run: >-
        echo sub >> ${side}; tr a-z A-Z < $IN_G/x.txt > $OUT/y.txt
  generate:                # was "gen"
    uses: shell
    with:
      shell: bash          # the default, spelt out
      run: echo gen \${{ matrix.n }} >> ${side}; echo "\${{ params.greeting }} \${{ matrix.n }}" > $OUT/x.txt
    matrix: {n: [1, 2, 3]}
`;
  writeFileSync(join(dir, "p.yaml"), variant);
  const r = runJson(dir);
  assert.equal(r.executed, 0, "something re-ran");
  assert.equal(r.cached, 7);
  assert.equal(lines(side).length, n);
});

test("declared env values are keyed, undeclared ones are not; secrets reach the stage but never the cache, logs or lockfile", () => {
  const secret = "sk-test-" + Math.random().toString(36).slice(2);
  const dir = project({
    "p.yaml": `
version: 1
stages:
  a:
    uses: shell
    env: [MODE]
    secrets: [API_KEY]
    with:
      run: 'echo "mode=$MODE"; echo "key=$API_KEY"; echo "$API_KEY" | wc -c > $OUT/len.txt; echo "mode=$MODE home=$UNDECLARED" > $OUT/o.txt'
`,
  });
  const env = { MODE: "fast", API_KEY: secret, UNDECLARED: "x" };
  let r = valley(["run", "p.yaml", "--json"], { cwd: dir, env });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(JSON.parse(r.stdout).executed, 1);
  r = valley(["run", "p.yaml", "--json"], {
    cwd: dir,
    env: { ...env, UNDECLARED: "y", API_KEY: secret + "2" },
  });
  assert.equal(
    JSON.parse(r.stdout).executed,
    0,
    "an undeclared variable or a secret changed the key",
  );
  r = valley(["run", "p.yaml", "--json"], { cwd: dir, env: { ...env, MODE: "slow" } });
  assert.equal(JSON.parse(r.stdout).executed, 1, "a declared variable did not change the key");
  const show = JSON.parse(
    valley(["show", "a", "-f", "p.yaml", "--json"], { cwd: dir, env }).stdout,
  ) as {
    outputs: Record<string, { path: string }>;
  };
  assert.equal(
    readFileSync(show.outputs["o.txt"].path, "utf8"),
    "mode=slow home=\n",
    "an undeclared variable leaked in",
  );
  assert.equal(
    Number(readFileSync(show.outputs["len.txt"].path, "utf8")),
    secret.length + 1,
    "the secret did not reach the stage",
  );
  const logs = valley(["logs", "a", "-f", "p.yaml", "--raw"], { cwd: dir, env });
  assert.match(logs.stdout, /key=\*\*\*/);
  // Nothing under the cache or the lockfile holds the secret.
  const grep = (d: string): string[] =>
    readdirSync(d, { withFileTypes: true }).flatMap((e) => {
      const p = join(d, e.name);
      if (e.isDirectory()) return grep(p);
      return e.isFile() && readFileSync(p, "utf8").includes(secret) ? [p] : [];
    });
  assert.deepEqual(grep(join(dir, ".valley")), []);
  assert.equal(readFileSync(join(dir, "p.lock"), "utf8").includes(secret), false);
});

test("path inputs are hashed by content: touching a file re-runs nothing, editing it re-runs", () => {
  const dir = project({ "data/a.txt": "one\n", "data/sub/b.txt": "two\n" });
  const side = join(dir, "side.log");
  writeFileSync(
    join(dir, "p.yaml"),
    `
version: 1
stages:
  count:
    uses: shell
    inputs: {src: ./data}
    with: {run: "echo x >> ${side}; cat $IN_SRC/a.txt $IN_SRC/sub/b.txt | wc -l > $OUT/n.txt"}
`,
  );
  assert.equal(runJson(dir).executed, 1);
  const now = new Date(Date.now() + 5000);
  utimesSync(join(dir, "data/a.txt"), now, now);
  assert.equal(runJson(dir).executed, 0, "an mtime change re-ran the stage");
  writeFileSync(join(dir, "data/a.txt"), "one\nmore\n");
  assert.equal(runJson(dir).executed, 1);
  mkdirSync(join(dir, "data/empty"));
  assert.equal(runJson(dir).executed, 1, "a new folder is part of the input");
  assert.ok(existsSync(join(dir, ".valley")));
});

test("a kind's unkeyed params (parallelism) re-run nothing when changed; its other params do", () => {
  const problem = {
    id: "sum",
    source: "demo",
    title: "Sum",
    statement: "Add two numbers.",
    starter_code: "",
    difficulty: "easy",
    difficulty_raw: "EASY",
    time_limit_s: 1,
    tests: [{ input: "1 2\n", output: "3\n", type: "stdin" }],
  };
  const trace = {
    problem_id: "sum",
    sample: 0,
    messages: [{ role: "user", content: "Add two numbers." }],
    text: "```python\nprint(sum(map(int, input().split())))\n```",
    finish_reason: "stop",
  };
  const yaml = (w: string) =>
    `version: 1\nname: u\nstages:\n  v:\n    uses: verify\n    inputs:\n      problems: ./problems\n      traces: ./traces\n    with: {${w}}\n`;
  const dir = project({
    "problems/problems.jsonl": JSON.stringify(problem) + "\n",
    "traces/traces.jsonl": JSON.stringify(trace) + "\n",
    "p.yaml": yaml("jobs: 2"),
  });
  assert.equal(runJson(dir).executed, 1);
  writeFileSync(join(dir, "p.yaml"), yaml("jobs: 1"));
  const again = runJson(dir);
  assert.deepEqual([again.executed, again.cached], [0, 1]);
  writeFileSync(join(dir, "p.yaml"), yaml("jobs: 1, policy: last"));
  assert.equal(runJson(dir).executed, 1);
});

test("a run remembers the parsed pipeline by its text; errors found later still name file:line:col", () => {
  const text = (sizes: string) =>
    `version: 1\nname: memo\nparams:\n  sizes: ${sizes}\nstages:\n  gen:\n    uses: shell\n    matrix:\n      i: \${{ params.sizes }}\n    with:\n      run: echo \${{ matrix.i }} > $OUT/x\n`;
  const dir = project({ "p.yaml": text("[1, 2]") });
  const memo = join(dir, ".valley", "parsed");
  assert.equal(runJson(dir).executed, 2);
  const files = readdirSync(memo);
  assert.equal(files.length, 1);
  assert.deepEqual(JSON.parse(readFileSync(join(memo, files[0]), "utf8")), {
    version: 1,
    name: "memo",
    params: { sizes: [1, 2] },
    stages: {
      gen: {
        uses: "shell",
        matrix: { i: "${{ params.sizes }}" },
        with: { run: "echo ${{ matrix.i }} > $OUT/x" },
      },
    },
  });
  // Same text, a bad override: the data comes from the memo, the error's
  // position from parsing the YAML on demand.
  const bad = valley(["run", "p.yaml", "-p", "sizes=abc"], { cwd: dir });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /p\.yaml:9:10: stages\.gen\.matrix\.i: a matrix axis must be a list/);
  assert.equal(runJson(dir).cached, 2);
  // Other text, another entry; gc empties the memo.
  writeFileSync(join(dir, "p.yaml"), text("[1, 2, 3]"));
  assert.equal(runJson(dir).executed, 1);
  assert.equal(readdirSync(memo).length, 2);
  assert.equal(valley(["gc"], { cwd: dir }).code, 0);
  assert.equal(existsSync(memo), false);
});

test("inputs that are symbolic links: to a file, to a folder, inside a folder; a cycle or a dangling link is bad input", () => {
  const dir = project({
    "real/a.txt": "alpha\n",
    "real/sub/b.txt": "beta\n",
    "outside.txt": "outside\n",
    "p.yaml": `
version: 1
stages:
  f:
    uses: shell
    inputs: {x: ./file-link}
    with: {run: "cat $IN_X/file-link > $OUT/got"}
  d:
    uses: shell
    inputs: {x: ./dir-link}
    with: {run: "cat $IN_X/a.txt $IN_X/sub/b.txt $IN_X/out-link > $OUT/got"}
`,
  });
  symlinkSync(join(dir, "real", "a.txt"), join(dir, "file-link"));
  symlinkSync("real", join(dir, "dir-link"));
  // A link inside the folder, pointing outside it: its target's bytes are what the stage reads.
  symlinkSync(join(dir, "outside.txt"), join(dir, "real", "out-link"));
  const first = valley(["run", "p.yaml", "--json"], { cwd: dir });
  assert.equal(first.code, 0, first.stderr);
  assert.equal((JSON.parse(first.stdout) as { executed: number }).executed, 2);
  const got = (id: string) => {
    const show = valley(["show", id, "-f", "p.yaml", "--json"], { cwd: dir });
    const out = JSON.parse(show.stdout) as { outputs: Record<string, { path: string }> };
    return readFileSync(out.outputs.got.path, "utf8");
  };
  assert.equal(got("f"), "alpha\n");
  assert.equal(got("d"), "alpha\nbeta\noutside\n");
  assert.equal(runJson(dir).cached, 2, "a second run reuses both");
  // The link's target is in the key: editing it re-runs its reader.
  writeFileSync(join(dir, "outside.txt"), "changed\n");
  const after = runJson(dir);
  assert.deepEqual([after.executed, after.cached], [1, 1]);
  assert.equal(got("d"), "alpha\nbeta\nchanged\n");

  symlinkSync("..", join(dir, "real", "sub", "up"));
  const cycle = valley(["run", "p.yaml"], { cwd: dir });
  assert.equal(cycle.code, 2, cycle.stderr);
  assert.match(cycle.stderr, /links back to a folder that contains it/);
  unlinkSync(join(dir, "real", "sub", "up"));
  symlinkSync(join(dir, "nowhere"), join(dir, "real", "dangling"));
  const dangling = valley(["run", "p.yaml"], { cwd: dir });
  assert.equal(dangling.code, 2, dangling.stderr);
  assert.match(dangling.stderr, /dangling is a symbolic link to nothing/);
});

test("commands behave the same through the launcher and spawned directly (VALLEY_LAUNCHER=off)", () => {
  const seen: Record<string, { out: string; log: string; code: number; tail: string }> = {};
  for (const mode of ["on", "off"]) {
    const dir = project({
      "p.yaml": `
version: 1
stages:
  talk:
    uses: shell
    with:
      run: |
        echo "out é \${{ matrix.n }}"; echo "err line" >&2; printf 'no newline' > $OUT/f
        sleep 30 &
        echo "cwd $(basename $(pwd))" > $OUT/where
    matrix: {n: [1, 2]}
  fail:
    uses: shell
    with: {run: "echo 'CUDA error: out of memory' >&2; exit 3"}
`,
    });
    const env = { VALLEY_LAUNCHER: mode };
    const r = valley(["run", "p.yaml", "--keep-going", "--json"], { cwd: dir, env });
    const show = valley(["show", "talk@n=2", "-f", "p.yaml", "--json"], { cwd: dir, env });
    const out = JSON.parse(show.stdout) as { outputs: Record<string, { path: string }> };
    const logs = valley(["logs", "talk@n=2", "-f", "p.yaml"], { cwd: dir, env });
    seen[mode] = {
      code: r.code,
      out: ["f", "where"].map((f) => readFileSync(out.outputs[f].path, "utf8")).join("|"),
      log: logs.stdout
        .split("\n")
        .filter((l) => /out é|err line/.test(l))
        .map((l) => l.replace(/^.*?(out é|err line)/, "$1"))
        .join("|"),
      tail: r.stderr.split("\n").filter((l) => l.includes("CUDA error")).length > 0 ? "tail" : "",
    };
  }
  assert.deepEqual(seen.on, seen.off);
  assert.equal(seen.on.code, 1);
  assert.match(seen.on.out, /^no newline\|cwd \S+\n$/);
  assert.match(seen.on.log, /out é 2/);
  assert.match(seen.on.log, /err line/);
  assert.equal(seen.on.tail, "tail", "the failure shows the stage's last stderr lines");
});

test("a no-op run leaves an unchanged lockfile alone, and rewrites it when a record or the lockfile changed", () => {
  const text = `version: 1\nname: lmemo\nstages:\n  gen:\n    uses: shell\n    matrix:\n      i: [1, 2]\n    with:\n      run: echo \${{ matrix.i }} > $OUT/x\n`;
  const dir = project({ "p.yaml": text });
  assert.equal(runJson(dir).executed, 2);
  const actions = join(dir, ".valley", "actions");
  const lock = join(dir, "p.lock");
  const age = (opts = { lockfile: true }) => {
    const past = new Date(Date.now() - 60_000);
    for (const f of readdirSync(actions)) utimesSync(join(actions, f), past, past);
    utimesSync(actions, past, past);
    if (opts.lockfile) utimesSync(lock, past, past);
  };
  age();
  runJson(dir); // memo written, with the records folder's stat fields
  runJson(dir); // every result served by trust: the lockfile verified, and that remembered
  const st = () => {
    const s = statSync(lock, { bigint: true });
    return `${s.ino}:${s.mtimeNs}:${s.ctimeNs}`;
  };
  const before = st();
  const original = readFileSync(lock, "utf8");
  runJson(dir);
  assert.equal(st(), before, "an unchanged lockfile is not rewritten");
  // Removed by hand: written again, with the same content.
  unlinkSync(lock);
  runJson(dir);
  assert.equal(readFileSync(lock, "utf8"), original);
  // A record replaced under the same key (the engine renames over it) with
  // other metrics: the lockfile follows, though every key is the same.
  age();
  runJson(dir);
  runJson(dir);
  const rec = join(
    actions,
    readdirSync(actions)
      .filter((f) => f.endsWith(".json"))
      .sort()[0],
  );
  const r = JSON.parse(readFileSync(rec, "utf8")) as {
    key: string;
    metrics: Record<string, unknown>;
  };
  writeFileSync(rec + ".tmp", JSON.stringify({ ...r, metrics: { marker: 7 } }));
  renameSync(rec + ".tmp", rec);
  // A run that writes no lockfile (--only) reads the records, and leaves a
  // memo the next run trusts: what the lockfile was written from is older.
  age({ lockfile: false });
  assert.equal(runJson(dir, ["--only", "gen"]).cached, 2);
  assert.equal(runJson(dir).cached, 2);
  const l = JSON.parse(readFileSync(lock, "utf8")) as {
    instances: Record<string, { key: string; metrics: Record<string, unknown> }>;
  };
  const entry = Object.values(l.instances).find((e) => e.key === r.key);
  assert.deepEqual(entry?.metrics, { marker: 7 });
  // Edited by hand while everything else stayed: put back as the results say.
  age();
  runJson(dir);
  runJson(dir);
  const good = readFileSync(lock, "utf8");
  writeFileSync(lock, good.replace('"marker": 7', '"marker": 8'));
  runJson(dir);
  assert.equal(readFileSync(lock, "utf8"), good);
  // A matrix value dropped: the same records, fewer instances, fewer entries.
  age();
  runJson(dir);
  runJson(dir);
  writeFileSync(join(dir, "p.yaml"), text.replace("[1, 2]", "[1]"));
  assert.equal(runJson(dir).cached, 1);
  const after = JSON.parse(readFileSync(lock, "utf8")) as { instances: Record<string, unknown> };
  assert.deepEqual(Object.keys(after.instances), ["gen@i=1"]);
});

test("a no-op run serves its results from the results memo, and never one whose record was replaced or removed", () => {
  const text = `version: 1\nname: rmemo\nstages:\n  gen:\n    uses: shell\n    matrix:\n      i: [1, 2, 3]\n    with:\n      run: echo \${{ matrix.i }} > $OUT/x\n`;
  const dir = project({ "p.yaml": text });
  assert.equal(runJson(dir).executed, 3);
  const actions = join(dir, ".valley", "actions");
  const memoDir = join(dir, ".valley", "results");
  // Records and a records folder changed less than 2 s ago are not trusted
  // (a change within the same tick could keep their times): age them, as
  // minutes would.
  const age = () => {
    const past = new Date(Date.now() - 60_000);
    for (const f of readdirSync(actions)) utimesSync(join(actions, f), past, past);
    utimesSync(actions, past, past);
  };
  const records = () =>
    readdirSync(actions)
      .filter((f) => f.endsWith(".json"))
      .sort();
  age();
  assert.equal(runJson(dir).cached, 3);
  // (beside it: the run memo, engine/run-memo.ts, and the lockfile's state)
  const memoFiles = readdirSync(memoDir).filter(
    (f) => !f.endsWith(".run.json") && !f.endsWith(".lockfile.json"),
  );
  assert.equal(memoFiles.length, 1);
  const memo = JSON.parse(readFileSync(join(memoDir, memoFiles[0]), "utf8")) as {
    v: number;
    dir: string | null;
    records: Record<string, { rec: Record<string, unknown> }>;
  };
  assert.equal(memo.v, 2);
  // The folder's stat fields, taken before the run read a record.
  const st = statSync(actions, { bigint: true });
  assert.equal(memo.dir, `${st.dev}:${st.ino}:${st.size}:${st.mtimeNs}:${st.ctimeNs}`);
  const keys = records().map((f) => f.replace(/\.json$/, ""));
  assert.deepEqual(Object.keys(memo.records).sort(), keys);
  for (const k of keys) {
    // Only what a run uses: the key fields, timings and log stay in the record.
    assert.deepEqual(Object.keys(memo.records[k].rec).sort(), ["key", "metrics", "outputs"]);
    assert.equal(memo.records[k].rec.key, `sha256:${k}`);
  }
  assert.equal(runJson(dir).cached, 3);
  // A record replaced the way the engine replaces one (written beside, renamed
  // over; here marked incomplete) is read again, not served from the memo.
  const first = join(actions, records()[0]);
  const rec = JSON.parse(readFileSync(first, "utf8")) as Record<string, unknown>;
  writeFileSync(first + ".tmp", JSON.stringify({ ...rec, incomplete: "test: marked incomplete" }));
  renameSync(first + ".tmp", first);
  assert.deepEqual((({ executed, cached }) => ({ executed, cached }))(runJson(dir)), {
    executed: 1,
    cached: 2,
  });
  // A record deleted (gc) is not served either, also when the memo was trusted.
  age();
  assert.equal(runJson(dir).cached, 3);
  assert.equal(runJson(dir).cached, 3);
  unlinkSync(join(actions, records()[1]));
  assert.equal(runJson(dir).executed, 1);
  // While the folder is not to be trusted (it just changed), each record's own
  // stat fields decide: one rewritten in place is read again.
  const third = join(actions, records()[2]);
  const r3 = JSON.parse(readFileSync(third, "utf8")) as Record<string, unknown>;
  writeFileSync(third, JSON.stringify({ ...r3, incomplete: "test: rewritten in place" }));
  assert.equal(runJson(dir).executed, 1);
});
