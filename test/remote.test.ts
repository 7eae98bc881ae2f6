import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import {
  readFileSync,
  writeFileSync,
  copyFileSync,
  existsSync,
  readdirSync,
  chmodSync,
  mkdirSync,
  statSync,
} from "node:fs";
import { join } from "node:path";
import { spawnSync } from "node:child_process";
import { valley, valleyChild, project, lines, sleep } from "./helpers/valley.js";
import { startSshd, startS3, type Sshd, type S3Server } from "./helpers/remote-servers.js";

/** Small shell-stage pipeline; `side` counts executions. */
function pipeline(side: string, opts: { greeting?: string; files?: number } = {}): string {
  return `
version: 1
name: remote
stages:
  gen:
    uses: shell
    matrix:
      n: [1, 2]
    with:
      run: echo gen >> ${side}; echo "${opts.greeting ?? "hello"} \${{ matrix.n }}" > $OUT/x.txt; printf '#!/bin/sh\\necho hi\\n' > $OUT/tool.sh; chmod +x $OUT/tool.sh
  many:
    uses: shell
    with:
      run: echo many >> ${side}; mkdir $OUT/d; for i in $(seq 1 ${opts.files ?? 3}); do head -c 32768 /dev/urandom > $OUT/d/f$i; done
  all:
    uses: shell
    inputs:
      g: gen[*]
    with:
      run: echo all >> ${side}; for d in $IN_G/*; do cat $d/x.txt; done > $OUT/all.txt
`;
}

interface RunJson {
  instances: number;
  executed: number;
  cached: number;
  failed: number;
}

/** A project that has run its pipeline: cache, lockfile and side log. */
function built(opts: { greeting?: string; files?: number } = {}): { dir: string; side: string } {
  const dir = project({});
  const side = join(dir, "side.log");
  writeFileSync(join(dir, "p.yaml"), pipeline(side, opts));
  const r = valley(["run", "p.yaml", "--json"], { cwd: dir });
  assert.equal(r.code, 0, r.stderr);
  return { dir, side };
}

/**
 * A fresh clone: the same pipeline (byte for byte: the side log's path is
 * part of the command, hence of the keys) and lockfile, no cache.
 */
function clone(from: string): { dir: string; side: string } {
  const dir = project({});
  copyFileSync(join(from, "p.yaml"), join(dir, "p.yaml"));
  copyFileSync(join(from, "p.lock"), join(dir, "p.lock"));
  return { dir, side: join(from, "side.log") };
}

function ok(r: { code: number; stdout: string; stderr: string }, what: string): string {
  assert.equal(r.code, 0, `${what}: exit ${r.code}\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

function objectFiles(root: string): string[] {
  const d = join(root, "objects");
  if (!existsSync(d)) return [];
  return readdirSync(d)
    .flatMap((s) => readdirSync(join(d, s)).map((f) => `${s}/${f}`))
    .sort();
}

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

for (const kind of ["file", "ssh", "s3"] as const) {
  test(`${kind}://: push, then pull into a fresh cache; the run executes nothing`, () => {
    const a = built();
    const url =
      kind === "file"
        ? `file://${join(a.dir, "remote")}`
        : kind === "ssh"
          ? sshd.url(join(sshd.root, `rt-${Date.now()}`))
          : s3.url(`rt-${Date.now()}`);
    const env = kind === "ssh" ? sshd.env : kind === "s3" ? s3.env : {};
    const pushed = ok(valley(["push", url, "-f", "p.yaml"], { cwd: a.dir, env }), "push");
    assert.match(pushed, /and 4 result\(s\)/);
    // A second push finds everything there.
    assert.match(
      ok(valley(["push", url, "-f", "p.yaml"], { cwd: a.dir, env }), "push again"),
      /pushed 0 object\(s\).* 0 result\(s\)/,
    );

    const b = clone(a.dir);
    ok(valley(["pull", url, "-f", "p.yaml"], { cwd: b.dir, env }), "pull");
    const ran = lines(a.side).length;
    const r = JSON.parse(
      ok(valley(["run", "p.yaml", "--json"], { cwd: b.dir, env }), "run"),
    ) as RunJson;
    assert.equal(r.executed, 0);
    assert.equal(r.cached, 4);
    assert.equal(lines(b.side).length, ran, "the pulled cache re-ran a stage");
    // Trees were materialised read-only, executables kept.
    const lock = JSON.parse(readFileSync(join(b.dir, "p.lock"), "utf8")) as {
      instances: Record<string, { tree: string }>;
    };
    const tree = join(b.dir, ".valley", "trees", lock.instances["gen@n=1"].tree.slice(7));
    assert.equal(readFileSync(join(tree, "x.txt"), "utf8"), "hello 1\n");
    assert.ok(statSync(join(tree, "tool.sh")).mode & 0o100, "executable bit lost");
    ok(valley(["verify"], { cwd: b.dir }), "local verify after pull");

    // run --pull: a third clone fetches results instead of computing them.
    const c = clone(a.dir);
    const rp = JSON.parse(
      ok(valley(["run", "p.yaml", "--json", "--remote", url], { cwd: c.dir, env }), "run --pull"),
    ) as RunJson;
    assert.equal(rp.executed, 0, "run --pull executed a stage");
    assert.equal(lines(c.side).length, ran);
  });
}

