import { readFileSync, existsSync } from "node:fs";
import { join, resolve } from "node:path";
import { userInfo } from "node:os";
import { parse as parseYaml } from "yaml";
import { type Backend, RemoteConfigError } from "./backend.js";
import { FileBackend } from "./file.js";

/**
 * Remotes are named in `valley.config.yaml` beside the pipeline (or in the
 * working folder, or at $VALLEY_CONFIG):
 *
 *   remote: lab                 # the default for push/pull/run --pull
 *   remotes:
 *     nas: file:///mnt/nas/valley
 *     cluster: ssh://me@login.example.org:22/scratch/valley
 *     lab:
 *       url: s3://bucket/valley
 *       endpoint: http://minio.lab:9000
 *       pathStyle: true
 *
 * Other keys of the file belong to other parts of valley and are ignored here.
 */
export interface RemoteSpec {
  url: string;
  [option: string]: unknown;
}

export interface RemotesConfig {
  file?: string;
  default?: string;
  remotes: Record<string, RemoteSpec>;
}

export function configPath(dir: string): string | undefined {
  if (process.env.VALLEY_CONFIG) return resolve(process.env.VALLEY_CONFIG);
  const p = join(dir, "valley.config.yaml");
  return existsSync(p) ? p : undefined;
}

export function readRemotesConfig(dir: string): RemotesConfig {
  const file = configPath(dir);
  if (!file) return { remotes: {} };
  let doc: unknown;
  try {
    doc = parseYaml(readFileSync(file, "utf8"));
  } catch (e) {
    throw new RemoteConfigError(`${file}: ${(e as Error).message}`);
  }
  const d = (doc ?? {}) as { remote?: unknown; remotes?: unknown };
  const remotes: Record<string, RemoteSpec> = {};
  if (d.remotes !== undefined) {
    if (typeof d.remotes !== "object" || d.remotes === null || Array.isArray(d.remotes))
      throw new RemoteConfigError(`${file}: remotes: expected a map of name → URL or {url: …}`);
    for (const [name, v] of Object.entries(d.remotes)) {
      if (typeof v === "string") remotes[name] = { url: v };
      else if (v && typeof v === "object" && typeof (v as RemoteSpec).url === "string")
        remotes[name] = v as RemoteSpec;
      else throw new RemoteConfigError(`${file}: remotes.${name}: expected a URL or {url: …}`);
    }
  }
  if (d.remote !== undefined && typeof d.remote !== "string")
    throw new RemoteConfigError(`${file}: remote: expected the name of a remote`);
  return { file, default: d.remote as string | undefined, remotes };
}

/** The spec for a name or URL given on the command line (or the default one). */
export function resolveRemote(arg: string | undefined, dir: string): RemoteSpec {
  const cfg = readRemotesConfig(dir);
  const name = arg ?? process.env.VALLEY_REMOTE ?? cfg.default;
  if (name === undefined) {
    const names = Object.keys(cfg.remotes);
    if (names.length === 1) return cfg.remotes[names[0]];
    throw new RemoteConfigError(
      names.length
        ? `which remote? ${names.join(", ")} are configured in ${cfg.file}; name one, or set remote: in it`
        : `no remote given: pass a URL (file://, ssh://, s3://) or name one in valley.config.yaml (remotes:)`,
    );
  }
  if (/^[a-z0-9]+:\/\//i.test(name)) return { url: name };
  const spec = cfg.remotes[name];
  if (!spec)
    throw new RemoteConfigError(
      `no remote named "${name}"` +
        (cfg.file ? ` in ${cfg.file}` : ` (no valley.config.yaml in ${dir})`),
    );
  return spec;
}

const str = (v: unknown) => (typeof v === "string" && v !== "" ? v : undefined);
const bool = (v: unknown) =>
  v === undefined ? undefined : v === true || v === "true" || v === "1";

/** `partSizeMb` (from YAML a number, from a URL query a string): whole MiB, at least 5 (S3's floor). */
function partSize(v: unknown, shown: string): number | undefined {
  if (v === undefined) return undefined;
  const n = typeof v === "number" ? v : typeof v === "string" && /^\d+$/.test(v) ? Number(v) : NaN;
  if (!Number.isInteger(n) || n < 5 || n > 5120)
    throw new RemoteConfigError(
      `${shown}: partSizeMb must be a whole number of MiB from 5 to 5120, not ${JSON.stringify(v)}`,
    );
  return n * 1024 * 1024;
}

/** Opens a remote: options from the spec, overridden by the URL's query (?endpoint=…&pathStyle=1). */
export async function openBackend(spec: RemoteSpec): Promise<Backend> {
  let u: URL;
  try {
    u = new URL(spec.url);
  } catch {
    throw new RemoteConfigError(
      `not a remote URL: ${spec.url} (file:///path, ssh://user@host:port/path, s3://bucket/prefix)`,
    );
  }
  const o: Record<string, unknown> = { ...spec };
  for (const [k, v] of u.searchParams) o[k] = v;
  const shown = `${u.protocol}//${u.username ? u.username + "@" : ""}${u.host}${u.pathname}`;
  switch (u.protocol) {
    case "file:":
      return new FileBackend(decodeURIComponent(u.pathname), shown);
    case "ssh:":
    case "sftp:": {
      if (!u.pathname || u.pathname === "/")
        throw new RemoteConfigError(
          `${shown}: name the folder on the server: ssh://user@host:port/path`,
        );
      const { SshBackend } = await import("./ssh.js");
      return SshBackend.connect(
        {
          host: u.hostname,
          port: u.port ? Number(u.port) : 22,
          user: decodeURIComponent(u.username) || userInfo().username,
          path: decodeURIComponent(u.pathname),
          identity: str(o.identity),
          knownHosts: str(o.knownHosts),
          hostFingerprint: str(o.hostFingerprint),
        },
        shown,
      );
    }
    case "s3:": {
      if (!u.hostname) throw new RemoteConfigError(`${shown}: name the bucket: s3://bucket/prefix`);
      const { S3Backend } = await import("./s3.js");
      return new S3Backend(
        {
          bucket: u.hostname,
          prefix: decodeURIComponent(u.pathname).replace(/^\/+|\/+$/g, ""),
          endpoint: str(o.endpoint) ?? process.env.VALLEY_S3_ENDPOINT,
          region: str(o.region),
          pathStyle:
            bool(o.pathStyle) ??
            (process.env.VALLEY_S3_PATH_STYLE ? bool(process.env.VALLEY_S3_PATH_STYLE) : undefined),
          accessKeyIdEnv: str(o.accessKeyIdEnv),
          secretAccessKeyEnv: str(o.secretAccessKeyEnv),
          partSizeBytes: partSize(o.partSizeMb, shown),
        },
        shown,
      );
    }
    default:
      throw new RemoteConfigError(
        `${spec.url}: unknown remote kind ${u.protocol} (file://, ssh://, s3://)`,
      );
  }
}
