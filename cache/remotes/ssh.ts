import { readFileSync, existsSync } from "node:fs";
import { homedir } from "node:os";
import { createHash, createHmac, randomBytes } from "node:crypto";
import { posix } from "node:path";
import type { Readable } from "node:stream";
import { Client, type SFTPWrapper, type ConnectConfig } from "ssh2";
import { type Backend, RemoteNotFound, RemoteConfigError, mapLimit } from "./backend.js";

export interface SshOptions {
  host: string;
  port: number;
  user: string;
  /** Absolute folder on the server. */
  path: string;
  /** Private key file; else $VALLEY_SSH_KEY, the SSH agent, ~/.ssh/id_ed25519, ~/.ssh/id_rsa. */
  identity?: string;
  /** known_hosts file to check the server's key against (default ~/.ssh/known_hosts). */
  knownHosts?: string;
  /** Accept this host key fingerprint ("SHA256:…", as ssh-keygen -lf prints) instead. */
  hostFingerprint?: string;
}

function fingerprint(key: Buffer): string {
  return "SHA256:" + createHash("sha256").update(key).digest("base64").replace(/=+$/, "");
}

/** True if `file` lists `key` for this host (plain or hashed `|1|salt|hash` names). */
export function knownHostsAccepts(file: string, host: string, port: number, key: Buffer): boolean {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return false;
  }
  const name = port === 22 ? host : `[${host}]:${port}`;
  const b64 = key.toString("base64");
  for (const line of text.split("\n")) {
    const parts = line.trim().split(/\s+/);
    if (parts.length < 3 || parts[0].startsWith("#") || parts[0].startsWith("@")) continue;
    if (parts[2] !== b64) continue;
    for (const pattern of parts[0].split(",")) {
      if (pattern === name) return true;
      const m = /^\|1\|([^|]+)\|(.+)$/.exec(pattern);
      if (
        m &&
        createHmac("sha1", Buffer.from(m[1], "base64")).update(name).digest("base64") === m[2]
      )
        return true;
    }
  }
  return false;
}

/** ssh://user@host:port/path over SFTP (OpenSSH's sftp-server on the other side). */
export class SshBackend implements Backend {
  private client = new Client();
  private sftp!: SFTPWrapper;

  private constructor(
    readonly opts: SshOptions,
    readonly url: string,
  ) {}

  static async connect(opts: SshOptions, url: string): Promise<SshBackend> {
    const b = new SshBackend(opts, url);
    await b.open();
    return b;
  }

  private authConfig(): Partial<ConnectConfig> {
    const key = this.opts.identity ?? process.env.VALLEY_SSH_KEY;
    if (key) {
      try {
        return { privateKey: readFileSync(key) };
      } catch (e) {
        throw new RemoteConfigError(`${this.url}: cannot read key ${key}: ${(e as Error).message}`);
      }
    }
    if (process.env.SSH_AUTH_SOCK) return { agent: process.env.SSH_AUTH_SOCK };
    for (const f of ["id_ed25519", "id_ecdsa", "id_rsa"]) {
      const p = posix.join(homedir(), ".ssh", f);
      if (existsSync(p)) return { privateKey: readFileSync(p) };
    }
    throw new RemoteConfigError(
      `${this.url}: no SSH key: set identity in valley.config.yaml, $VALLEY_SSH_KEY, or start ssh-agent`,
    );
  }

  private open(): Promise<void> {
    const { host, port, user } = this.opts;
    const knownHosts =
      this.opts.knownHosts ??
      process.env.VALLEY_SSH_KNOWN_HOSTS ??
      posix.join(homedir(), ".ssh", "known_hosts");
    let rejected: string | undefined;
    return new Promise((resolve, reject) => {
      this.client
        .on("ready", () => {
          this.client.sftp((err, sftp) => {
            if (err)
              return reject(
                new RemoteConfigError(`${this.url}: no SFTP subsystem: ${err.message}`),
              );
            this.sftp = sftp;
            resolve();
          });
        })
        .on("error", (err) => {
          reject(
            new RemoteConfigError(
              rejected ??
                `${this.url}: cannot connect to ${host}:${port} as ${user}: ${err.message}`,
            ),
          );
        })
        .connect({
          host,
          port,
          username: user,
          readyTimeout: 20_000,
          keepaliveInterval: 15_000,
          ...this.authConfig(),
          // Never trust an unknown server with the cache: a known_hosts entry or
          // a configured fingerprint must match.
          hostVerifier: (key: Buffer) => {
            const fp = fingerprint(key);
            if (this.opts.hostFingerprint) {
              if (this.opts.hostFingerprint === fp) return true;
            } else if (knownHostsAccepts(knownHosts, host, port, key)) return true;
            rejected =
              `${this.url}: the server's host key ${fp} is not in ${knownHosts}` +
              (this.opts.hostFingerprint
                ? ` and is not hostFingerprint ${this.opts.hostFingerprint}`
                : "") +
              `; if it is the right server, run \`ssh -p ${port} ${user}@${host}\` once to record it, or set hostFingerprint: ${fp}`;
            return false;
          },
        });
    });
  }