test("ssh://: a push killed halfway, re-run: nothing lost or duplicated, verify --remote clean", async () => {
  const a = built({ files: 300 });
  const remoteDir = join(sshd.root, "killed");
  const url = sshd.url(remoteDir);
  const { child, done } = valleyChild(["push", url, "-f", "p.yaml", "--jobs", "2"], {
    cwd: a.dir,
    env: sshd.env,
  });
  const t0 = Date.now();
  while (objectFiles(remoteDir).length < 40) {
    if (Date.now() - t0 > 60_000) throw new Error("push made no progress");
    await sleep(10);
  }
  child.kill("SIGKILL");
  const killed = await done;
  const before = objectFiles(remoteDir).length;
  assert.ok(before < 300, `the push finished (${before} objects) before it could be killed`);
  assert.notEqual(killed.code, 0);
  assert.ok(
    !existsSync(join(remoteDir, "actions")) || readdirSync(join(remoteDir, "actions")).length < 4,
  );

  const again = ok(
    valley(["push", url, "-f", "p.yaml"], { cwd: a.dir, env: sshd.env }),
    "re-run push",
  );
  const sent = Number(/pushed (\d+) object/.exec(again)?.[1]);
  const after = objectFiles(remoteDir);
  // Every object the lockfile needs, each once; the re-run sent only the rest.
  const local = objectFiles(join(a.dir, ".valley"));
  assert.deepEqual(after, local);
  assert.ok(sent > 0);
  assert.equal(sent, local.length - before);
  assert.equal(readdirSync(join(remoteDir, "actions")).length, 4);
  const v = ok(
    valley(["verify", "--remote", url], { cwd: a.dir, env: sshd.env }),
    "verify --remote",
  );
  assert.match(v, new RegExp(`${local.length} objects checked, 0 corrupt`));
  // The killed upload's temporary file (if any) is gc's to remove.
  ok(valley(["gc", "--remote", url], { cwd: a.dir, env: sshd.env }), "gc --remote");
  assert.equal(readdirSync(join(remoteDir, "tmp")).length, 0);
  assert.deepEqual(objectFiles(remoteDir), local);
});

