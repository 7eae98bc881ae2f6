/**
 * `valley compare A B [-f file] [--json] [--seed N]`: a paired comparison of two
 * evaluations over the problems both graded (grader/paired.ts has the
 * statistics). A and B are evaluate instances of the pipeline, or paths to
 * samples.jsonl files (or to folders holding one).
 *
 * Exit codes: 0 compared, 2 bad usage or input (an unknown instance, one not
 * run yet, a malformed samples line, no problem in common).
 */
import { existsSync, statSync } from "node:fs";
import { join, resolve } from "node:path";
import { compareDetail, pair, rates, type ComparisonDetail } from "../../grader/paired.js";
import { RecordError } from "../../grader/records.js";
import { readPassRecords } from "../../grader/samples.js";
import { UsageError } from "../errors.js";
import { openPipeline, parse } from "./common.js";
import { evaluationOutput } from "./records.js";

const USAGE = "valley compare A B [-f file] [--json] [--seed N]";

/** Where a side's samples come from, for messages and the text form. */
interface Side {
  label: string;
  file: string;
}

/** A path, if the argument names an existing file or folder (or looks like a .jsonl path). */
function asPath(arg: string): string | undefined {
  if (existsSync(arg)) {
    const abs = resolve(arg);
    return statSync(abs).isDirectory() ? join(abs, "samples.jsonl") : abs;
  }
  if (/\.jsonl$/.test(arg)) throw new UsageError(`no such file: ${arg}`);
  return undefined;
}

function fmt(x: number, signed = false): string {
  const s = x.toFixed(3);
  return signed && x >= 0 ? `+${s}` : s;
}

function fmtP(p: number): string {
  return p < 0.001 ? p.toExponential(1) : p.toFixed(3);
}

function text(a: Side, b: Side, d: ComparisonDetail): string {
  const r = d.result;
  const sf =
    d.signFlip.method === "none"
      ? "sign-flip: no problem differs"
      : `sign-flip ${d.signFlip.method === "sign-flip-exact" ? "exact" : `Monte-Carlo, ${d.signFlip.flips} flips`}: p ${fmtP(d.signFlip.p)}`;
  const rows: [string, string][] = [
    ["A", a.label],
    ["B", b.label],
    ["problems", `${r.n_problems} paired`],
    ["pass@1 A", fmt(r.pass_a)],
    ["pass@1 B", fmt(r.pass_b)],
    [
      "Δ (B − A)",
      `${fmt(r.delta, true)}  95% CI [${fmt(r.ci95[0], true)}, ${fmt(r.ci95[1], true)}]`,
    ],
    [
      "p-value",
      `${fmtP(r.p_value)}  (${r.method === "mcnemar-exact" ? `McNemar exact; ${sf}` : sf})`,
    ],
    ["A only", String(r.discordant.a_only)],
    ["B only", String(r.discordant.b_only)],
    ["both", String(r.both)],
    ["neither", String(r.neither)],
  ];
  const w = Math.max(...rows.map(([k]) => k.length));
  return rows.map(([k, v]) => `${k.padEnd(w)}  ${v}`).join("\n") + "\n";
}

export async function compareCommand(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    {
      json: { type: "boolean" },
      file: { type: "string", short: "f" },
      param: { type: "string", short: "p", multiple: true },
      seed: { type: "string" },
    },
    USAGE,
  );
  if (positionals.length !== 2) throw new UsageError(`expected two evaluations\nusage: ${USAGE}`);
  const seed = values.seed === undefined ? 0 : Number(values.seed);
  if (!Number.isInteger(seed) || seed < 0)
    throw new UsageError(`--seed must be a non-negative integer, got ${values.seed}`);

  // Paths first: opening a pipeline changes the working folder.
  const paths = positionals.map(asPath);
  let sides: Side[];
  if (paths.every((p) => p !== undefined)) {
    sides = paths.map((p) => ({ label: p!, file: p! }));
  } else {
    const { pl, engine } = await openPipeline(values.file, values.param, { readOnly: true });
    sides = positionals.map((arg, i) =>
      paths[i] !== undefined
        ? { label: paths[i]!, file: paths[i]! }
        : { label: arg, file: evaluationOutput(pl, engine, arg, "samples.jsonl") },
    );
  }

  let records;
  try {
    records = await Promise.all(sides.map((s) => readPassRecords(s.file)));
  } catch (e) {
    if (e instanceof RecordError) throw new UsageError(e.message);
    throw e;
  }
  const [a, b] = records.map(rates);
  const p = pair(a, b);
  if (p.ids.length === 0)
    throw new UsageError(
      `${sides[0].label} (${a.size} problems) and ${sides[1].label} (${b.size} problems) have no problem in common: nothing to pair`,
    );
  const d = compareDetail(p, { seed });
  if (values.json) process.stdout.write(JSON.stringify(d.result) + "\n");
  else {
    process.stdout.write(text(sides[0], sides[1], d));
    if (p.onlyInA || p.onlyInB)
      process.stdout.write(
        `(left out: ${p.onlyInA} problem(s) only A evaluated, ${p.onlyInB} only B)\n`,
      );
  }
  return 0;
}
