import { test } from "node:test";
import assert from "node:assert/strict";
import {
  readFileSync,
  writeFileSync,
  existsSync,
  readdirSync,
  openSync,
  writeSync,
  closeSync,
} from "node:fs";
import { join } from "node:path";
import {
  valley,
  valleyChild,
  project,
  lines,
  waitFor,
  processesWith,
  sleep,
} from "./helpers/valley.js";

function json(r: { code: number; stdout: string; stderr: string }) {
  assert.ok(r.stdout.trim(), `no JSON on stdout (exit ${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as {
    instances: number;
    executed: number;
    cached: number;
    failed: number;
    skipped: number;
  };
}

test("kill -9 mid-run: finished instances are reused, the killed one re-runs, the store verifies clean, no child survives", async () => {
  const dir = project({});
  const side = join(dir, "side.log");
  const marker = `valley-kill-${Date.now()}`;
  writeFileSync(
    join(dir, "p.yaml"),
    `
version: 1
stages:
  step:
    uses: shell
    matrix: {i: [1, 2, 3, 4]}
    with:
      run: 'echo start \${{ matrix.i }} >> ${side}; if [ \${{ matrix.i }} = 3 ] && [ ! -e ${dir}/go ]; then sh -c "sleep 30; : ${marker}"; fi; echo \${{ matrix.i }} > $OUT/i.txt; echo end \${{ matrix.i }} >> ${side}'
`,
  );
  const { child, done } = valleyChild(["run", "p.yaml", "--jobs", "1"], { cwd: dir });
  await waitFor(() => lines(side).includes("start 3"), 60_000, "instance 3 to start");
  child.kill("SIGKILL");
  await done;
  await waitFor(
    () => processesWith(marker).length === 0,
    10_000,
    "the killed run's children to die",
  );
  const ended = lines(side).filter((l) => l.startsWith("end")).length;
  assert.equal(ended, 2, `instances 1 and 2 finished before the kill: ${lines(side).join("|")}`);

  writeFileSync(join(dir, "go"), ""); // instance 3 no longer sleeps (the flag is not part of any key)
  const r = json(valley(["run", "p.yaml", "--json"], { cwd: dir }));
  assert.equal(r.failed, 0);
  assert.equal(r.cached, 2, "finished instances were not reused");
  assert.equal(r.executed, 2);
  const v = valley(["verify", "--cache", join(dir, ".valley")]);
  assert.equal(v.code, 0, v.stdout);
  assert.match(v.stdout, / 0 corrupt/);
});

test("two runs at once on one pipeline and cache: each key is computed exactly once, both exit 0", async () => {
  const dir = project({});
  const side = join(dir, "side.log");
  writeFileSync(
    join(dir, "p.yaml"),
    `
version: 1
stages:
  gen:
    uses: shell
    matrix: {i: [1, 2, 3, 4, 5, 6]}
    with: {run: "echo gen \${{ matrix.i }} >> ${side}; sleep 0.3; echo \${{ matrix.i }} > $OUT/x"}
  sum:
    uses: shell
    inputs: {xs: "gen[*]"}
    with: {run: "echo sum >> ${side}; cat $IN_XS/*/x | awk '{s+=$1} END {print s}' > $OUT/sum"}
`,
  );
  const a = valleyChild(["run", "p.yaml", "--json", "--jobs", "2"], { cwd: dir });
  const b = valleyChild(["run", "p.yaml", "--json", "--jobs", "2"], { cwd: dir });
  const [ra, rb] = await Promise.all([a.done, b.done]);
  assert.equal(ra.code, 0, ra.stderr);
  assert.equal(rb.code, 0, rb.stderr);
  const counts = new Map<string, number>();
  for (const l of lines(side)) counts.set(l, (counts.get(l) ?? 0) + 1);
  assert.equal(counts.size, 7);
  for (const [l, n] of counts) assert.equal(n, 1, `"${l}" ran ${n} times`);
  const ja = json(ra);
  const jb = json(rb);
  assert.equal(ja.executed + jb.executed, 7);
  assert.equal(ja.cached + jb.cached, 7);
});

test("a flipped byte in a stored object is found by verify and never served as an input", () => {
  const dir = project({});
  const side = join(dir, "side.log");
  writeFileSync(
    join(dir, "p.yaml"),
    `
version: 1
stages:
  make:
    uses: shell
    with: {run: "echo make >> ${side}; printf 'payload-0123456789' > $OUT/data.bin"}
  use:
    uses: shell
    inputs: {d: make}
    with: {run: "echo use >> ${side}; cp $IN_D/data.bin $OUT/copy.bin"}
`,
  );
  assert.equal(json(valley(["run", "p.yaml", "--json"], { cwd: dir })).executed, 2);
  const show = JSON.parse(
    valley(["show", "make", "-f", "p.yaml", "--json"], { cwd: dir }).stdout,
  ) as {
    outputs: Record<string, { path: string; digest: string }>;
  };
  const obj = join(
    dir,
    ".valley",
    "objects",
    show.outputs["data.bin"].digest.slice(7, 9),
    show.outputs["data.bin"].digest.slice(9),
  );
  const fd = openSync(obj, "r+");
  writeSync(fd, Buffer.from("X"), 0, 1, 3);
  closeSync(fd);

  // The next run notices (stat changed → re-hash), re-runs the producer and
  // gives the consumer the right bytes; the consumer's own result is unchanged.
  const r = json(valley(["run", "p.yaml", "--json"], { cwd: dir }));
  assert.equal(r.executed, 1, "the producer should re-run");
  assert.deepEqual(lines(side), ["make", "use", "make"]);
  const use = JSON.parse(
    valley(["show", "use", "-f", "p.yaml", "--json"], { cwd: dir }).stdout,
  ) as {
    outputs: Record<string, { path: string }>;
  };
  assert.equal(readFileSync(use.outputs["copy.bin"].path, "utf8"), "payload-0123456789");

  // verify finds a corruption even when the stat cache is fooled (same size, mtime restored).
  const show2 = JSON.parse(
    valley(["show", "make", "-f", "p.yaml", "--json"], { cwd: dir }).stdout,
  ) as {
    outputs: Record<string, { digest: string }>;
  };
  const obj2 = join(
    dir,
    ".valley",
    "objects",
    show2.outputs["data.bin"].digest.slice(7, 9),
    show2.outputs["data.bin"].digest.slice(9),
  );
  const { atime, mtime } = require_stat(obj2);
  const fd2 = openSync(obj2, "r+");
  writeSync(fd2, Buffer.from("Y"), 0, 1, 5);
  closeSync(fd2);
  utimes(obj2, atime, mtime);
  const v = valley(["verify", "--cache", join(dir, ".valley")]);
  assert.equal(v.code, 1);
  assert.match(v.stdout, new RegExp(`CORRUPT .*${show2.outputs["data.bin"].digest.slice(9)}`));
  assert.equal(
    valley(["verify", "--cache", join(dir, ".valley")]).code,
    0,
    "the corrupt object was not moved aside",
  );
  const again = json(valley(["run", "p.yaml", "--json"], { cwd: dir }));
  assert.equal(again.executed, 1, "the producer of the quarantined object should re-run");
});

import { statSync, utimesSync } from "node:fs";
function require_stat(p: string) {
  const s = statSync(p);
  return { atime: s.atime, mtime: s.mtime };
}
function utimes(p: string, a: Date, m: Date) {
  utimesSync(p, a, m);
}

test("retries with backoff, then success; a failure stops the run unless --keep-going", () => {
  const dir = project({});
  const count = join(dir, "count");
  writeFileSync(
    join(dir, "p.yaml"),
    `
version: 1
stages:
  flaky:
    uses: shell
    retries: 2
    with: {run: "echo x >> ${count}; [ $(wc -l < ${count}) -ge 3 ] && echo ok > $OUT/o"}
`,
  );
  const r = valley(["run", "p.yaml", "--json"], { cwd: dir, env: { VALLEY_BACKOFF_MS: "50" } });
  assert.equal(r.code, 0, r.stderr);
  assert.equal(lines(count).length, 3);
  assert.match(r.stderr, /retry +flaky/);

  const dir2 = project({});
  const side = join(dir2, "side.log");
  const p2 = (keep: boolean) => `
version: 1
stages:
  bad:
    uses: shell
    with: {run: "echo bad >> ${side}; echo boom >&2; exit 3"}
  after:
    uses: shell
    inputs: {b: bad}
    with: {run: "echo after >> ${side}"}
  other:
    uses: shell
    matrix: {i: [1, 2, 3]}
    with: {run: "sleep 0.2; echo other${keep ? "k" : ""} \${{ matrix.i }} >> ${side}"}
`;
  writeFileSync(join(dir2, "p.yaml"), p2(false));
  const f = valley(["run", "p.yaml", "--json", "--jobs", "1"], { cwd: dir2 });
  assert.equal(f.code, 1);
  const jf = json(f);
  assert.equal(jf.failed, 1);
  assert.ok(jf.executed < 3, "without --keep-going the run went on launching");
  assert.match(f.stderr, /bad failed: Command failed with exit code 3/);
  assert.equal(lines(side).includes("after"), false);

  writeFileSync(join(dir2, "p.yaml"), p2(true));
  const k = valley(["run", "p.yaml", "--json", "--jobs", "1", "--keep-going"], { cwd: dir2 });
  assert.equal(k.code, 1);
  const jk = json(k);
  assert.equal(jk.failed, 1);
  assert.equal(jk.skipped, 1, "the dependent of the failed instance is skipped");
  assert.equal(lines(side).filter((l) => l.startsWith("otherk")).length, 3);
  const logs = valley(["logs", "bad", "-f", "p.yaml"], { cwd: dir2 });
  assert.match(logs.stdout, /boom/);
});

test("a timeout kills the whole process group; nothing is cached", async () => {
  const marker = `valley-timeout-${Date.now()}`;
  const dir = project({
    "p.yaml": `
version: 1
stages:
  slow:
    uses: shell
    timeout: 1s
    with: {run: "sh -c 'sleep 60; : ${marker}' & sh -c 'sleep 60; : ${marker}'"}
`,
  });
  const r = valley(["run", "p.yaml", "--json"], { cwd: dir });
  assert.equal(r.code, 1, r.stderr);
  assert.match(r.stderr, /timed out/);
  await sleep(300);
  assert.deepEqual(processesWith(marker), []);
  assert.deepEqual(readdirSync(join(dir, ".valley", "actions")), []);
});

test("Ctrl-C stops launching, kills running children (process groups) and exits cleanly", async () => {
  const dir = project({});
  const side = join(dir, "side.log");
  const marker = `valley-int-${Date.now()}`;
  writeFileSync(
    join(dir, "p.yaml"),
    `
version: 1
stages:
  s:
    uses: shell
    matrix: {i: [1, 2, 3, 4]}
    with: {run: "echo start \${{ matrix.i }} >> ${side}; sh -c 'sleep 60; : ${marker}'"}
`,
  );
  const { child, done } = valleyChild(["run", "p.yaml", "--jobs", "2"], { cwd: dir });
  await waitFor(() => processesWith(marker).length >= 2, 30_000, "two children");
  child.kill("SIGINT");
  const r = await done;
  assert.equal(r.code, 130, r.stderr);
  assert.deepEqual(processesWith(marker), []);
  assert.equal(lines(side).length, 2, "new instances were launched after Ctrl-C");
  assert.equal(
    existsSync(join(dir, ".valley", "leases")) &&
      readdirSync(join(dir, ".valley", "leases")).length,
    0,
    "leases left behind",
  );
});

test("gc keeps what the lockfile and pins reference and removes the rest", () => {
  const dir = project({});
  const p = (v: string) => `
version: 1
stages:
  a:
    uses: shell
    with: {run: "echo ${v} > $OUT/v"}
`;
  writeFileSync(join(dir, "p.yaml"), p("one"));
  valley(["run", "p.yaml"], { cwd: dir });
  assert.equal(valley(["pin", "a", "-f", "p.yaml"], { cwd: dir }).code, 0);
  writeFileSync(join(dir, "p.yaml"), p("two"));
  valley(["run", "p.yaml"], { cwd: dir });
  writeFileSync(join(dir, "p.yaml"), p("three"));
  valley(["run", "p.yaml"], { cwd: dir });
  assert.equal(readdirSync(join(dir, ".valley", "actions")).length, 3);
  const g = valley(["gc", "--cache", join(dir, ".valley")]);
  assert.equal(g.code, 0, g.stderr);
  assert.match(g.stdout, /removed 1 result/);
  assert.equal(
    readdirSync(join(dir, ".valley", "actions")).length,
    2,
    "the pinned and the locked results stay",
  );
  assert.equal(json(valley(["run", "p.yaml", "--json"], { cwd: dir })).cached, 1);
  assert.equal(valley(["verify", "--cache", join(dir, ".valley")]).code, 0);
});

test("resource accounting: instances that each need the whole machine never overlap; a GPU stage on a GPU-less machine is refused", () => {
  const dir = project({});
  const side = join(dir, "side.log");
  writeFileSync(
    join(dir, "p.yaml"),
    `
version: 1
stages:
  big:
    uses: shell
    matrix: {i: [1, 2, 3]}
    resources: {cpu: 1000}
    with: {run: "echo start >> ${side}; sleep 0.3; echo end \${{ matrix.i }} >> ${side}"}
`,
  );
  const r = valley(["run", "p.yaml", "--json", "--jobs", "3"], { cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  // Each start is followed by its own end before the next start.
  const l = lines(side);
  assert.equal(l.length, 6);
  for (let k = 0; k < 6; k += 2) {
    assert.equal(l[k], "start", l.join("|"));
    assert.match(l[k + 1], /^end /, l.join("|"));
  }
  const gpu = project({
    "p.yaml": `
version: 1
stages:
  train:
    uses: shell
    resources: {gpu: 1}
    with: {run: "true"}
`,
  });
  const g = valley(["run", "p.yaml", "--json"], {
    cwd: gpu,
    env: { VALLEY_GPUS: "0", CUDA_VISIBLE_DEVICES: "" },
  });
  assert.equal(g.code, 2, g.stderr);
  assert.match(g.stderr, /needs 1 GPU\(s\); this machine has 0/);
});

test("a failed stage's summary shows its last 10 stderr lines, not stdout, and --json carries them", () => {
  const dir = project({
    "p.yaml": `
version: 1
stages:
  oom:
    uses: shell
    with:
      run: |
        for i in $(seq 1 15); do echo "err line $i" >&2; done
        echo "an stdout line"
        echo "CUDA error: out of memory" >&2
        exit 3
`,
  });
  const r = valley(["run", "p.yaml", "--json"], { cwd: dir });
  assert.equal(r.code, 1, r.stderr);
  const summary = r.stderr.slice(r.stderr.indexOf("✗"));
  assert.match(summary, /exit code 3/);
  const shown = summary.split("\n").filter((l) => l.startsWith("  │ "));
  assert.deepEqual(shown, [
    ...Array.from({ length: 9 }, (_, k) => `  │ err line ${k + 7}`),
    "  │ CUDA error: out of memory",
  ]);
  assert.match(summary, /full log: valley logs oom/);
  const j = json(r) as unknown as { failures: { id: string; stderr: string[] }[] };
  assert.equal(j.failures[0].stderr.length, 10);
  assert.equal(j.failures[0].stderr[9], "CUDA error: out of memory");
  assert.ok(!j.failures[0].stderr.includes("an stdout line"));
});

test("GPU placement: with VALLEY_GPUS=4, five 1-GPU instances get distinct devices, four at once, the fifth waits", () => {
  const dir = project({});
  const side = join(dir, "side.log");
  writeFileSync(
    join(dir, "p.yaml"),
    `
version: 1
stages:
  train:
    uses: shell
    matrix: {i: [1, 2, 3, 4, 5]}
    resources: {gpu: 1, cpu: 0.1}
    with:
      run: |
        echo "start $CUDA_VISIBLE_DEVICES" >> ${side}
        echo "\${{ matrix.i }} $CUDA_VISIBLE_DEVICES" > $OUT/device
        sleep 1.5
        echo "end $CUDA_VISIBLE_DEVICES" >> ${side}
`,
  );
  const env = { VALLEY_GPUS: "4", CUDA_VISIBLE_DEVICES: "" };
  const r = valley(["run", "p.yaml", "--json", "--jobs", "8"], { cwd: dir, env });
  assert.equal(r.code, 0, r.stderr);
  const l = lines(side);
  assert.equal(l.length, 10, l.join("|"));
  const firstFour = l.slice(0, 4);
  assert.ok(
    firstFour.every((x) => x.startsWith("start ")),
    `four start at once: ${l.join("|")}`,
  );
  assert.deepEqual(firstFour.map((x) => x.slice(6)).sort(), ["0", "1", "2", "3"]);
  const fifth = l.findIndex((x, k) => k >= 4 && x.startsWith("start "));
  const freed = l
    .slice(0, fifth)
    .filter((x) => x.startsWith("end "))
    .map((x) => x.slice(4));
  assert.ok(freed.length >= 1, `the fifth waits for a GPU: ${l.join("|")}`);
  assert.ok(freed.includes(l[fifth].slice(6)), `the fifth gets a freed GPU: ${l.join("|")}`);
  // The device is recorded in the action record, and is not part of the key.
  const records = readdirSync(join(dir, ".valley", "actions")).map(
    (f) =>
      JSON.parse(readFileSync(join(dir, ".valley", "actions", f), "utf8")) as {
        gpus?: string[];
        fields: Record<string, unknown>;
      },
  );
  assert.equal(records.length, 5);
  for (const rec of records) {
    assert.equal(rec.gpus?.length, 1);
    assert.deepEqual(rec.fields.env, {}, "the device is not in the key's env");
  }
  const again = valley(["run", "p.yaml", "--json"], {
    cwd: dir,
    env: { VALLEY_GPUS: "2", CUDA_VISIBLE_DEVICES: "" },
  });
  assert.equal(json(again).cached, 5, "other devices re-run nothing");
});

test("a result obtained by waiting on another run's lease is reported as done by the waiting run", async () => {
  const dir = project({});
  const side = join(dir, "side.log");
  writeFileSync(
    join(dir, "p.yaml"),
    `
version: 1
stages:
  slow:
    uses: shell
    with: {run: "echo started >> ${side}; while [ ! -e ${dir}/go ]; do sleep 0.05; done; echo 1 > $OUT/x"}
`,
  );
  const a = valleyChild(["run", "p.yaml", "--json"], { cwd: dir });
  await waitFor(() => lines(side).length > 0, 60_000, "the first run to start the stage");
  const b = valleyChild(["run", "p.yaml", "--json"], { cwd: dir });
  let bErr = "";
  b.child.stderr?.on("data", (d: Buffer) => (bErr += d.toString()));
  await waitFor(() => bErr.includes("wait "), 60_000, "the second run to wait on the lease");
  writeFileSync(join(dir, "go"), "");
  const [ra, rb] = await Promise.all([a.done, b.done]);
  assert.equal(ra.code, 0, ra.stderr);
  assert.equal(rb.code, 0, rb.stderr);
  assert.equal(json(ra).executed, 1);
  assert.equal(json(rb).cached, 1);
  assert.match(rb.stderr, /wait {4}slow: computed by /);
  assert.match(rb.stderr, /cached {2}slow \(computed by another run\)/);
  assert.deepEqual(lines(side), ["started"]);
});

test("--jobs N bounds the stage programs running at once, though a job's slot goes back before its result is stored", () => {
  const dir = project({});
  const side = join(dir, "side.log");
  writeFileSync(
    join(dir, "p.yaml"),
    `
version: 1
stages:
  work:
    uses: shell
    matrix: {i: [1, 2, 3, 4, 5, 6, 7, 8]}
    with: {run: "echo + >> ${side}; sleep 0.2; echo - >> ${side}; head -c 300000 /dev/zero > $OUT/big; echo \${{ matrix.i }} > $OUT/i"}
`,
  );
  const r = valley(["run", "p.yaml", "--json", "--jobs", "2"], { cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  let running = 0;
  let most = 0;
  for (const l of lines(side)) {
    running += l === "+" ? 1 : -1;
    most = Math.max(most, running);
  }
  assert.equal(running, 0);
  assert.equal(most, 2, lines(side).join(""));
  assert.equal((JSON.parse(r.stdout) as { executed: number }).executed, 8);
});
