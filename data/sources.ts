/**
 * The source datasets OpenCodeReasoning (split_1) and OpenCodeReasoning-2 take
 * their questions from. Their rows carry question "-" and point at the source
 * by (dataset, split, index): index is the row's position in that split, read
 * in shard order, as `load_dataset(name)[split][index]` sees it (the OCR2
 * card's own loading code). Each source is a local copy in its published
 * layout:
 *   taco                BAAI/TACO              ALL/train-*.parquet, ALL/test-*.parquet
 *   apps                codeparrot/apps        train.jsonl, test.jsonl
 *   code_contests       deepmind/code_contests data/{train,valid,test}-*.parquet
 *   open-r1/codeforces  open-r1/codeforces     data/{train,test}-*.parquet
 * (plus the flat forms <split>.jsonl, <split>-*.parquet, <split>/*.parquet).
 */
import { existsSync, readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { BadStageInput } from "../engine/stage-api.js";
import {
  ccTests,
  ioTests,
  jsonField,
  parseMb,
  parseSeconds,
  str,
  type Where,
} from "./importers.js";
import type { TestCase } from "./problem.js";

/** The names OCR/OCR2 rows use in their `dataset` column. */
export const SOURCE_DATASETS = ["taco", "apps", "code_contests", "open-r1/codeforces"] as const;
export type SourceDataset = (typeof SOURCE_DATASETS)[number];

/** The splits each source publishes (OCR/OCR2 refer to no others). */
export const SOURCE_SPLITS: Record<SourceDataset, readonly string[]> = {
  taco: ["train", "test"],
  apps: ["train", "test"],
  code_contests: ["train", "valid", "test"],
  "open-r1/codeforces": ["train", "test"],
};

export function isSourceDataset(name: string): name is SourceDataset {
  return (SOURCE_DATASETS as readonly string[]).includes(name);
}

/** Columns each layout needs: Parquet decodes only these (solutions are large and unused). */
export const SOURCE_COLUMNS: Record<SourceDataset, readonly string[]> = {
  taco: ["question", "name", "input_output", "starter_code", "difficulty", "time_limit", "memory_limit"],
  apps: ["question", "input_output", "starter_code", "difficulty"],
  code_contests: [
    "name",
    "description",
    "public_tests",
    "private_tests",
    "generated_tests",
    "difficulty",
    "cf_rating",
    "time_limit",
    "memory_limit_bytes",
  ],
  "open-r1/codeforces": [
    "title",
    "description",
    "input_format",
    "output_format",
    "examples",
    "note",
    "official_tests",
    "rating",
    "time_limit",
    "memory_limit",
  ],
}; // prettier-ignore

const DATA = /\.(parquet|jsonl)$/i;

function dataFilesIn(dir: string, match: (name: string) => boolean): string[] {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) return [];
  return readdirSync(dir)
    .filter((n) => !n.startsWith(".") && DATA.test(n) && match(n))
    .sort()
    .map((n) => join(dir, n));
}

/**
 * The files of one split of a source, in shard order, by the first layout
 * that matches; [] if none does. Arrow files (`save_to_disk`) are refused
 * with the way out: every one of these datasets also publishes Parquet.
 */
export function splitFiles(root: string, split: string): string[] {
  const shard = (n: string) => n.startsWith(`${split}-`) || n.startsWith(`${split}.`);
  for (const [dir, match] of [
    [root, shard],
    [join(root, "data"), shard],
    [join(root, "ALL"), shard],
    [join(root, split), () => true],
  ] as const) {
    const files = dataFilesIn(dir, match);
    if (files.length) return files;
  }
  const arrow = join(root, split);
  if (existsSync(arrow) && statSync(arrow).isDirectory())
    if (readdirSync(arrow).some((n) => n.endsWith(".arrow")))
      throw new BadStageInput(
        `${arrow}: Arrow files (datasets' save_to_disk) are not read; use the dataset's Parquet files (for BAAI/TACO: ALL/${split}-*.parquet)`,
      );
  return [];
}

