// Sharing that never loses a result (issue 19, findings 3-6 and 9; design in
// cache/README.md), against a real s3rver and a real loopback sshd.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { valley, valleyChild, project, waitFor } from "./helpers/valley.js";
import { startSshd, startS3, type Sshd, type S3Server } from "./helpers/remote-servers.js";

interface RunJson {
  executed: number;
  cached: number;
}
interface Lock {
  pipeline: string;
  instances: Record<string, { key: string; tree: string; files: Record<string, string> }>;
}

/** `gen` is deterministic; `rand` writes random bytes (a nondeterministic stage). */
function pipeline(tag: string, files = 3): string {
  return `
version: 1
name: exp
stages:
  gen:
    uses: shell
    matrix:
      n: [1, 2]
    with:
      run: echo "${tag} \${{ matrix.n }}" > $OUT/x.txt
  rand:
    uses: shell
    with:
      run: echo ${tag} > /dev/null; mkdir $OUT/d; for i in $(seq 1 ${files}); do head -c 32768 /dev/urandom > $OUT/d/f$i; done
`;
}

function ok(r: { code: number; stdout: string; stderr: string }, what: string): string {
  assert.equal(r.code, 0, `${what}: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

function built(dir: string, tag: string, files = 3): string {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, "p.yaml"), pipeline(tag, files));
  ok(valley(["run", "p.yaml"], { cwd: dir }), `run in ${dir}`);
  return dir;
}

/** A fresh clone of a project: its pipeline and lockfile, no cache. */
function clone(from: string): string {
  const dir = project({});
  copyFileSync(join(from, "p.yaml"), join(dir, "p.yaml"));
  copyFileSync(join(from, "p.lock"), join(dir, "p.lock"));
  return dir;
}

const lockOf = (dir: string) => JSON.parse(readFileSync(join(dir, "p.lock"), "utf8")) as Lock;
const runJson = (dir: string) =>
  JSON.parse(ok(valley(["run", "p.yaml", "--json"], { cwd: dir }), "run")) as RunJson;

let sshd: Sshd;
let s3: S3Server;
before(async () => {
  sshd = await startSshd();
  s3 = await startS3();
});
after(() => {
  sshd?.stop();
  s3?.stop();
});

test("finding 3: gc --remote while another push is in progress refuses; the push completes whole", async () => {
  const a = built(project({}), "a", 200);
  const url = s3.url(`lease-${Date.now()}`);
  const push = valleyChild(["push", url, "-f", "p.yaml", "--jobs", "1", "-v"], {
    cwd: a,
    env: s3.env,
  });
  let err = "";
  push.child.stderr?.on("data", (d: Buffer) => (err += d.toString()));
  // Freeze the pusher once it has uploaded objects (none pinned yet).
  await waitFor(
    () => (err.match(/pushed objects\//g) ?? []).length >= 5,
    60_000,
    "objects to be pushed",
  );
  push.child.kill("SIGSTOP");
  try {
    // Another cache (another machine's) runs gc --remote: nothing it knows references these objects.
    const other = project({});
    const g = valley(["gc", "--remote", url, "--cache", join(other, ".valley")], {
      cwd: other,
      env: s3.env,
    });
    assert.equal(g.code, 1, g.stdout + g.stderr);
    assert.match(g.stderr, new RegExp(`in use \\(push from .* pid ${push.child.pid}`));
  } finally {
    push.child.kill("SIGCONT");
  }
  const p = await push.done;
  assert.equal(p.code, 0, p.stderr);
  ok(valley(["verify", "--remote", url], { cwd: a, env: s3.env }), "verify --remote");
  // After the push, gc --remote from elsewhere keeps everything the pin names.
  const other = project({});
  assert.match(
    ok(
      valley(["gc", "--remote", url, "--cache", join(other, ".valley")], {
        cwd: other,
        env: s3.env,
      }),
      "gc --remote",
    ),
    /kept 3 result\(s\); removed 0 result\(s\), 0 object/,
  );
  const b = clone(a);
  ok(valley(["pull", url, "-f", "p.yaml"], { cwd: b, env: s3.env }), "pull");
  assert.equal(runJson(b).executed, 0);
});

test("finding 4: two users' a/exp and b/exp keep separate pins; a third machine's gc --remote keeps both", () => {
  const base = project({});
  const a = built(join(base, "alice", "exp"), "alice");
  const b = built(join(base, "bob", "exp"), "bob");
  const prefix = `pins-${Date.now()}`;
  const url = s3.url(prefix);
  ok(valley(["push", url, "-f", "p.yaml"], { cwd: a, env: s3.env }), "alice push");
  ok(valley(["push", url, "-f", "p.yaml"], { cwd: b, env: s3.env }), "bob push");
  const third = project({});
  ok(
    valley(["gc", "--remote", url, "--cache", join(third, ".valley")], {
      cwd: third,
      env: s3.env,
    }),
    "gc --remote from a third machine",
  );
  for (const who of [a, b]) {
    const c = clone(who);
    ok(valley(["pull", url, "-f", "p.yaml"], { cwd: c, env: s3.env }), `pull ${who}`);
    assert.equal(runJson(c).executed, 0, `${who}'s results were collected`);
  }
  // Re-pushing the same lockfile from the same cache replaces its own pin, not the other's.
  ok(valley(["push", url, "-f", "p.yaml"], { cwd: a, env: s3.env }), "alice pushes again");
  const pins = join(s3.dir, "valley", prefix); // s3rver keeps each key as files under bucket/key
  const names = (function walk(d: string): string[] {
    return readdirSync(d).flatMap((n) =>
      statSync(join(d, n)).isDirectory() ? walk(join(d, n)) : [join(d, n)],
    );
  })(pins).filter((p) => /\/pins\/exp@[0-9a-f]{16}-[0-9a-f]{16}\.json/.test(p));
  const distinct = new Set(names.map((p) => /exp@[0-9a-f-]+\.json/.exec(p)?.[0]));
  assert.equal(distinct.size, 2, `pins: ${[...distinct].join(", ")}`);
});

