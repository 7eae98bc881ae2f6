/**
 * Randomly initialised llama / qwen2 models written as real GGUF v3 files:
 * for tests, the demo and benchmarks of any shape. Same params → the same bytes.
 *
 * Tokenizer: SentencePiece-style ("llama") over a character-level vocabulary,
 * so llama.cpp tokenizes text into single characters. Every token the model can
 * emit renders as valid UTF-8 on its own (a random model samples anything, and
 * llama-server answers HTTP 500 on a response that is not UTF-8):
 *   - printable ASCII, "▁" for the space, and a few multi-byte characters;
 *   - byte tokens <0x00>..<0x7F> (newline, tab, ...; ASCII bytes are UTF-8);
 *   - <0x80>..<0xFF> exist only so that any input text can be tokenized (the
 *     SPM byte fallback aborts on a missing byte token); they are typed UNUSED,
 *     which llama.cpp renders as nothing, so emitting one never breaks UTF-8.
 */
import type { TensorSpec, GgufKv } from "./gguf-writer.js";
import { kv } from "./gguf-writer.js";
import { GGML_TYPE_F16, GGML_TYPE_F32 } from "./gguf.js";

export type Architecture = "llama" | "qwen2";

export interface InitStd {
  embed: number;
  attn: number;
  ffn: number;
  /**
   * Output layer. A frozen head of std 0.02 caps logits near 1.3, so LoRA can
   * barely lower the loss; 0.15 lets a random model learn in tests and the demo.
   */
  output: number;
}

export interface RandomModelParams {
  architecture: Architecture;
  n_embd: number;
  n_layer: number;
  n_head: number;
  n_head_kv: number;
  n_ff: number;
  context_length: number;
  type: "F32" | "F16";
  seed: number;
  initStd: InitStd;
  rope_freq_base: number;
  rms_norm_eps: number;
  name?: string;
}

/** Shapes of real models (vocabulary aside), for benchmarks. */
export const PRESETS: Record<string, Partial<RandomModelParams>> = {
  tiny: { n_embd: 64, n_layer: 2, n_head: 4, n_head_kv: 2, n_ff: 128, context_length: 512 },
  "qwen2.5-0.5b": {
    architecture: "qwen2",
    n_embd: 896,
    n_layer: 24,
    n_head: 14,
    n_head_kv: 2,
    n_ff: 4864,
    context_length: 32768,
    rope_freq_base: 1000000,
    rms_norm_eps: 1e-6,
  },
  "qwen2.5-7b": {
    architecture: "qwen2",
    n_embd: 3584,
    n_layer: 28,
    n_head: 28,
    n_head_kv: 4,
    n_ff: 18944,
    context_length: 32768,
    rope_freq_base: 1000000,
    rms_norm_eps: 1e-6,
  },
  "llama-3.1-8b": {
    architecture: "llama",
    n_embd: 4096,
    n_layer: 32,
    n_head: 32,
    n_head_kv: 8,
    n_ff: 14336,
    context_length: 131072,
    rope_freq_base: 500000,
    rms_norm_eps: 1e-5,
  },
};

export const DEFAULT_INIT_STD: InitStd = { embed: 0.02, attn: 0.02, ffn: 0.02, output: 0.15 };

/** The `random:` params as a user writes them: a preset plus overrides. */
export type RandomModelSpec = Partial<Omit<RandomModelParams, "initStd">> & {
  preset?: string;
  initStd?: Partial<InitStd>;
};

export function resolveRandomParams(spec: RandomModelSpec): RandomModelParams {
  const preset = spec.preset === undefined ? {} : PRESETS[spec.preset];
  if (!preset) throw new Error(`unknown preset ${JSON.stringify(spec.preset)}`);
  const base: RandomModelParams = {
    architecture: "llama",
    ...(PRESETS.tiny as Omit<RandomModelParams, "architecture">),
    type: "F32",
    seed: 0,
    rope_freq_base: 10000,
    rms_norm_eps: 1e-5,
    initStd: DEFAULT_INIT_STD,
  } as RandomModelParams;
  const merged = { ...base, ...preset } as RandomModelParams;
  for (const [k, v] of Object.entries(spec)) {
    if (k === "preset" || k === "initStd" || v === undefined) continue;
    (merged as unknown as Record<string, unknown>)[k] = v;
  }
  // n_head_kv defaults to n_head (no GQA) unless the preset or the user set it.
  if (spec.n_head !== undefined && spec.n_head_kv === undefined && preset.n_head_kv === undefined) {
    merged.n_head_kv = spec.n_head;
  }
  merged.initStd = { ...DEFAULT_INIT_STD, ...(preset.initStd ?? {}), ...(spec.initStd ?? {}) };
  return merged;
}

