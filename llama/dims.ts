/**
 * A model's dimensions (data/estimate.ts ModelDims) from what is at hand: a
 * GGUF header, the params of a random model, or a `shape:` hint.
 */
import { ggmlTypeName, headerDims, inspectGguf } from "./gguf.js";
import { buildVocab, resolveRandomParams, type RandomModelSpec } from "./random-model.js";
import { KNOWN_MODELS, knownModel, type ModelDims } from "../data/estimate.js";

/** Dimensions from a GGUF's header (reads the header only). */
export async function dimsFromGguf(path: string): Promise<ModelDims> {
  const g = await inspectGguf(path);
  // the type most weight matrices have (a quantized model keeps some in other types)
  const counts = new Map<string, number>();
  for (const t of g.tensors)
    if (t.shape.length >= 2 && t.shape[1] > 1 && t.name.startsWith("blk.")) {
      const name = ggmlTypeName(t.type);
      counts.set(name, (counts.get(name) ?? 0) + 1);
    }
  const weightType = [...counts].sort((a, b) => b[1] - a[1])[0]?.[0] ?? "f32";
  return {
    ...headerDims(g, `${path}: `),
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
