// gc that never loses a result (issue 19; design in cache/README.md): gc and
// runs exclude each other, results are roots before they are visible, full
// disks fail cleanly, gc cleans leftovers and counts bytes by stat.
import { test, type TestContext } from "node:test";
import assert from "node:assert/strict";
import {
  closeSync,
  existsSync,
  ftruncateSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { tmpdir } from "node:os";
import { randomBytes } from "node:crypto";
import { spawnSync } from "node:child_process";
import { CLI, valley, valleyChild, project, lines, waitFor, sleep } from "./helpers/valley.js";

interface RunJson {
  instances: number;
  executed: number;
  cached: number;
  failed: number;
}

function ok(r: { code: number; stdout: string; stderr: string }, what: string): string {
  assert.equal(r.code, 0, `${what}: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

const runJson = (dir: string, file = "p.yaml"): RunJson =>
  JSON.parse(ok(valley(["run", file, "--json"], { cwd: dir }), `run ${file}`)) as RunJson;

/** Files under objects/ (garbage included). */
function objectCount(root: string): number {
  const d = join(root, "objects");
  return readdirSync(d).reduce((n, s) => n + readdirSync(join(d, s)).length, 0);
}

/** Unreferenced objects written straight into the store, as old results leave them. */
function addGarbage(root: string, files: number, size: number): void {
  const body = randomBytes(size);
  for (let i = 0; i < files; i++) {
    const hex = randomBytes(32).toString("hex");
    mkdirSync(join(root, "objects", hex.slice(0, 2)), { recursive: true });
    writeFileSync(join(root, "objects", hex.slice(0, 2), hex.slice(2)), body);
  }
}

/** A 9-instance pipeline whose executions are counted in `side`. */
function nine(side: string, tag = "x"): string {
  return `
version: 1
name: nine
stages:
  s:
    uses: shell
    matrix:
      n: [1, 2, 3, 4, 5, 6, 7, 8, 9]
    with:
      run: echo s >> ${side}; head -c 65536 /dev/urandom > $OUT/r; echo "${tag} \${{ matrix.n }}" > $OUT/v
`;
}

test("finding 1: a run that starts while gc holds the cache waits for the sweep to end, and gc cannot remove its results", async () => {
  const dir = project({});
  const side = join(dir, "side.log");
  writeFileSync(join(dir, "p.yaml"), nine(side));
  const root = join(dir, ".valley");
  ok(valley(["run", "p.yaml"], { cwd: dir }), "first run");
  // v2's results are what the racing run writes; v1's become garbage with 20,000 more objects.
  writeFileSync(join(dir, "p.yaml"), nine(side, "v2"));
  addGarbage(root, 20_000, 1024);
  const garbage = objectCount(root);

  const gc = valleyChild(["gc", "--cache", root]);
  const gcLock = join(root, "locks", "gc.lock");
  // Freeze gc the moment it holds the cache's lock: from then on it is
  // marking or sweeping, however fast this machine is.
  await waitFor(() => existsSync(gcLock), 30_000, "gc to take the cache's lock");
  gc.child.kill("SIGSTOP");
  assert.equal(
    (JSON.parse(readFileSync(gcLock, "utf8")) as { pid: number }).pid,
    gc.child.pid,
    "the lock is gc's",
  );
  assert.ok(objectCount(root) > 0, "gc finished before the run started");
  const executedBefore = lines(side).length;

  const run = valleyChild(["run", "p.yaml", "--json"], { cwd: dir });
  let waitedOut = "";
  run.child.stderr?.on("data", (d: Buffer) => (waitedOut += d.toString()));
  await waitFor(() => /waiting for valley gc/.test(waitedOut), 30_000, "the run to wait for gc");
  assert.match(waitedOut, new RegExp(`gc on .* pid ${gc.child.pid}`));
  // While gc holds the cache, the run computes nothing.
  await sleep(1500);
  assert.equal(lines(side).length, executedBefore, "the run executed while gc held the cache");
  gc.child.kill("SIGCONT");
  const g = await gc.done;
  assert.equal(g.code, 0, g.stderr);
  const removed = Number(
    /removed \d+ result\(s\), \d+ tree\(s\), (\d+) object/.exec(g.stdout)?.[1],
  );
  assert.ok(removed >= 20_000, `gc removed ${removed} of ${garbage} objects`);
  const r = await run.done;
  assert.equal(r.code, 0, r.stderr);
  assert.equal((JSON.parse(r.stdout) as RunJson).executed, 9);

  // Nothing of the run's results is missing: verify is clean and nothing re-runs.
  ok(valley(["verify", "--cache", root]), "verify");
  const again = runJson(dir);
  assert.equal(again.executed, 0);
  assert.equal(again.cached, 9);
  // A gc after the run keeps all of them.
  assert.match(ok(valley(["gc", "--cache", root]), "gc again"), /kept 9 result/);
  assert.equal(runJson(dir).executed, 0);
});

test("finding 1: gc yields to a run in progress (exit 1, names it) and removes nothing", async () => {
  const dir = project({});
  writeFileSync(
    join(dir, "p.yaml"),
    `
version: 1
stages:
  slow:
    uses: shell
    with: {run: "touch ${dir}/started; sleep 3; echo done > $OUT/v"}
`,
  );
  const root = join(dir, ".valley");
  mkdirSync(root);
  const run = valleyChild(["run", "p.yaml"], { cwd: dir });
  await waitFor(() => existsSync(join(dir, "started")), 30_000, "the stage to start");
  addGarbage(root, 10, 100);
  const g = valley(["gc", "--cache", root]);
  assert.equal(g.code, 1, g.stdout + g.stderr);
  assert.match(g.stderr, new RegExp(`the cache is in use \\(run on .* pid ${run.child.pid}`));
  assert.ok(!existsSync(join(root, "locks", "gc.lock")), "gc left its lock behind");
  assert.equal((await run.done).code, 0);
  assert.match(ok(valley(["gc", "--cache", root]), "gc after the run"), /removed 0 result/);
});

test("finding 2: results that pull fetched are roots; gc -f keeps a lockfile's results", () => {
  const a = project({});
  const side = join(a, "side.log");
  writeFileSync(join(a, "p.yaml"), nine(side));
  ok(valley(["run", "p.yaml"], { cwd: a }), "run");
  const url = `file://${join(a, "remote")}`;
  ok(valley(["push", url, "-f", "p.yaml"], { cwd: a }), "push");

  // A clone pulls by lockfile: the lockfile is now a root of its cache.
  const b = project({ "p.yaml": readFileSync(join(a, "p.yaml"), "utf8") });
  writeFileSync(join(b, "p.lock"), readFileSync(join(a, "p.lock")));
  ok(valley(["pull", url, "-f", "p.yaml"], { cwd: b }), "pull");
  const g = ok(valley(["gc"], { cwd: b }), "gc");
  assert.match(g, /roots: 1 lockfile\(s\).*kept 9 result/);
  assert.match(g, /removed 0 result/);
  assert.equal(runJson(b).executed, 0);

  // A cache filled with pull --all has no lockfile registered: gc -f keeps that lockfile's results.
  const c = project({ "p.yaml": readFileSync(join(a, "p.yaml"), "utf8") });
  writeFileSync(join(c, "p.lock"), readFileSync(join(a, "p.lock")));
  ok(valley(["pull", url, "--all", "--cache", join(c, ".valley")], { cwd: c }), "pull --all");
  assert.match(
    ok(valley(["gc", "--dry-run", "--cache", join(c, ".valley")], { cwd: c }), "gc dry"),
    /would remove 9 result/,
  );
  assert.match(ok(valley(["gc", "-f", "p.yaml"], { cwd: c }), "gc -f"), /kept 9 result/);
  assert.equal(runJson(c).executed, 0);
});

test("findings 9 and 11: gc removes leftovers of killed runs and counts bytes by stat (a 3 GiB file, never read)", async () => {
  const dir = project({});
  writeFileSync(
    join(dir, "p.yaml"),
    `
version: 1
stages:
  big:
    uses: shell
    with: {run: "head -c 5242880 /dev/urandom > $OUT/part; touch ${dir}/written; sleep 60"}
`,
  );
  const root = join(dir, ".valley");
  const run = valleyChild(["run", "p.yaml"], { cwd: dir });
  await waitFor(() => existsSync(join(dir, "written")), 30_000, "the stage to write");
  run.child.kill("SIGKILL");
  await run.done;
  // The killed attempt's output is left in work/; a killed pull leaves a partial download in tmp/.
  const work = readdirSync(join(root, "work"));
  assert.ok(work.length > 0, "no leftover in work/");
  writeFileSync(join(root, "tmp", "pull-12345-abcdef"), randomBytes(1 << 20));
  // A 3 GiB garbage object (sparse): reading it whole would fail past 2 GiB.
  const hex = randomBytes(32).toString("hex");
  mkdirSync(join(root, "objects", hex.slice(0, 2)), { recursive: true });
  const fd = openSync(join(root, "objects", hex.slice(0, 2), hex.slice(2)), "w");
  ftruncateSync(fd, 3 * 2 ** 30);
  closeSync(fd);

  const g = ok(valley(["gc", "--cache", root]), "gc");
  assert.match(g, /removed 0 result\(s\), 0 tree\(s\), 1 object\(s\), 3072\.0 MiB/);
  const left = /(\d+) leftover\(s\) of stopped runs .*?, ([\d.]+) MiB/.exec(g);
  assert.ok(left, g);
  assert.ok(Number(left[2]) >= 6.0, `leftover bytes: ${left[2]} MiB`);
  assert.deepEqual(readdirSync(join(root, "tmp")), []);
  assert.deepEqual(
    readdirSync(join(root, "work")).filter((n) => !n.endsWith(".failed.log")),
    [],
    "work/ still holds a killed attempt",
  );
});

test("finding 11: VALLEY_CACHE set but empty is bad input (exit 2), no cache is created", () => {
  const dir = project({
    "p.yaml": "version: 1\nstages:\n  a:\n    uses: shell\n    with: {run: 'echo 1 > $OUT/v'}\n",
  });
  for (const args of [["run", "p.yaml"], ["gc"], ["plan", "p.yaml"]]) {
    const r = spawnSync(process.execPath, [CLI, ...args], {
      cwd: dir,
      env: { ...process.env, VALLEY_CACHE: "" },
      encoding: "utf8",
    });
    assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
    assert.match(r.stderr, /VALLEY_CACHE is set but empty/);
  }
  assert.deepEqual(readdirSync(dir), ["p.yaml"]);
});

/**
 * A 20 MiB tmpfs, unmounted afterwards. Mounting needs root with
 * CAP_SYS_ADMIN; where that is denied (a locked-down container) the test is
 * skipped and says why.
 */
function withTmpfs(fn: (mnt: string) => void | Promise<void>): (t: TestContext) => Promise<void> {
  return async (t) => {
    const mnt = mkdtempSync(join(tmpdir(), "valley-full-"));
    const m = spawnSync("mount", ["-t", "tmpfs", "-o", "size=20m", "tmpfs", mnt], {
      encoding: "utf8",
    });
    if (m.status !== 0) {
      rmSync(mnt, { recursive: true, force: true });
      t.skip(`cannot mount a tmpfs here to fill a disk: ${m.stderr.trim()}`);
      return;
    }
    try {
      await fn(mnt);
    } finally {
      spawnSync("umount", ["-l", mnt]);
      rmSync(mnt, { recursive: true, force: true });
    }
  };
}

const noStack = (s: string) => assert.doesNotMatch(s, /^\s+at .*:\d+:\d+\)?$/m, "a stack trace");

test(
  "findings 7 and 8: a stage that fills the disk: clear message, exit 1, summary printed, root registered, partial output deleted",
  { skip: process.getuid?.() !== 0 ? "mounting a tmpfs needs root" : false },
  withTmpfs((mnt) => {
    const dir = join(mnt, "proj");
    mkdirSync(dir);
    const p = (mib: number) => `
version: 1
stages:
  small:
    uses: shell
    with: {run: "echo small > $OUT/v"}
  big:
    uses: shell
    retries: 2
    inputs: {s: small}
    with: {run: "head -c ${mib * 1048576} /dev/zero > $OUT/blob"}
`;
    writeFileSync(join(dir, "p.yaml"), p(40));
    const r = valley(["run", "p.yaml"], { cwd: dir });
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stderr, /2 instances: 1 executed, 0 cached, 1 failed/);
    assert.match(
      r.stderr,
      new RegExp(
        `no space left on ${mnt} \\(tmpfs tmpfs\\) for the stage's output: [\\d.]+ (bytes|KiB) free of 20\\.0 MiB, at least (19|20)\\.\\d MiB needed`,
      ),
    );
    assert.match(r.stderr, /the partial output, (19|20)\.\d MiB, was deleted/);
    noStack(r.stderr);
    // Not retried: a full disk stays full.
    assert.doesNotMatch(r.stderr, /retry/i);
    const root = join(dir, ".valley");
    // trash/ holds at most empty scratch folders set aside by successful attempts.
    const trashed = spawnSync("du", ["-sb", join(root, "trash")], { encoding: "utf8" }).stdout;
    assert.ok(
      Number(trashed.split("\t")[0]) < 65536,
      `the partial output went to trash/: ${trashed}`,
    );
    assert.deepEqual(
      readdirSync(join(root, "work")).filter((n) => !n.endsWith(".log")),
      [],
      "the partial output stayed in work/",
    );
    // The lockfile lists `small` and is a root: gc keeps its result.
    const lock = JSON.parse(readFileSync(join(dir, "p.lock"), "utf8")) as {
      instances: Record<string, unknown>;
    };
    assert.deepEqual(Object.keys(lock.instances), ["small"]);
    assert.match(ok(valley(["gc"], { cwd: dir }), "gc"), /kept 1 result/);
    // The space is back without gc: a stage that fits runs at once.
    writeFileSync(join(dir, "p.yaml"), p(5));
    const again = runJson(dir);
    assert.equal(again.executed, 1);
    assert.equal(again.cached, 1);
  }),
);

