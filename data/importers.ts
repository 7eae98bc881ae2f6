/**
 * Importers: each turns one dataset's records into normalised Problems. They
 * validate as they go and throw BadStageInput naming the file, the record number
 * and what is wrong, so a user can fix the input.
 */
import { inflateSync } from "node:zlib";
import { BadStageInput } from "../engine/stage-api.js";
import { unpickleString, PickleError } from "./pickle.js";
import {
  isUnknownLabel,
  normaliseDifficulty,
  problemIssues,
  type Difficulty,
  type Problem,
  type TestCase,
} from "./problem.js";

export type UnknownPolicy = "skip" | "error" | Difficulty;

export interface ImportOptions {
  /** What to do with records whose label means "no label" (TACO's UNKNOWN_DIFFICULTY, "-"). */
  unknownDifficulty: UnknownPolicy;
  requireTests: boolean;
  /** Overrides the `source` of every record. */
  source?: string;
  /** Generic importers: normalised field → record field (dotted path). */
  fields?: Record<string, string>;
}

/** A record as read, with where it came from. */
export interface Where {
  file: string;
  line: number;
}

/** Counted reasons for records left out (unknown difficulty, …). */
export type Skips = Map<string, number>;

export const at = (w: Where) => `${w.file}: record ${w.line}`;

export function fail(w: Where, msg: string): never {
  throw new BadStageInput(`${at(w)}: ${msg}`);
}

export function str(v: unknown): string {
  if (v === null || v === undefined) return "";
  return typeof v === "string" ? v : JSON.stringify(v);
}

/** JSON given either as a string or already parsed (Parquet/JSONL differ). */
export function jsonField(w: Where, name: string, v: unknown): unknown {
  if (typeof v !== "string") return v;
  if (v.trim() === "") return undefined;
  try {
    return JSON.parse(v);
  } catch (e) {
    fail(w, `field "${name}" is not valid JSON (${(e as Error).message})`);
  }
}

export function difficultyOf(
  w: Where,
  raw: unknown,
  opts: ImportOptions,
  skips: Skips,
): Difficulty | null {
  const d = normaliseDifficulty(raw);
  if (d) return d;
  if (isUnknownLabel(raw)) {
    if (opts.unknownDifficulty === "skip") {
      skips.set("unknown difficulty", (skips.get("unknown difficulty") ?? 0) + 1);
      return null;
    }
    if (opts.unknownDifficulty === "error")
      fail(
        w,
        `has no difficulty label (${JSON.stringify(raw)}); set unknownDifficulty to skip or to a level`,
      );
    return opts.unknownDifficulty;
  }
  fail(
    w,
    `unknown difficulty label ${JSON.stringify(raw)} (expected easy/medium/hard, a TACO label EASY…VERY_HARD, a CodeContests level 1–5 or a Codeforces rating)`,
  );
}

export function finish(w: Where, p: Problem, opts: ImportOptions): Problem {
  if (opts.source) p.source = opts.source;
  const issues = problemIssues(p, opts.requireTests);
  if (issues.length) fail(w, issues.join("; "));
  return p;
}

function requireFields(w: Where, r: Record<string, unknown>, names: string[]) {
  const missing = names.filter((n) => r[n] === undefined || r[n] === null);
  if (missing.length)
    fail(
      w,
      `missing field${missing.length > 1 ? "s" : ""} ${missing.map((m) => `"${m}"`).join(", ")}`,
    );
}

// ---------------------------------------------------------------- LiveCodeBench

/** Private tests: plain JSON, or base64 → zlib → pickle(str) → JSON. */
export function decodeLcbTests(w: Where, field: string, v: unknown): unknown[] {
  if (Array.isArray(v)) return v;
  if (typeof v !== "string") fail(w, `field "${field}" must be a JSON string or list`);
  const s = v.trim();
  if (s === "") return [];
  if (s.startsWith("[")) return jsonField(w, field, s) as unknown[];
  let text: string;
  try {
    const raw = inflateSync(Buffer.from(s, "base64"));
    text = unpickleString(raw);
  } catch (e) {
    if (e instanceof PickleError) fail(w, `field "${field}": ${e.message}`);
    fail(w, `field "${field}" is neither JSON nor base64/zlib/pickle (${(e as Error).message})`);
  }
  const parsed = jsonField(w, field, text);
  if (!Array.isArray(parsed)) fail(w, `field "${field}" does not decode to a list of tests`);
  return parsed;
}