/** Shape problems, as [field, message]; empty when the shape is buildable. */
export function shapeIssues(p: RandomModelParams): [string, string][] {
  const issues: [string, string][] = [];
  const ints: (keyof RandomModelParams)[] = [
    "n_embd",
    "n_layer",
    "n_head",
    "n_head_kv",
    "n_ff",
    "context_length",
  ];
  for (const k of ints) {
    const v = p[k];
    if (typeof v !== "number" || !Number.isInteger(v) || v < 1) {
      issues.push([k, `${k} must be a positive integer, got ${JSON.stringify(v)}`]);
    }
  }
  if (issues.length) return issues;
  if (p.n_embd % p.n_head !== 0) {
    issues.push(["n_embd", `n_embd ${p.n_embd} is not divisible by n_head ${p.n_head}`]);
  } else if ((p.n_embd / p.n_head) % 2 !== 0) {
    issues.push([
      "n_head",
      `head size n_embd/n_head = ${p.n_embd / p.n_head} must be even (RoPE rotates pairs)`,
    ]);
  }
  if (p.n_head % p.n_head_kv !== 0) {
    issues.push(["n_head_kv", `n_head ${p.n_head} is not divisible by n_head_kv ${p.n_head_kv}`]);
  }
  if (p.architecture !== "llama" && p.architecture !== "qwen2") {
    issues.push(["architecture", `architecture must be llama or qwen2`]);
  }
  for (const [k, v] of Object.entries(p.initStd)) {
    if (typeof v !== "number" || !(v >= 0) || !Number.isFinite(v)) {
      issues.push([`initStd.${k}`, `initStd.${k} must be a finite number ≥ 0`]);
    }
  }
  return issues;
}

// SPM token types (llama.cpp's llama_token_type).
const NORMAL = 1;
const UNKNOWN = 2;
const CONTROL = 3;
const USER_DEFINED = 4;
const UNUSED = 5;
const BYTE = 6;

const MULTIBYTE = [..."éèàâçñöüß°±×÷πλμσΣ∑√∞≤≥≠→←—–…€中文😀"];

export interface Vocab {
  tokens: string[];
  scores: number[];
  types: number[];
  bos: number;
  eos: number;
  unk: number;
  pad: number;
}

export function buildVocab(): Vocab {
  const tokens: string[] = [];
  const types: number[] = [];
  const add = (t: string, type: number) => {
    tokens.push(t);
    types.push(type);
    return tokens.length - 1;
  };
  const unk = add("<unk>", UNKNOWN);
  const bos = add("<s>", CONTROL);
  const eos = add("</s>", CONTROL);
  const pad = add("<pad>", CONTROL);
  add("<|im_start|>", CONTROL);
  add("<|im_end|>", CONTROL); // llama.cpp treats it as end of generation by its text
  add("<think>", USER_DEFINED); // parsed from plain text and always rendered
  add("</think>", USER_DEFINED);
  for (let b = 0; b < 256; b++) {
    const hex = b.toString(16).toUpperCase().padStart(2, "0");
    add(`<0x${hex}>`, b < 0x80 ? BYTE : UNUSED);
  }
  add("\u2581", NORMAL); // SPM's space
  for (let c = 0x21; c < 0x7f; c++) add(String.fromCharCode(c), NORMAL);
  for (const ch of MULTIBYTE) add(ch, NORMAL);
  // Scores rank merges in SPM; there are no multi-character pieces to merge.
  const scores = tokens.map(() => 0);
  return { tokens, scores, types, bos, eos, unk, pad };
}

export const CHATML_TEMPLATE =
  "{%- for message in messages -%}" +
  "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' -}}" +
  "{%- endfor -%}" +
  "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}";

/**
 * xoshiro128**: small, fast, and the same sequence on every platform (integer
 * arithmetic only, no Math.random and no transcendental functions).
 */