test("ssh://: an object corrupted on the remote is rejected by pull and never admitted", () => {
  const a = built();
  const remoteDir = join(sshd.root, "corrupt");
  const url = sshd.url(remoteDir);
  ok(valley(["push", url, "-f", "p.yaml"], { cwd: a.dir, env: sshd.env }), "push");
  const lock = JSON.parse(readFileSync(join(a.dir, "p.lock"), "utf8")) as {
    instances: Record<string, { files: Record<string, string> }>;
  };
  const bad = lock.instances["all"].files["all.txt"].slice(7);
  const p = join(remoteDir, "objects", bad.slice(0, 2), bad.slice(2));
  chmodSync(p, 0o644);
  const text = readFileSync(p, "utf8");
  writeFileSync(p, text.replace("hello", "HELLO")); // same size, different bytes

  const b = clone(a.dir);
  const r = valley(["pull", url, "-f", "p.yaml"], { cwd: b.dir, env: sshd.env });
  assert.equal(r.code, 1, r.stdout + r.stderr);
  assert.match(
    r.stderr,
    new RegExp(`${bad.slice(2)} has digest sha256:[0-9a-f]{64}.*expected sha256:${bad}`),
  );
  assert.ok(
    !objectFiles(join(b.dir, ".valley")).includes(`${bad.slice(0, 2)}/${bad.slice(2)}`),
    "corrupt object admitted",
  );
  // The other results came through; the damaged one is computed locally.
  const run = JSON.parse(ok(valley(["run", "p.yaml", "--json"], { cwd: b.dir }), "run")) as RunJson;
  assert.equal(run.executed, 1);
  assert.equal(run.cached, 3);

  const v = valley(["verify", "--remote", url], { cwd: a.dir, env: sshd.env });
  assert.equal(v.code, 1);
  assert.match(v.stdout, /CORRUPT objects\//);
  // verify deleted it; a push from a good cache repairs the remote.
  ok(valley(["push", url, "-f", "p.yaml"], { cwd: a.dir, env: sshd.env }), "repairing push");
  ok(valley(["verify", "--remote", url], { cwd: a.dir, env: sshd.env }), "verify after repair");
});

test("export/import round trip; a tampered bundle is refused with exit 2", () => {
  const a = built();
  const bundle = join(a.dir, "results.tar");
  const out = ok(valley(["export", "p.yaml", "-o", bundle], { cwd: a.dir }), "export");
  const digest = /bundle digest: (sha256:[0-9a-f]{64})/.exec(out)?.[1];
  assert.ok(digest);

  const b = clone(a.dir);
  ok(valley(["import", bundle, "--expect", digest], { cwd: b.dir }), "import");
  const r = JSON.parse(ok(valley(["run", "p.yaml", "--json"], { cwd: b.dir }), "run")) as RunJson;
  assert.equal(r.executed, 0);
  // An imported lockfile is a gc root: gc keeps its results.
  ok(valley(["gc"], { cwd: b.dir }), "gc");
  assert.equal(
    (JSON.parse(ok(valley(["run", "p.yaml", "--json"], { cwd: b.dir }), "run")) as RunJson)
      .executed,
    0,
  );

  // One instance only.
  const one = join(a.dir, "one.tar");
  assert.match(
    ok(valley(["export", "gen@n=1", "-f", "p.yaml", "-o", one], { cwd: a.dir }), "export one"),
    /1 result/,
  );

  // Tamper: change one byte of an object, repack.
  const x = project({});
  assert.equal(spawnSync("tar", ["xf", bundle, "-C", x]).status, 0);
  const objs = objectFiles(x);
  const victim = join(
    x,
    "objects",
    objs.find((o) => statSync(join(x, "objects", o)).size > 5) ?? objs[0],
  );
  chmodSync(victim, 0o644);
  const bytes = readFileSync(victim);
  bytes[0] ^= 1;
  writeFileSync(victim, bytes);
  const tampered = join(x, "..", `tampered-${Date.now()}.tar`);
  assert.equal(spawnSync("tar", ["cf", tampered, "-C", x, "."]).status, 0);
  const c = clone(a.dir);
  const bad = valley(["import", tampered], { cwd: c.dir });
  assert.equal(bad.code, 2, bad.stderr);
  assert.match(bad.stderr, /does not match its manifest; nothing was imported/);
  assert.deepEqual(objectFiles(join(c.dir, ".valley")), [], "a tampered bundle admitted objects");

  // Tamper with the lockfile's metrics instead: its digest no longer matches.
  bytes[0] ^= 1;
  writeFileSync(victim, bytes);
  const lockInBundle = join(x, "remote.lock");
  chmodSync(lockInBundle, 0o644);
  writeFileSync(lockInBundle, readFileSync(lockInBundle, "utf8").replace('"gen@n=1"', '"gen@n=9"'));
  assert.equal(spawnSync("tar", ["cf", tampered, "-C", x, "."]).status, 0);
  const bad2 = valley(["import", tampered], { cwd: c.dir });
  assert.equal(bad2.code, 2);
  assert.match(bad2.stderr, /remote\.lock does not match its digest/);
  // A wrong expected digest is refused too.
  const bad3 = valley(["import", bundle, "--expect", "sha256:" + "0".repeat(64)], { cwd: c.dir });
  assert.equal(bad3.code, 2);
  assert.match(bad3.stderr, /bundle digest is sha256:/);
});

test("s3://: gc --remote keeps what a lockfile or a pin references", () => {
  const a = built();
  const url = s3.url(`gc-${Date.now()}`);
  ok(valley(["push", url, "-f", "p.yaml"], { cwd: a.dir, env: s3.env }), "push v1");
  const v1 = JSON.parse(readFileSync(join(a.dir, "p.lock"), "utf8")) as {
    instances: Record<string, { key: string }>;
  };
  ok(valley(["pin", "all", "-f", "p.yaml", "--name", "paper"], { cwd: a.dir }), "pin");
  // v2: a new greeting changes gen and all; many stays.
  writeFileSync(join(a.dir, "p.yaml"), pipeline(a.side, { greeting: "bonjour" }));
  ok(valley(["run", "p.yaml"], { cwd: a.dir }), "run v2");
  ok(valley(["push", url, "-f", "p.yaml"], { cwd: a.dir, env: s3.env }), "push v2");

  // Push --all sends loose results too (v1's gen records, unreferenced once p.lock moved on).
  ok(
    valley(["push", url, "--all", "--cache", join(a.dir, ".valley")], { cwd: a.dir, env: s3.env }),
    "push --all",
  );
  const dry = ok(
    valley(["gc", "--remote", url, "--dry-run", "-f", "p.yaml"], { cwd: a.dir, env: s3.env }),
    "gc dry",
  );
  assert.match(dry, /would remove 2 result\(s\)/); // v1's two gen records
  ok(valley(["gc", "--remote", url, "-f", "p.yaml"], { cwd: a.dir, env: s3.env }), "gc --remote");
  ok(valley(["verify", "--remote", url], { cwd: a.dir, env: s3.env }), "verify --remote after gc");

  // v2 still pulls whole; the pinned v1 `all` too.
  const b = clone(a.dir);
  ok(valley(["pull", url, "-f", "p.yaml"], { cwd: b.dir, env: s3.env }), "pull v2");
  assert.equal(
    (JSON.parse(ok(valley(["run", "p.yaml", "--json"], { cwd: b.dir }), "run")) as RunJson)
      .executed,
    0,
  );
  const lockV1 = join(b.dir, "v1", "p.lock");
  mkdirSync(join(b.dir, "v1"));
  writeFileSync(join(b.dir, "v1", "p.yaml"), pipeline(a.side));
  writeFileSync(lockV1, JSON.stringify({ ...v1, instances: { all: v1.instances["all"] } }));
  const r = valley(["pull", url, "-f", "v1/p.yaml", "--cache", join(b.dir, ".valley")], {
    cwd: b.dir,
    env: s3.env,
  });
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /1 result/);
});

