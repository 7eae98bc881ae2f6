import { existsSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { hashJson, canonicalJson, digestHex, type ActionKey } from "../cache/digest.js";
import { Store, isComplete, type StoredResult } from "../cache/store.js";
import type { StatCache } from "../cache/stat-cache.js";
import { Leases } from "../cache/leases.js";
import type { Pipeline, Instance } from "./pipeline/expand.js";
import type {
  FingerprintTools,
  InputArtifact,
  InstanceId,
  StageInput,
  ToolInfo,
} from "./stage-api.js";
import { computeKey, hashToolDir, keyFields, type KeyFields } from "./key.js";
import { UsageError } from "./errors.js";
import { KeyHistory } from "./history.js";
import { Consulted, toolEnv } from "./run-memo.js";

export const ENGINE_VERSION = "0.1.0";

/**
 * Where a pipeline's cache lives: $VALLEY_CACHE, or .valley/ beside the
 * pipeline file. Set but empty is bad input (exit 2), not "unset": it is
 * almost always a script's unset variable, and falling back would compute
 * everything again in another cache (cache/README.md).
 */
export function cacheRootFor(pipelineDir: string): string {
  const env = process.env.VALLEY_CACHE;
  if (env !== undefined && env.trim() === "")
    throw new UsageError(
      "VALLEY_CACHE is set but empty: set it to the cache folder, or unset it to use .valley/ beside the pipeline",
    );
  return resolve(env ?? join(pipelineDir, ".valley"));
}

/** A pipeline's name as the file name of its results memo and key history in the cache. */
export const pipelineFileName = (name: string): string => digestHex(hashJson(name));

export interface ResolvedKey {
  key: ActionKey;
  fields: KeyFields;
  inputs: Record<string, StageInput>;
  tools: Record<string, ToolInfo>;
  env: Record<string, string>;
}

interface HistoryEntry {
  key: ActionKey;
  /** Key fields of that key, from its action record (absent once gc removed it). */
  fields?: KeyFields;
}

/**
 * Binds a pipeline to a store: computes keys from upstream results, looks
 * results up, and remembers the last key per instance id for `plan --why`.
 * Knows nothing of what a stage does.
 */
export class Engine {
  readonly store: Store;
  readonly leases: Leases;
  private toolCache = new Map<string, ToolInfo | undefined>();
  /** What keys were computed from besides the pipeline's text (engine/run-memo.ts). */
  readonly consulted = new Consulted();
  /** The pipeline's name as a file name: its results memo and its history. */
  private readonly pipelineHex: string;
  /** The last key per instance id (plan --why). */
  private readonly keys: KeyHistory;

  constructor(
    readonly pipeline: Pipeline,
    cacheRoot = cacheRootFor(pipeline.dir),
    opts: { readOnly?: boolean } = {},
  ) {
    this.store = new Store(cacheRoot, { create: !opts.readOnly });
    this.leases = new Leases(this.store.dir("leases"));
    this.pipelineHex = pipelineFileName(pipeline.name);
    this.store.memoResults(this.pipelineHex);
    this.keys = new KeyHistory(this.store.dir("history"), this.pipelineHex);
  }

  /** The tools looked up so far (undefined: none configured). */
  toolsUsed(): Map<string, ToolInfo | undefined> {
    return this.toolCache;
  }

  /** A tool from `tools.<name>.path` or $VALLEY_<NAME>_BIN, hashed once per run. */
  tool(name: string): ToolInfo | undefined {
    if (this.toolCache.has(name)) return this.toolCache.get(name);
    const spec =
      this.pipeline.tools[name] ??
      (process.env[toolEnv(name)]
        ? { path: resolve(process.env[toolEnv(name)] as string) }
        : undefined);
    let info: ToolInfo | undefined;
    if (spec) {
      if (!existsSync(spec.path)) throw new Error(`tool "${name}": ${spec.path} does not exist`);
      const lib =
        spec.lib ??
        (existsSync(join(spec.path, "..", "lib")) ? resolve(spec.path, "..", "lib") : undefined);
      const dirs = [spec.path, ...(lib ? [lib] : [])];
      info = { bin: spec.path, lib, digest: hashToolDir(dirs, this.store.stat) };
    }
    this.toolCache.set(name, info);
    return info;
  }

  /**
   * The key of an instance, given the results of its upstream instances.
   * Returns undefined while an upstream result is unknown. With `admit`
   * false (plan, status), path inputs are hashed but not copied.
   */
  async resolveKey(
    inst: Instance,
    results: Map<string, StoredResult>,
    opts: { admit: boolean },
  ): Promise<ResolvedKey | undefined> {
    const kind = this.pipeline.kinds.get(inst.kind);
    if (!kind) throw new Error(`kind ${inst.kind} not loaded`);
    const artifact = (id: InstanceId): InputArtifact | undefined => {
      const rec = results.get(id);
      const up = this.pipeline.byId.get(id);
      if (!rec || !up) return undefined;
      return {
        id,
        coords: up.coords,
        digest: rec.outputs.tree,
        path: this.store.treePath(rec.outputs.tree),
      };
    };
    const inputs: Record<string, StageInput> = {};
    const keyed: KeyFields["inputs"] = {};
    for (const [name, spec] of Object.entries(inst.inputs)) {
      if (spec.type === "path") {
        if (!existsSync(spec.path))
          throw new Error(`${inst.id}: input ${name}: ${spec.path} does not exist`);
        const d = opts.admit
          ? await this.store.importPath(spec.path)
          : await this.store.pathDigest(spec.path);
        // A path input has no producer: its artifact is named by the reference as written.
        inputs[name] = {
          id: spec.ref as InstanceId,
          coords: {},
          digest: d,
          path: this.store.treePath(d),
        };
        keyed[name] = d;
        this.consulted.paths.set(resolve(spec.path), d);
      } else if (spec.type === "one") {
        const a = artifact(spec.id);
        if (!a) return undefined;
        inputs[name] = a;
        keyed[name] = a.digest;
      } else {
        const list: InputArtifact[] = [];
        for (const id of spec.ids) {
          const a = artifact(id);
          if (!a) return undefined;
          list.push(a);
        }
        inputs[name] = list;
        keyed[name] = list.map((a) => ({ coords: a.coords, digest: a.digest }));
      }
    }
    const tools: Record<string, ToolInfo> = {};
    for (const t of kind.impl.tools ?? []) {
      const info = this.tool(t);
      if (info) tools[t] = info;
    }
    const env: Record<string, string> = {};
    for (const name of inst.env) {
      env[name] = process.env[name] ?? "";
      this.consulted.env.set(name, process.env[name] ?? null);
    }
    const fields = keyFields({
      inst,
      impl: kind.impl,
      inputs: keyed,
      tools,
      env,
      fingerprint: kind.impl.fingerprint
        ? this.fingerprints.get(inst.kind + canonicalJson(inst.params))
        : undefined,
    });
    return {
      key: computeKey(fields),
      fields,
      inputs,
      tools,
      env,
    };
  }

  private fingerprints = new Map<string, Record<string, unknown>>();

  /** Runs each kind's fingerprint hook once per params object. */
  async prepareFingerprints(): Promise<void> {
    const tools = fingerprintTools(this.store.stat, this.pipeline.dir);
    for (const inst of this.pipeline.instances) {
      const kind = this.pipeline.kinds.get(inst.kind);
      if (!kind?.impl.fingerprint) continue;
      const k = inst.kind + canonicalJson(inst.params);
      if (!this.fingerprints.has(k)) {
        const result = await kind.impl.fingerprint(inst.params, tools);
        this.fingerprints.set(k, result);
        this.consulted.hooks.set(k, {
          kind: inst.kind,
          params: inst.params,
          result: canonicalJson(result),
        });
      }
    }
  }

  /**
   * A valid cached result for `key`: the record exists, its tree is intact,
   * and it is complete (an incomplete one is re-run to fill its gap).
   */
  lookup(key: ActionKey): StoredResult | undefined {
    const rec = this.store.lookupResult(key);
    return isComplete(rec) ? rec : undefined;
  }

  history(id: string): HistoryEntry | undefined {
    const key = this.keys.get(id);
    if (!key) return undefined;
    const fields = this.store.getAction(key)?.fields as KeyFields | undefined;
    return { key, fields };
  }

  remember(id: string, key: ActionKey): void {
    this.keys.remember(id, key);
  }

  saveHistory(): void {
    this.keys.save();
  }

  /** Path of the log kept for the last failed attempt of a key. */
  failedLogPath(key: ActionKey): string {
    return join(this.store.dir("work"), `${digestHex(key)}.failed.log`);
  }
}

/** The engine's side of the fingerprint hooks (see FingerprintTools). */
export function fingerprintTools(stat: StatCache, pipelineDir: string): FingerprintTools {
  return {
    digestFile(p) {
      const abs = resolve(pipelineDir, p);
      try {
        const st = statSync(abs, { bigint: true });
        return st.isFile() ? stat.digest(abs, st).digest : null;
      } catch {
        return null;
      }
    },
  };
}
