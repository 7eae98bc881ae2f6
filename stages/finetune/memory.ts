/**
 * The memory model of valley-lora: peak memory of a LoRA run from the base's
 * shape (its GGUF header), the window L, the rank, the targets, the base's
 * weight type and checkpointing. The finetune stage refuses, before queueing,
 * a run that cannot fit the memory it may use, and says what would fit.
 *
 * Terms, each a separate piece so that a change to the trainer replaces one:
 * - weights: the base as stored (mmap'd on the CPU, every page touched);
 * - adapter: LoRA A and B, their gradients and AdamW's two moments (F32), plus
 *   a gradient accumulator when batch > 1;
 * - kvCache: K and V of every layer for the window, F32 (training needs F32);
 * - attention: with flash attention (patch 0010; valley-lora's default on the
 *   CPU) the F16 KQ mask, 2·L² bytes, the only quadratic term, plus one layer's
 *   dQ, dK, dV and row statistics; materialised (flash attention off):
 *   ggml-opt allocates forward and backward as one graph, so every layer's
 *   softmax [L, L, heads] (F32) stays alive until its backward reader, plus one
 *   more in flight and the F32 mask: 4·L²·(H·(N+1) + 1) bytes;
 * - activations: what the graph keeps per token and layer (inputs of the LoRA
 *   products, norms, the SwiGLU inputs, Q/K/V, gradients in flight), linear in
 *   L; fitted against measured peak RSS (see ACTIVATION_* below);
 * - logits: logits, one-hot labels and their gradient, F32 [vocab, L] each;
 * - runtime: the program, its libraries and heap, a constant.
 *
 * With checkpointing (patch 0010) only the layer inputs are kept and one
 * layer's activations are recomputed at a time; checked against measurements
 * like the rest (test/finetune-scale.test.ts).
 *
 * mirrored by stages/finetune/native/valley-lora-memory.cpp (valley-lora
 * --estimate-memory); test/finetune-scale.test.ts checks both agree.
 */
import { ggmlTypeName, headerDims, type GgufSummary, type HeaderDims } from "../../llama/gguf.js";

export interface ModelShape extends HeaderDims {
  /** Bytes of every tensor as stored. */
  weightBytes: number;
  /** Bytes if every weight matrix were F16/BF16 (1-D tensors stay F32). */
  halfWeightBytes: number;
  /** Distinct ggml type names of the weight matrices, e.g. ["f32"] or ["bf16"]. */
  matrixTypes: string[];
  /** LoRA-able matrices: name → [n_in, n_out]. */
  matrices: Map<string, [number, number]>;
}

export interface MemoryConfig {
  /** Window in tokens (the trainer rounds it up to a multiple of 256). */
  window: number;
  rank: number;
  targets: string[];
  /** Examples per optimizer step: > 1 adds a gradient accumulator. */
  batch: number;
  checkpointing: boolean;
  /**
   * valley-lora's `--checkpointing auto`: checkpointing is on for windows of this many tokens or more,
   * whatever `checkpointing` says (so that longestWindow follows auto across the threshold).
   */
  checkpointFrom?: number;
  /** Flash attention in training (valley-lora's default on the CPU): its backward pass recomputes the softmax. */
  flashAttention: boolean;
  /** "as-stored" (default) or a half type the base would be converted to. */
  weights?: "as-stored" | "half";
}

/** Head sizes a CUDA build of this tree runs flash attention for in training: its forward kernels take F32 K/V
 * (as F16) of these equal K/V sizes (fattn.cu); the backward kernel (patch 0011) takes up to 256. */
export const CUDA_FLASH_HEAD_SIZES = [64, 80, 96, 112, 128, 256];

/**
 * valley-lora's `--flash-attn auto` as planned before a run: on for the CPU; on GPUs where the base's head size
 * is one a CUDA build runs both passes for (valley-lora itself asks the GPUs it sees, with the same result on a
 * CUDA build of this tree).
 */
export function flashAttentionAuto(
  onGpu: boolean,
  dims: Pick<HeaderDims, "nHead" | "nEmbdQ">,
): boolean {
  return !onGpu || CUDA_FLASH_HEAD_SIZES.includes(dims.nEmbdQ / dims.nHead);
}

