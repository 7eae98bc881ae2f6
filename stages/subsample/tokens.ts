/**
 * Example lengths in the student's own tokens, so that `maxTokens` means what
 * the trainer's `maxSeqLen` means. The trainer (valley-lora) renders a chat
 * with llama_chat_apply_template and tokenizes it turn by turn; this counts
 * each message's content with the student's vocabulary (llama.cpp's tokenizer
 * through node-llama-cpp, vocabulary only) plus the template's scaffolding
 * per turn (chatml or Llama 3 headers, tokenized the same way) plus a margin
 * of 2 tokens per turn for merges across turn boundaries, and the BOS token.
 * It errs long: an example it keeps is never dropped by the trainer for
 * length, which is what makes `n` exact.
 */
import type { Message } from "../../data/chat.js";

export interface TokenCounter {
  count(messages: Message[]): number;
  dispose(): Promise<void>;
}

const MARGIN = 2;

export async function studentCounter(gguf: string): Promise<TokenCounter> {
  const { getLlama, LlamaLogLevel } = await import("node-llama-cpp");
  const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
  const model = await llama.loadModel({ modelPath: gguf, vocabOnly: true });
  const template = String(model.fileInfo.metadata?.tokenizer?.chat_template ?? "");
  const llama3 = template.includes("<|start_header_id|>");
  const scaffold = (role: string) =>
    llama3
      ? `<|start_header_id|>${role}<|end_header_id|>\n\n<|eot_id|>`
      : `<|im_start|>${role}\n<|im_end|>\n`;
  const overhead = new Map<string, number>();
  const perTurn = (role: string) => {
    if (!overhead.has(role)) overhead.set(role, model.tokenize(scaffold(role), true).length);
    return overhead.get(role)!;
  };
  return {
    count(messages) {
      let n = 1; // BOS
      for (const m of messages)
        n += model.tokenize(m.content, false).length + perTurn(m.role) + MARGIN;
      return n;
    },
    async dispose() {
      await model.dispose();
      await llama.dispose();
    },
  };
}
