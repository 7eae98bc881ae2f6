/**
 * Training examples in tokens, counted the way valley-lora counts them
 * (native/valley-lora.cpp, build_example), so that an estimate knows the
 * window the trainer will use:
 *
 * - the chat is rendered by llama_chat_apply_template with the model's
 *   `tokenizer.chat_template` ("chatml" when it has none), which detects a
 *   built-in template by name or by substrings (llama.cpp src/llama-chat.cpp,
 *   llm_chat_detect_template);
 * - the rendered text is cut at each assistant turn's span (the chat up to
 *   that turn with the generation prompt, then up to and including it), and
 *   each piece is tokenized on its own with special tokens parsed;
 * - the first piece gets the vocabulary's BOS (and EOS, where the vocabulary
 *   adds one) when the vocabulary adds BOS: llama_tokenize with add_special.
 *
 * The pieces are tokenized by the same llama.cpp tokenizer (node-llama-cpp's
 * bundled release, which is what the llama-build stage compiles), loading
 * the vocabulary only. Rendering is reproduced for the templates llama.cpp
 * calls chatml and llama3; for any other template `templateOf` returns
 * undefined and the caller falls back to a character-based guess.
 */

/** The built-in templates rendered here. */
export type TrainerTemplate = "chatml" | "llama3";

/**
 * Which built-in template llama_chat_apply_template picks for a model's
 * template text, when it is one rendered here (else undefined). Mirrors
 * llm_chat_detect_template: an exact name first, then `<|im_start|>`
 * (chatml unless Phi-4 or SmolVLM), and Llama 3's headers only when none of
 * the substrings llama.cpp checks before them is present.
 */
export function templateOf(tmpl: string | undefined): TrainerTemplate | undefined {
  const t = tmpl ?? "chatml";
  if (t === "chatml") return "chatml";
  if (t === "llama3") return "llama3";
  const has = (s: string) => t.includes(s);
  if (has("<|im_start|>"))
    return has("<|im_sep|>") || has("<end_of_utterance>") ? undefined : "chatml";
  const earlier =
    t.startsWith("mistral") ||
    has("[INST]") ||
    (has("<|assistant|>") && (has("<|end|>") || has("<|user|>"))) ||
    has("[gMASK]<sop>") ||
    (has("<|{{ item['role'] }}|>") && has("<|begin_of_image|>")) ||
    (has("<|user|>") && has("<|endoftext|>")) ||
    has("bos_token + message['role']") ||
    has("<start_of_turn>") ||
    has("'\\n\\nAssistant: ' + eos_token") ||
    has("GPT4 Correct ") ||
    (has("USER: ") && has("ASSISTANT: ")) ||
    (has("### Instruction:") && has("<|EOT|>")) ||
    (has("<|START_OF_TURN_TOKEN|>") && has("<|USER_TOKEN|>"));
  if (!earlier && has("<|start_header_id|>") && has("<|end_header_id|>")) return "llama3";
  return undefined;
}

/** llama.cpp's trim: ASCII white space (C isspace) at both ends. */
function trimC(s: string): string {
  const ws = (c: string) => c === " " || (c >= "\t" && c <= "\r");
  let a = 0;
  let b = s.length;
  while (a < b && ws(s[a])) a++;
  while (b > a && ws(s[b - 1])) b--;
  return s.slice(a, b);
}

/** llm_chat_apply_template for the first `n` messages. */
function render(t: TrainerTemplate, msgs: [string, string][], n: number, addAss: boolean): string {
  let s = "";
  for (const [role, content] of msgs.slice(0, n))
    s +=
      t === "chatml"
        ? `<|im_start|>${role}\n${content}<|im_end|>\n`
        : `<|start_header_id|>${role}<|end_header_id|>\n\n${trimC(content)}<|eot_id|>`;
  if (addAss)
    s +=
      t === "chatml"
        ? "<|im_start|>assistant\n"
        : "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return s;
}

