/**
 * Small data in the real datasets' published shapes, for running
 * pipelines/valley.yaml end to end (test/valley-e2e.test.ts). Column names and
 * types as the dataset cards list them:
 *  - OpenCodeReasoning-2 (train/python/train-*.parquet): every column a
 *    string, question "-" in every row, index and difficulty strings, several
 *    generations (r1_generation) per question_id;
 *  - BAAI/TACO (ALL/train-*.parquet): every column a string, input_output a
 *    JSON string {inputs, outputs}, labels EASY … VERY_HARD;
 *  - codeparrot/apps (train.jsonl): problem_id an integer, input_output and
 *    solutions JSON strings, labels introductory/interview/competition;
 *  - deepmind/code_contests and open-r1/codeforces (data/train-*): their
 *    nested fields (public_tests {input: [], output: []}, time_limit
 *    {seconds, nanos}; examples/official_tests [{input, output}], rating) as
 *    JSON lines, the shape the datasets library writes them in;
 *  - LiveCodeBench code_generation_lite release files (test.jsonl, test2.jsonl),
 *    the rows of test/fixtures/data/lcb.jsonl (pickled private tests included).
 * Each question is "print a + b + k" with stdin tests, so a generation's code
 * really passes or fails them.
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parquetWriteFile } from "hyparquet-writer";
import { projectRoot } from "../../data/root.js";

const TACO_LABELS = ["EASY", "MEDIUM", "MEDIUM_HARD", "HARD", "VERY_HARD"];
const APPS_LABELS = ["introductory", "interview", "competition"];

function parquet(file: string, rows: Record<string, string | null>[]): void {
  const names = Object.keys(rows[0]);
  parquetWriteFile({
    filename: file,
    columnData: names.map((name) => ({
      name,
      data: rows.map((r) => r[name]),
      type: "STRING" as const,
      nullable: true,
    })),
    rowGroupSize: 16,
  });
}

const jsonl = (file: string, rows: unknown[]) =>
  writeFileSync(file, rows.map((r) => JSON.stringify(r)).join("\n") + "\n");

const code = (k: number) => `a, b = map(int, input().split())\nprint(a + b + ${k})`;
const generation = (k: number, right: boolean, pad = 0) =>
  `<think>\nAdd the two numbers${pad ? " " + "and think ".repeat(pad) : ""} then ${k}.\n</think>\n\n` +
  "```python\n" +
  code(right ? k : k + 1) +
  "\n```";
const tests = (k: number) => ({
  inputs: ["1 2\n", "5 7\n"],
  outputs: [`${3 + k}\n`, `${12 + k}\n`],
});

export interface Fixture {
  ocr2: string;
  taco: string;
  apps: string;
  code_contests: string;
  codeforces: string;
  lcb: string;
  /** OCR2 questions per dataset, and rows left unresolved per dataset. */
  questions: Record<string, number>;
  unresolvedRows: Record<string, number>;
}

