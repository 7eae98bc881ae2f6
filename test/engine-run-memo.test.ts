import { test } from "node:test";
import assert from "node:assert/strict";
import {
  readFileSync,
  writeFileSync,
  readdirSync,
  copyFileSync,
  chmodSync,
  unlinkSync,
  existsSync,
} from "node:fs";
import { basename, dirname, join } from "node:path";
import { valley, project } from "./helpers/valley.js";
import { PACKAGE_ROOT } from "../engine/root.js";

/**
 * The run memo (engine/run-memo.ts): a run with nothing to do is found so
 * without expanding the pipeline. Every determinant of a key, changed, must
 * take the full path and re-run exactly what the full path re-runs; a result
 * that is gone, corrupt or replaced must never be reported as cached.
 */

const PIPELINE = (side: string) => `version: 1
name: memo
params:
  greeting: hello
stages:
  problems:
    uses: problems
    with: { format: lcb, path: ./lcb.jsonl }
  gen:
    uses: shell
    matrix:
      n: [1, 2, 3]
    env: [MODE]
    inputs: { data: ./data.txt }
    with:
      run: echo gen >> ${side}; echo "\${{ params.greeting }} \${{ matrix.n }} $MODE $(cat $IN_DATA/data.txt)" > $OUT/x.txt
  sub:
    uses: shell
    inputs: { g: gen }
    with:
      run: echo sub >> ${side}; tr a-z A-Z < $IN_G/x.txt > $OUT/y.txt; date +%N >> $OUT/y.txt
  all:
    uses: shell
    inputs: { s: "sub[*]", p: problems }
    with:
      run: echo all >> ${side}; cat $IN_S/*/y.txt > $OUT/all.txt; wc -l < $IN_P/problems.jsonl > $OUT/n.txt
`;

interface RunOut {
  instances: number;
  executed: number;
  cached: number;
  failed: number;
  fast_path: boolean;
}

function setup() {
  const dir = project({ "data.txt": "one\n" });
  const side = join(dir, "side.log");
  writeFileSync(join(dir, "p.yaml"), PIPELINE(side));
  copyFileSync(join(PACKAGE_ROOT, "test", "fixtures", "data", "lcb.jsonl"), join(dir, "lcb.jsonl"));
  const run = (args: string[] = [], env: Record<string, string> = {}): RunOut => {
    const r = valley(["run", "p.yaml", "--json", ...args], {
      cwd: dir,
      env: { MODE: "a", ...env },
    });
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as RunOut;
  };
  const executions = () =>
    existsSync(side) ? readFileSync(side, "utf8").split("\n").length - 1 : 0;
  const lockfile = () => readFileSync(join(dir, "p.lock"), "utf8");
  return { dir, side, run, executions, lockfile };
}

const counts = (r: RunOut) => ({ executed: r.executed, cached: r.cached, fast: r.fast_path });

test("a run with nothing changed is found so from the run memo, writes nothing new and runs nothing", () => {
  const { dir, run, executions, lockfile } = setup();
  assert.deepEqual(counts(run()), { executed: 8, cached: 0, fast: false });
  const lock = lockfile();
  const n = executions();
  assert.deepEqual(counts(run()), { executed: 0, cached: 8, fast: true });
  assert.deepEqual(counts(run()), { executed: 0, cached: 8, fast: true });
  assert.equal(executions(), n);
  assert.equal(lockfile(), lock);
  // The memo is one file per pipeline file, beside the results memo.
  assert.equal(
    readdirSync(join(dir, ".valley", "results")).filter((f) => f.endsWith(".run.json")).length,
    1,
  );
  // Started from another folder: relative paths still mean beside the pipeline.
  const up = valley(["run", join(basename(dir), "p.yaml"), "--json"], {
    cwd: dirname(dir),
    env: { MODE: "a" },
  });
  assert.equal(up.code, 0, up.stderr);
  assert.deepEqual(counts(JSON.parse(up.stdout) as RunOut), { executed: 0, cached: 8, fast: true });
  // and when the check fails there, the full path still finds the file it was given
  writeFileSync(join(dir, "p.yaml"), readFileSync(join(dir, "p.yaml"), "utf8") + "# edited\n");
  const up2 = valley(["run", join(basename(dir), "p.yaml"), "--json"], {
    cwd: dirname(dir),
    env: { MODE: "a" },
  });
  assert.equal(up2.code, 0, up2.stderr);
  assert.deepEqual(counts(JSON.parse(up2.stdout) as RunOut), {
    executed: 0,
    cached: 8,
    fast: false,
  });
  // Human output says why nothing ran.
  const r = valley(["run", "p.yaml"], { cwd: dir, env: { MODE: "a" } });
  assert.equal(r.code, 0);
  assert.match(
    r.stderr,
    /8 instances: 0 executed, 8 cached, 0 failed \(.*nothing changed since the last complete run\)/,
  );
});

