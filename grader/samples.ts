/**
 * Reading an evaluation's samples.jsonl for paired comparisons: every line must
 * carry `problem_id` (string), `sample` (integer) and `passed` (boolean), once
 * per (problem, sample). The first bad line is an error naming file and line.
 */
import { createReadStream } from "node:fs";
import { access } from "node:fs/promises";
import { createInterface } from "node:readline";
import { RecordError } from "./records.js";
import type { PassRecord } from "./paired.js";

/**
 * Streams the file line by line: samples.jsonl holds every answer's text
 * (16 samples × 1,000 problems × 32K tokens is gigabytes), far more than one
 * string may hold; only the three fields are kept.
 */
export async function readPassRecords(file: string): Promise<PassRecord[]> {
  try {
    await access(file);
  } catch (e) {
    throw new RecordError(`cannot read ${file}: ${(e as Error).message}`);
  }
  const out: PassRecord[] = [];
  const seen = new Set<string>();
  const rl = createInterface({ input: createReadStream(file, "utf8"), crlfDelay: Infinity });
  let i = -1;
  for await (const line of rl) {
    i++;
    if (line.trim() === "") continue;
    const where = `${file}:${i + 1}`;
    let v: unknown;
    try {
      v = JSON.parse(line);
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
