/**
 * A model's dimensions (data/estimate.ts ModelDims) from what is at hand: a
 * GGUF header, the params of a random model, or a `shape:` hint.
 */
import { inspectGguf } from "./gguf.js";
import { buildVocab, resolveRandomParams, type RandomModelSpec } from "./random-model.js";
import { KNOWN_MODELS, knownModel, type ModelDims } from "../data/estimate.js";

const TYPE_NAMES: Record<number, string> = {
  0: "f32",
  1: "f16",
  2: "q4_0",
  8: "q8_0",
  12: "q4_k",
  14: "q6_k",
  30: "bf16",
};

/** Dimensions from a GGUF's header (reads the header only). */
export async function dimsFromGguf(path: string): Promise<ModelDims> {
  const g = await inspectGguf(path);
  const arch = String(g.metadata.get("general.architecture") ?? "");
  const num = (k: string) => {
    const v = g.metadata.get(`${arch}.${k}`);
    return typeof v === "number" ? v : typeof v === "bigint" ? Number(v) : undefined;
  };
  const need = (k: string) => {
    const v = num(k);
    if (v === undefined) throw new Error(`${path}: the GGUF header lacks ${arch}.${k}`);
    return v;
  };
  const nEmbd = need("embedding_length");
  const nHead = need("attention.head_count");
  const nHeadKv = num("attention.head_count_kv") ?? nHead;
  const headK = num("attention.key_length") ?? nEmbd / nHead;
  const embd = g.tensors.find((t) => t.name === "token_embd.weight");
  // the type most weight matrices have (a quantized model keeps some in other types)
  const counts = new Map<string, number>();
  for (const t of g.tensors)
    if (t.shape.length >= 2 && t.shape[1] > 1 && t.name.startsWith("blk.")) {
      const name = TYPE_NAMES[t.type] ?? `type ${t.type}`;
      counts.set(name, (counts.get(name) ?? 0) + 1);
    }
  const weightType = [...counts].sort((a, b) => b[1] - a[1])[0]?.[0] ?? "f32";
  return {
    arch,
    nLayer: need("block_count"),
    nEmbd,
    nHead,
    nHeadKv,
    nEmbdQ: nHead * headK,
    nEmbdKv: nHeadKv * headK,
    nFf: need("feed_forward_length"),
    nVocab: embd?.shape[1] ?? num("vocab_size") ?? 0,
    weightType,
    source: `the GGUF header of ${path}`,
  };
}

/** Dimensions of a `random:` model, as the model stage would write it. */
export function dimsFromRandom(spec: RandomModelSpec): ModelDims {
  const p = resolveRandomParams(spec);
  const headDim = p.n_embd / p.n_head;
  return {
    arch: p.architecture,
    nLayer: p.n_layer,
    nEmbd: p.n_embd,
    nHead: p.n_head,
    nHeadKv: p.n_head_kv,
    nEmbdQ: p.n_embd,
    nEmbdKv: headDim * p.n_head_kv,
    nFf: p.n_ff,
    nVocab: buildVocab().tokens.length,
    weightType: p.type.toLowerCase(),
    source: "the random model's params",
  };
}

/** The `shape:` hint of a model stage: a known model's name, or the dimensions themselves. */
export type ShapeHint =
  | string
  | {
      architecture?: string;
      n_layer: number;
      n_embd: number;
      n_head: number;
      n_head_kv?: number;
      head_dim?: number;
      n_ff: number;
      n_vocab: number;
      type?: string;
    };

export function dimsFromHint(h: ShapeHint): ModelDims {
  if (typeof h === "string") {
    const k = knownModel(h);
    if (!k)
      throw new Error(
        `shape: "${h}" is not a known model (${Object.keys(KNOWN_MODELS).join(", ")}); give the dimensions instead`,
      );
    return { ...k, source: `the shape: hint (${k.source})` };
  }
  const headDim = h.head_dim ?? h.n_embd / h.n_head;
  const nHeadKv = h.n_head_kv ?? h.n_head;
  return {
    arch: h.architecture ?? "llama",
    nLayer: h.n_layer,
    nEmbd: h.n_embd,
    nHead: h.n_head,
    nHeadKv,
    nEmbdQ: h.n_head * headDim,
    nEmbdKv: nHeadKv * headDim,
    nFf: h.n_ff,
    nVocab: h.n_vocab,
    weightType: (h.type ?? "f32").toLowerCase(),
    source: "the shape: hint",
  };
}