test("each determinant of a key, changed, takes the full path and re-runs what it changes", () => {
  const { dir, run, executions } = setup();
  run();
  assert.equal(run().fast_path, true);
  const ran = (
    args: string[],
    env: Record<string, string>,
    want: { executed: number; cached: number },
    shellRuns = want.executed,
  ) => {
    const before = executions();
    const r = run(args, env);
    assert.equal(r.fast_path, false, "a change must take the full path");
    assert.deepEqual({ executed: r.executed, cached: r.cached }, want);
    assert.equal(executions() - before, shellRuns);
    // and the full path remembers the new state
    assert.equal(run(args, env).fast_path, true);
  };

  // A path input's content: gen ×3, sub ×3, all.
  writeFileSync(join(dir, "data.txt"), "two\n");
  ran([], {}, { executed: 7, cached: 1 });
  // A declared environment variable's value.
  ran([], { MODE: "b" }, { executed: 7, cached: 1 });
  // A -p override (then its absence again: every result is still cached, by the full path).
  ran(["-p", "greeting=hi"], { MODE: "b" }, { executed: 7, cached: 1 });
  ran([], { MODE: "b" }, { executed: 0, cached: 8 });
  // A file a kind's fingerprint hook hashes (the problems stage's local file).
  const lcb = readFileSync(join(dir, "lcb.jsonl"), "utf8").trimEnd().split("\n");
  writeFileSync(join(dir, "lcb.jsonl"), lcb.slice(0, -1).join("\n") + "\n");
  ran([], { MODE: "b" }, { executed: 2, cached: 6 }, 1); // problems and all
  // The pipeline's text, even where keys do not change (a comment).
  writeFileSync(join(dir, "p.yaml"), readFileSync(join(dir, "p.yaml"), "utf8") + "# a comment\n");
  ran([], { MODE: "b" }, { executed: 0, cached: 8 });
});

test("a result gone, corrupt or replaced under its key is never served by the run memo", () => {
  const { dir, run, lockfile } = setup();
  run();
  assert.equal(run().fast_path, true);
  const store = join(dir, ".valley");
  const lock = JSON.parse(lockfile()) as {
    instances: Record<string, { key: string; tree: string; files: Record<string, string> }>;
  };

  // An output file changed in place in its tree: detected, recomputed.
  const g1 = lock.instances["gen@n=1"];
  const file = join(store, "trees", g1.tree.slice(7), "x.txt");
  chmodSync(file, 0o644);
  writeFileSync(file, "tampered\n");
  let r = run();
  assert.equal(r.fast_path, false);
  assert.ok(r.executed >= 1, JSON.stringify(r));
  assert.equal(run().fast_path, true);

  // A record removed (gc): its instance runs again.
  const lock2 = JSON.parse(lockfile()) as typeof lock;
  unlinkSync(join(store, "actions", lock2.instances["all"].key.slice(7) + ".json"));
  r = run();
  assert.deepEqual(counts(r), { executed: 1, cached: 7, fast: false });
  assert.equal(run().fast_path, true);

  // gen re-run by --force: sub's output (it stamps the time) is a new tree
  // under the same keys, so `all`'s key changes. The next plain run must
  // see that, not serve the memo's keys.
  const before = JSON.parse(lockfile()) as typeof lock;
  r = run(["--force", "sub"]);
  assert.equal(r.fast_path, false);
  const after = JSON.parse(lockfile()) as typeof lock;
  assert.notEqual(after.instances["sub@n=1"].tree, before.instances["sub@n=1"].tree);
  assert.notEqual(after.instances["all"].key, before.instances["all"].key);
  r = run();
  assert.deepEqual(counts(r), { executed: 0, cached: 8, fast: false });
  assert.deepEqual(JSON.parse(lockfile()), after);
  assert.equal(run().fast_path, true);
});

test("a run with --only, --force or failures leaves no memo that could skip what it did not do", () => {
  const dir = project({
    "p.yaml": `version: 1
stages:
  a:
    uses: shell
    with: { run: "echo a > $OUT/a" }
  b:
    uses: shell
    inputs: { a: a }
    with: { run: "test -f $IN_A/go && echo b > $OUT/b" }
`,
  });
  const r1 = valley(["run", "p.yaml", "--json", "--only", "a"], { cwd: dir });
  assert.equal(r1.code, 0, r1.stderr);
  const memos = () =>
    readdirSync(join(dir, ".valley", "results")).filter((f) => f.endsWith(".run.json"));
  assert.deepEqual(memos(), []);
  // b fails: no memo, and the next run is the full path again (b fails again).
  const r2 = valley(["run", "p.yaml", "--json"], { cwd: dir });
  assert.equal(r2.code, 1);
  assert.deepEqual(memos(), []);
  const r3 = valley(["run", "p.yaml", "--json"], { cwd: dir });
  assert.equal(r3.code, 1);
  assert.equal((JSON.parse(r3.stdout) as RunOut).fast_path, false);
});

test("a pipeline edited while it runs: the memo holds the text the keys came from, not the edit", () => {
  const dir = project({});
  const file = join(dir, "p.yaml");
  writeFileSync(
    file,
    `version: 1
params:
  word: first
stages:
  say:
    uses: shell
    with:
      run: |
        echo \${{ params.word }} > $OUT/w
        sed -i 's/word: first/word: second/' ${file}
`,
  );
  const run = () => {
    const r = valley(["run", "p.yaml", "--json"], { cwd: dir });
    assert.equal(r.code, 0, r.stderr);
    return JSON.parse(r.stdout) as RunOut;
  };
  assert.deepEqual(counts(run()), { executed: 1, cached: 0, fast: false });
  // The file now says "second": its key is new, so the next run must compute it.
  assert.match(readFileSync(file, "utf8"), /word: second/);
  assert.deepEqual(counts(run()), { executed: 1, cached: 0, fast: false });
  assert.deepEqual(counts(run()), { executed: 0, cached: 1, fast: true });
});
