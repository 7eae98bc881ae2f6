/**
 * Reading problems and answers from JSONL, with errors that name the file and
 * line. Shared by `valley grade` and the verify stage.
 */
import { readFile } from "node:fs/promises";
import { problemMode } from "./grade.js";
import type { Semantics } from "./semantics.js";
import type { Problem } from "./types.js";

/** Bad input: the message names the file and line; the CLI exits 2. */
export class RecordError extends Error {
  override name = "RecordError";
}

/** Parses JSONL into objects; blank lines are skipped. */
export async function readJsonl(
  file: string,
): Promise<{ line: number; value: Record<string, unknown> }[]> {
  let text: string;
  try {
    text = await readFile(file, "utf8");
  } catch (e) {
    throw new RecordError(`cannot read ${file}: ${(e as Error).message}`);
  }
  const out: { line: number; value: Record<string, unknown> }[] = [];
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const l = lines[i].trim();
    if (l === "") continue;
    let v: unknown;
    try {
      v = JSON.parse(l);
    } catch (e) {
      throw new RecordError(`${file}:${i + 1}: invalid JSON (${(e as Error).message})`);
    }
    if (v === null || typeof v !== "object" || Array.isArray(v)) {
      throw new RecordError(`${file}:${i + 1}: expected a JSON object`);
    }
    out.push({ line: i + 1, value: v as Record<string, unknown> });
  }
  return out;
}

/** Loads problems.jsonl, checking what grading relies on (ids, tests, fn_name). */
export async function loadProblems(
  file: string,
  semanticsOf: (p: Problem) => Semantics = () => "strict",
): Promise<Map<string, Problem>> {
  const problems = new Map<string, Problem>();
  for (const { line, value } of await readJsonl(file)) {
    const where = `${file}:${line}`;
    if (typeof value.id !== "string" || value.id === "")
      throw new RecordError(`${where}: missing string "id"`);
    if (problems.has(value.id))
      throw new RecordError(`${where}: duplicate problem id ${JSON.stringify(value.id)}`);
    if (!Array.isArray(value.tests))
      throw new RecordError(`${where}: problem ${value.id} has no "tests" list`);
    value.tests.forEach((t: unknown, k: number) => {
      const r = t as Record<string, unknown> | null;
      if (!r || typeof r.input !== "string" || typeof r.output !== "string") {
        throw new RecordError(
          `${where}: test ${k} of ${value.id} needs string "input" and "output"`,
        );
      }
      if (r.type !== "stdin" && r.type !== "functional") {
        throw new RecordError(
          `${where}: test ${k} of ${value.id} has type ${JSON.stringify(r.type)}, expected "stdin" or "functional"`,
        );
      }
    });
    for (const f of ["time_limit_s", "memory_limit_mb", "float_tolerance"] as const) {
      if (value[f] !== undefined && (typeof value[f] !== "number" || !((value[f] as number) > 0))) {
        throw new RecordError(`${where}: ${f} must be a positive number`);
      }
    }
    const p = value as unknown as Problem;
    try {
      problemMode(p, semanticsOf(p));
    } catch (e) {
      throw new RecordError(`${where}: ${(e as Error).message}`);
    }
    problems.set(p.id, p);
  }
  return problems;
}

export interface Answer {
  id: string;
  sample: number;
  text: string;
  /** Where it came from, for messages. */
  where: string;
}

/** Loads answers.jsonl ({id, sample, text}); `sample` defaults to the answer's rank among its problem's. */
export async function loadAnswers(file: string, problems: Map<string, Problem>): Promise<Answer[]> {
  const seen = new Map<string, number>();
  const out: Answer[] = [];
  for (const { line, value } of await readJsonl(file)) {
    const where = `${file}:${line}`;
    if (typeof value.id !== "string" || value.id === "")
      throw new RecordError(`${where}: missing string "id"`);
    if (!problems.has(value.id))
      throw new RecordError(`${where}: answer for unknown problem ${JSON.stringify(value.id)}`);
    if (typeof value.text !== "string") throw new RecordError(`${where}: missing string "text"`);
    const rank = seen.get(value.id) ?? 0;
    seen.set(value.id, rank + 1);
    let sample = rank;
    if (value.sample !== undefined) {
      if (typeof value.sample !== "number" || !Number.isInteger(value.sample) || value.sample < 0) {
        throw new RecordError(`${where}: "sample" must be a non-negative integer`);
      }
      sample = value.sample;
    }
    out.push({ id: value.id, sample, text: value.text, where });
  }
  return out;
}