test(
  "finding 7: the disk fills outside the stage: the lockfile cannot be written, yet it was a root before, the summary and a clear message are printed",
  { skip: process.getuid?.() !== 0 ? "mounting a tmpfs needs root" : false },
  withTmpfs((mnt) => {
    const dir = join(mnt, "proj");
    mkdirSync(dir);
    writeFileSync(
      join(dir, "p.yaml"),
      `
version: 1
stages:
  first:
    uses: shell
    with: {run: "echo hi > $OUT/v"}
  fill:
    uses: shell
    inputs: {a: first}
    with: {run: "head -c 40000000 /dev/zero > ${mnt}/filler; exit 3"}
`,
    );
    const r = valley(["run", "p.yaml"], { cwd: dir });
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stderr, /2 instances: 1 executed, 0 cached, 1 failed/);
    assert.match(
      r.stderr,
      new RegExp(`no space left on ${mnt} \\(tmpfs tmpfs\\) when the stage failed`),
    );
    // The lockfile could not be written: said after the summary, without a stack trace.
    assert.match(
      r.stderr,
      new RegExp(
        `failed[^]*\\nvalley run: no space left on ${mnt} \\(tmpfs tmpfs\\) writing ${dir}/p\\.lock`,
      ),
    );
    noStack(r.stderr);
    // Registered before anything ran.
    const regs = readdirSync(join(dir, ".valley", "roots")).map((n) =>
      readFileSync(join(dir, ".valley", "roots", n), "utf8").trim(),
    );
    assert.deepEqual(regs, [join(dir, "p.lock")]);
    assert.ok(statSync(join(mnt, "filler")).size > 0);
  }),
);