function lcbTests(w: Where, field: string, list: unknown[]): TestCase[] {
  return list.map((t, i) => {
    const o = t as Record<string, unknown>;
    if (!o || typeof o.input !== "string" || typeof o.output !== "string")
      fail(w, `${field}[${i}] needs string "input" and "output"`);
    const type = o.testtype ?? o.type ?? "stdin";
    if (type !== "stdin" && type !== "functional")
      fail(w, `${field}[${i}] has unknown testtype ${JSON.stringify(type)}`);
    return { input: o.input, output: o.output, type };
  });
}

export function lcbProblem(
  w: Where,
  r: Record<string, unknown>,
  opts: ImportOptions,
  skips: Skips,
): Problem | null {
  requireFields(w, r, ["question_id", "question_content", "difficulty", "public_test_cases"]);
  const difficulty = difficultyOf(w, r.difficulty, opts, skips);
  if (!difficulty) return null;
  const pub = lcbTests(
    w,
    "public_test_cases",
    decodeLcbTests(w, "public_test_cases", r.public_test_cases),
  );
  const priv =
    r.private_test_cases === undefined || r.private_test_cases === null
      ? []
      : lcbTests(
          w,
          "private_test_cases",
          decodeLcbTests(w, "private_test_cases", r.private_test_cases),
        );
  const meta = (jsonField(w, "metadata", r.metadata ?? "{}") ?? {}) as Record<string, unknown>;
  const p: Problem = {
    id: String(r.question_id),
    source: "lcb",
    title: str(r.question_title),
    statement: str(r.question_content),
    starter_code: str(r.starter_code),
    tests: [...pub, ...priv],
    difficulty,
    difficulty_raw: str(r.difficulty),
    extra: { platform: r.platform, contest_id: r.contest_id, public_tests: pub.length },
  };
  if (typeof meta.func_name === "string") p.fn_name = meta.func_name;
  if (r.contest_date) p.date = str(r.contest_date);
  return finish(w, p, opts);
}

// ---------------------------------------------------------------- TACO / APPS

export function parseSeconds(v: unknown): number | undefined {
  if (typeof v === "number") return v;
  const m = /([\d.]+)\s*(ms|milli|s|sec)?/i.exec(str(v));
  if (!m) return undefined;
  const n = Number(m[1]);
  return /^m/i.test(m[2] ?? "") ? n / 1000 : n;
}

export function parseMb(v: unknown): number | undefined {
  if (typeof v === "number") return v;
  const m = /([\d.]+)\s*(k|m|g)?/i.exec(str(v));
  if (!m) return undefined;
  const n = Number(m[1]);
  const u = (m[2] ?? "m").toLowerCase();
  return u === "k" ? n / 1024 : u === "g" ? n * 1024 : n;
}

/** TACO/APPS `input_output` = {inputs, outputs, fn_name?}. */
export function ioTests(w: Where, io: unknown): { tests: TestCase[]; fn_name?: string } {
  if (io === undefined || io === null) return { tests: [] };
  const o = io as Record<string, unknown>;
  if (!Array.isArray(o.inputs) || !Array.isArray(o.outputs))
    fail(w, `"input_output" needs lists "inputs" and "outputs"`);
  if (o.inputs.length !== o.outputs.length)
    fail(w, `"input_output" has ${o.inputs.length} inputs but ${o.outputs.length} outputs`);
  const fn = typeof o.fn_name === "string" && o.fn_name ? o.fn_name : undefined;
  const lines = (v: unknown) => (Array.isArray(v) ? v.map(str).join("\n") : str(v));
  const tests = (o.inputs as unknown[]).map((inp, i): TestCase => {
    const out = (o.outputs as unknown[])[i];
    if (!fn) return { input: lines(inp), output: lines(out), type: "stdin" };
    // Functional: one JSON argument per line (LCB convention). APPS wraps the
    // expected value in a one-element list; unwrap it.
    const args = Array.isArray(inp) ? inp : [inp];
    const expected = Array.isArray(out) && out.length === 1 ? out[0] : out;
    return {
      input: args.map((a) => JSON.stringify(a)).join("\n"),
      output: JSON.stringify(expected),
      type: "functional",
    };
  });
  return { tests, fn_name: fn };
}

/** CodeContests: {public,private,generated}_tests = {input: [], output: []}. */
export function ccTests(r: Record<string, unknown>): TestCase[] {
  const tests: TestCase[] = [];
  for (const k of ["public_tests", "private_tests", "generated_tests"]) {
    const t = r[k] as { input?: unknown[]; output?: unknown[] } | undefined;
    if (!t?.input || !t.output) continue;
    t.input.forEach((inp, i) =>
      tests.push({ input: str(inp), output: str(t.output?.[i]), type: "stdin" }),
    );
  }
  return tests;
}

