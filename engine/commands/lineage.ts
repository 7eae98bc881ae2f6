/**
 * `valley lineage <instance> [problem-id] [--sample k] [-f file] [--json]`:
 * from one answer back to the teacher's prompt, and
 * `valley lineage <finetune instance> --rows [--json]`: a fine-tune's training
 * rows with their problem ids, trace ids and teacher request keys.
 *
 * Everything is read from recorded results (action records and output trees,
 * through records.ts) and, for request keys, looked up in the per-request
 * cache: nothing is recomputed, nothing is sent. The walk follows each
 * instance's declared inputs upstream, so it works for any pipeline shape
 * (quantized ← merged ← tune, or an evaluation of base + adapter).
 */
import { createReadStream, existsSync, readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { join } from "node:path";
import { UsageError, nearest } from "../errors.js";
import type { Engine } from "../engine.js";
import type { Pipeline } from "../pipeline/expand.js";
import { openPipeline, parse } from "./common.js";
import { instanceOf, recordOf, requireRecord, type Recorded } from "./records.js";

const USAGE =
  "valley lineage <instance> [problem-id] [--sample k] [-f file] [--json]\n" +
  "       valley lineage <finetune instance> --rows [-f file] [--json]";

/** One recorded instance on the way up. */
export interface Node {
  id: string;
  kind: string;
  key: string;
  tree: string;
  /** Its inputs: input name → upstream instance ids (path inputs: the path). */
  inputs: Record<string, string[]>;
  params: Record<string, unknown>;
  /** Top-level output files → digests. */
  outputs: Record<string, string>;
  metrics: Record<string, unknown>;
}

interface Kept {
  problem_id: string;
  sample: number;
  request_key?: string;
  messages?: { role: string; content: string }[];
  answerTell: string;
  reasoningTell: string;
}

interface TraceRecord {
  problem_id: string;
  sample: number;
  messages?: { role: string; content: string }[];
  reasoning?: string;
  answer?: string;
  request_key?: string;
  correct?: boolean;
  verdict?: string;
}

export interface TrainingRow {
  row: number;
  problem_id: string;
  trace_id: string | null;
  /** The teacher request's key in the per-request cache; null for imported traces. */
  request_key: string | null;
  /** Whether the per-request cache holds that key (null: no key, or no cache). */
  in_request_cache: boolean | null;
  /** The rendered prompt the teacher answered (system and user messages). */
  prompt?: { role: string; content: string }[];
}

class Walker {
  readonly nodes = new Map<string, Node>();
  private dirs = new Map<string, string>();
  constructor(
    private pl: Pipeline,
    private engine: Engine,
  ) {}

  node(id: string): Node {
    const have = this.nodes.get(id);
    if (have) return have;
    const r = requireRecord(this.pl, this.engine, id);
    return this.add(r);
  }

  private add(r: Recorded): Node {
    const inputs: Record<string, string[]> = {};
    for (const [name, spec] of Object.entries(r.inst.inputs))
      inputs[name] = spec.type === "one" ? [spec.id] : spec.type === "all" ? spec.ids : [spec.path];
    const n: Node = {
      id: r.inst.id,
      kind: r.inst.kind,
      key: r.rec.key,
      tree: r.rec.outputs.tree,
      inputs,
      params: r.inst.params,
      outputs: r.rec.outputs.files,
      metrics: r.rec.metrics,
    };
    this.nodes.set(n.id, n);
    this.dirs.set(n.id, r.dir);
    return n;
  }

  dir(id: string): string {
    this.node(id);
    return this.dirs.get(id)!;
  }

  /** The single upstream instance behind an input, if it is one recorded instance. */
  up(n: Node, input: string): Node | undefined {
    const ids = n.inputs[input];
    if (!ids || ids.length !== 1 || !this.pl.byId.has(ids[0])) return undefined;
    return this.node(ids[0]);
  }

  /** Every instance upstream of `id` (itself included), depth first, inputs in declared order. */
  closure(id: string, seen = new Set<string>()): Node[] {
    if (seen.has(id) || !this.pl.byId.has(id)) return [];
    seen.add(id);
    const n = this.node(id);
    const out = [n];
    for (const ids of Object.values(n.inputs))
      for (const u of ids) out.push(...this.closure(u, seen));
    return out;
  }

  /** The nearest upstream instance of a kind, following inputs breadth first. */
  find(from: Node, kind: string): Node | undefined {
    const queue = [from];
    const seen = new Set<string>();
    while (queue.length) {
      const n = queue.shift()!;
      if (seen.has(n.id)) continue;
      seen.add(n.id);
      if (n !== from && n.kind === kind) return n;
      for (const ids of Object.values(n.inputs))
        for (const u of ids) if (this.pl.byId.has(u)) queue.push(this.node(u));
    }
    return undefined;
  }
}

/**
 * Streams a JSONL output, keeping what `keep` returns: traces, training rows
 * and samples hold whole answers (gigabytes at the paper's scale), more than
 * one string may hold.
 */
async function scan<T, U>(file: string, keep: (r: T) => U | undefined): Promise<U[]> {
  const out: U[] = [];
  if (!existsSync(file)) return out;
  const rl = createInterface({ input: createReadStream(file, "utf8"), crlfDelay: Infinity });
  for await (const line of rl) {
    if (line.trim() === "") continue;
    const u = keep(JSON.parse(line) as T);
    if (u !== undefined) out.push(u);
  }
  return out;
}

/** Enough of an answer to tell several traces of one problem apart (head and tail). */
const TELL = 300;
const tell = (s: string) =>
  s.length <= 2 * TELL ? s : s.slice(0, TELL) + "\u0000" + s.slice(-TELL);
function tells(said: string, t: { answerTell: string; reasoningTell: string }): boolean {
  const parts = [...t.answerTell.split("\u0000"), ...t.reasoningTell.split("\u0000")];
  return t.answerTell !== "" && parts.every((p) => said.includes(p));
}

/** The per-request cache of the store, if there is one: read-only use. */
async function requestCache(engine: Engine) {
  const file = engine.store.dir("requests.sqlite");
  if (!existsSync(file)) return undefined;
  const { RequestCache } = await import("../../data/request-cache.js");
  return RequestCache.open(file);
}

/** A dataset's training rows, each traced to the teacher's trace and request. */
async function trainingRows(w: Walker, engine: Engine, data: Node): Promise<TrainingRow[]> {
  const dir = w.dir(data.id);
  const ids = existsSync(join(dir, "ids.txt"))
    ? readFileSync(join(dir, "ids.txt"), "utf8").split("\n").filter(Boolean)
    : [];
  const perTrace = data.params.per === "trace";
  // The traces the subsample read (verify's output carries the traces' fields),
  // each kept small: ids, key, prompt, and a head and tail of its texts.
  const tracesNode = w.up(data, "traces");
  const traces = tracesNode
    ? await scan<TraceRecord, Kept>(join(w.dir(tracesNode.id), "traces.jsonl"), (t) => ({
        problem_id: t.problem_id,
        sample: t.sample,
        request_key: t.request_key,
        messages: t.messages?.filter((m) => m.role !== "assistant"),
        answerTell: tell((t.answer ?? "").trim()),
        reasoningTell: tell((t.reasoning ?? "").trim()),
      }))
    : [];
  const byProblem = new Map<string, Kept[]>();
  for (const t of traces) byProblem.set(t.problem_id, [...(byProblem.get(t.problem_id) ?? []), t]);
  // A training row's assistant turn matters only where a problem has several traces.
  const ambiguous = new Set([...byProblem].filter(([, ts]) => ts.length > 1).map(([p]) => p));
  let row = -1;
  const said = new Map<number, string>();
  await scan<{ messages: { role: string; content: string }[] }, null>(
    join(dir, "train.jsonl"),
    (r) => {
      row++;
      const id = ids[row];
      if (!perTrace && id !== undefined && ambiguous.has(id))
        said.set(row, r.messages.find((m) => m.role === "assistant")?.content ?? "");
      return undefined;
    },
  );
  const cache = await requestCache(engine);
  try {
    return ids.map((id, row) => {
      const problem = perTrace ? id.replace(/#\d+$/, "") : id;
      let cands = byProblem.get(problem) ?? [];
      if (perTrace) cands = cands.filter((t) => `${t.problem_id}#${t.sample}` === id);
      else if (cands.length > 1) {
        // Several traces of one problem: the row's assistant turn holds the chosen one.
        const text = said.get(row) ?? "";
        cands = cands.filter((t) => tells(text, t));
      }
      const t = cands.length === 1 ? cands[0] : undefined;
      const key = t?.request_key ?? null;
      return {
        row,
        problem_id: problem,
        trace_id: t ? `${t.problem_id}#${t.sample}` : null,
        request_key: key,
        in_request_cache: key && cache ? cache.has(key) : null,
        prompt: t?.messages,
      };
    });
  } finally {
    cache?.close();
  }
}

interface SampleRec {
  problem_id: string;
  sample: number;
  text: string;
  verdict: string;
  passed: boolean;
  finish_reason?: string | null;
  completion_tokens?: number | null;
  tests?: unknown[];
  message?: string;
}

function summary(n: Node) {
  return { id: n.id, kind: n.kind, key: n.key, tree: n.tree, outputs: n.outputs };
}

/** The lineage of one answer, as `--json` prints it. */
export async function answerLineage(
  pl: Pipeline,
  engine: Engine,
  id: string,
  problem: string,
  sample: number,
) {
  const w = new Walker(pl, engine);
  const ev = w.node(id);
  if (!("samples.jsonl" in ev.outputs))
    throw new UsageError(
      `${id} is a ${ev.kind} instance with no samples.jsonl: name an evaluation`,
    );
  const seen = new Set<string>();
  const ofProblem = await scan<SampleRec, SampleRec>(join(w.dir(id), "samples.jsonl"), (s) => {
    seen.add(s.problem_id);
    return s.problem_id === problem ? s : undefined;
  });
  if (ofProblem.length === 0) {
    const near = nearest(problem, seen, 3);
    throw new UsageError(
      `${id} did not evaluate problem "${problem}"` +
        (near.length ? `; closest: ${near.map((n) => `"${n}"`).join(", ")}` : ""),
    );
  }
  const s = ofProblem.find((x) => x.sample === sample);
  if (!s)
    throw new UsageError(
      `${id} has no sample ${sample} of ${problem} (samples: ${ofProblem.map((x) => x.sample).join(", ")})`,
    );

  const model = w.up(ev, "model");
  const adapter = w.up(ev, "adapter");
  const tune = (adapter?.kind === "finetune" ? adapter : undefined) ?? w.find(ev, "finetune");
  const data = tune ? w.up(tune, "data") : undefined;
  let dataset = null;
  let contaminated: boolean | null = null;
  let tracesNode: Node | undefined;
  if (data) {
    const rows = await trainingRows(w, engine, data);
    const trainingRow = rows.find((r) => r.problem_id === problem) ?? null;
    contaminated = trainingRow !== null;
    tracesNode = w.up(data, "traces");
    dataset = {
      ...summary(data),
      params: data.params,
      rows: rows.length,
      contains_problem: contaminated,
      training_row: trainingRow,
    };
  }
  const teacher = tracesNode
    ? tracesNode.kind === "traces"
      ? tracesNode
      : (w.find(tracesNode, "traces") ?? tracesNode)
    : undefined;
  const problemsNode = w.up(ev, "problems");
  const problemsRec = problemsNode ? recordOf(engine, instanceOf(pl, problemsNode.id)) : undefined;
  const fp = (problemsRec?.rec.fields as { fingerprint?: { files?: Record<string, string> } })
    ?.fingerprint?.files;
  return {
    instance: id,
    problem_id: problem,
    sample,
    answer: {
      text: s.text,
      verdict: s.verdict,
      passed: s.passed,
      finish_reason: s.finish_reason ?? null,
      completion_tokens: s.completion_tokens ?? null,
      tests: s.tests ?? [],
      ...(s.message !== undefined ? { message: s.message } : {}),
    },
    evaluation: { ...summary(ev), params: ev.params },
    model: model ? summary(model) : null,
    adapter: adapter ? summary(adapter) : null,
    finetune: tune
      ? {
          ...summary(tune),
          params: tune.params,
          first_loss: tune.metrics.first_loss ?? null,
          last_loss: tune.metrics.last_loss ?? null,
          dropped: tune.metrics.dropped ?? null,
        }
      : null,
    dataset,
    contaminated,
    traces: tracesNode ? summary(tracesNode) : null,
    teacher: teacher ? { ...summary(teacher), params: teacher.params } : null,
    problems: problemsNode ? { ...summary(problemsNode), source_files: fp ?? {} } : null,
    chain: w
      .closure(id)
      .map((n) => ({ id: n.id, kind: n.kind, key: n.key, tree: n.tree, inputs: n.inputs })),
  };
}

function short(d: string | null | undefined): string {
  return d ? d.replace(/^sha256:/, "").slice(0, 12) : "—";
}

function firstLines(s: string, n: number): string {
  const lines = s.split("\n");
  return (
    lines.slice(0, n).join("\n") + (lines.length > n ? `\n… (${lines.length - n} more lines)` : "")
  );
}

function indent(s: string, by: string): string {
  return s
    .split("\n")
    .map((l) => by + l)
    .join("\n");
}

type AnswerLineage = Awaited<ReturnType<typeof answerLineage>>;

function answerText(l: AnswerLineage): string {
  const out: string[] = [];
  const a = l.answer;
  const tests = a.tests as { verdict?: string }[];
  const tally: Record<string, number> = {};
  for (const t of tests) tally[t.verdict ?? "?"] = (tally[t.verdict ?? "?"] ?? 0) + 1;
  out.push(`answer     ${l.instance}  problem ${l.problem_id}  sample ${l.sample}`);
  out.push(
    `           verdict ${a.verdict} (${a.passed ? "passed" : "failed"}); tests: ${
      Object.entries(tally)
        .map(([k, v]) => `${v} ${k}`)
        .join(", ") || "none run"
    }; finish ${a.finish_reason ?? "—"}, ${a.completion_tokens ?? "—"} tokens`,
  );
  out.push(indent(firstLines(a.text, 12), "           │ "));
  const node = (label: string, n: { id: string; kind: string; tree: string } | null) =>
    n && out.push(`${label.padEnd(10)} ${n.id} (${n.kind})  ${short(n.tree)}`);
  node("model", l.model);
  node("adapter", l.adapter);
  if (l.finetune) {
    node("finetune", l.finetune);
    out.push(
      `           loss ${String(l.finetune.first_loss)} → ${String(l.finetune.last_loss)}; params ${JSON.stringify(l.finetune.params)}`,
    );
  }
  if (l.dataset) {
    node("dataset", l.dataset);
    out.push(
      `           ${l.dataset.rows} training rows; params ${JSON.stringify(l.dataset.params)}`,
    );
    out.push(
      l.contaminated
        ? `           CONTAMINATED: ${l.problem_id} is training row ${l.dataset.training_row!.row}`
        : `           not contaminated: ${l.problem_id} is not among the training rows`,
    );
  }
  node("traces", l.traces);
  if (l.teacher && l.teacher !== l.traces) node("teacher", l.teacher);
  const row = l.dataset?.training_row;
  if (row) {
    out.push(
      `           trace ${row.trace_id ?? "—"}; request key ${row.request_key ?? "— (imported, no request)"}` +
        (row.in_request_cache === null
          ? ""
          : row.in_request_cache
            ? " (in the request cache)"
            : " (NOT in the request cache)"),
    );
    for (const m of row.prompt ?? [])
      out.push(indent(firstLines(`${m.role}: ${m.content}`, 6), "           │ "));
  }
  if (l.problems) {
    node("problems", l.problems);
    for (const [f, d] of Object.entries(l.problems.source_files))
      out.push(`           source ${f}  ${short(d)}`);
  }
  return out.join("\n") + "\n";
}

export async function lineage(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    {
      json: { type: "boolean" },
      rows: { type: "boolean" },
      sample: { type: "string" },
      file: { type: "string", short: "f" },
      param: { type: "string", short: "p", multiple: true },
    },
    USAGE,
  );
  const [id, problem] = positionals;
  if (!id || positionals.length > 2) throw new UsageError(`usage: ${USAGE}`);
  const sample = values.sample === undefined ? 0 : Number(values.sample);
  if (!Number.isInteger(sample) || sample < 0)
    throw new UsageError(`--sample must be a non-negative integer, got ${values.sample}`);
  const { pl, engine } = await openPipeline(values.file, values.param, { readOnly: true });
  const inst = instanceOf(pl, id);

  if (values.rows) {
    if (inst.kind !== "finetune" && inst.kind !== "subsample")
      throw new UsageError(
        `--rows needs a finetune (or subsample) instance; ${id} is a ${inst.kind}`,
      );
    const w = new Walker(pl, engine);
    const n = w.node(id);
    const data = n.kind === "subsample" ? n : w.up(n, "data");
    if (!data) throw new UsageError(`${id} has no recorded \`data\` input`);
    const rows = await trainingRows(w, engine, data);
    if (values.json)
      process.stdout.write(
        JSON.stringify({ instance: id, dataset: data.id, rows }, null, 1) + "\n",
      );
    else {
      process.stdout.write(`${id}: ${rows.length} training rows from ${data.id}\n`);
      for (const r of rows)
        process.stdout.write(
          `${String(r.row).padStart(5)}  ${r.problem_id}  ${r.trace_id ?? "—"}  ${r.request_key ?? "—"}\n`,
        );
    }
    return 0;
  }

  if (!problem) throw new UsageError(`name a problem id: ${USAGE}`);
  const l = await answerLineage(pl, engine, id, problem, sample);
  process.stdout.write(values.json ? JSON.stringify(l, null, 1) + "\n" : answerText(l));
  return 0;
}