test("s3://: a file larger than partSizeMb goes up in parts and comes back whole", () => {
  const dir = project({
    "p.yaml":
      "version: 1\nname: big\nstages:\n  big:\n    uses: shell\n    with:\n      run: head -c 12582917 /dev/urandom > $OUT/big.bin\n",
  });
  ok(valley(["run", "p.yaml"], { cwd: dir }), "run");
  const prefix = `mp-${Date.now()}`;
  const url = `${s3.url(prefix)}&partSizeMb=5`;
  // s3rver keeps a multipart upload's parts in a folder of its own, made at
  // the first multipart upload (single PUTs never make it), until the upload
  // completes: afterwards it exists and holds no upload left over.
  const uploads = join(s3.dir, "valley", "._S3rver_uploads");
  assert.ok(!existsSync(uploads), "an earlier test made a multipart upload");
  ok(valley(["push", url, "-f", "p.yaml"], { cwd: dir, env: s3.env }), "push");
  assert.ok(existsSync(uploads), "no multipart upload reached the server");
  assert.deepEqual(readdirSync(uploads), []);
  const b = clone(dir);
  ok(valley(["pull", url, "-f", "p.yaml"], { cwd: b.dir, env: s3.env }), "pull");
  ok(valley(["verify"], { cwd: b.dir }), "verify after pull");
  const lock = JSON.parse(readFileSync(join(b.dir, "p.lock"), "utf8")) as {
    instances: Record<string, { tree: string }>;
  };
  const tree = lock.instances.big.tree.slice(7);
  assert.deepEqual(
    readFileSync(join(b.dir, ".valley", "trees", tree, "big.bin")),
    readFileSync(join(dir, ".valley", "trees", tree, "big.bin")),
  );

  const bad = valley(["push", `${s3.url(prefix)}&partSizeMb=1`, "-f", "p.yaml"], {
    cwd: dir,
    env: s3.env,
  });
  assert.equal(bad.code, 2);
  assert.match(bad.stderr, /partSizeMb must be a whole number of MiB from 5 to 5120/);
});
