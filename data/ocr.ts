/**
 * OpenCodeReasoning (v1) and OpenCodeReasoning-2 import, streamed. Each row is
 * one generation; rows share a question (`question_id`, or the source row it
 * points at). OCR2 ships no question text ("-" in every row): the question,
 * its tests and labels come from the source dataset the row names by
 * (dataset, split, index) (data/sources.ts).
 *
 * Three passes, none holding generations in memory:
 *   1. the OCR files, row by row: every generation goes straight to
 *      generations.jsonl; per question only its reference is remembered;
 *   2. each source split that a question needs, row by row: a question's
 *      problem record is written when its source row passes;
 *   3. only if some question was left out in pass 2 (unresolved, no label,
 *      no tests): its generations are filtered out of generations.jsonl.
 */
import { createHash } from "node:crypto";
import { rename, rm } from "node:fs/promises";
import { join } from "node:path";
import { BadStageInput } from "../engine/stage-api.js";
import { JsonlWriter, readJsonl } from "./jsonl.js";
import { readRecords } from "./parquet.js";
import { at, fail, str, type ImportOptions, type Skips, type Where } from "./importers.js";
import {
  isUnknownLabel,
  normaliseDifficulty,
  problemIssues,
  type Difficulty,
  type Problem,
} from "./problem.js";
import {
  SOURCE_COLUMNS,
  SOURCE_SPLITS,
  isSourceDataset,
  sourceRecord,
  splitFiles,
  type SourceDataset,
  type SourceRecord,
} from "./sources.js";

export type UnresolvedPolicy = "skip" | "fail";

export interface OcrOptions extends ImportOptions {
  /** OCR dataset name → local copy of it (already resolved to a path). */
  sources: Partial<Record<SourceDataset, string>>;
  /** Keep only rows whose `dataset` is one of these. */
  datasets?: string[];
  onUnresolved: UnresolvedPolicy;
  /** Keep at most this many questions (the first ones met). */
  limit?: number;
  signal?: AbortSignal;
  progress?: (rows: number) => void;
}

/** One generation as written to generations.jsonl (and read by `traces`, backend import). */
export interface Generation {
  problem_id: string;
  /** 0-based, in file order within the question. */
  sample: number;
  /** The OCR row's own `id`, when it has one. */
  row_id?: string;
  r1_generation: string;
  solution?: string;
  judgement?: string;
  pass_rate?: string;
}

/** Columns read from OCR files (qwq_critique, OCR2's largest column, is not used). */
const OCR_COLUMNS = [
  "id",
  "question_id",
  "question",
  "input",
  "r1_generation",
  "output",
  "solution",
  "judgement",
  "pass_rate",
  "source",
  "license",
  "dataset",
  "split",
  "difficulty",
  "index",
];

interface Ref {
  dataset: string;
  split: string;
  index: number;
}

interface Question {
  ref?: Ref;
  /** The row's own text when it is not "-" (OCR v1 split_0). */
  statement?: string;
  difficulty_raw: string;
  source: string;
  license?: string;
  /** Where the question was first met, for messages. */
  first: string;
  rows: number;
  unresolved?: string;
  written?: boolean;
}

export interface OcrResult {
  problems: number;
  generations: number;
  tests: number;
  by_difficulty: Record<string, number>;
  by_source: Record<string, number>;
  by_dataset: Record<string, number>;
  /** Rows whose question could not be rebuilt, per OCR dataset name. */
  unresolved_rows: Record<string, number>;
  /** Why, per reason, counted in questions. */
  unresolved_questions: Record<string, number>;
}

const bump = (m: Record<string, number> | Skips, k: string, n = 1) => {
  if (m instanceof Map) m.set(k, (m.get(k) ?? 0) + n);
  else m[k] = (m[k] ?? 0) + n;
};

