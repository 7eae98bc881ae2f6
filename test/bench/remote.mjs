#!/usr/bin/env node
// Remote figures (issue 8): push and pull of a 1 GiB model file to file:// and
// ssh:// remotes, as ratios to plain `cp` and `scp` of the same file, run in
// this same script (these machines are noisy). The ssh:// remote is a real
// OpenSSH sshd on loopback (test/helpers/remote-servers.ts), so the link is
// not the bottleneck: the figures compare valley's overhead (SFTP in JS,
// hashing every pulled byte before admitting it) with OpenSSH's own client.
// Usage: npm run build && node test/bench/remote.mjs [--mib 1024] [--only file|ssh]
import { spawnSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync, copyFileSync, mkdirSync } from "node:fs";
import { tmpdir, cpus } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const CLI = join(ROOT, "dist", "bin", "valley.js");
const { startSshd } = await import(join(ROOT, "dist", "test", "helpers", "remote-servers.js"));
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const MIB = Number(opt("--mib", "1024"));
const only = opt("--only", "");

function timed(cmd, argv, opts = {}) {
  const t0 = process.hrtime.bigint();
  const r = spawnSync(cmd, argv, {
    encoding: "utf8",
    ...opts,
    env: { ...process.env, ...(opts.env ?? {}) },
  });
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  if (r.status !== 0)
    throw new Error(`${cmd} ${argv.join(" ")}: exit ${r.status}\n${r.stdout}\n${r.stderr}`);
  return s;
}
const valley = (argv, opts) => timed(process.execPath, [CLI, ...argv], opts);
const dropCopy = (p) => rmSync(p, { recursive: true, force: true });

const work = mkdtempSync(join(tmpdir(), "valley-bench-remote-"));
const proj = join(work, "a");
mkdirSync(proj);
// The model file is made by a stage, so it enters the store as a real result.
writeFileSync(
  join(proj, "p.yaml"),
  `version: 1
name: bench-remote
stages:
  model:
    uses: shell
    with:
      run: head -c ${MIB * 1048576} /dev/urandom > $OUT/model.gguf
`,
);
valley(["run", "p.yaml"], { cwd: proj });
const lock = JSON.parse(spawnSync("cat", [join(proj, "p.lock")], { encoding: "utf8" }).stdout);
const digest = lock.instances.model.files["model.gguf"].slice(7);
const object = join(proj, ".valley", "objects", digest.slice(0, 2), digest.slice(2));
const fresh = () => {
  const d = mkdtempSync(join(work, "clone-"));
  copyFileSync(join(proj, "p.yaml"), join(d, "p.yaml"));
  copyFileSync(join(proj, "p.lock"), join(d, "p.lock"));
  return d;
};
const mbps = (s) => `${(MIB / s).toFixed(0)} MiB/s`;
const rows = [];
const row = (what, valleyS, baseS, base) =>
  rows.push({
    what,
    valley: `${valleyS.toFixed(2)} s (${mbps(valleyS)})`,
    [base]: `${baseS.toFixed(2)} s (${mbps(baseS)})`,
    ratio: +(valleyS / baseS).toFixed(2),
  });

if (only !== "ssh") {
  const remote = join(work, "remote-file");
  const cpDest = join(work, "cp-copy");
  const cpS = timed("cp", [object, cpDest]);
  const pushS = valley(["push", `file://${remote}`, "-f", "p.yaml"], { cwd: proj });
  row("file:// push", pushS, cpS, "cp");
  const c = fresh();
  const cpBack = timed("cp", [cpDest, join(work, "cp-back")]);
  const pullS = valley(["pull", `file://${remote}`, "-f", "p.yaml"], { cwd: c });
  row("file:// pull (hash-verified)", pullS, cpBack, "cp");
  // A verified pull reads every byte through SHA-256: the fair floor is cp + sha256sum.
  const sumS = timed("sha256sum", [join(work, "cp-back")]);
  row("file:// pull vs cp + sha256sum", pullS, cpBack + sumS, "cp");
  [cpDest, join(work, "cp-back"), remote, c].forEach(dropCopy);
}
if (only !== "file") {
  const sshd = await startSshd();
  try {
    const remote = join(work, "remote-ssh");
    const scpBase = [
      "-q",
      "-P",
      String(sshd.port),
      "-i",
      sshd.key,
      "-o",
      `UserKnownHostsFile=${sshd.knownHosts}`,
      "-o",
      "BatchMode=yes",
    ];
    const user = process.env.USER ?? "root";
    const scpDest = join(work, "scp-copy");
    const scpS = timed("scp", [...scpBase, object, `${user}@127.0.0.1:${scpDest}`]);
    const pushS = valley(["push", sshd.url(remote), "-f", "p.yaml"], { cwd: proj, env: sshd.env });
    row("ssh:// push", pushS, scpS, "scp");
    const c = fresh();
    const scpBackS = timed("scp", [
      ...scpBase,
      `${user}@127.0.0.1:${scpDest}`,
      join(work, "scp-back"),
    ]);
    const pullS = valley(["pull", sshd.url(remote), "-f", "p.yaml"], { cwd: c, env: sshd.env });
    row("ssh:// pull (hash-verified)", pullS, scpBackS, "scp");
    const sumS = timed("sha256sum", [join(work, "scp-back")]);
    row("ssh:// pull vs scp + sha256sum", pullS, scpBackS + sumS, "scp");
    const ssh = spawnSync("ssh", ["-V"], { encoding: "utf8" }).stderr.trim();
    rows.push({ what: `server and scp: ${ssh}` });
  } finally {
    sshd.stop();
  }
}
console.log(`${MIB} MiB file, ${cpus().length} CPU(s), node ${process.version}`);
console.table(rows);
rmSync(work, { recursive: true, force: true });
