import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readdirSync, writeFileSync, existsSync } from "node:fs";
import { join } from "node:path";
import { valley, valleyChild, project, waitFor, processesWith } from "./helpers/valley.js";
import { startSlurm, type Cluster } from "./helpers/slurm.js";
import { sbatchArgs } from "../engine/executors/slurm.js";
import type { Instance } from "../engine/pipeline/expand.js";

// These tests start a real single-node Slurm (slurmctld, slurmd, munged) on
// localhost. Where the daemons cannot start they are skipped with the reason
// printed; VALLEY_REQUIRE_SLURM=1 turns that into a failure (CI).
let cluster: Cluster | undefined;
let skip: string | false = false;

before(async () => {
  const got = await startSlurm();
  if ("skip" in got) {
    if (process.env.VALLEY_REQUIRE_SLURM === "1") throw new Error(got.skip);
    skip = got.skip;
    process.stderr.write(`\n# slurm tests SKIPPED: ${skip}\n`);
  } else cluster = got;
});

after(async () => {
  if (!cluster) return;
  const dir = cluster.dir;
  await cluster.stop();
  assert.deepEqual(processesWith(dir), [], "a Slurm daemon survived the test");
});

interface Summary {
  instances: number;
  executed: number;
  cached: number;
  failed: number;
  failures: { id: string; error: string }[];
}

function json(r: { code: number; stdout: string; stderr: string }): Summary {
  assert.ok(r.stdout.trim(), `no JSON on stdout (exit ${r.code}): ${r.stderr}`);
  return JSON.parse(r.stdout) as Summary;
}

const env = (c: Cluster) => ({ ...c.env, VALLEY_BACKOFF_MS: "10" });

test("a matrix pipeline runs through --executor slurm: one job per instance (two submitters at once), resources mapped, a re-run submits nothing", async (t) => {
  if (!cluster) return t.skip(skip || "no cluster");
  const c = cluster;
  const dir = project({});
  writeFileSync(
    join(dir, "p.yaml"),
    `
version: 1
executor: {slurm: {poll: 0.5, flags: ["--comment=valley-test"]}}
stages:
  gen:
    uses: shell
    matrix: {i: [1, 2, 3]}
    resources: {cpu: 1, memory: 100}
    timeout: 30s
    with: {run: "sleep 0.5; echo \${{ matrix.i }} > $OUT/x"}
  total:
    uses: shell
    inputs: {xs: "gen[*]"}
    with: {run: "cat $IN_XS/*/x | awk '{s+=$1} END {print s}' > $OUT/sum"}
`,
  );
  const before = c.jobs().length;
  // Two submitters at once on one cache: the leases let each key be submitted once.
  const args = ["run", "p.yaml", "--executor", "slurm", "--json"];
  const [ra, rb] = await Promise.all([
    valleyChild(args, { cwd: dir, env: env(c) }).done,
    valleyChild(args, { cwd: dir, env: env(c) }).done,
  ]);
  assert.equal(ra.code, 0, ra.stderr);
  assert.equal(rb.code, 0, rb.stderr);
  const [sa, sb] = [json(ra), json(rb)];
  assert.equal(sa.executed + sb.executed, 4, `${ra.stderr}\n${rb.stderr}`);
  assert.equal(sa.cached + sb.cached, 4);
  assert.match(
    ra.stderr + rb.stderr,
    /slurm job \d+ RUNNING/,
    "job states are shown in progress output",
  );

  const mine = c.jobs().slice(before);
  const gen = mine.filter((l) => / Name=valley:gen@i=\d /.test(l));
  const total = mine.filter((l) => / Name=valley:total /.test(l));
  assert.equal(gen.length, 3, `one Slurm job per gen instance:\n${mine.join("\n")}`);
  assert.equal(total.length, 1);
  for (const l of mine) assert.match(l, /JobState=COMPLETED/);
  // resources: 1 CPU, 100 MiB, the 30 s time-out as a 2-minute limit (rounded up, plus a minute)
  for (const l of gen) {
    assert.match(l, /Tres=cpu=1,mem=100M/);
    assert.match(l, /TimeLimit=2 /);
  }
  assert.equal(
    readdirSync(join(dir, ".valley", "slurm")).filter((f) => f.endsWith(".log")).length,
    4,
  );

  const show = JSON.parse(
    valley(["show", "total", "-f", "p.yaml", "--json"], { cwd: dir, env: env(c) }).stdout,
  ) as { outputs: Record<string, { path: string }> };
  assert.ok(existsSync(show.outputs.sum.path));

  const again = json(
    valley(["run", "p.yaml", "--executor", "slurm", "--json"], { cwd: dir, env: env(c) }),
  );
  assert.equal(again.executed, 0);
  assert.equal(again.cached, 4);
  assert.equal(c.jobs().length, before + 4, "a re-run submitted a job");
  assert.equal(valley(["verify", "--cache", join(dir, ".valley")]).code, 0);
});