export function tacoProblem(
  w: Where,
  r: Record<string, unknown>,
  index: number,
  opts: ImportOptions,
  skips: Skips,
): Problem | null {
  requireFields(w, r, ["question", "input_output", "difficulty"]);
  const difficulty = difficultyOf(w, r.difficulty, opts, skips);
  if (!difficulty) return null;
  const { tests, fn_name } = ioTests(w, jsonField(w, "input_output", r.input_output));
  const p: Problem = {
    id: r.id !== undefined ? String(r.id) : `taco/${index}`,
    source: "taco",
    title: str(r.name),
    statement: str(r.question),
    starter_code: str(r.starter_code),
    tests,
    difficulty,
    difficulty_raw: str(r.difficulty),
  };
  if (fn_name) p.fn_name = fn_name;
  const tl = parseSeconds(r.time_limit);
  const ml = parseMb(r.memory_limit);
  if (tl !== undefined && Number.isFinite(tl)) p.time_limit_s = tl;
  if (ml !== undefined && Number.isFinite(ml)) p.memory_limit_mb = ml;
  if (r.date) p.date = str(r.date);
  const extra: Record<string, unknown> = {};
  for (const k of ["source", "tags", "skill_types", "url"]) if (r[k] !== undefined) extra[k] = r[k];
  if (Object.keys(extra).length) p.extra = extra;
  return finish(w, p, opts);
}

// ---------------------------------------------------------------- generic

function getPath(r: Record<string, unknown>, path: string): unknown {
  let v: unknown = r;
  for (const k of path.split(".")) {
    if (v === null || typeof v !== "object") return undefined;
    v = (v as Record<string, unknown>)[k];
  }
  return v;
}

const GENERIC_FIELDS = [
  "id",
  "source",
  "title",
  "statement",
  "starter_code",
  "tests",
  "fn_name",
  "difficulty",
  "time_limit_s",
  "memory_limit_mb",
  "date",
  "family",
  "split",
  "reference_solution",
  "reference_trace",
];

/**
 * Generic JSONL/Parquet: `fields` maps a normalised field to the record's
 * field (dotted paths allowed); unmapped fields are read under their own name.
 * Tests may be a list of {input, output, type?} or TACO's {inputs, outputs}.
 */
export function genericProblem(
  w: Where,
  r: Record<string, unknown>,
  index: number,
  opts: ImportOptions,
  skips: Skips,
  defaultSource: string,
): Problem | null {
  const f = opts.fields ?? {};
  const get = (k: string) => getPath(r, f[k] ?? k);
  const need = ["statement", "tests", "difficulty"].filter(
    (k) => get(k) === undefined || get(k) === null,
  );
  if (need.length)
    fail(
      w,
      `missing field${need.length > 1 ? "s" : ""} ${need.map((k) => `"${f[k] ?? k}"`).join(", ")} (mapped from ${need.join(", ")})`,
    );
  const difficulty = difficultyOf(w, get("difficulty"), opts, skips);
  if (!difficulty) return null;
  const rawTests = jsonField(w, f.tests ?? "tests", get("tests"));
  let tests: TestCase[];
  let fn_name = get("fn_name") as string | undefined;
  if (Array.isArray(rawTests)) {
    tests = rawTests.map((t, i) => {
      const o = t as Record<string, unknown>;
      if (!o || o.input === undefined || o.output === undefined)
        fail(w, `tests[${i}] needs "input" and "output"`);
      const type = o.type ?? o.testtype ?? "stdin";
      if (type !== "stdin" && type !== "functional")
        fail(w, `tests[${i}] has unknown type ${JSON.stringify(type)}`);
      return { input: str(o.input), output: str(o.output), type };
    });
  } else {
    const io = ioTests(w, rawTests);
    tests = io.tests;
    fn_name ??= io.fn_name;
  }
  const p: Problem = {
    id: get("id") !== undefined ? String(get("id")) : `${defaultSource}/${index}`,
    source: str(get("source")) || defaultSource,
    title: str(get("title")),
    statement: str(get("statement")),
    starter_code: str(get("starter_code")),
    tests,
    difficulty,
    difficulty_raw: str(get("difficulty")),
  };
  if (fn_name) p.fn_name = String(fn_name);
  for (const k of GENERIC_FIELDS.slice(8)) {
    const v = get(k);
    if (v !== undefined && v !== null && v !== "") (p as unknown as Record<string, unknown>)[k] = v;
  }
  if (typeof p.time_limit_s === "string") p.time_limit_s = parseSeconds(p.time_limit_s);
  if (typeof p.memory_limit_mb === "string") p.memory_limit_mb = parseMb(p.memory_limit_mb);
  const extra = get("extra");
  if (extra && typeof extra === "object") p.extra = extra as Record<string, unknown>;
  return finish(w, p, opts);
}
