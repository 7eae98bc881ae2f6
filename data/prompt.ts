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

export function renderPrompt(t: PromptTemplate, p: Problem): Message[] {
  const m: Message[] = [];
  if (t.system) m.push({ role: "system", content: fill(t.system, p) });
  m.push({ role: "user", content: fill(t.user, p) });
  return m;
}
