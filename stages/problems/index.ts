import { isAbsolute, join, resolve } from "node:path";
import {
  InputError,
  type StageContext,
  type StageKind,
  type InputArtifact,
} from "../../engine/stage-api.js";
import { listDataFiles, writeJsonl } from "../../data/jsonl.js";
import { readRecords } from "../../data/parquet.js";
import { projectRoot } from "../../data/root.js";
import {
  OcrGrouper,
  genericProblem,
  lcbProblem,
  loadJoins,
  tacoProblem,
  type ImportOptions,
  type JoinSpec,
  type Skips,
  type UnknownPolicy,
} from "../../data/importers.js";
import type { Problem } from "../../data/problem.js";

export interface ProblemsParams {
  format: "lcb" | "taco" | "ocr" | "jsonl" | "parquet" | "builtin";
  path?: string;
  from?: string;
  to?: string;
  release?: string;
  fields?: Record<string, string>;
  join?: JoinSpec[];
  split?: "train" | "eval";
  limit?: number;
  source?: string;
  unknownDifficulty?: UnknownPolicy;
  requireTests?: boolean;
}

/** LiveCodeBench releases are cumulative from May 2023 (EVAL.md). */
export const LCB_RELEASES: Record<string, { from: string; to: string }> = {
  v1: { from: "2023-05-01", to: "2024-03-31" },
  v2: { from: "2023-05-01", to: "2024-05-31" },
  v3: { from: "2023-05-01", to: "2024-07-31" },
  v4: { from: "2023-05-01", to: "2024-09-30" },
  v5: { from: "2023-05-01", to: "2025-01-31" },
  v6: { from: "2023-05-01", to: "2025-04-30" },
};

export const DEMO_PATH = "pipelines/data/demo/problems.jsonl";

/** The date window: from/to intersected with the release's window; days inclusive. */
export function dateWindow(p: Pick<ProblemsParams, "from" | "to" | "release">): {
  from?: string;
  to?: string;
} {
  let from = p.from?.slice(0, 10);
  let to = p.to?.slice(0, 10);
  if (p.release) {
    const r = LCB_RELEASES[p.release.replace(/^release_/, "")];
    if (!from || r.from > from) from = r.from;
    if (!to || r.to < to) to = r.to;
  }
  return { from, to };
}

function resolvePath(ctx: StageContext<ProblemsParams>, p: string): string {
  const src = ctx.inputs.source as InputArtifact | undefined;
  if (isAbsolute(p)) return p;
  if (src && !Array.isArray(src)) return join(src.path, p);
  return resolve(p);
}

function dataExtensions(params: ProblemsParams): string[] {
  return params.format === "parquet" ? [".parquet"] : [".jsonl", ".parquet", ".json"];
}

function paramPaths(params: ProblemsParams): string[] {
  if (params.format === "builtin") return [join(projectRoot(), params.path ?? DEMO_PATH)];
  return [params.path, ...(params.join ?? []).map((j) => j.path)].filter((x): x is string => !!x);
}