export interface MemoryEstimate {
  window: number;
  bytes: {
    weights: number;
    adapter: number;
    kvCache: number;
    attention: number;
    activations: number;
    logits: number;
    runtime: number;
  };
  total: number;
}

// Per token and layer, in F32 elements, with the weights, adapter, KV cache,
// attention and logits terms fixed: a least-squares fit (relative errors) to
// valley-lora's peak RSS on 21 runs of 7 shapes (embedding 128/256, FFN
// 384/704/1,536, 1-6 layers, 2-8 heads, rank 16/128, L = 512 ... 8,192), all
// within ±6.5%. The fit is physical (all positive); the random models' vocabulary
// (~360 tokens) is too small to calibrate the logits, so that term is counted
// (LOGIT_COPIES), not fitted.
export const ACTIVATION_PER_EMBD = 4.36;
export const ACTIVATION_PER_FF = 2.92;
export const ACTIVATION_PER_RANK_TARGET = 0.3;
/**
 * With flash attention, per token and kept layer, in F32 elements of the
 * embedding width: what the recomputing backward pass holds on top of the
 * activations above (its dQ/dK/dV, the attention output and its gradient in
 * flight). Fitted to 17 runs of three shapes (embedding 128/256, 1-4 layers,
 * 2-8 heads, L = 512 ... 8,192, checkpointing on and off): all within ±5%.
 */
export const FLASH_PER_EMBD_LAYER = 4.8;
/** Per token, F32 elements of the vocabulary: logits, labels, their gradient. */
export const LOGIT_COPIES = 3;
/** The program, libraries and heap (the fit's constant). */
export const RUNTIME_BYTES = 14.5 * 2 ** 20;

const F32 = 4;

/** The shape of a base model from its GGUF header (inspectGguf). */
export function shapeFromGguf(g: GgufSummary): ModelShape {
  const matrices = new Map<string, [number, number]>();
  const types = new Set<string>();
  let weightBytes = 0;
  let halfWeightBytes = 0;
  for (const t of g.tensors) {
    weightBytes += t.bytes;
    const matrix = t.shape.length >= 2 && t.shape[1] > 1;
    const elements = t.shape.reduce((a, b) => a * b, 1);
    halfWeightBytes += matrix ? Math.min(t.bytes, 2 * elements) : t.bytes;
    if (matrix) {
      matrices.set(t.name, [t.shape[0], t.shape[1]]);
      if (t.name !== "token_embd.weight") types.add(ggmlTypeName(t.type));
    }
  }
  return {
    ...headerDims(g),
    weightBytes,
    halfWeightBytes,
    matrixTypes: [...types].sort(),
    matrices,
  };
}

/** LoRA parameters: r·(n_in + n_out) for every matrix a target names. */
export function loraParams(shape: ModelShape, rank: number, targets: string[]): number {
  let n = 0;
  for (const [name, [nIn, nOut]] of shape.matrices) {
    const hit = targets.some((t) =>
      t === "output"
        ? name === "output.weight"
        : name.endsWith(`.${t}.weight`) && name.startsWith("blk."),
    );
    if (hit) n += rank * (nIn + nOut);
  }
  return n;
}

/** The window the trainer uses for a given maxSeqLen (or ctx): a multiple of 256. */
export function windowFor(tokens: number): number {
  return Math.ceil(Math.max(1, tokens) / 256) * 256;
}

/**
 * Attention. Flash attention: the F16 mask [L, L] (the only quadratic term)
 * and one layer's dQ, dK, dV and row statistics in flight. Materialised: every
 * kept layer's softmax [L, L, heads] F32, one more in flight and the F32 mask.
 */
export function attentionBytes(
  shape: ModelShape,
  L: number,
  checkpointing: boolean,
  flashAttention: boolean,
): number {
  if (flashAttention) {
    return 2 * L * L + F32 * L * (shape.nEmbdQ + 2 * shape.nEmbdKv + 2 * shape.nHead);
  }
  // checkpointing keeps one layer's softmax (recomputed) instead of all N
  const kept = checkpointing ? 1 : shape.nLayer;
  return F32 * L * L * (shape.nHead * (kept + 1) + 1);
}