test(
  "finding 10: import on a full disk is a full disk (exit 1), not a bad bundle, and imports nothing",
  { skip: process.getuid?.() !== 0 ? "mounting a tmpfs needs root" : false },
  withTmpfs((mnt) => {
    const a = project({});
    writeFileSync(
      join(a, "p.yaml"),
      `
version: 1
stages:
  r:
    uses: shell
    with: {run: "head -c 12000000 /dev/urandom > $OUT/blob"}
`,
    );
    ok(valley(["run", "p.yaml"], { cwd: a }), "run");
    const bundle = join(a, "b.tar");
    ok(valley(["export", "p.yaml", "-o", bundle], { cwd: a }), "export");
    // 20 MiB, 10 of them taken: the 12 MB bundle cannot be unpacked into the cache's tmp/.
    writeFileSync(join(mnt, "filler"), Buffer.alloc(10 << 20));
    const cache = join(mnt, "cache");
    const r = valley(["import", bundle, "--cache", cache]);
    assert.equal(r.code, 1, r.stdout + r.stderr);
    assert.match(r.stderr, new RegExp(`no space left on ${mnt} \\(tmpfs`));
    assert.doesNotMatch(r.stderr, /not a readable tar/);
    noStack(r.stderr);
    assert.deepEqual(readdirSync(join(cache, "actions")), [], "a record was imported");
    assert.deepEqual(readdirSync(join(cache, "tmp")), [], "the unpacked bundle was left in tmp/");
  }),
);
