import type { Expected } from "../../data/estimate.js";
import { isAbsolute, join, resolve } from "node:path";
import { BadStageInput, type StageContext, type StageKind } from "../../engine/stage-api.js";
import { existsSync, readFileSync, statSync } from "node:fs";
import { JsonlWriter, listDataFiles } from "../../data/jsonl.js";
import { readRecords } from "../../data/parquet.js";
import { projectRoot } from "../../data/root.js";
import {
  genericProblem,
  lcbProblem,
  tacoProblem,
  type ImportOptions,
  type Skips,
  type UnknownPolicy,
} from "../../data/importers.js";
import { importOcr, type UnresolvedPolicy } from "../../data/ocr.js";
import {
  SOURCE_DATASETS,
  isSourceDataset,
  sourceFiles,
  type SourceDataset,
} from "../../data/sources.js";
import type { Problem } from "../../data/problem.js";

export interface ProblemsParams {
  format: "lcb" | "taco" | "ocr" | "jsonl" | "parquet" | "builtin";
  path?: string;
  from?: string;
  to?: string;
  release?: string;
  fields?: Record<string, string>;
  /** ocr: OCR dataset name (taco, apps, code_contests, open-r1/codeforces) → local copy. */
  sources?: Partial<Record<SourceDataset, string>>;
  /** ocr: keep only rows whose `dataset` is one of these. */
  datasets?: string[];
  onUnresolved?: UnresolvedPolicy;
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
  if (isAbsolute(p)) return p;
  const src = ctx.input("source", { optional: true });
  if (src) return join(src.path, p);
  return resolve(p);
}

function dataExtensions(params: ProblemsParams): string[] {
  return params.format === "parquet" ? [".parquet"] : [".jsonl", ".parquet", ".json"];
}

function paramPaths(params: ProblemsParams): string[] {
  if (params.format === "builtin") return [join(projectRoot(), params.path ?? DEMO_PATH)];
  return params.path ? [params.path] : [];
}