export function estimateMemory(shape: ModelShape, cfg0: MemoryConfig): MemoryEstimate {
  const L = windowFor(cfg0.window);
  const cfg = {
    ...cfg0,
    checkpointing:
      cfg0.checkpointFrom !== undefined ? L >= cfg0.checkpointFrom : cfg0.checkpointing,
  };
  const N = shape.nLayer;
  const P = loraParams(shape, cfg.rank, cfg.targets);
  const targetsPerLayer = cfg.targets.filter((t) => t !== "output").length;
  const perLayerToken =
    ACTIVATION_PER_EMBD * shape.nEmbd +
    ACTIVATION_PER_FF * shape.nFf +
    ACTIVATION_PER_RANK_TARGET * cfg.rank * targetsPerLayer;
  // checkpointing: every layer's input, plus one layer's activations recomputed
  const layersKept = cfg.checkpointing ? 1 : N;
  const flashPerLayerToken = cfg.flashAttention ? FLASH_PER_EMBD_LAYER * shape.nEmbd : 0;
  const activations =
    F32 *
    L *
    ((perLayerToken + flashPerLayerToken) * layersKept + (cfg.checkpointing ? N * shape.nEmbd : 0));
  const bytes = {
    weights: cfg.weights === "half" ? shape.halfWeightBytes : shape.weightBytes,
    adapter: F32 * P * (4 + (cfg.batch > 1 ? 1 : 0)),
    kvCache: F32 * 2 * N * L * shape.nEmbdKv,
    attention: attentionBytes(shape, L, cfg.checkpointing, cfg.flashAttention),
    activations,
    logits: F32 * LOGIT_COPIES * L * shape.nVocab,
    runtime: RUNTIME_BYTES,
  };
  const total = Object.values(bytes).reduce((a, b) => a + b, 0);
  return { window: L, bytes, total };
}

/** The longest window (a multiple of 256) whose estimate fits `limit` bytes; 0 if none. */
export function longestWindow(shape: ModelShape, cfg: MemoryConfig, limit: number): number {
  let best = 0;
  for (let L = 256; L <= 1 << 20; L += 256) {
    if (estimateMemory(shape, { ...cfg, window: L }).total > limit) break;
    best = L;
  }
  return best;
}

const GiB = 2 ** 30;
const gib = (b: number) => `${(b / GiB).toFixed(2)} GiB`;

/**
 * Null when the run fits `limit` bytes; else a message with the estimate, its
 * largest terms and what would fit: a shorter window, checkpointing (when the
 * trainer has it), a half-precision base.
 */
export function fitProblem(
  shape: ModelShape,
  cfg: MemoryConfig,
  limit: number,
  where: string,
  opts: { checkpointingAvailable: boolean },
): string | null {
  const est = estimateMemory(shape, cfg);
  if (est.total <= limit) return null;
  const parts = Object.entries(est.bytes)
    .sort((a, b) => b[1] - a[1])
    .slice(0, 3)
    .map(([k, v]) => `${k} ${gib(v)}`)
    .join(", ");
  const fixes: string[] = [];
  const L = longestWindow(shape, cfg, limit);
  fixes.push(L > 0 ? `maxSeqLen ≤ ${L}` : "no window fits at all with these settings");
  const ckNow =
    cfg.checkpointFrom !== undefined ? est.window >= cfg.checkpointFrom : cfg.checkpointing;
  if (opts.checkpointingAvailable && !ckNow) {
    const withCk = longestWindow(
      shape,
      { ...cfg, checkpointing: true, checkpointFrom: undefined },
      limit,
    );
    if (withCk > L) fixes.push(`checkpointing: true (then maxSeqLen ≤ ${withCk})`);
  }
  if (cfg.weights !== "half" && shape.halfWeightBytes < shape.weightBytes) {
    const half = { ...cfg, weights: "half" as const };
    const fits = estimateMemory(shape, half).total <= limit;
    const withHalf = longestWindow(shape, half, limit);
    fixes.push(
      fits
        ? `a BF16 or F16 base (llama-quantize base.gguf base-bf16.gguf BF16), ${gib(estimateMemory(shape, half).total)}`
        : `a BF16 or F16 base saves ${gib(shape.weightBytes - shape.halfWeightBytes)} (then maxSeqLen ≤ ${withHalf})`,
    );
  }
  return (
    `a window of ${est.window} tokens needs about ${gib(est.total)} (${parts}), more than the ${gib(limit)} ${where}; ` +
    `what would fit: ${fixes.join("; ")}`
  );
}
