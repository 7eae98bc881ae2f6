import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import {
  existsSync,
  mkdirSync,
  mkdtempSync,
  writeFileSync,
  chmodSync,
  readFileSync,
  rmSync,
} from "node:fs";
import { createServer } from "node:net";
import { randomBytes } from "node:crypto";
import { hostname, tmpdir } from "node:os";
import { join } from "node:path";
import { processesWith, sleep } from "./valley.js";

/**
 * A real single-node Slurm cluster on localhost for tests: its own munge key
 * and socket, its own ports, state and logs under a temporary folder, so it
 * neither needs nor touches a system Slurm. Clients find it through
 * $SLURM_CONF (see `env`). Accounting is jobcomp/filetxt (sacct needs
 * slurmdbd and a database, too heavy for a test): `jobs()` reads that file.
 */
export interface Cluster {
  dir: string;
  conf: string;
  env: Record<string, string>;
  /** Lines of the job-completion log, one per finished job. */
  jobs(): string[];
  squeue(args?: string[]): string;
  stop(): Promise<void>;
}

const BINARIES = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo"];

function which(cmd: string): string | undefined {
  for (const d of (process.env.PATH ?? "").split(":").concat(["/usr/sbin", "/sbin"]))
    if (d && existsSync(join(d, cmd))) return join(d, cmd);
  return undefined;
}

function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      const port = typeof a === "object" && a ? a.port : 0;
      s.close(() => res(port));
    });
  });
}