const kind: StageKind<ProblemsParams> = {
  kind: "problems",
  version: "1",
  resources: () => ({ cpu: 1, memory: 2048 }),
  // The key must change when a local file named in params changes, not only its name.
  // Exactly the files the stage will read (a folder's data files, links
  // followed), each through the engine's stat cache.
  async fingerprint(params, tools) {
    const out: Record<string, unknown> = {};
    for (const p of paramPaths(params)) {
      let files: string[];
      try {
        files = params.format === "builtin" ? [p] : await listDataFiles(p, dataExtensions(params));
      } catch {
        out[p] = null; // missing or empty: the stage says so when it runs
        continue;
      }
      for (const f of files) out[f] = tools.digestFile(f);
    }
    return { files: out };
  },
  check(params) {
    const issues = [];
    if (params.format !== "builtin" && !params.path)
      issues.push({
        path: ["path"],
        message: `format ${params.format} needs a path (file or folder)`,
      });
    if (params.join && params.format !== "ocr")
      issues.push({ path: ["join"], message: "join is only used by format ocr" });
    const w = dateWindow(params);
    if (w.from && w.to && w.from > w.to)
      issues.push({ path: ["from"], message: `empty date window ${w.from} .. ${w.to}` });
    return issues;
  },
  async run(ctx) {
    const params = ctx.params;
    const opts: ImportOptions = {
      unknownDifficulty: params.unknownDifficulty ?? "skip",
      requireTests: params.requireTests ?? params.format !== "ocr",
      source: params.source,
      fields: params.fields,
      join: params.join?.map((j) => ({ ...j, path: resolvePath(ctx, j.path) })),
    };
    const skips: Skips = new Map();
    const window = dateWindow(params);
    const inWindow = (p: Problem) => {
      if (!window.from && !window.to) return true;
      if (!p.date) {
        skips.set("no date (window set)", (skips.get("no date (window set)") ?? 0) + 1);
        return false;
      }
      const d = p.date.slice(0, 10);
      const ok = (!window.from || d >= window.from) && (!window.to || d <= window.to);
      if (!ok) skips.set("outside date window", (skips.get("outside date window") ?? 0) + 1);
      return ok;
    };

    const files =
      params.format === "builtin"
        ? [join(projectRoot(), params.path ?? DEMO_PATH)]
        : await listDataFiles(resolvePath(ctx, params.path!), dataExtensions(params));

    const problems: Problem[] = [];
    const ids = new Map<string, string>();
    let read = 0;
    const keep = (p: Problem | null, where: string) => {
      if (!p) return;
      if (params.split && p.split !== params.split) return;
      if (!inWindow(p)) return;
      const prev = ids.get(p.id);
      if (prev)
        throw new InputError(
          `${where}: duplicate problem id ${JSON.stringify(p.id)} (first at ${prev})`,
        );
      ids.set(p.id, where);
      problems.push(p);
    };
    const full = () => params.limit !== undefined && problems.length >= params.limit;

    if (params.format === "ocr") {
      const joins = await loadJoins(opts.join ?? []);
      const g = new OcrGrouper(opts, joins, skips);
      for (const file of files)
        for await (const { line, value } of readRecords(file)) {
          if (ctx.signal.aborted) throw new Error("aborted");
          g.add({ file, line }, value);
          if (++read % 10000 === 0) ctx.progress(read, undefined, "records");
        }
      for (const p of g.problems.values()) {
        keep(p, `${p.id}`);
        if (full()) break;
      }
    } else {
      let index = 0;
      outer: for (const file of files)
        for await (const { line, value } of readRecords(file)) {
          if (ctx.signal.aborted) throw new Error("aborted");
          const w = { file, line };
          const p =
            params.format === "lcb"
              ? lcbProblem(w, value, opts, skips)
              : params.format === "taco"
                ? tacoProblem(w, value, index, opts, skips)
                : genericProblem(
                    w,
                    value,
                    index,
                    opts,
                    skips,
                    params.format === "builtin" ? "demo" : params.format,
                  );
          index++;
          keep(p, `${file}: record ${line}`);
          if (++read % 10000 === 0) ctx.progress(read, undefined, "records");
          if (full()) break outer;
        }
    }

    await writeJsonl(join(ctx.out, "problems.jsonl"), problems);
    const count = (f: (p: Problem) => string | undefined) => {
      const m: Record<string, number> = {};
      for (const p of problems) {
        const k = f(p) ?? "none";
        m[k] = (m[k] ?? 0) + 1;
      }
      return m;
    };
    const metrics = {
      count: problems.length,
      tests: problems.reduce((a, p) => a + p.tests.length, 0),
      by_difficulty: count((p) => p.difficulty),
      by_source: count((p) => p.source),
      by_split: count((p) => p.split),
      skipped: Object.fromEntries(skips),
      window,
    };
    ctx.log.info(metrics, "problems imported");
    return { metrics };
  },
};

export default kind;
