import { tracesInput, type Expected } from "../../data/estimate.js";
import { join, resolve } from "node:path";
import { closeSync, createReadStream, openSync, readSync } from "node:fs";
import { readFile, readdir, rename, writeFile } from "node:fs/promises";
import { BadStageInput, type StageKind } from "../../engine/stage-api.js";
import { JsonlWriter, readJsonl } from "../../data/jsonl.js";
import { paperDifficulty, type Problem } from "../../data/problem.js";
import { hashOrder, rankKey, stratifiedOrder } from "../../data/nested.js";
import { joinThink, type Message } from "../../data/chat.js";
import { studentCounter, type TokenCounter } from "./tokens.js";

export type PerQuestion = "first" | "random" | "all";

export interface SubsampleParams {
  n?: number;
  /** Draw round(n × scale) examples (≥ 1): the paper's sizes on small data (smoke tests). */
  scale: number;
  seed: number | string;
  perQuestion: PerQuestion;
  difficulty?: ("easy" | "medium" | "hard")[];
  paperDifficulty?: "hard" | "easy";
  correct?: boolean;
  source?: string[];
  split?: "train" | "eval";
  /** A file of ids (problem ids, `problem#sample` trace ids or OCR row ids), one a line. */
  ids?: string;
  requireAnswer: boolean;
  maxTokens?: number;
  charsPerToken: number;
  stratify: boolean;
  allowFewer: boolean;
  system?: string;
}

interface TraceIn {
  problem_id: string;
  sample: number;
  row_id?: string;
  messages: Message[];
  reasoning: string;
  answer: string;
  correct?: boolean;
}

/** What is kept of a problem: the fields the filters read (never tests). */
interface ProblemInfo {
  difficulty: Problem["difficulty"];
  difficulty_raw: string;
  source: string;
  split?: Problem["split"];
}

/** A trace that passed the filters that need no tokenizer: where to read it again. */
interface Candidate {
  id: string;
  problem: string;
  sample: number;
  rowId?: string;
  file: number;
  offset: number;
  length: number;
}

/** What is drawn: a question (its candidates in policy order) or one trace. */
interface Unit {
  id: string;
  problem: string;
  candidates: Candidate[];
}

/** JSONL lines with their byte offsets, so a chosen line can be read again. */
async function* linesWithOffsets(
  file: string,
): AsyncGenerator<{ line: number; offset: number; length: number; text: string }> {
  let pending: Buffer[] = [];
  let pendingLen = 0;
  let offset = 0;
  let line = 0;
  for await (const chunk of createReadStream(file) as AsyncIterable<Buffer>) {
    let from = 0;
    for (let i = chunk.indexOf(10); i !== -1; i = chunk.indexOf(10, from)) {
      const part = chunk.subarray(from, i);
      const buf = pendingLen ? Buffer.concat([...pending, part]) : part;
      line++;
      if (buf.length) yield { line, offset, length: buf.length, text: buf.toString("utf8") };
      offset += buf.length + 1;
      pending = [];
      pendingLen = 0;
      from = i + 1;
    }
    if (from < chunk.length) {
      pending.push(chunk.subarray(from));
      pendingLen += chunk.length - from;
    }
  }
  if (pendingLen) {
    const buf = Buffer.concat(pending);
    yield { line: line + 1, offset, length: buf.length, text: buf.toString("utf8") };
  }
}

function readAt(fd: number, offset: number, length: number): string {
  const b = Buffer.allocUnsafe(length);
  for (let off = 0; off < length;) {
    const n = readSync(fd, b, off, length - off, offset + off);
    if (n === 0) throw new Error(`unexpected end of file at byte ${offset + off}`);
    off += n;
  }
  return b.toString("utf8");
}

async function readIds(path: string): Promise<string[]> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch {
    throw new BadStageInput(`ids: ${path} cannot be read`);
  }
  const ids = text
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith("#"));
  const seen = new Set<string>();
  ids.forEach((id, i) => {
    if (seen.has(id))
      throw new BadStageInput(`${path}:${i + 1}: id ${JSON.stringify(id)} repeated`);
    seen.add(id);
  });
  if (!ids.length) throw new BadStageInput(`ids: ${path} lists no id`);
  return ids;
}

async function findGguf(dir: string): Promise<string> {
  const names = (await readdir(dir)).filter((n) => n.endsWith(".gguf")).sort();
  if (!names.length) throw new BadStageInput(`input "model" (${dir}) holds no .gguf file`);
  return join(dir, names[0]);
}