/** valley-lora's message_text: a string, the text parts of a list, or nothing. */
function messageText(content: unknown): string | undefined {
  if (typeof content === "string") return content;
  if (content === null || content === undefined) return "";
  if (Array.isArray(content)) {
    let s = "";
    for (const part of content)
      if (
        part &&
        typeof part === "object" &&
        (part as { type?: unknown }).type === "text" &&
        typeof (part as { text?: unknown }).text === "string"
      )
        s += (part as { text: string }).text;
    return s;
  }
  return undefined;
}

/**
 * The pieces valley-lora tokenizes one by one for an example, in order, or
 * undefined where the trainer would refuse the example (no messages list, a
 * role that is not a string, no assistant turn, a template that does not
 * render turn by turn).
 */
export function trainerPieces(t: TrainerTemplate, row: unknown): string[] | undefined {
  const list = (row as { messages?: unknown } | null)?.messages;
  if (!row || typeof row !== "object" || !Array.isArray(list)) return undefined;
  const msgs: [string, string][] = [];
  for (const m of list) {
    const role = (m as { role?: unknown } | null)?.role;
    if (!m || typeof m !== "object" || typeof role !== "string") return undefined;
    const text = messageText((m as { content?: unknown }).content);
    if (text === undefined) return undefined;
    msgs.push([role, text]);
  }
  const full = render(t, msgs, msgs.length, false);
  const spans: [number, number][] = [];
  for (let i = 0; i < msgs.length; i++) {
    if (msgs[i][0] !== "assistant") continue;
    const pre = render(t, msgs, i, true);
    const upto = render(t, msgs, i + 1, false);
    if (!upto.startsWith(pre) || !full.startsWith(upto)) return undefined;
    if (upto.length > pre.length) spans.push([pre.length, upto.length]);
  }
  if (spans.length === 0) return undefined;
  const pieces: string[] = [];
  let pos = 0;
  const add = (from: number, to: number) => {
    if (to > from) pieces.push(full.slice(from, to));
  };
  for (const [a, b] of spans) {
    add(pos, a);
    add(a, b);
    pos = b;
  }
  add(pos, full.length);
  return pieces;
}

export interface TrainerCounter {
  /** The template valley-lora will use for this model, or undefined when it is not one rendered here. */
  template: TrainerTemplate | undefined;
  /** The example's tokens as valley-lora makes them (before truncation), or undefined (see trainerPieces). */
  count(row: unknown): number | undefined;
  dispose(): Promise<void>;
}

// One llama.cpp binding per process (loading it is most of the cost: ~1 s
// here, against ~0.1 s for a vocabulary), shared by every counter.
let binding: Promise<import("node-llama-cpp").Llama> | undefined;
function sharedLlama() {
  binding ??= import("node-llama-cpp").then(({ getLlama, LlamaLogLevel }) =>
    getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error }),
  );
  return binding;
}

/** A counter over a GGUF's vocabulary (loaded alone: no weights). */
export async function trainerCounter(gguf: string): Promise<TrainerCounter> {
  const llama = await sharedLlama();
  const model = await llama.loadModel({ modelPath: gguf, vocabOnly: true });
  const raw = model.fileInfo.metadata?.tokenizer?.chat_template;
  const template = templateOf(typeof raw === "string" ? raw : undefined);
  // llama_tokenize's add_special on the first piece: BOS, and EOS where the vocabulary adds it
  const special =
    (model.tokens.shouldPrependBosToken ? 1 : 0) +
    (model.tokens.shouldPrependBosToken && model.tokens.shouldAppendEosToken ? 1 : 0);
  return {
    template,
    count(row) {
      if (!template) return undefined;
      const pieces = trainerPieces(template, row);
      if (!pieces) return undefined;
      let n = 0;
      for (const p of pieces) {
        const k = model.tokenize(p, true).length;
        if (n === 0 && k > 0) n += special;
        n += k;
      }
      return n;
    },
    async dispose() {
      await model.dispose();
    },
  };
}
