/**
 * `traces` with backend `import`: existing traces from the problems artifact,
 * streamed. Sources, in this order per problem:
 *   - generations.jsonl beside problems.jsonl (OCR/OCR2 rows, format ocr):
 *     one trace per generation, at most `samples` per problem, in file order;
 *   - a problem's `extra.generations` list (problems artifacts made before
 *     generations.jsonl existed);
 *   - the demo set's reference trace and solution.
 * Only prompts are held in memory (one per problem); generations pass through.
 */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { readJsonl } from "../../data/jsonl.js";
import type { Problem } from "../../data/problem.js";
import { renderPrompt, type PromptSpec } from "../../data/prompt.js";
import { joinThink, splitThink, type Message } from "../../data/chat.js";
import type { Generation } from "../../data/ocr.js";
import type { Trace } from "./index.js";

const BASE = {
  finish_reason: "stop",
  prompt_tokens: null,
  completion_tokens: null,
  latency_ms: 0,
} as const;

export interface ImportCounts {
  problems: number;
  /** Generations with no text, left out. */
  empty: number;
  /** Generations past `samples` for their problem. */
  over_samples: number;
  /** Generations whose problem is not in problems.jsonl. */
  no_problem: number;
}

function trace(
  problemId: string,
  sample: number,
  messages: Message[],
  text: string,
  rowId?: string,
): Trace {
  const { reasoning, answer } = splitThink(text);
  const t: Trace = { problem_id: problemId, sample, messages, reasoning, answer, text, ...BASE };
  if (rowId !== undefined) (t as Trace & { row_id?: string }).row_id = rowId;
  return t;
}

export async function* importTraces(
  problemsDir: string,
  samples: number,
  prompt: PromptSpec,
  counts: ImportCounts,
): AsyncGenerator<Trace> {
  const gensFile = join(problemsDir, "generations.jsonl");
  const prompts = new Map<string, Message[]>();
  for await (const { value: p } of readJsonl<Problem>(join(problemsDir, "problems.jsonl"))) {
    counts.problems++;
    const messages = renderPrompt(prompt, p);
    const old = p.extra?.generations;
    if (Array.isArray(old)) {
      let sample = 0;
      for (const g of old as Record<string, unknown>[]) {
        const text = typeof g.r1_generation === "string" ? g.r1_generation : "";
        if (!text) counts.empty++;
        else if (sample >= samples) counts.over_samples++;
        else yield trace(p.id, sample++, messages, text);
      }
    } else if (p.reference_solution && !existsSync(gensFile)) {
      const reasoning = (p.reference_trace ?? "").trim();
      const answer = "```python\n" + p.reference_solution.replace(/\s+$/, "") + "\n```";
      yield {
        problem_id: p.id,
        sample: 0,
        messages,
        reasoning,
        answer,
        text: joinThink(reasoning, answer),
        ...BASE,
      };
    } else prompts.set(p.id, messages);
  }
  if (!existsSync(gensFile)) return;
  // Samples are renumbered 0.. among the generations kept, so sample i is the
  // i-th usable generation of its question.
  const next = new Map<string, number>();
  for await (const { value: g } of readJsonl<Generation>(gensFile)) {
    const messages = prompts.get(g.problem_id);
    if (!messages) {
      counts.no_problem++;
      continue;
    }
    if (!g.r1_generation) {
      counts.empty++;
      continue;
    }
    const sample = next.get(g.problem_id) ?? 0;
    if (sample >= samples) {
      counts.over_samples++;
      continue;
    }
    next.set(g.problem_id, sample + 1);
    yield trace(g.problem_id, sample, messages, g.r1_generation, g.row_id);
  }
}