const kind: StageKind<SubsampleParams> = {
  kind: "subsample",
  // 2: every filter (length included) applies before drawing, so n is exact;
  // perQuestion replaces per; lengths in the student's tokens given a model.
  version: "2",
  // The id list is part of the result: its bytes join the key.
  fingerprint(params, tools) {
    return params.ids ? { ids: tools.digestFile(params.ids) } : {};
  },
  async estimate(ctx) {
    const p: SubsampleParams = ctx.params;
    const t = await tracesInput(ctx.inputs.traces, ctx.expected.traces);
    const want = p.n === undefined ? undefined : Math.max(1, Math.round(p.n * p.scale));
    const records: [number, number] | undefined = want !== undefined ? [want, want] : t?.records;
    // lengths of the traces before the filters: the draw keeps at most maxTokens of them
    const cap = (r: [number, number] | undefined): [number, number] | undefined =>
      r && p.maxTokens ? [r[0], Math.min(r[1], p.maxTokens * p.charsPerToken)] : r;
    const output: Expected = {
      records,
      chars: cap(t?.chars),
      answerChars: cap(t?.answerChars),
      answerBasis: t?.answerBasis && `${t.answerBasis} (before the filters)`,
      basis:
        `${want !== undefined ? `${want} examples (n × scale)` : "every qualifying trace"}` +
        `${t?.basis ? `; lengths ${t.basis.replace(/^measured: /, "")} (before the filters)` : ""}`,
    };
    return {
      hours: [0, 0.05],
      device: "cpu",
      usd: null,
      basis: { hours: "assumed: a draw reads the traces once (seconds to minutes)" },
      output: output as Record<string, unknown>,
    };
  },
  check(p) {
    const issues = [];
    if (p.stratify && p.ids)
      issues.push({ path: ["stratify"], message: "an ids list fixes the order; drop stratify" });
    return issues;
  },
  async run(ctx) {
    const p = ctx.params;
    const problems = new Map<string, ProblemInfo>();
    for (const a of ctx.inputList("problems"))
      for await (const { value } of readJsonl<Problem>(join(a.path, "problems.jsonl")))
        problems.set(value.id, {
          difficulty: value.difficulty,
          difficulty_raw: value.difficulty_raw,
          source: value.source,
          split: value.split,
        });

    const wanted = p.ids ? await readIds(resolve(p.ids)) : undefined;
    const wantedSet = wanted ? new Set(wanted) : undefined;

    // ---- pass 1: every filter that needs no tokenizer; remember where each trace is
    const counts: Record<string, number> = {};
    const drop = (why: string) => (counts[why] = (counts[why] ?? 0) + 1);
    const files = ctx.inputList("traces").map((a) => join(a.path, "traces.jsonl"));
    const byProblem = new Map<string, Candidate[]>();
    let total = 0;
    for (const [fi, file] of files.entries()) {
      for await (const { line, offset, length, text } of linesWithOffsets(file)) {
        let t: TraceIn;
        try {
          t = JSON.parse(text) as TraceIn;
        } catch (e) {
          throw new BadStageInput(
            `${file}: line ${line} is not valid JSON (${(e as Error).message})`,
          );
        }
        total++;
        const problem = problems.get(t.problem_id);
        if (!problem)
          throw new BadStageInput(
            `${file}: line ${line}: problem ${JSON.stringify(t.problem_id)} is not in the problems input`,
          );
        const id = `${t.problem_id}#${t.sample}`;
        if (
          wantedSet &&
          !wantedSet.has(t.problem_id) &&
          !wantedSet.has(id) &&
          !(t.row_id !== undefined && wantedSet.has(t.row_id))
        ) {
          drop("not in ids");
          continue;
        }
        if (p.correct !== undefined) {
          if (typeof t.correct !== "boolean")
            throw new BadStageInput(
              `${file}: line ${line}: no "correct" field; run verify on the traces before filtering by correctness`,
            );
          if (t.correct !== p.correct) {
            drop("correctness");
            continue;
          }
        }
        if (p.difficulty && !p.difficulty.includes(problem.difficulty)) {
          drop("difficulty");
          continue;
        }
        if (p.paperDifficulty && paperDifficulty(problem) !== p.paperDifficulty) {
          drop("paperDifficulty");
          continue;
        }
        if (p.source && !p.source.includes(problem.source)) {
          drop("source");
          continue;
        }
        if (p.split && problem.split !== p.split) {
          drop("split");
          continue;
        }
        if (p.requireAnswer && !t.answer?.trim()) {
          drop("empty answer");
          continue;
        }
        const c: Candidate = {
          id,
          problem: t.problem_id,
          sample: t.sample,
          file: fi,
          offset,
          length,
        };
        if (t.row_id !== undefined) c.rowId = t.row_id;
        if (!byProblem.has(t.problem_id)) byProblem.set(t.problem_id, []);
        byProblem.get(t.problem_id)!.push(c);
      }
    }

    // ---- the draw order: units, each with its candidates in policy order
    const policyOrder = (list: Candidate[]) =>
      p.perQuestion === "random"
        ? hashOrder(list, (x) => x.id, `${p.seed}:pick`)
        : [...list].sort((a, b) => a.sample - b.sample || a.file - b.file);
    let units: Unit[] = [];
    if (wanted) {
      const byTrace = new Map<string, Candidate>();
      for (const list of byProblem.values())
        for (const c of list) {
          byTrace.set(c.id, c);
          if (c.rowId !== undefined) byTrace.set(c.rowId, c);
        }
      for (const id of wanted) {
        const list = byProblem.get(id);
        if (list) units.push({ id, problem: id, candidates: policyOrder(list) });
        else if (byTrace.has(id)) {
          const c = byTrace.get(id)!;
          units.push({ id, problem: c.problem, candidates: [c] });
        } else
          throw new BadStageInput(
            `ids: ${JSON.stringify(id)} (${p.ids}) is no problem or trace that passes the filters (${total} traces read; dropped ${JSON.stringify(counts)})`,
          );
      }
    } else {
      if (p.perQuestion === "all") {
        for (const list of byProblem.values())
          for (const c of list) units.push({ id: c.id, problem: c.problem, candidates: [c] });
      } else
        for (const [id, list] of byProblem)
          units.push({ id, problem: id, candidates: policyOrder(list) });
      units = p.stratify
        ? stratifiedOrder(
            units,
            (u) => u.id,
            (u) => problems.get(u.problem)!.difficulty,
            p.seed,
          )
        : hashOrder(units, (u) => u.id, p.seed);
    }

    // ---- walk in order, measuring length lazily, until n are accepted: the
    // n-set is a prefix of the (n+k)-set, and holds exactly n examples.
    let counter: TokenCounter | undefined;
    const model = ctx.input("model", { optional: true });
    if (p.maxTokens && model) {
      counter = await studentCounter(await findGguf(model.path));
    }
    const lengthOf = (messages: Message[]) =>
      counter
        ? counter.count(messages)
        : Math.ceil(messages.reduce((a, m) => a + m.content.length, 0) / p.charsPerToken);
    const fds = files.map((f) => openSync(f, "r"));
    const out = await JsonlWriter.open(join(ctx.out, "train.jsonl"));
    const chosen: { unit: Unit; trace: Candidate }[] = [];
    const want = p.n === undefined ? undefined : Math.max(1, Math.round(p.n * p.scale));
    const target = want ?? Infinity;
    let walked = 0;
    try {
      for (const unit of units) {
        if (chosen.length >= target) break;
        walked++;
        for (const c of unit.candidates) {
          const t = JSON.parse(readAt(fds[c.file], c.offset, c.length)) as TraceIn;
          let prompt = t.messages.filter((m) => m.role !== "assistant");
          if (p.system !== undefined) {
            prompt = prompt.filter((m) => m.role !== "system");
            if (p.system) prompt.unshift({ role: "system", content: p.system });
          }
          const messages = [
            ...prompt,
            { role: "assistant" as const, content: joinThink(t.reasoning.trim(), t.answer.trim()) },
          ];
          if (p.maxTokens && lengthOf(messages) > p.maxTokens) {
            drop("too long");
            continue;
          }
          await out.write({ messages });
          chosen.push({ unit, trace: c });
          break;
        }
      }
      await out.close();
    } catch (e) {
      await out.abandon();
      throw e;
    } finally {
      for (const fd of fds) closeSync(fd);
      await counter?.dispose();
    }

    const byDifficulty: Record<string, number> = {};
    for (const x of chosen) {
      const d = problems.get(x.unit.problem)!.difficulty;
      byDifficulty[d] = (byDifficulty[d] ?? 0) + 1;
    }
    if (want !== undefined && chosen.length < want && !p.allowFewer) {
      const what = p.perQuestion === "all" ? "traces" : "questions";
      throw new BadStageInput(
        `subsample: asked for ${want} ${what}${p.scale !== 1 ? ` (n ${p.n} × scale ${p.scale})` : ""} but only ${chosen.length} qualify ` +
          `(every filter applied, length included; ${total} traces read; by difficulty ${JSON.stringify(byDifficulty)}; dropped ${JSON.stringify(counts)}). ` +
          `Lower n or set allowFewer: true.`,
      );
    }

    const ids = join(ctx.out, "ids.txt");
    await writeFile(ids + ".tmp", chosen.map((x) => x.unit.id + "\n").join(""));
    await rename(ids + ".tmp", ids);
    const traces = join(ctx.out, "traces.txt");
    await writeFile(traces + ".tmp", chosen.map((x) => x.trace.id + "\n").join(""));
    await rename(traces + ".tmp", traces);
    const metrics = {
      count: chosen.length,
      ...(p.scale !== 1 ? { scale: p.scale } : {}),
      // Units passing every filter but length; all of them were measured when n is unset.
      candidates: units.length,
      measured: walked,
      traces_read: total,
      dropped: counts,
      by_difficulty: byDifficulty,
      per_question: p.perQuestion,
      length_in: p.maxTokens ? (counter ? "student tokens" : `chars / ${p.charsPerToken}`) : null,
      seed: p.seed,
      first_rank: chosen[0] && !wanted ? rankKey(p.seed, chosen[0].unit.id).slice(0, 12) : null,
    };
    ctx.log.info(metrics, "subsample written");
    return { metrics };
  },
};

export default kind;
