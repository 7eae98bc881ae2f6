/**
 * Reading an evaluation's samples.jsonl for paired comparisons: every line must
 * carry `problem_id` (string), `sample` (integer) and `passed` (boolean), once
 * per (problem, sample). The first bad line is an error naming file and line.
 */
import { readFileSync } from "node:fs";
import { RecordError } from "./records.js";
import type { PassRecord } from "./paired.js";

export function readPassRecords(file: string): PassRecord[] {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch (e) {
    throw new RecordError(`cannot read ${file}: ${(e as Error).message}`);
  }
  const out: PassRecord[] = [];
  const seen = new Set<string>();
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    if (lines[i].trim() === "") continue;
    const where = `${file}:${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(lines[i]);
    } catch (e) {
      throw new RecordError(`${where}: not valid JSON (${(e as Error).message})`);
    }
    const r = v as Record<string, unknown> | null;
    if (r === null || typeof r !== "object" || Array.isArray(r))
      throw new RecordError(`${where}: expected a JSON object`);
    if (typeof r.problem_id !== "string" || r.problem_id === "")
      throw new RecordError(`${where}: missing string "problem_id"`);
    if (typeof r.sample !== "number" || !Number.isInteger(r.sample) || r.sample < 0)
      throw new RecordError(`${where}: "sample" must be a non-negative integer`);
    if (typeof r.passed !== "boolean")
      throw new RecordError(`${where}: "passed" must be true or false`);
    const k = JSON.stringify([r.problem_id, r.sample]);
    if (seen.has(k))
      throw new RecordError(`${where}: sample ${r.sample} of ${r.problem_id} appears twice`);
    seen.add(k);
    out.push({ problem_id: r.problem_id, sample: r.sample, passed: r.passed });
  }
  return out;
}