class Rng {
  private s = new Uint32Array(4);
  constructor(seed: string) {
    // Seed by FNV-1a over the string, stretched with splitmix32.
    let h = 0x811c9dc5;
    for (let i = 0; i < seed.length; i++) h = Math.imul(h ^ seed.charCodeAt(i), 0x01000193);
    for (let i = 0; i < 4; i++) {
      h = (h + 0x9e3779b9) | 0;
      let z = h;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }
  next(): number {
    const s = this.s;
    const r = Math.imul(((Math.imul(s[1], 5) << 7) | (Math.imul(s[1], 5) >>> 25)) >>> 0, 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 11) | (s[3] >>> 21);
    return r;
  }
  /**
   * Zero-mean, unit-variance, bell-shaped: the sum of four 16-bit uniforms,
   * centred and scaled (Irwin–Hall). Exact in IEEE arithmetic, so the file is
   * byte-identical everywhere, and bounded (|x| ≤ 3.46), so no outliers.
   */
  normal(): number {
    const a = this.next();
    const b = this.next();
    const sum = (a & 0xffff) + (a >>> 16) + (b & 0xffff) + (b >>> 16);
    return (sum / 65535 - 2) * 1.7320508075688772;
  }
  /** `dst[i] = normal() * std` for every i: the same values, the state kept in locals (~4× faster). */
  fillNormal(dst: Float32Array, std: number): void {
    let s0 = this.s[0] | 0;
    let s1 = this.s[1] | 0;
    let s2 = this.s[2] | 0;
    let s3 = this.s[3] | 0;
    const k = (1.7320508075688772 * std) / 65535;
    const c = 2 * 1.7320508075688772 * std;
    for (let i = 0; i < dst.length; i++) {
      let sum = 0;
      for (let j = 0; j < 2; j++) {
        const m = Math.imul(s1, 5);
        const r = Math.imul((m << 7) | (m >>> 25), 9) >>> 0;
        const t = s1 << 9;
        s2 ^= s0;
        s3 ^= s1;
        s1 ^= s2;
        s0 ^= s3;
        s2 ^= t;
        s3 = (s3 << 11) | (s3 >>> 21);
        sum += (r & 0xffff) + (r >>> 16);
      }
      dst[i] = sum * k - c;
    }
    this.s[0] = s0;
    this.s[1] = s1;
    this.s[2] = s2;
    this.s[3] = s3;
  }
}

function randomTensor(
  name: string,
  shape: number[],
  type: number,
  std: number,
  seed: number,
): TensorSpec {
  let rng: Rng | undefined;
  let next = 0;
  return {
    name,
    shape,
    type: type as TensorSpec["type"],
    // Each tensor has its own stream keyed by (seed, name): a tensor's values do
    // not depend on the order or on the other tensors.
    fill(dst, start) {
      if (!rng || start !== next) {
        rng = new Rng(`${seed}:${name}`);
        for (let i = 0; i < start; i++) rng.normal();
      }
      rng.fillNormal(dst, std);
      next = start + dst.length;
    },
  };
}

function constTensor(name: string, shape: number[], value: number): TensorSpec {
  return { name, shape, type: GGML_TYPE_F32, fill: (dst) => dst.fill(value) };
}

export interface RandomModel {
  kvs: GgufKv[];
  tensors: TensorSpec[];
  parameterCount: number;
  vocabSize: number;
}

export function randomModel(p: RandomModelParams): RandomModel {
  const issues = shapeIssues(p);
  if (issues.length) throw new Error(issues.map((i) => i[1]).join("; "));
  const arch = p.architecture;
  const vocab = buildVocab();
  const nVocab = vocab.tokens.length;
  const headDim = p.n_embd / p.n_head;
  const nEmbdKv = headDim * p.n_head_kv;
  const wt = p.type === "F16" ? GGML_TYPE_F16 : GGML_TYPE_F32;
  const s = p.initStd;
  const T: TensorSpec[] = [];
  // Norm weights and biases stay F32, as llama.cpp's converters write them.
  T.push(randomTensor("token_embd.weight", [p.n_embd, nVocab], wt, s.embed, p.seed));
  for (let l = 0; l < p.n_layer; l++) {
    const b = `blk.${l}`;
    T.push(constTensor(`${b}.attn_norm.weight`, [p.n_embd], 1));
    T.push(randomTensor(`${b}.attn_q.weight`, [p.n_embd, p.n_embd], wt, s.attn, p.seed));
    T.push(randomTensor(`${b}.attn_k.weight`, [p.n_embd, nEmbdKv], wt, s.attn, p.seed));
    T.push(randomTensor(`${b}.attn_v.weight`, [p.n_embd, nEmbdKv], wt, s.attn, p.seed));
    if (arch === "qwen2") {
      T.push(randomTensor(`${b}.attn_q.bias`, [p.n_embd], GGML_TYPE_F32, s.attn, p.seed));
      T.push(randomTensor(`${b}.attn_k.bias`, [nEmbdKv], GGML_TYPE_F32, s.attn, p.seed));
      T.push(randomTensor(`${b}.attn_v.bias`, [nEmbdKv], GGML_TYPE_F32, s.attn, p.seed));
    }
    T.push(randomTensor(`${b}.attn_output.weight`, [p.n_embd, p.n_embd], wt, s.attn, p.seed));
    T.push(constTensor(`${b}.ffn_norm.weight`, [p.n_embd], 1));
    T.push(randomTensor(`${b}.ffn_gate.weight`, [p.n_embd, p.n_ff], wt, s.ffn, p.seed));
    T.push(randomTensor(`${b}.ffn_up.weight`, [p.n_embd, p.n_ff], wt, s.ffn, p.seed));
    T.push(randomTensor(`${b}.ffn_down.weight`, [p.n_ff, p.n_embd], wt, s.ffn, p.seed));
  }
  T.push(constTensor("output_norm.weight", [p.n_embd], 1));
  T.push(randomTensor("output.weight", [p.n_embd, nVocab], wt, s.output, p.seed));
  const parameterCount = T.reduce((a, t) => a + t.shape.reduce((x, d) => x * d, 1), 0);

  const name =
    p.name ??
    `random-${arch}-${p.n_embd}x${p.n_layer}-h${p.n_head}kv${p.n_head_kv}-ff${p.n_ff}-s${p.seed}`;
  const kvs: GgufKv[] = [
    kv.str("general.architecture", arch),
    kv.str("general.name", name),
    kv.str("general.type", "model"),
    kv.u32("general.file_type", p.type === "F16" ? 1 : 0),
    kv.u32("general.quantization_version", 2),
    kv.u32(`${arch}.context_length`, p.context_length),
    kv.u32(`${arch}.embedding_length`, p.n_embd),
    kv.u32(`${arch}.block_count`, p.n_layer),
    kv.u32(`${arch}.feed_forward_length`, p.n_ff),
    kv.u32(`${arch}.attention.head_count`, p.n_head),
    kv.u32(`${arch}.attention.head_count_kv`, p.n_head_kv),
    kv.f32(`${arch}.attention.layer_norm_rms_epsilon`, p.rms_norm_eps),
    kv.f32(`${arch}.rope.freq_base`, p.rope_freq_base),
    kv.u32(`${arch}.rope.dimension_count`, headDim),
    kv.u32(`${arch}.vocab_size`, nVocab),
    kv.str("tokenizer.ggml.model", "llama"),
    kv.strs("tokenizer.ggml.tokens", vocab.tokens),
    kv.f32s("tokenizer.ggml.scores", vocab.scores),
    kv.i32s("tokenizer.ggml.token_type", vocab.types),
    kv.u32("tokenizer.ggml.bos_token_id", vocab.bos),
    kv.u32("tokenizer.ggml.eos_token_id", vocab.eos),
    kv.u32("tokenizer.ggml.unknown_token_id", vocab.unk),
    kv.u32("tokenizer.ggml.padding_token_id", vocab.pad),
    kv.bool("tokenizer.ggml.add_bos_token", true),
    kv.bool("tokenizer.ggml.add_eos_token", false),
    // Text is not prefixed with a space: "a" tokenizes to "a", not "▁a".
    kv.bool("tokenizer.ggml.add_space_prefix", false),
    kv.str("tokenizer.chat_template", CHATML_TEMPLATE),
  ];
  return { kvs, tensors: T, parameterCount, vocabSize: nVocab };
}