test("scancel a job mid-run: the engine reports it, retries when allowed, and the cache stays clean", async (t) => {
  if (!cluster) return t.skip(skip || "no cluster");
  const c = cluster;
  const dir = project({});
  const flag = join(dir, "started");
  // The first attempt of each stage sleeps (and is cancelled); later attempts finish at once.
  const stage = (name: string, retries: number) => `
  ${name}:
    uses: shell
    retries: ${retries}
    resources: {cpu: 1}
    with: {run: "if [ ! -e ${flag}-${name} ]; then touch ${flag}-${name}; exec sleep 60; fi; echo ok > $OUT/x"}`;
  writeFileSync(
    join(dir, "p.yaml"),
    `version: 1\nexecutor: {kind: slurm, slurm: {poll: 0.5}}\nstages:${stage("again", 1)}${stage("once", 0)}\n`,
  );
  const cancelRunning = async (name: string) => {
    let id = "";
    await waitFor(
      () => {
        id = c.squeue(["-n", `valley:${name}`, "-t", "RUNNING", "-o", "%i"]).trim();
        return id !== "" && existsSync(`${flag}-${name}`);
      },
      60_000,
      `the ${name} job to run`,
    );
    valleyScancel(c, id);
    return id;
  };

  // retries: 1 → the cancelled attempt is retried as a new job and succeeds.
  const a = valleyChild(["run", "p.yaml", "--only", "again", "--json"], { cwd: dir, env: env(c) });
  const id = await cancelRunning("again");
  const ra = await a.done;
  assert.equal(ra.code, 0, ra.stderr);
  assert.match(ra.stderr, new RegExp(`retry +again: slurm job ${id} ended CANCELLED`));
  assert.match(ra.stderr, /run +again \(attempt 2\)/);
  assert.equal(json(ra).executed, 1);

  // retries: 0 → the run fails (exit 1), no action record is written, the store verifies clean.
  const b = valleyChild(["run", "p.yaml", "--only", "once", "--json"], { cwd: dir, env: env(c) });
  const idb = await cancelRunning("once");
  const rb = await b.done;
  assert.equal(rb.code, 1, rb.stderr);
  const sb = json(rb);
  assert.equal(sb.failed, 1);
  assert.match(sb.failures[0].error, new RegExp(`slurm job ${idb} ended CANCELLED`));
  assert.match(
    sb.failures[0].error,
    /--- slurm output .*\.log/,
    "the job's Slurm output is surfaced",
  );
  assert.equal(
    readdirSync(join(dir, ".valley", "actions")).length,
    1,
    "only `again` has an action record",
  );
  const v = valley(["verify", "--cache", join(dir, ".valley")]);
  assert.equal(v.code, 0, v.stdout);
  const logs = valley(["logs", "once", "-f", "p.yaml"], { cwd: dir, env: env(c) });
  assert.match(logs.stdout, new RegExp(`slurm job ${idb} CANCELLED`));
});

/** scancel as a user would, from outside valley. */
function valleyScancel(c: Cluster, id: string) {
  const r = spawnSync("scancel", [id], { env: { ...process.env, ...c.env }, encoding: "utf8" });
  assert.equal(r.status, 0, `scancel ${id}: ${r.stderr}`);
}