const kind: StageKind<ProblemsParams> = {
  kind: "problems",
  // 2: OCR generations stream to generations.jsonl (no longer extra.generations),
  // questions rebuilt from `sources`; APPS labels recognised.
  version: "2",
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
      // a built-in set is named as valley names it, not by where valley is
      // installed: the same problems get the same key from any checkout
      for (const f of files)
        out[params.format === "builtin" ? `builtin:${params.path ?? DEMO_PATH}` : f] =
          tools.digestFile(f);
    }
    // The source datasets' files: a question's text and tests come from them.
    const sources: Record<string, unknown> = {};
    for (const [name, root] of Object.entries(params.sources ?? {})) {
      if (!isSourceDataset(name)) continue;
      const files = existsSync(root) ? sourceFiles(root, name) : [];
      sources[name] = files.length
        ? Object.fromEntries(files.map((f) => [f, tools.digestFile(f)]))
        : null;
    }
    return { files: out, sources };
  },
  check(params) {
    const issues = [];
    if (params.format !== "builtin" && !params.path)
      issues.push({
        path: ["path"],
        message: `format ${params.format} needs a path (file or folder)`,
      });
    for (const k of ["sources", "datasets", "onUnresolved"] as const)
      if (params[k] !== undefined && params.format !== "ocr")
        issues.push({ path: [k], message: `${k} is only used by format ocr` });
    for (const name of Object.keys(params.sources ?? {}))
      if (!isSourceDataset(name))
        issues.push({
          path: ["sources", name],
          message: `unknown source dataset "${name}" (OCR/OCR2 name theirs ${SOURCE_DATASETS.join(", ")})`,
        });
    const w = dateWindow(params);
    if (w.from && w.to && w.from > w.to)
      issues.push({ path: ["from"], message: `empty date window ${w.from} .. ${w.to}` });
    return issues;
  },
  estimate(ctx) {
    const params = ctx.params;
    // A count of the records when a single JSONL file is at hand; else unknown until imported.
    const [file] = paramPaths(params);
    let records: number | undefined;
    if (file && /\.jsonl$/.test(file) && existsSync(file) && statSync(file).isFile()) {
      const text = readFileSync(file, "utf8");
      records = text.split("\n").filter((l) => l.trim() !== "").length;
    }
    let output: Expected =
      records !== undefined
        ? { records: [records, records], basis: `measured: ${records} records in ${file}` }
        : {};
    // LiveCodeBench adds 30-70 problems a month: a date window says how many to expect
    if (records === undefined && params.format === "lcb") {
      const from = Date.parse(String(params.from ?? "2023-05-01"));
      const to = params.to ? Date.parse(String(params.to)) : Date.now();
      const months = Math.max(1, (to - from) / (30.44 * 86400e3));
      output = {
        records: [Math.round(months * 30), Math.round(months * 70)],
        basis: `assumed: LiveCodeBench's 30-70 problems a month over ${months.toFixed(1)} months`,
      };
    }
    return {
      hours: [0, 0.25],
      device: "cpu",
      usd: null,
      basis: {
        hours: "assumed: an import takes seconds to minutes",
        records: output.basis ?? "unknown until imported (not a single JSONL file at hand)",
      },
      output: output as Record<string, unknown>,
    };
  },
  async run(ctx) {
    const params = ctx.params;
    const opts: ImportOptions = {
      unknownDifficulty: params.unknownDifficulty ?? "skip",
      requireTests: params.requireTests ?? params.format !== "ocr",
      source: params.source,
      fields: params.fields,
    };
    // Every named source must exist before a byte is read: a 72 GB pass that
    // fails at its end for a typo costs an afternoon.
    const sources: Partial<Record<SourceDataset, string>> = {};
    for (const [name, p] of Object.entries(params.sources ?? {})) {
      const path = resolvePath(ctx, p);
      if (!existsSync(path))
        throw new BadStageInput(
          `sources.${name}: ${path} does not exist (a local copy of ${name})`,
        );
      sources[name as SourceDataset] = path;
    }
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

    if (params.format === "ocr") {
      const r = await importOcr(
        files,
        ctx.out,
        {
          ...opts,
          sources,
          datasets: params.datasets,
          onUnresolved: params.onUnresolved ?? "skip",
          limit: params.limit,
          signal: ctx.signal,
          progress: (n) => ctx.progress(n, undefined, "rows"),
        },
        skips,
      );
      const metrics = {
        count: r.problems,
        generations: r.generations,
        tests: r.tests,
        by_difficulty: r.by_difficulty,
        by_source: r.by_source,
        by_dataset: r.by_dataset,
        unresolved: r.unresolved_rows,
        unresolved_questions: r.unresolved_questions,
        skipped: Object.fromEntries(skips),
      };
      ctx.log.info(metrics, "problems imported");
      return { metrics };
    }

    // Streamed: each problem is written as it is read; only ids are held.
    const out = await JsonlWriter.open(join(ctx.out, "problems.jsonl"));
    const ids = new Map<string, string>();
    const tally = { tests: 0, difficulty: {}, source: {}, split: {} } as {
      tests: number;
      difficulty: Record<string, number>;
      source: Record<string, number>;
      split: Record<string, number>;
    };
    const bump = (m: Record<string, number>, k: string | undefined) =>
      (m[k ?? "none"] = (m[k ?? "none"] ?? 0) + 1);
    let read = 0;
    let index = 0;
    try {
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
          if (++read % 10000 === 0) ctx.progress(read, undefined, "records");
          if (!p || (params.split && p.split !== params.split) || !inWindow(p)) continue;
          const where = `${file}: record ${line}`;
          const prev = ids.get(p.id);
          if (prev)
            throw new BadStageInput(
              `${where}: duplicate problem id ${JSON.stringify(p.id)} (first at ${prev})`,
            );
          ids.set(p.id, where);
          await out.write(p);
          tally.tests += p.tests.length;
          bump(tally.difficulty, p.difficulty);
          bump(tally.source, p.source);
          bump(tally.split, p.split);
          if (params.limit !== undefined && out.count >= params.limit) break outer;
        }
      await out.close();
    } catch (e) {
      await out.abandon();
      throw e;
    }
    const metrics = {
      count: out.count,
      tests: tally.tests,
      by_difficulty: tally.difficulty,
      by_source: tally.source,
      by_split: tally.split,
      skipped: Object.fromEntries(skips),
      window,
    };
    ctx.log.info(metrics, "problems imported");
    return { metrics };
  },
};

export default kind;