/** Starts the cluster, or returns why it cannot run here (the caller skips and says so). */
export async function startSlurm(): Promise<Cluster | { skip: string }> {
  const missing = BINARIES.filter((b) => !which(b));
  if (missing.length)
    return {
      skip: `Slurm is not installed here (missing ${missing.join(", ")}; apt-get install slurmctld slurmd slurm-client munge)`,
    };
  if (process.getuid?.() !== 0)
    return {
      skip: "slurmd and munged must run as root to start jobs; these tests start them, so run them as root",
    };

  const dir = mkdtempSync(join(tmpdir(), "valley-slurm-"));
  chmodSync(dir, 0o755);
  for (const d of ["munge", "ctld", "d", "log"]) mkdirSync(join(dir, d));
  chmodSync(join(dir, "munge"), 0o755);
  const host = hostname();
  const [ctldPort, dPort] = [await freePort(), await freePort()];
  const sock = join(dir, "munge", "munge.sock");
  const conf = join(dir, "slurm.conf");
  writeFileSync(
    conf,
    [
      "ClusterName=valleytest",
      `SlurmctldHost=${host}(127.0.0.1)`,
      `SlurmctldPort=${ctldPort}`,
      `SlurmdPort=${dPort}`,
      "SlurmUser=root",
      "SlurmdUser=root",
      "AuthType=auth/munge",
      "CredType=cred/munge",
      `AuthInfo=socket=${sock}`,
      `StateSaveLocation=${join(dir, "ctld")}`,
      `SlurmdSpoolDir=${join(dir, "d")}`,
      `SlurmctldPidFile=${join(dir, "slurmctld.pid")}`,
      `SlurmdPidFile=${join(dir, "slurmd.pid")}`,
      `SlurmctldLogFile=${join(dir, "log", "slurmctld.log")}`,
      `SlurmdLogFile=${join(dir, "log", "slurmd.log")}`,
      // No cgroups in containers: track processes by parentage, no task binding.
      "ProctrackType=proctrack/linuxproc",
      "TaskPlugin=task/none",
      "JobAcctGatherType=jobacct_gather/none",
      "AccountingStorageType=accounting_storage/none",
      "JobCompType=jobcomp/filetxt",
      `JobCompLoc=${join(dir, "log", "jobcomp.txt")}`,
      "SelectType=select/cons_tres",
      "SelectTypeParameters=CR_CPU",
      "MpiDefault=none",
      "ReturnToService=2",
      "SchedulerType=sched/builtin",
      // SIGKILL 5 s after scancel's SIGTERM (default 30 s); keep ended jobs in squeue 5 min.
      "KillWait=5",
      "MinJobAge=300",
      `NodeName=${host} NodeAddr=127.0.0.1 CPUs=2 RealMemory=1024 State=UNKNOWN`,
      `PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP`,
      "",
    ].join("\n"),
  );
  const env = { SLURM_CONF: conf };
  const children: ChildProcess[] = [];
  const daemon = (cmd: string, args: string[], log: string) => {
    const c = spawn(cmd, args, {
      env: { ...process.env, ...env },
      stdio: ["ignore", "ignore", "ignore"],
    });
    c.on("error", (e) => writeFileSync(join(dir, "log", log), String(e), { flag: "a" }));
    children.push(c);
    return c;
  };
  const stopAll = async () => {
    // Jobs first (slurmstepd and the job's processes outlive slurmd), then the daemons.
    const ids = spawnSync("squeue", ["-h", "-o", "%i"], {
      env: { ...process.env, ...env },
      encoding: "utf8",
    })
      .stdout?.split("\n")
      .filter(Boolean);
    if (ids?.length) {
      spawnSync("scancel", ids, { env: { ...process.env, ...env } });
      for (let i = 0; i < 100; i++) {
        const left = spawnSync("squeue", ["-h", "-o", "%i"], {
          env: { ...process.env, ...env },
          encoding: "utf8",
        });
        if (!left.stdout?.trim()) break;
        await sleep(200);
      }
    }
    for (const c of [...children].reverse()) {
      if (c.exitCode !== null || c.signalCode !== null) continue;
      const gone = new Promise((r) => c.once("exit", r));
      c.kill("SIGTERM");
      await Promise.race([gone, sleep(10_000)]);
      if (c.exitCode === null && c.signalCode === null) c.kill("SIGKILL");
    }
    for (let i = 0; i < 50 && processesWith(dir).length; i++) await sleep(100);
  };

  mkdirSync(join(dir, "munge", "state"));
  const key = join(dir, "munge", "munge.key");
  writeFileSync(key, randomBytes(1024), { mode: 0o400 });
  daemon(
    which("munged") as string,
    [
      "-F",
      "--force",
      `--socket=${sock}`,
      `--key-file=${key}`,
      `--pid-file=${join(dir, "munge", "munged.pid")}`,
      `--log-file=${join(dir, "log", "munged.log")}`,
      `--seed-file=${join(dir, "munge", "state", "seed")}`,
    ],
    "munged.err",
  );
  for (let i = 0; i < 50 && !existsSync(sock); i++) await sleep(100);
  daemon(which("slurmctld") as string, ["-D", "-f", conf], "slurmctld.err");
  daemon(which("slurmd") as string, ["-D", "-f", conf, "-N", host], "slurmd.err");

  const clientEnv = { ...process.env, ...env };
  let state = "";
  for (let i = 0; i < 150; i++) {
    const r = spawnSync("sinfo", ["-h", "-o", "%T"], { env: clientEnv, encoding: "utf8" });
    state = (r.stdout ?? "").trim();
    if (state === "idle") break;
    if (children.some((c) => c.exitCode !== null)) break;
    await sleep(200);
  }
  if (state !== "idle") {
    const logs = ["slurmctld.log", "slurmd.log", "munged.log"]
      .map((f) => {
        try {
          return `${f}: ${readFileSync(join(dir, "log", f), "utf8")
            .split("\n")
            .slice(-5)
            .join("\n")}`;
        } catch {
          return `${f}: (none)`;
        }
      })
      .join("\n");
    await stopAll();
    return {
      skip: `the Slurm daemons did not come up on this machine (node state "${state}"):\n${logs}`,
    };
  }

  return {
    dir,
    conf,
    env,
    jobs: () => {
      try {
        return readFileSync(join(dir, "log", "jobcomp.txt"), "utf8")
          .split("\n")
          .filter(Boolean);
      } catch {
        return [];
      }
    },
    squeue: (args = []) =>
      spawnSync("squeue", ["-h", ...args], { env: clientEnv, encoding: "utf8" }).stdout ?? "",
    stop: async () => {
      await stopAll();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
