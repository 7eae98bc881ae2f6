import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, mkdirSync, existsSync } from "node:fs";
import { createServer, connect } from "node:net";
import { tmpdir, userInfo } from "node:os";
import { join } from "node:path";
import { PACKAGE_ROOT } from "../../engine/root.js";

export const SSHD = "/usr/sbin/sshd";

/** A TCP port free on loopback right now. */
export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const a = s.address();
      s.close(() => res(typeof a === "object" && a ? a.port : 0));
    });
  });
}

async function waitForPort(
  port: number,
  child: ChildProcess,
  log: () => string,
  ms = 20_000,
): Promise<void> {
  const t0 = Date.now();
  for (;;) {
    if (child.exitCode !== null) throw new Error(`server exited (${child.exitCode}): ${log()}`);
    const ok = await new Promise<boolean>((res) => {
      const c = connect(port, "127.0.0.1");
      c.once("connect", () => (c.destroy(), res(true)));
      c.once("error", () => res(false));
    });
    if (ok) return;
    if (Date.now() - t0 > ms) throw new Error(`server did not listen on ${port}: ${log()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

export interface Sshd {
  port: number;
  /** ssh://user@127.0.0.1:port<path> for a folder inside the server's scratch space. */
  url(path: string): string;
  root: string;
  /** Environment for the valley CLI: the test key and a known_hosts naming this server. */
  env: Record<string, string>;
  key: string;
  knownHosts: string;
  stop(): void;
}

/**
 * A real OpenSSH sshd on a loopback port: its own host key, a test user key,
 * its own config (no PAM, key login only, internal-sftp), in the foreground.
 */
export async function startSshd(): Promise<Sshd> {
  const root = mkdtempSync(join(tmpdir(), "valley-sshd-"));
  const keygen = (file: string) => {
    const r = spawnSync("ssh-keygen", ["-q", "-t", "ed25519", "-N", "", "-f", file], {
      encoding: "utf8",
    });
    if (r.status !== 0) throw new Error(`ssh-keygen: ${r.stderr}`);
  };
  keygen(join(root, "host_key"));
  keygen(join(root, "user_key"));
  writeFileSync(join(root, "authorized_keys"), readFileSync(join(root, "user_key.pub")));
  const port = await freePort();
  try {
    mkdirSync("/run/sshd", { recursive: true }); // root's sshd insists on its privilege separation folder
  } catch {
    // not root: sshd runs without privilege separation and does not need it
  }
  writeFileSync(
    join(root, "sshd_config"),
    [
      `Port ${port}`,
      "ListenAddress 127.0.0.1",
      `HostKey ${join(root, "host_key")}`,
      `AuthorizedKeysFile ${join(root, "authorized_keys")}`,
      `PidFile ${join(root, "sshd.pid")}`,
      "UsePAM no",
      "PasswordAuthentication no",
      "KbdInteractiveAuthentication no",
      "PubkeyAuthentication yes",
      "PermitRootLogin prohibit-password",
      // The temp folder is world-writable: strict modes would refuse the key.
      "StrictModes no",
      "Subsystem sftp internal-sftp",
      "LogLevel ERROR",
      "",
    ].join("\n"),
  );
  const knownHosts = join(root, "known_hosts");
  const hostPub = readFileSync(join(root, "host_key.pub"), "utf8")
    .trim()
    .split(/\s+/)
    .slice(0, 2)
    .join(" ");
  writeFileSync(knownHosts, `[127.0.0.1]:${port} ${hostPub}\n`);
  let log = "";
  const child = spawn(SSHD, ["-D", "-e", "-f", join(root, "sshd_config")], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.stdout?.on("data", (d: Buffer) => (log += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (log += d.toString()));
  await waitForPort(port, child, () => log);
  const user = userInfo().username;
  const key = join(root, "user_key");
  return {
    port,
    root,
    key,
    knownHosts,
    url: (path) => `ssh://${user}@127.0.0.1:${port}${path}`,
    env: { VALLEY_SSH_KEY: key, VALLEY_SSH_KNOWN_HOSTS: knownHosts, SSH_AUTH_SOCK: "" },
    stop: () => {
      child.kill("SIGTERM");
    },
  };
}

export interface S3Server {
  port: number;
  dir: string;
  url(prefix: string): string;
  env: Record<string, string>;
  stop(): void;
}

/** s3rver (npm) as a child process on loopback, with bucket "valley". */
export async function startS3(): Promise<S3Server> {
  const dir = mkdtempSync(join(tmpdir(), "valley-s3-"));
  const port = await freePort();
  const bin = join(PACKAGE_ROOT, "node_modules", "s3rver", "bin", "s3rver.js");
  if (!existsSync(bin))
    throw new Error("s3rver is not installed (npm ci installs devDependencies)");
  let log = "";
  const child = spawn(
    process.execPath,
    [
      bin,
      "-d",
      dir,
      "-a",
      "127.0.0.1",
      "-p",
      String(port),
      "--silent",
      "--no-vhost-buckets",
      "--configure-bucket",
      "valley",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  child.stdout?.on("data", (d: Buffer) => (log += d.toString()));
  child.stderr?.on("data", (d: Buffer) => (log += d.toString()));
  await waitForPort(port, child, () => log);
  return {
    port,
    dir,
    url: (prefix) => `s3://valley/${prefix}?endpoint=http://127.0.0.1:${port}&pathStyle=true`,
    // s3rver accepts these fixed credentials.
    env: { AWS_ACCESS_KEY_ID: "S3RVER", AWS_SECRET_ACCESS_KEY: "S3RVER", AWS_REGION: "us-east-1" },
    stop: () => {
      child.kill("SIGTERM");
    },
  };
}