test("findings 5 and 6 (ssh://): pull -f refuses records that differ from the lockfile; push --repair replaces a broken record", () => {
  const remoteDir = join(sshd.root, `repair-${Date.now()}`);
  const url = sshd.url(remoteDir);
  const env = sshd.env;
  // Two machines compute the same keys; `rand` gives each its own bytes.
  const a = built(project({}), "x");
  const b = project({});
  copyFileSync(join(a, "p.yaml"), join(b, "p.yaml"));
  ok(valley(["run", "p.yaml"], { cwd: b }), "run on b");
  const la = lockOf(a);
  const lb = lockOf(b);
  assert.equal(la.instances.rand.key, lb.instances.rand.key);
  assert.notEqual(la.instances.rand.tree, lb.instances.rand.tree);
  ok(valley(["push", url, "-f", "p.yaml"], { cwd: a, env }), "a pushes");

  // b's collaborator has b's lockfile: the remote's `rand` is not what it promises.
  const c = clone(b);
  const r = valley(["pull", url, "-f", "p.yaml"], { cwd: c, env });
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.match(
    r.stderr,
    new RegExp(
      `rand: the remote's result for ${la.instances.rand.key} has tree ${la.instances.rand.tree}, the lockfile says ${lb.instances.rand.tree}; not pulled`,
    ),
  );
  assert.match(r.stdout, /and 2 result\(s\)/); // the gen results agree and came through
  assert.ok(
    !existsSync(join(c, ".valley", "actions", la.instances.rand.key.slice(7) + ".json")),
    "the differing record was admitted",
  );

  // A record rewritten to point at another instance's outputs is refused the same way.
  const rec = join(remoteDir, "actions", la.instances["gen@n=1"].key.slice(7) + ".json");
  const other = JSON.parse(
    readFileSync(
      join(remoteDir, "actions", la.instances["gen@n=2"].key.slice(7) + ".json"),
      "utf8",
    ),
  ) as { outputs: unknown };
  const tampered = JSON.parse(readFileSync(rec, "utf8")) as { outputs: unknown };
  tampered.outputs = other.outputs;
  writeFileSync(rec, JSON.stringify(tampered));
  const d = clone(a);
  const r2 = valley(["pull", url, "-f", "p.yaml"], { cwd: d, env });
  assert.equal(r2.code, 1, r2.stdout + r2.stderr);
  assert.match(r2.stderr, /gen@n=1: the remote's result for .* the lockfile says .*not pulled/);
  ok(valley(["verify"], { cwd: d }), "d's cache stays clean");
  writeFileSync(
    rec,
    readFileSync(join(a, ".valley", "actions", la.instances["gen@n=1"].key.slice(7) + ".json")),
  );

  // `rand`'s object is corrupted on the remote and verify --remote deletes it: the record is broken.
  const manifest = JSON.parse(
    readFileSync(
      join(
        a,
        ".valley",
        "objects",
        la.instances.rand.tree.slice(7, 9),
        la.instances.rand.tree.slice(9),
      ),
      "utf8",
    ),
  ) as { entries: { path: string; digest?: string }[] };
  const victim = (manifest.entries.find((e) => e.digest) as { digest: string }).digest.slice(7);
  const vpath = join(remoteDir, "objects", victim.slice(0, 2), victim.slice(2));
  writeFileSync(vpath + ".bad", "x");
  copyFileSync(vpath + ".bad", vpath); // different bytes under the digest's name
  const v = valley(["verify", "--remote", url], { cwd: a, env });
  assert.equal(v.code, 1);
  assert.match(v.stdout, /BROKEN/);
  // b recomputed that key with other bytes: a plain push skips the existing record …
  ok(valley(["push", url, "-f", "p.yaml"], { cwd: b, env }), "b pushes");
  assert.equal(valley(["verify", "--remote", url], { cwd: a, env }).code, 1, "still broken");
  // … push --repair replaces it with b's.
  const rp = ok(
    valley(["push", url, "-f", "p.yaml", "--repair"], { cwd: b, env }),
    "push --repair",
  );
  assert.match(rp, /replaced 1 broken remote record/);
  ok(valley(["verify", "--remote", url], { cwd: a, env }), "verify after repair");
  // b's collaborator now pulls everything its lockfile promises.
  const e = clone(b);
  ok(valley(["pull", url, "-f", "p.yaml"], { cwd: e, env }), "pull after repair");
  assert.equal(runJson(e).executed, 0);
});

test("finding 9 (ssh://): a killed pull's partial download is removed by gc", async () => {
  const a = project({});
  writeFileSync(
    join(a, "p.yaml"),
    `
version: 1
stages:
  big:
    uses: shell
    with: {run: "head -c 100000000 /dev/urandom > $OUT/blob"}
`,
  );
  ok(valley(["run", "p.yaml"], { cwd: a }), "run");
  const url = sshd.url(join(sshd.root, `partial-${Date.now()}`));
  ok(valley(["push", url, "-f", "p.yaml"], { cwd: a, env: sshd.env }), "push");
  const b = clone(a);
  const tmp = join(b, ".valley", "tmp");
  const pull = valleyChild(["pull", url, "-f", "p.yaml"], { cwd: b, env: sshd.env });
  const partial = () =>
    existsSync(tmp) &&
    readdirSync(tmp).some((n) => n.startsWith("pull-") && statSync(join(tmp, n)).size > 1 << 20);
  await waitFor(partial, 60_000, "a partial download");
  pull.child.kill("SIGKILL");
  await pull.done;
  assert.ok(readdirSync(tmp).length > 0);
  const g = ok(valley(["gc"], { cwd: b }), "gc");
  assert.match(g, /[1-9]\d* leftover\(s\) of stopped runs .*, [1-9][\d.]* MiB/);
  assert.deepEqual(readdirSync(tmp), []);
  // The pull, run again, completes.
  ok(valley(["pull", url, "-f", "p.yaml"], { cwd: b, env: sshd.env }), "pull again");
  assert.equal(runJson(b).executed, 0);
});
