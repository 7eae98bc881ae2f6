import { readdirSync, lstatSync } from "node:fs";
import { join } from "node:path";
import {
  type ActionKey,
  type Digest,
  hashJson,
  sha256Bytes,
  canonicalJson,
} from "../cache/digest.js";
import type { StatCache } from "../cache/stat-cache.js";
import type { Coords, StageKind, ToolInfo } from "./stage-api.js";
import type { Instance } from "./pipeline/expand.js";

/**
 * Everything that makes a result stale, and nothing else (wireit's
 * fingerprint, Bazel's action key). Whoever adds a field says why.
 * Deliberately absent: stage names (renaming a stage must not re-run it),
 * mtimes, YAML formatting and comments, secrets, the engine's own version.
 */
export interface KeyFields {
  /** The code that computes the result. */
  kind: string;
  /** Bumped by a kind when its outputs change for the same params and inputs. */
  version: string;
  /** Params after templates and schema defaults: a default that changes re-runs. */
  params: Record<string, unknown>;
  /** Content of every input: one tree digest, or a gathered list with each instance's coordinates. */
  inputs: Record<string, Digest | { coords: Coords; digest: Digest }[]>;
  /** Binaries the kind calls (e.g. the llama.cpp build): a rebuilt tool re-runs its users. */
  tools: Record<string, Digest>;
  /** Values of the environment variables the stage declares (never secrets). */
  env: Record<string, string>;
  /** Kind-specific material, e.g. digests of patch files a build applies. */
  fingerprint: Record<string, unknown>;
}

/**
 * The key fields of one instance, from what the engine resolved: its
 * upstream digests, its tools, its declared env values and its kind's
 * fingerprint. The only place they are put together.
 */
export function keyFields(a: {
  inst: Instance;
  impl: StageKind<Record<string, unknown>>;
  inputs: KeyFields["inputs"];
  tools: Record<string, ToolInfo>;
  env: Record<string, string>;
  /** The kind's fingerprint hook's result for these params (when it has one). */
  fingerprint?: Record<string, unknown>;
}): KeyFields {
  const unkeyed = a.impl.unkeyedParams;
  return {
    kind: a.inst.kind,
    version: a.impl.version,
    // Parallelism params change how, never what: left out (see StageKind.unkeyedParams).
    params: unkeyed?.length
      ? Object.fromEntries(Object.entries(a.inst.params).filter(([k]) => !unkeyed.includes(k)))
      : a.inst.params,
    inputs: a.inputs,
    tools: Object.fromEntries(Object.entries(a.tools).map(([n, t]) => [n, t.digest])),
    env: a.env,
    fingerprint: a.impl.fingerprint ? (a.fingerprint ?? {}) : {},
  };
}

/** The action key: sha256 over the canonical JSON of the key fields. */
export function computeKey(fields: KeyFields): ActionKey {
  return hashJson(fields) as ActionKey;
}

/** Dotted paths where two key field sets differ, e.g. ["params.n", "inputs.data"]. */
export function diffFields(before: unknown, after: unknown, prefix = "", depth = 0): string[] {
  if (canonicalJson(before) === canonicalJson(after)) return [];
  const isObj = (v: unknown) => v !== null && typeof v === "object" && !Array.isArray(v);
  if (depth >= 3 || !isObj(before) || !isObj(after)) return [prefix || "(all)"];
  const a = before as Record<string, unknown>;
  const b = after as Record<string, unknown>;
  const out: string[] = [];
  for (const k of [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()) {
    out.push(...diffFields(a[k], b[k], prefix ? `${prefix}.${k}` : k, depth + 1));
  }
  return out;
}

/**
 * Digest of a folder of binaries (a user's own llama.cpp build): every
 * regular file's bytes by relative path, through the stat cache so that an
 * unchanged build is not re-read.
 */
export function hashToolDir(dirs: string[], stat: StatCache): Digest {
  const files: Record<string, Digest> = {};
  const walk = (abs: string, rel: string) => {
    for (const name of readdirSync(abs).sort()) {
      const a = join(abs, name);
      const r = rel ? `${rel}/${name}` : name;
      const st = lstatSync(a);
      if (st.isDirectory()) walk(a, r);
      else if (st.isFile()) files[r] = stat.digest(a).digest;
    }
  };
  dirs.forEach((d, i) => walk(d, String(i)));
  return sha256Bytes(canonicalJson(files));
}