export function writeValleyFixture(dir: string): Fixture {
  const d = (...p: string[]) => {
    const f = join(dir, ...p);
    mkdirSync(f, { recursive: true });
    return f;
  };
  // ---- sources
  const TACO = 20;
  parquet(
    join(d("taco", "ALL"), "train-00000-of-00001.parquet"),
    Array.from({ length: TACO }, (_, i) => ({
      question: `Read a and b. Print a + b + ${i}.`,
      solutions: JSON.stringify([code(i)]),
      starter_code: "",
      input_output: JSON.stringify(tests(i)),
      difficulty: TACO_LABELS[i % 5],
      raw_tags: "['math']",
      name: `taco-${i}`,
      source: "codeforces",
      tags: "['Mathematics']",
      skill_types: "[]",
      url: `https://example.org/taco/${i}`,
      "Expected Auxiliary Space": null,
      time_limit: "1 seconds",
      date: "2021-01-01",
      picture_num: "0",
      memory_limit: "256 megabytes",
      "Expected Time Complexity": null,
    })),
  );
  const APPS = 10;
  jsonl(
    join(d("apps"), "train.jsonl"),
    Array.from({ length: APPS }, (_, i) => ({
      problem_id: i,
      question: `Read a and b. Print a + b + ${100 + i}.`,
      solutions: JSON.stringify([code(100 + i)]),
      input_output: JSON.stringify(tests(100 + i)),
      difficulty: APPS_LABELS[i % 3],
      url: `https://example.org/apps/${i}`,
      starter_code: "",
    })),
  );
  const CC = 6;
  jsonl(
    join(d("code_contests", "data"), "train-00000-of-00001.jsonl"),
    Array.from({ length: CC }, (_, i) => {
      const t = tests(200 + i);
      return {
        name: `cc-${i}`,
        description: `Read a and b. Print a + b + ${200 + i}.`,
        public_tests: { input: t.inputs.slice(0, 1), output: t.outputs.slice(0, 1) },
        private_tests: { input: t.inputs.slice(1), output: t.outputs.slice(1) },
        generated_tests: { input: [], output: [] },
        source: 2,
        difficulty: 7 + i,
        solutions: { language: [3], solution: [code(200 + i)] },
        incorrect_solutions: { language: [], solution: [] },
        cf_contest_id: 1000 + i,
        cf_index: "A",
        cf_points: 500.0,
        cf_rating: i % 2 ? 800 + 400 * i : 0,
        cf_tags: ["math"],
        is_description_translated: false,
        untranslated_description: "",
        time_limit: { seconds: 2, nanos: 0 },
        memory_limit_bytes: 256000000,
        input_file: "",
        output_file: "",
      };
    }),
  );
  const CF = 6;
  jsonl(
    join(d("codeforces", "data"), "train-00000-of-00001.jsonl"),
    Array.from({ length: CF }, (_, i) => {
      const t = tests(300 + i);
      return {
        id: `${1500 + i}/A`,
        aliases: null,
        contest_id: String(1500 + i),
        contest_name: "Round",
        contest_type: "CF",
        contest_start: 1600000000,
        contest_start_year: 2020,
        index: "A",
        time_limit: 1.0,
        memory_limit: 256.0,
        title: `cf-${i}`,
        description: `Read a and b. Print a + b + ${300 + i}.`,
        input_format: "Two integers a and b.",
        output_format: "One integer.",
        interaction_format: null,
        note: i % 2 ? "Easy." : null,
        examples: [{ input: t.inputs[0], output: t.outputs[0] }],
        editorial: null,
        rating: 800 + 300 * i,
        tags: ["math"],
        testset_size: 2,
        official_tests: t.inputs.map((input, k) => ({ input, output: t.outputs[k] })),
        official_tests_complete: true,
        input_mode: "stdio",
        generated_checker: null,
        executable: true,
        generated_tests: 0,
      };
    }),
  );

  // ---- OCR2: several generations per question, every question "-"
  const rows: Record<string, string>[] = [];
  const questions: Record<string, number> = {};
  const add = (dataset: string, index: number, k: number, difficulty: string, gens: string[]) => {
    questions[dataset] = (questions[dataset] ?? 0) + 1;
    gens.forEach((g, s) =>
      rows.push({
        question: "-",
        r1_generation: g,
        qwq_critique: "The solution reads both numbers and adds them.",
        solution: g.split("```python\n")[1]?.split("\n```")[0] ?? "",
        judgement: g.includes(`+ ${k})`) ? "right" : "wrong",
        pass_rate: g.includes(`+ ${k})`) ? "1.0" : "0.0",
        source: dataset === "taco" ? "codeforces" : dataset === "apps" ? "codewars" : "codeforces",
        license: "cc-by-4.0",
        dataset,
        split: "train",
        difficulty,
        index: String(index),
        id: `${dataset}-${index}-${s}`,
        question_id: `qid-${dataset}-${index}`,
      }),
    );
  };
  // TACO: one right and one wrong generation each (stage 2); every fifth
  // question's first generation is too long for the students (max_len).
  for (let i = 0; i < TACO; i++)
    add("taco", i, i, TACO_LABELS[i % 5], [
      generation(i, true, i % 5 === 0 ? 80 : 0),
      generation(i, false),
    ]);
  for (let i = 0; i < APPS; i++)
    add("apps", i, 100 + i, APPS_LABELS[i % 3], [
      generation(100 + i, true),
      generation(100 + i, false),
    ]);
  for (let i = 0; i < CC; i++)
    add("code_contests", i, 200 + i, String(7 + i), [generation(200 + i, true)]);
  for (let i = 0; i < CF; i++)
    add("open-r1/codeforces", i, 300 + i, String(800 + 300 * i), [
      generation(300 + i, true),
      generation(300 + i, true),
    ]);
  // Rows pointing past TACO's end: unresolved, counted, skipped.
  for (const s of [0, 1])
    rows.push({ ...rows[0], index: "999", id: `taco-999-${s}`, question_id: "qid-taco-999" });
  // Two shards, interleaved as a download's rows would be.
  const ocr2 = d("ocr2", "train", "python");
  const mid = Math.floor(rows.length / 2);
  parquet(join(ocr2, "train-00000-of-00002.parquet"), rows.slice(0, mid));
  parquet(join(ocr2, "train-00001-of-00002.parquet"), rows.slice(mid));

  // ---- LiveCodeBench release files
  const lcbRows = readFileSync(join(projectRoot(), "test/fixtures/data/lcb.jsonl"), "utf8")
    .trim()
    .split("\n");
  const lcb = d("lcb");
  writeFileSync(join(lcb, "test.jsonl"), lcbRows.slice(0, 2).join("\n") + "\n");
  writeFileSync(join(lcb, "test2.jsonl"), lcbRows.slice(2).join("\n") + "\n");

  return {
    ocr2: join(dir, "ocr2"),
    taco: join(dir, "taco"),
    apps: join(dir, "apps"),
    code_contests: join(dir, "code_contests"),
    codeforces: join(dir, "codeforces"),
    lcb,
    questions,
    unresolvedRows: { taco: 2 },
  };
}