test("Ctrl-C on the submitter cancels its running and queued jobs", async (t) => {
  if (!cluster) return t.skip(skip || "no cluster");
  const c = cluster;
  const dir = project({});
  const marker = `valley-slurm-nap-${Date.now()}`;
  writeFileSync(
    join(dir, "p.yaml"),
    `
version: 1
executor: {kind: slurm, slurm: {poll: 0.5}}
stages:
  nap:
    uses: shell
    matrix: {i: [1, 2, 3]}
    resources: {cpu: 1}
    with: {run: "sh -c 'sleep 60; : ${marker} \${{ matrix.i }}' && touch $OUT/x"}
`,
  );
  const run = valleyChild(["run", "p.yaml", "--json"], { cwd: dir, env: env(c) });
  // The node has 2 CPUs: two jobs run, the third waits in the queue.
  await waitFor(
    () => {
      const q = c
        .squeue(["-o", "%j %T"])
        .split("\n")
        .filter((l) => l.startsWith("valley:nap@"));
      return (
        q.filter((l) => l.endsWith("RUNNING")).length === 2 && q.some((l) => l.endsWith("PENDING"))
      );
    },
    60_000,
    "two nap jobs running and one pending",
  );
  await waitFor(() => processesWith(marker).length >= 2, 30_000, "the jobs' processes");
  run.child.kill("SIGINT");
  const r = await run.done;
  assert.equal(r.code, 130, r.stderr);
  assert.equal(
    c
      .squeue(["-o", "%j"])
      .split("\n")
      .filter((l) => l.startsWith("valley:nap@")).length,
    0,
    "jobs survived Ctrl-C",
  );
  await waitFor(
    () => processesWith(marker).length === 0,
    20_000,
    "the cancelled jobs' processes to end",
  );
  // `&&` above: with `;`, Slurm could kill the inner sh first and the stage
  // command would then succeed before valley on the node saw its SIGTERM.
  assert.deepEqual(
    readdirSync(join(dir, ".valley", "actions")),
    [],
    "a cancelled job recorded a result",
  );
  assert.equal(valley(["verify", "--cache", join(dir, ".valley")]).code, 0);
});

// These need no cluster.

test("sbatch arguments: resources, time limit, partition, account and extra flags", () => {
  const inst = {
    id: "tune@n=1000",
    resources: { cpu: 2.5, gpu: 2, memory: 16384 },
    timeoutMs: 90 * 60_000,
  } as unknown as Instance;
  const args = sbatchArgs(
    inst,
    { partition: "gpu", account: "proj", flags: ["--qos=high"] },
    { log: "/c/slurm/k-%j.log" },
  );
  for (const a of [
    "--job-name=valley:tune@n=1000",
    "--output=/c/slurm/k-%j.log",
    "--cpus-per-task=3",
    "--mem=16384",
    "--gres=gpu:2",
    "--time=91",
    "--partition=gpu",
    "--account=proj",
    "--qos=high",
    "--no-requeue",
  ])
    assert.ok(args.includes(a), `${a} missing from ${args.join(" ")}`);
  const cpuOnly = sbatchArgs(
    { id: "x", resources: { cpu: 1, gpu: 0, memory: 0 } } as unknown as Instance,
    {},
    { log: "l" },
  );
  assert.ok(
    !cpuOnly.some((a) => /^--(gres|mem|time|partition|account)=/.test(a)),
    cpuOnly.join(" "),
  );
});

test("the job side refuses a key that differs from the submitter's (exit 2), and an unknown --executor", () => {
  const dir = project({
    "p.yaml": "version: 1\nstages:\n  one:\n    uses: shell\n    with: {run: 'echo 1 > $OUT/x'}\n",
  });
  const bad = `sha256:${"0".repeat(64)}`;
  const r = valley(["run", "p.yaml", "--instance", "one", "--attempt", "1", "--key", bad], {
    cwd: dir,
  });
  assert.equal(r.code, 2, r.stderr);
  assert.match(
    r.stderr,
    /key mismatch for one: the submitter computed sha256:0+, this node computes sha256:[0-9a-f]{64}/,
  );
  assert.equal(readdirSync(join(dir, ".valley", "actions")).length, 0);
  const u = valley(["run", "p.yaml", "--executor", "kubernetes"], { cwd: dir });
  assert.equal(u.code, 2);
  assert.match(u.stderr, /--executor kubernetes: expected local or slurm/);
});
