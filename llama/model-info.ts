/**
 * The `model.json` recorded beside every model artifact: what the GGUF says
 * about itself, read back through node-llama-cpp's GGUF reader (the same
 * reader later stages use to load it), plus sizes from our structural check.
 */
import { readFileSync } from "node:fs";
import { stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { BadStageInput } from "../engine/stage-api.js";
import { GGML_TYPES, GgufFormatError, inspectGguf, type GgufSummary } from "./gguf.js";

export interface ModelInfo {
  architecture: string;
  name?: string;
  ggufVersion: number;
  parameterCount: number;
  /** Number of tensors of each ggml type, e.g. {F32: 9, Q8_0: 14}. */
  tensorTypes: Record<string, number>;
  fileType?: number;
  contextLength?: number;
  embeddingLength?: number;
  blockCount?: number;
  headCount?: number;
  headCountKv?: number;
  feedForwardLength?: number;
  vocabSize?: number;
  tokenizer?: string;
  chatTemplate?: string;
  sizeBytes: number;
  /** Bits per weight over the tensor data (8 · tensor bytes / parameters). */
  bitsPerWeight: number;
}

/** Structural check with bad files reported as BadStageInput (exit 2, nothing cached). */
export async function checkGguf(path: string, what: string): Promise<GgufSummary> {
  try {
    return await inspectGguf(path);
  } catch (e) {
    if (e instanceof GgufFormatError) throw new BadStageInput(`${what}: ${e.message}`);
    throw e;
  }
}

function num(v: unknown): number | undefined {
  return typeof v === "number" ? v : typeof v === "bigint" ? Number(v) : undefined;
}

export async function readModelInfo(path: string, summary?: GgufSummary): Promise<ModelInfo> {
  const s = summary ?? (await checkGguf(path, "model"));
  const { readGgufFileInfo } = await import("node-llama-cpp");
  const info = await readGgufFileInfo(path, {
    readTensorInfo: true,
    logWarnings: false,
    // The token list of a real model is 150k strings: not needed here.
    ignoreKeys: [
      "tokenizer.ggml.tokens",
      "tokenizer.ggml.scores",
      "tokenizer.ggml.token_type",
      "tokenizer.ggml.merges",
    ],
  });
  const md = info.metadata as unknown as Record<string, Record<string, unknown>>;
  const general = (md.general ?? {}) as Record<string, unknown>;
  const arch = String(general.architecture ?? "unknown");
  const a = info.architectureMetadata as unknown as Record<string, unknown>;
  const attn = (a.attention ?? {}) as Record<string, unknown>;
  const tok = (md.tokenizer ?? {}) as Record<string, unknown>;
  const ggml = (tok.ggml ?? {}) as Record<string, unknown>;
  const tensorTypes: Record<string, number> = {};
  let params = 0;
  let dataBytes = 0;
  for (const t of info.tensorInfo ?? []) {
    const name = GGML_TYPES[t.ggmlType]?.[0] ?? `type${t.ggmlType}`;
    tensorTypes[name] = (tensorTypes[name] ?? 0) + 1;
    params += t.dimensions.reduce<number>((x, d) => x * Number(d), 1);
  }
  for (const t of s.tensors) dataBytes += t.bytes;
  const sizeBytes = (await stat(path)).size;
  // Our own reader summarises arrays as their length.
  const tokens = s.metadata.get("tokenizer.ggml.tokens") as { array: number } | undefined;
  return {
    architecture: arch,
    name: typeof general.name === "string" ? general.name : undefined,
    ggufVersion: info.version,
    parameterCount: params,
    tensorTypes,
    fileType: num(general.file_type),
    contextLength: num(a.context_length),
    embeddingLength: num(a.embedding_length),
    blockCount: num(a.block_count),
    headCount: num(attn.head_count),
    headCountKv: num(attn.head_count_kv),
    feedForwardLength: num(a.feed_forward_length),
    vocabSize: num(a.vocab_size) ?? tokens?.array,
    tokenizer: typeof ggml.model === "string" ? ggml.model : undefined,
    chatTemplate: typeof tok.chat_template === "string" ? tok.chat_template : undefined,
    sizeBytes,
    bitsPerWeight: params ? Math.round(((8 * dataBytes) / params) * 1000) / 1000 : 0,
  };
}

/**
 * Writes `model.json` next to `model.gguf` in `dir` and returns the headline
 * metrics. `weights: "random"` marks a model never trained (the model stage's
 * random initialisation, and its quantizations): what it answers is known
 * before it answers (estimates).
 */
export async function recordModel(
  dir: string,
  provenance: { weights?: "random" } = {},
): Promise<Record<string, unknown>> {
  const info = await readModelInfo(join(dir, "model.gguf"));
  await writeFile(
    join(dir, "model.json"),
    JSON.stringify({ ...info, ...provenance }, null, 2) + "\n",
  );
  return {
    architecture: info.architecture,
    parameterCount: info.parameterCount,
    tensorTypes: info.tensorTypes,
    contextLength: info.contextLength,
    sizeBytes: info.sizeBytes,
    bitsPerWeight: info.bitsPerWeight,
  };
}

/** Whether the model artifact in `dir` has random weights, never trained (its model.json says so). */
export function untrainedModel(dir: string): boolean {
  try {
    const j = JSON.parse(readFileSync(join(dir, "model.json"), "utf8")) as { weights?: unknown };
    return j.weights === "random";
  } catch {
    return false;
  }
}
