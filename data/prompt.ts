import type { Problem } from "./problem.js";
import type { Message } from "./chat.js";

export interface PromptTemplate {
  system?: string;
  user: string;
}

/** The OpenCodeReasoning-style prompt: think, then one ```python block. */
export const DEFAULT_PROMPT: PromptTemplate = {
  user:
    "Solve the following competitive programming problem. Think step by step, then give the final solution " +
    "as one Python code block:\n```python\n# your code\n```\n\n{{statement}}{{starter_code_block}}",
};

const FIELDS = ["statement", "starter_code", "starter_code_block", "title", "id"];

/** Placeholders a template uses that are not known fields (for `check`). */
export function unknownPlaceholders(t: string): string[] {
  return [...t.matchAll(/\{\{\s*([\w.]+)\s*\}\}/g)]
    .map((m) => m[1])
    .filter((f) => !FIELDS.includes(f));
}

function fill(t: string, p: Problem): string {
  const block = p.starter_code.trim()
    ? `\n\nUse this starter code:\n\`\`\`python\n${p.starter_code.replace(/\s+$/, "")}\n\`\`\``
    : "";
  const vals: Record<string, string> = {
    statement: p.statement.trim(),
    starter_code: p.starter_code,
    starter_code_block: block,
    title: p.title,
    id: p.id,
  };
  return t.replace(/\{\{\s*([\w.]+)\s*\}\}/g, (_, k: string) => vals[k] ?? "");
}

/**
 * Prompts a stage can name instead of spelling out a template: `default` (the
 * one above) and `lcb`, LiveCodeBench's prompt for chat models
 * (lcb_runner/prompts/code_generation.py at LiveCodeBench 28fef95e: the
 * generic system message and get_generic_question_template_answer, whose
 * Format section differs for stdin problems and problems with starter code).
 * Its words are kept verbatim: a benchmark's prompt is part of its numbers.
 */
export const BUILTIN_PROMPTS = ["default", "lcb"] as const;
export type BuiltinPrompt = (typeof BUILTIN_PROMPTS)[number];
/** A stage's `prompt` param: a template, or the name of a built-in prompt. */
export type PromptSpec = PromptTemplate | BuiltinPrompt;

const LCB_SYSTEM =
  "You are an expert Python programmer. You will be given a question (problem specification) and will generate a correct Python program that matches the specification and passes all tests.";
const LCB_FORMAT_STARTER =
  "You will use the following starter code to write the solution to the problem and enclose your code within delimiters.";
const LCB_FORMAT_STDIN =
  "Read the inputs from stdin solve the problem and write the answer to stdout (do not directly test on the sample inputs). Enclose your code within delimiters as follows. Ensure that when the python program runs, it reads the inputs, runs the algorithm and writes output to STDOUT.";

function lcbMessages(p: Problem): Message[] {
  let user = `### Question:\n${p.statement}\n\n`;
  user += p.starter_code
    ? `### Format: ${LCB_FORMAT_STARTER}\n\`\`\`python\n${p.starter_code}\n\`\`\`\n\n`
    : `### Format: ${LCB_FORMAT_STDIN}\n\`\`\`python\n# YOUR CODE HERE\n\`\`\`\n\n`;
  user += "### Answer: (use the provided format with backticks)\n\n";
  return [
    { role: "system", content: LCB_SYSTEM },
    { role: "user", content: user },
  ];
}

/** The template parts of a spec, for placeholder checks (none for a built-in). */
export function templateOf(spec: PromptSpec | undefined): PromptTemplate | undefined {
  return typeof spec === "object" ? spec : undefined;
}

export function renderPrompt(spec: PromptSpec, p: Problem): Message[] {
  if (spec === "lcb") return lcbMessages(p);
  const t = spec === "default" ? DEFAULT_PROMPT : spec;
  const m: Message[] = [];
  if (t.system) m.push({ role: "system", content: fill(t.system, p) });
  m.push({ role: "user", content: fill(t.user, p) });
  return m;
}