  private abs(path: string): string {
    return posix.join(this.opts.path, path);
  }

  private call<T>(fn: (cb: (err: Error | null | undefined, v?: T) => void) => void): Promise<T> {
    return new Promise((res, rej) => fn((err, v) => (err ? rej(err) : res(v as T))));
  }

  private async mkdirs(dir: string): Promise<void> {
    try {
      await this.call((cb) => this.sftp.stat(dir, cb));
      return;
    } catch {
      // create it below
    }
    await this.mkdirs(posix.dirname(dir));
    try {
      await this.call((cb) => this.sftp.mkdir(dir, cb));
    } catch (e) {
      // A parallel upload created it meanwhile.
      const st = await this.call<{ isDirectory(): boolean }>((cb) => this.sftp.stat(dir, cb)).catch(
        () => undefined,
      );
      if (!st?.isDirectory()) throw e;
    }
  }

  async stat(paths: string[]): Promise<Map<string, number>> {
    const out = new Map<string, number>();
    await mapLimit(paths, 16, async (p) => {
      try {
        const st = await this.call<{ size: number }>((cb) => this.sftp.stat(this.abs(p), cb));
        out.set(p, st.size);
      } catch {
        // absent
      }
    });
    return out;
  }

  async list(dir: string): Promise<{ path: string; size: number }[]> {
    const out: { path: string; size: number }[] = [];
    const walk = async (rel: string): Promise<void> => {
      let entries: { filename: string; attrs: { size: number; isDirectory(): boolean } }[];
      try {
        entries = await this.call((cb) => this.sftp.readdir(this.abs(rel), cb));
      } catch {
        return;
      }
      for (const e of entries.sort((a, b) => (a.filename < b.filename ? -1 : 1))) {
        const r = `${rel}/${e.filename}`;
        if (e.attrs.isDirectory()) await walk(r);
        else out.push({ path: r, size: e.attrs.size });
      }
    };
    await walk(dir);
    return out;
  }

  async read(path: string): Promise<Readable> {
    const found = await this.stat([path]);
    if (!found.has(path)) throw new RemoteNotFound(path, this.url);
    return this.sftp.createReadStream(this.abs(path));
  }

  async upload(localFile: string, path: string, size: number): Promise<void> {
    const tmp = this.abs(`tmp/${process.pid}-${randomBytes(6).toString("hex")}`);
    await this.mkdirs(posix.dirname(tmp));
    try {
      // fastPut keeps many SFTP writes in flight: several times a stream's throughput.
      await this.call((cb) =>
        this.sftp.fastPut(
          localFile,
          tmp,
          { concurrency: 64, chunkSize: 256 << 10, mode: 0o444 },
          cb,
        ),
      );
      const st = await this.call<{ size: number }>((cb) => this.sftp.stat(tmp, cb));
      if (st.size !== size)
        throw new Error(`${this.url}: ${st.size} of ${size} bytes of ${path} arrived`);
      const dest = this.abs(path);
      await this.mkdirs(posix.dirname(dest));
      // posix-rename replaces an existing file atomically (plain SFTP rename refuses to).
      await this.call((cb) => this.sftp.ext_openssh_rename(tmp, dest, cb));
    } catch (e) {
      await this.call((cb) => this.sftp.unlink(tmp, cb)).catch(() => undefined);
      throw e;
    }
  }

  async download(path: string, localFile: string): Promise<void> {
    try {
      await this.call((cb) =>
        this.sftp.fastGet(this.abs(path), localFile, { concurrency: 64, chunkSize: 256 << 10 }, cb),
      );
    } catch (e) {
      if ((e as { code?: number }).code === 2) throw new RemoteNotFound(path, this.url);
      throw e;
    }
  }

  async delete(path: string): Promise<void> {
    try {
      await this.call((cb) => this.sftp.unlink(this.abs(path), cb));
    } catch (e) {
      if ((e as { code?: number }).code !== 2) throw e; // 2: SSH_FX_NO_SUCH_FILE
    }
  }

  async close(): Promise<void> {
    this.client.end();
  }
}
