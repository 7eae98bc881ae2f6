/**
 * Finding the program in a model's answer. The reasoning is removed first (a
 * `<think>` that never closes swallows the rest: code the model only thought
 * about is not an answer), then one fenced block is taken: the first or the
 * last. This is the `strict` and `taco` extraction; LiveCodeBench's own (the
 * last two lines containing ``` anywhere in the raw text, think included) is
 * lcbExtract in semantics.ts.
 */
import type { ExtractionPolicy } from "./types.js";

/** Removes `<think>…</think>` spans; an unclosed `<think>` drops everything after it. */
export function stripThink(text: string): string {
  let out = "";
  let rest = text;
  for (;;) {
    const open = rest.indexOf("<think>");
    if (open < 0) return out + rest;
    out += rest.slice(0, open);
    const close = rest.indexOf("</think>", open + 7);
    if (close < 0) return out;
    rest = rest.slice(close + 8);
  }
}

// A fence line: ``` or ~~~ (3 or more), an optional info string.
const FENCE = /^[ \t]*(`{3,}|~{3,})[ \t]*([^\n`]*)$/;
const PY_LANGS = new Set(["python", "python3", "py", "py3"]);

interface Block {
  lang: string;
  code: string;
}

function fencedBlocks(text: string): Block[] {
  const lines = text.split(/\r?\n/);
  const blocks: Block[] = [];
  for (let i = 0; i < lines.length; i++) {
    const m = FENCE.exec(lines[i]);
    if (!m) continue;
    const fence = m[1];
    const lang = m[2].trim().split(/\s+/)[0]?.toLowerCase() ?? "";
    const body: string[] = [];
    let j = i + 1;
    for (; j < lines.length; j++) {
      const t = lines[j].trim();
      if (t.startsWith(fence[0].repeat(fence.length)) && /^(`{3,}|~{3,})$/.test(t)) break;
      body.push(lines[j]);
    }
    if (j >= lines.length) break; // an unclosed fence is not a block
    blocks.push({ lang, code: body.join("\n") + "\n" });
    i = j;
  }
  return blocks;
}

/**
 * The program of an answer, or null when there is none. Python-tagged blocks
 * win; untagged blocks count only when no block is tagged Python (models often
 * omit the tag; a block tagged with another language never counts).
 */
export function extractCode(text: string, policy: ExtractionPolicy = "first"): string | null {
  const blocks = fencedBlocks(stripThink(text));
  let pool = blocks.filter((b) => PY_LANGS.has(b.lang));
  if (pool.length === 0) pool = blocks.filter((b) => b.lang === "");
  pool = pool.filter((b) => b.code.trim() !== "");
  if (pool.length === 0) return null;
  return (policy === "first" ? pool[0] : pool[pool.length - 1]).code;
}

/** True when the answer begins with `<think>` after leading whitespace (the think-tag rate). */
export function startsWithThink(text: string): boolean {
  return text.trimStart().startsWith("<think>");
}