export async function importOcr(
  files: string[],
  outDir: string,
  opts: OcrOptions,
  skips: Skips,
): Promise<OcrResult> {
  const questions = new Map<string, Question>();
  const res: OcrResult = {
    problems: 0,
    generations: 0,
    tests: 0,
    by_difficulty: {},
    by_source: {},
    by_dataset: {},
    unresolved_rows: {},
    unresolved_questions: {},
  };
  const unresolve = (q: Question, id: string, why: string) => {
    if (opts.onUnresolved === "fail")
      throw new BadStageInput(
        `${q.first}: question ${JSON.stringify(id)} cannot be rebuilt: ${why} (onUnresolved: fail; set it to skip to count such rows and go on)`,
      );
    q.unresolved = why;
  };

  // ---- pass 1: OCR rows → generations, question references
  const genPart = join(outDir, "generations.part.jsonl");
  const gens = await JsonlWriter.open(genPart);
  let read = 0;
  try {
    for (const file of files)
      for await (const { line, value: r } of readRecords(file, { columns: OCR_COLUMNS })) {
        if (opts.signal?.aborted) throw new Error("aborted");
        if (++read % 10000 === 0) opts.progress?.(read);
        const w: Where = { file, line };
        const text = r.question ?? r.input;
        if (text === undefined || text === null)
          fail(w, `missing field "question" (OCR2) or "input" (OCR)`);
        const dataset = str(r.dataset);
        if (opts.datasets && !opts.datasets.includes(dataset)) {
          bump(skips, "dataset not selected");
          continue;
        }
        const blank = str(text).trim() === "-";
        const hasRef = r.index !== undefined && r.index !== null && str(r.index).trim() !== "";
        if (blank && !hasRef)
          fail(w, `question is "-" but the record has no dataset/split/index to rebuild it from`);
        let ref: Ref | undefined;
        if (hasRef) {
          const index = Number(str(r.index).trim());
          if (!Number.isInteger(index) || index < 0)
            fail(w, `index ${JSON.stringify(r.index)} is not a row number`);
          ref = { dataset, split: str(r.split), index };
        }
        const id =
          r.question_id !== undefined && r.question_id !== null && str(r.question_id) !== ""
            ? str(r.question_id)
            : ref && blank
              ? `${ref.dataset}/${ref.split}/${ref.index}`
              : "ocr/" + createHash("sha256").update(str(text)).digest("hex").slice(0, 16);
        let q = questions.get(id);
        if (!q) {
          if (opts.limit !== undefined && questions.size >= opts.limit) {
            bump(skips, "over limit");
            continue;
          }
          q = {
            ref,
            statement: blank ? undefined : str(text),
            difficulty_raw: str(r.difficulty),
            source: str(r.source) || "ocr",
            license: r.license === undefined || r.license === null ? undefined : str(r.license),
            first: at(w),
            rows: 0,
          };
          questions.set(id, q);
          // A question that needs its source and has none is known now.
          if (ref && blank && !(isSourceDataset(dataset) && opts.sources[dataset]))
            unresolve(q, id, `no entry for dataset ${JSON.stringify(dataset)} in sources`);
        }
        q.rows++;
        if (q.unresolved) continue;
        const g: Generation = {
          problem_id: id,
          sample: q.rows - 1,
          r1_generation: str(r.r1_generation ?? r.output),
        };
        if (r.id !== undefined && r.id !== null) g.row_id = str(r.id);
        for (const k of ["solution", "judgement", "pass_rate"] as const)
          if (r[k] !== undefined && r[k] !== null) g[k] = str(r[k]);
        await gens.write(g);
      }
    await gens.close();
  } catch (e) {
    await gens.abandon();
    throw e;
  }

  // ---- pass 2: source rows → problems
  const problems = await JsonlWriter.open(join(outDir, "problems.jsonl"));
  const emit = async (id: string, q: Question, src: SourceRecord | undefined) => {
    const label = [q.difficulty_raw, src?.difficulty_raw ?? ""].find(
      (l) => normaliseDifficulty(l) !== null,
    );
    let difficulty: Difficulty;
    if (label !== undefined) difficulty = normaliseDifficulty(label)!;
    else if (!isUnknownLabel(q.difficulty_raw) && src === undefined)
      throw new BadStageInput(
        `${q.first}: unknown difficulty label ${JSON.stringify(q.difficulty_raw)} (expected easy/medium/hard, a TACO or APPS label, a CodeContests level or a Codeforces rating)`,
      );
    else if (opts.unknownDifficulty === "skip") {
      bump(skips, "unknown difficulty");
      q.unresolved = "no difficulty label";
      return;
    } else if (opts.unknownDifficulty === "error")
      throw new BadStageInput(
        `${q.first}: question ${JSON.stringify(id)} has no difficulty label (${JSON.stringify(q.difficulty_raw)}); set unknownDifficulty to skip or to a level`,
      );
    else difficulty = opts.unknownDifficulty;
    const tests = src?.tests ?? [];
    if (opts.requireTests && tests.length === 0) {
      bump(skips, "zero tests");
      q.unresolved = "zero tests";
      return;
    }
    const p: Problem = {
      id,
      source: opts.source ?? q.source,
      title: src?.title ?? "",
      statement: q.statement ?? src!.statement,
      starter_code: src?.starter_code ?? "",
      tests,
      difficulty,
      difficulty_raw: label ?? q.difficulty_raw,
    };
    if (src?.fn_name) p.fn_name = src.fn_name;
    if (src?.time_limit_s && src.time_limit_s > 0) p.time_limit_s = src.time_limit_s;
    if (src?.memory_limit_mb && src.memory_limit_mb > 0) p.memory_limit_mb = src.memory_limit_mb;
    p.extra = {
      ...(q.ref ? { dataset: q.ref.dataset, split: q.ref.split, index: q.ref.index } : {}),
      ...(q.license !== undefined ? { license: q.license } : {}),
      generations: q.rows,
    };
    const issues = problemIssues(p, false);
    if (issues.length) throw new BadStageInput(`${q.first}: ${issues.join("; ")}`);
    await problems.write(p);
    q.written = true;
    res.problems++;
    res.tests += tests.length;
    bump(res.by_difficulty, difficulty);
    bump(res.by_source, p.source);
    bump(res.by_dataset, q.ref?.dataset ?? "none");
  };

  try {
    // Questions that need a source row, grouped by dataset → split → index.
    const wanted = new Map<string, Map<string, Map<number, string[]>>>();
    for (const [id, q] of questions) {
      if (q.unresolved) continue;
      const r = q.ref;
      if (!r || !(isSourceDataset(r.dataset) && opts.sources[r.dataset])) continue;
      if (!wanted.has(r.dataset)) wanted.set(r.dataset, new Map());
      const bySplit = wanted.get(r.dataset)!;
      if (!bySplit.has(r.split)) bySplit.set(r.split, new Map());
      const byIndex = bySplit.get(r.split)!;
      if (!byIndex.has(r.index)) byIndex.set(r.index, []);
      byIndex.get(r.index)!.push(id);
    }
    for (const dataset of [...wanted.keys()].sort()) {
      const ds = dataset as SourceDataset;
      const root = opts.sources[ds]!;
      for (const [split, byIndex] of [...wanted.get(dataset)!].sort()) {
        const files = SOURCE_SPLITS[ds].includes(split) ? splitFiles(root, split) : [];
        let index = 0;
        let left = byIndex.size;
        outer: for (const file of files)
          for await (const { line, value: r } of readRecords(file, {
            columns: SOURCE_COLUMNS[ds],
          })) {
            if (opts.signal?.aborted) throw new Error("aborted");
            const ids = byIndex.get(index++);
            if (!ids) continue;
            byIndex.delete(index - 1);
            const src = sourceRecord(ds, { file, line }, r);
            for (const id of ids) {
              const q = questions.get(id)!;
              if (!src) unresolve(q, id, `${file}: record ${line} has no question text`);
              else await emit(id, q, src);
            }
            if (--left === 0) break outer;
          }
        const why = !SOURCE_SPLITS[ds].includes(split)
          ? `${dataset} publishes no split ${JSON.stringify(split)}`
          : files.length === 0
            ? `no files of split ${JSON.stringify(split)} under ${root}`
            : `${dataset}/${split} has ${index} rows`;
        for (const [i, ids] of byIndex)
          for (const id of ids) unresolve(questions.get(id)!, id, `index ${i}: ${why}`);
      }
    }
    // Questions that carry their own text (OCR v1 split_0).
    for (const [id, q] of questions)
      if (!q.unresolved && !q.written && q.statement !== undefined) await emit(id, q, undefined);
    await problems.close();
  } catch (e) {
    await problems.abandon();
    await rm(genPart, { force: true });
    throw e;
  }

  // ---- pass 3: drop the generations of questions left out
  const left = new Set<string>();
  for (const [id, q] of questions) {
    if (!q.unresolved) continue;
    left.add(id);
    if (q.unresolved !== "no difficulty label" && q.unresolved !== "zero tests") {
      bump(res.unresolved_rows, q.ref?.dataset ?? "none", q.rows);
      bump(res.unresolved_questions, reason(q.unresolved));
    }
  }
  const final = join(outDir, "generations.jsonl");
  if (left.size === 0) {
    await rename(genPart, final);
    res.generations = gens.count;
    return res;
  }
  const out = await JsonlWriter.open(final);
  try {
    for await (const { value } of readJsonl<Generation>(genPart)) {
      if (left.has(value.problem_id)) continue;
      await out.write(value);
    }
    await out.close();
  } finally {
    await rm(genPart, { force: true });
  }
  res.generations = out.count;
  return res;
}

/** A short reason for metrics (the long one names files and rows). */
function reason(why: string): string {
  if (why.startsWith("no entry")) return "no source";
  if (why.includes("publishes no split")) return "unknown split";
  if (why.includes("no files of split")) return "split missing in source";
  if (why.includes("has no question text")) return "empty source row";
  return "index out of range";
}
