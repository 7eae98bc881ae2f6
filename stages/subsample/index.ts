import { join } from "node:path";
import { writeFile, rename } from "node:fs/promises";
import {
  InputError,
  type InputArtifact,
  type StageContext,
  type StageKind,
} from "../../engine/stage-api.js";
import { readJsonl, writeJsonl } from "../../data/jsonl.js";
import { paperDifficulty, type Problem } from "../../data/problem.js";
import { hashOrder, rankKey, stratifiedOrder } from "../../data/nested.js";
import { joinThink, type Message } from "../../data/chat.js";

export interface SubsampleParams {
  n?: number;
  seed: number | string;
  per: "problem" | "trace";
  difficulty?: ("easy" | "medium" | "hard")[];
  paperDifficulty?: "hard" | "easy";
  correct?: boolean;
  source?: string[];
  split?: "train" | "eval";
  requireAnswer: boolean;
  maxTokens?: number;
  charsPerToken: number;
  stratify: boolean;
  allowFewer: boolean;
  system?: string;
}

export const SUBSAMPLE_DEFAULTS = {
  seed: 0,
  per: "problem",
  requireAnswer: true,
  charsPerToken: 4,
  stratify: false,
  allowFewer: false,
} satisfies Partial<SubsampleParams>;

interface TraceIn {
  problem_id: string;
  sample: number;
  messages: Message[];
  reasoning: string;
  answer: string;
  correct?: boolean;
}

interface Item {
  id: string;
  problem: Problem;
  messages: Message[];
}

function artifacts(ctx: StageContext<SubsampleParams>, name: string): InputArtifact[] {
  const a = ctx.inputs[name];
  if (!a) throw new InputError(`subsample needs an input "${name}"`);
  return Array.isArray(a) ? a : [a];
}

const kind: StageKind<SubsampleParams> = {
  kind: "subsample",
  version: "1",
  async run(ctx) {
    const p: SubsampleParams = { ...SUBSAMPLE_DEFAULTS, ...ctx.params };
    const problems = new Map<string, Problem>();
    for (const a of artifacts(ctx, "problems"))
      for await (const { value } of readJsonl<Problem>(join(a.path, "problems.jsonl")))
        problems.set(value.id, value);

    const counts: Record<string, number> = {};
    const drop = (why: string) => (counts[why] = (counts[why] ?? 0) + 1);
    const byProblem = new Map<string, Item[]>();
    let total = 0;
    for (const a of artifacts(ctx, "traces")) {
      const file = join(a.path, "traces.jsonl");
      for await (const { line, value: t } of readJsonl<TraceIn>(file)) {
        total++;
        const problem = problems.get(t.problem_id);
        if (!problem)
          throw new InputError(
            `${file}: line ${line}: problem ${JSON.stringify(t.problem_id)} is not in the problems input`,
          );
        if (p.correct !== undefined) {
          if (typeof t.correct !== "boolean")
            throw new InputError(
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
        let prompt = t.messages.filter((m) => m.role !== "assistant");
        if (p.system !== undefined) {
          prompt = prompt.filter((m) => m.role !== "system");
          if (p.system) prompt.unshift({ role: "system", content: p.system });
        }
        const messages = [
          ...prompt,
          { role: "assistant" as const, content: joinThink(t.reasoning.trim(), t.answer.trim()) },
        ];
        if (p.maxTokens) {
          const chars = messages.reduce((acc, m) => acc + m.content.length, 0);
          if (Math.ceil(chars / p.charsPerToken) > p.maxTokens) {
            drop("too long");
            continue;
          }
        }
        const item = { id: `${t.problem_id}#${t.sample}`, problem, messages };
        if (!byProblem.has(t.problem_id)) byProblem.set(t.problem_id, []);
        byProblem.get(t.problem_id)!.push(item);
      }
    }

    // One trace per problem: the one with the smallest keyed hash, so the
    // choice is seeded too and does not depend on N.
    let items: Item[] = [];
    if (p.per === "problem") {
      for (const list of byProblem.values())
        items.push(hashOrder(list, (x) => x.id, `${p.seed}:pick`)[0]);
    } else for (const list of byProblem.values()) items.push(...list);
    const unit = (x: Item) => (p.per === "problem" ? x.problem.id : x.id);
    const ordered = p.stratify
      ? stratifiedOrder(items, unit, (x) => x.problem.difficulty, p.seed)
      : hashOrder(items, unit, p.seed);
    const available = ordered.length;
    if (p.n !== undefined && p.n > available && !p.allowFewer) {
      const byDiff: Record<string, number> = {};
      for (const x of ordered)
        byDiff[x.problem.difficulty] = (byDiff[x.problem.difficulty] ?? 0) + 1;
      throw new InputError(
        `subsample: asked for ${p.n} ${p.per === "problem" ? "problems" : "traces"} but only ${available} pass the filters ` +
          `(${total} traces read; by difficulty ${JSON.stringify(byDiff)}; dropped ${JSON.stringify(counts)}). ` +
          `Lower n or set allowFewer: true.`,
      );
    }
    items = ordered.slice(0, p.n ?? available);

    await writeJsonl(
      join(ctx.out, "train.jsonl"),
      items.map((x) => ({ messages: x.messages })),
    );
    const ids = join(ctx.out, "ids.txt");
    await writeFile(
      ids + ".tmp",
      items.map((x) => (p.per === "problem" ? x.problem.id : x.id) + "\n").join(""),
    );
    await rename(ids + ".tmp", ids);
    const byDifficulty: Record<string, number> = {};
    for (const x of items)
      byDifficulty[x.problem.difficulty] = (byDifficulty[x.problem.difficulty] ?? 0) + 1;
    const metrics = {
      count: items.length,
      available,
      traces_read: total,
      dropped: counts,
      by_difficulty: byDifficulty,
      seed: p.seed,
      first_rank: items[0] ? rankKey(p.seed, unit(items[0])).slice(0, 12) : null,
    };
    ctx.log.info(metrics, "subsample written");
    return { metrics };
  },
};

export default kind;