/** Every file the stage may read from a source: the files of its published splits. */
export function sourceFiles(root: string, dataset: SourceDataset): string[] {
  const out: string[] = [];
  for (const split of SOURCE_SPLITS[dataset]) {
    try {
      out.push(...splitFiles(root, split));
    } catch {
      // an Arrow-only split: the stage reports it when it runs
    }
  }
  return out;
}

/** What a source row gives an OCR question: its text, tests and labels. */
export interface SourceRecord {
  statement: string;
  title: string;
  starter_code: string;
  tests: TestCase[];
  fn_name?: string;
  /** The source's own difficulty label (TACO's MEDIUM_HARD, APPS' interview, a rating). */
  difficulty_raw: string;
  time_limit_s?: number;
  memory_limit_mb?: number;
}

const finite = (n: number | undefined) => (n !== undefined && Number.isFinite(n) ? n : undefined);

/**
 * open-r1/codeforces: the question as the OCR2 card's loading code builds it
 * (description, then Input/Output formats, Examples and Note sections).
 */
function codeforcesQuestion(r: Record<string, unknown>): string {
  let q = str(r.description);
  if (!q) return "";
  if (r.input_format) q += "\n\nInput\n\n" + str(r.input_format);
  if (r.output_format) q += "\n\nOutput\n\n" + str(r.output_format);
  const examples = Array.isArray(r.examples) ? (r.examples as Record<string, unknown>[]) : [];
  if (examples.length) {
    q += "\n\nExamples";
    for (const e of examples) {
      if (e && "input" in e) q += "\n\nInput\n\n" + str(e.input);
      if (e && "output" in e) q += "\n\nOutput\n\n" + str(e.output);
    }
  }
  if (r.note) q += "\n\nNote\n\n" + str(r.note);
  return q;
}

/** One source row as an OCR question; null when the row has no question text. */
export function sourceRecord(
  dataset: SourceDataset,
  w: Where,
  r: Record<string, unknown>,
): SourceRecord | null {
  if (dataset === "taco" || dataset === "apps") {
    if (!str(r.question)) return null;
    const io = ioTests(w, jsonField(w, "input_output", r.input_output));
    return {
      statement: str(r.question),
      title: str(r.name),
      starter_code: str(r.starter_code),
      tests: io.tests,
      fn_name: io.fn_name,
      difficulty_raw: str(r.difficulty),
      time_limit_s: finite(r.time_limit ? parseSeconds(r.time_limit) : undefined),
      memory_limit_mb: finite(r.memory_limit ? parseMb(r.memory_limit) : undefined),
    };
  }
  if (dataset === "code_contests") {
    if (!str(r.description)) return null;
    const tl = r.time_limit as { seconds?: number; nanos?: number } | null | undefined;
    const bytes = typeof r.memory_limit_bytes === "number" ? r.memory_limit_bytes : undefined;
    return {
      statement: str(r.description),
      title: str(r.name),
      starter_code: "",
      tests: ccTests(r),
      // The rating when Codeforces gave one (finer than the 1–5 / letter enum).
      difficulty_raw:
        typeof r.cf_rating === "number" && r.cf_rating > 0
          ? String(r.cf_rating)
          : str(r.difficulty),
      time_limit_s: tl ? finite((tl.seconds ?? 0) + (tl.nanos ?? 0) / 1e9) || undefined : undefined,
      memory_limit_mb: bytes ? bytes / (1 << 20) : undefined,
    };
  }
  const question = codeforcesQuestion(r);
  if (!question) return null;
  const official = Array.isArray(r.official_tests) ? (r.official_tests as unknown[]) : [];
  const tests = (official.length ? official : Array.isArray(r.examples) ? r.examples : []).map(
    (t): TestCase => {
      const o = (t ?? {}) as Record<string, unknown>;
      return { input: str(o.input), output: str(o.output), type: "stdin" };
    },
  );
  return {
    statement: question,
    title: str(r.title),
    starter_code: "",
    tests,
    difficulty_raw: r.rating === null || r.rating === undefined ? "" : str(r.rating),
    time_limit_s: typeof r.time_limit === "number" ? r.time_limit : undefined,
    memory_limit_mb: typeof r.memory_limit === "number" ? r.memory_limit : undefined,
  };
}
