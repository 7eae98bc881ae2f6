/**
 * One chat renderer for training and evaluation. valley-lora renders a
 * training chat with llama_chat_apply_template; evaluate's llama-server
 * (chatTemplate "builtin", no --jinja) must turn the same messages into the
 * same prompt tokens. The model carries a Qwen2.5-style Jinja template, which
 * adds a default system prompt when the chat has none: the Jinja server shows
 * what evaluation used to receive.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, it } from "node:test";
import { kv, writeGguf } from "../llama/gguf-writer.js";
import { randomModel, resolveRandomParams } from "../llama/random-model.js";
import { withLlamaServer } from "../llama/server.js";
import { testLlama, type BuiltLlama } from "./llama-fixture.js";

// Qwen2.5's template, reduced to what matters here (no tools): the default
// system message when the chat has none, then ChatML turns.
const QWEN_LIKE =
  "{%- if messages[0]['role'] == 'system' -%}" +
  "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' -}}" +
  "{%- else -%}" +
  "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' -}}" +
  "{%- endif -%}" +
  "{%- for message in messages -%}" +
  "{%- if not (message['role'] == 'system' and loop.first) -%}" +
  "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}" +
  "{%- endif -%}" +
  "{%- endfor -%}" +
  "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}";

const USER = "Solve: print the sum of two numbers.\nInput: 1 2";
const ANSWER = "<think>\nadd them\n</think>\n```python\nprint(sum(map(int, input().split())))\n```";

let llama: BuiltLlama;
let work = "";
let model = "";

before(async () => {
  llama = await testLlama();
  work = mkdtempSync(join(tmpdir(), "valley-chat-"));
  model = join(work, "model.gguf");
  const m = randomModel(resolveRandomParams({ preset: "tiny", seed: 5 }));
  const kvs = m.kvs.map((x) =>
    x.key === "tokenizer.chat_template" ? kv.str("tokenizer.chat_template", QWEN_LIKE) : x,
  );
  await writeGguf(model, kvs, m.tensors);
});
after(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

/** The prompt part of a training example as valley-lora renders it. */
function trainingPrompt(messages: { role: string; content: string }[]): string {
  const data = join(work, "train.jsonl");
  const out = join(work, "rendered.txt");
  writeFileSync(data, JSON.stringify({ messages }) + "\n");
  const r = spawnSync(
    join(llama.bin, "valley-lora"),
    ["--model", model, "--data", data, "--render-text", out],
    {
      encoding: "utf8",
    },
  );
  assert.equal(r.status, 0, r.stderr);
  const full = readFileSync(out, "utf8");
  const at = full.indexOf(ANSWER);
  assert.ok(at > 0, `the answer is in the rendered example: ${full}`);
  return full.slice(0, at);
}

async function post(url: string, path: string, body: unknown): Promise<Record<string, unknown>> {
  const r = await fetch(url + path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  assert.equal(r.status, 200, `${path}: ${await r.clone().text()}`);
  return (await r.json()) as Record<string, unknown>;
}

for (const withSystem of [false, true]) {
  it(`evaluation's server gets the training prompt's tokens (${withSystem ? "with" : "without"} a system message)`, async () => {
    const chat = [
      ...(withSystem ? [{ role: "system", content: "You are an expert Python programmer." }] : []),
      { role: "user", content: USER },
    ];
    const prompt = trainingPrompt([...chat, { role: "assistant", content: ANSWER }]);
    await withLlamaServer(
      { llama, model, contextSize: 512, chatTemplate: "builtin" },
      async (s) => {
        // The text the chat endpoint renders (the same code path as /v1/chat/completions).
        const rendered = await post(s.url, "/apply-template", { messages: chat });
        assert.equal(rendered.prompt, prompt);
        // Its tokens, as the trainer tokenizes its prompt part (BOS, special tokens parsed).
        const tok = await post(s.url, "/tokenize", {
          content: prompt,
          add_special: true,
          parse_special: true,
        });
        const tokens = tok.tokens as number[];
        const served = await post(s.url, "/v1/chat/completions", {
          messages: chat,
          max_tokens: 1,
          temperature: 0,
        });
        const usage = served.usage as { prompt_tokens: number };
        assert.equal(usage.prompt_tokens, tokens.length);
        const direct = await post(s.url, "/tokenize", {
          content: rendered.prompt,
          add_special: true,
          parse_special: true,
        });
        assert.deepEqual(direct.tokens, tokens);
      },
    );
    if (!withSystem) {
      // The Jinja route (what evaluation used before) differs: it adds Qwen's system prompt.
      await withLlamaServer({ llama, model, contextSize: 512 }, async (s) => {
        const jinja = await post(s.url, "/apply-template", { messages: chat });
        assert.notEqual(jinja.prompt, prompt);
        assert.match(String(jinja.prompt), /You are Qwen/);
      });
    }
  });
}
