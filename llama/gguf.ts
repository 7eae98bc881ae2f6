/**
 * GGUF constants and a strict structural check of a GGUF file: magic,
 * version, every metadata value and tensor info parsed, and the data section
 * long enough for every tensor. node-llama-cpp's reader parses the header too,
 * but it never looks at the tensor data, so it would accept a file cut short in
 * the middle of the weights; this check catches that before llama.cpp does
 * (where it would be a crash deep inside a later stage).
 */
import { open, type FileHandle } from "node:fs/promises";

export const GGUF_MAGIC = "GGUF";
export const GGUF_DEFAULT_ALIGNMENT = 32;

/** GGUF metadata value types (gguf.h). */
export enum GgufType {
  UINT8 = 0,
  INT8 = 1,
  UINT16 = 2,
  INT16 = 3,
  UINT32 = 4,
  INT32 = 5,
  FLOAT32 = 6,
  BOOL = 7,
  STRING = 8,
  ARRAY = 9,
  UINT64 = 10,
  INT64 = 11,
  FLOAT64 = 12,
}

const SCALAR_SIZE: Partial<Record<GgufType, number>> = {
  [GgufType.UINT8]: 1,
  [GgufType.INT8]: 1,
  [GgufType.UINT16]: 2,
  [GgufType.INT16]: 2,
  [GgufType.UINT32]: 4,
  [GgufType.INT32]: 4,
  [GgufType.FLOAT32]: 4,
  [GgufType.BOOL]: 1,
  [GgufType.UINT64]: 8,
  [GgufType.INT64]: 8,
  [GgufType.FLOAT64]: 8,
};

/**
 * ggml tensor types: [name, block size in elements, bytes per block]. Printed
 * from ggml_blck_size/ggml_type_size of the bundled llama.cpp (v0.4.0), so
 * sizes match what llama.cpp itself expects.
 */
export const GGML_TYPES: Record<number, readonly [string, number, number]> = {
  0: ["F32", 1, 4],
  1: ["F16", 1, 2],
  2: ["Q4_0", 32, 18],
  3: ["Q4_1", 32, 20],
  6: ["Q5_0", 32, 22],
  7: ["Q5_1", 32, 24],
  8: ["Q8_0", 32, 34],
  9: ["Q8_1", 32, 36],
  10: ["Q2_K", 256, 84],
  11: ["Q3_K", 256, 110],
  12: ["Q4_K", 256, 144],
  13: ["Q5_K", 256, 176],
  14: ["Q6_K", 256, 210],
  15: ["Q8_K", 256, 292],
  16: ["IQ2_XXS", 256, 66],
  17: ["IQ2_XS", 256, 74],
  18: ["IQ3_XXS", 256, 98],
  19: ["IQ1_S", 256, 50],
  20: ["IQ4_NL", 32, 18],
  21: ["IQ3_S", 256, 110],
  22: ["IQ2_S", 256, 82],
  23: ["IQ4_XS", 256, 136],
  24: ["I8", 1, 1],
  25: ["I16", 1, 2],
  26: ["I32", 1, 4],
  27: ["I64", 1, 8],
  28: ["F64", 1, 8],
  29: ["IQ1_M", 256, 56],
  30: ["BF16", 1, 2],
  34: ["TQ1_0", 256, 54],
  35: ["TQ2_0", 256, 66],
  39: ["MXFP4", 32, 17],
  40: ["NVFP4", 64, 36],
  41: ["Q1_0", 128, 18],
  42: ["Q2_0", 64, 18],
};

export const GGML_TYPE_F32 = 0;
export const GGML_TYPE_F16 = 1;

/** Bytes of a tensor of `type` with `shape` (ne0 first), or an error string. */
export function tensorBytes(type: number, shape: readonly number[]): number | string {
  const t = GGML_TYPES[type];
  if (!t) return `unknown ggml type ${type}`;
  const [name, block, bytes] = t;
  const ne0 = shape[0] ?? 1;
  if (ne0 % block !== 0)
    return `row of ${ne0} elements is not a multiple of ${name}'s block ${block}`;
  let rows = 1;
  for (const d of shape.slice(1)) rows *= d;
  return (ne0 / block) * bytes * rows;
}

/** A ggml type's name as valley writes it ("f32", "bf16", "q4_k"), or "type N" when unknown. */
export function ggmlTypeName(type: number): string {
  return GGML_TYPES[type]?.[0].toLowerCase() ?? `type ${type}`;
}

/** A transformer's dimensions as its GGUF header states them. */
export interface HeaderDims {
  arch: string;
  nLayer: number;
  nEmbd: number;
  nHead: number;
  nHeadKv: number;
  /** Q width (heads × key length) and K/V width (kv heads × key length). */
  nEmbdQ: number;
  nEmbdKv: number;
  nFf: number;
  nVocab: number;
}

/**
 * The dimensions from a GGUF header's `<arch>.*` keys (and the embedding
 * tensor's width for the vocabulary). `where` prefixes the error for a
 * missing key.
 */
export function headerDims(g: GgufSummary, where = ""): HeaderDims {
  const arch = String(g.metadata.get("general.architecture") ?? "");
  const num = (k: string) => {
    const v = g.metadata.get(`${arch}.${k}`);
    return typeof v === "number" ? v : typeof v === "bigint" ? Number(v) : undefined;
  };
  const need = (k: string) => {
    const v = num(k);
    if (v === undefined) throw new Error(`${where}the GGUF header lacks ${arch}.${k}`);
    return v;
  };
  const nEmbd = need("embedding_length");
  const nHead = need("attention.head_count");
  const nHeadKv = num("attention.head_count_kv") ?? nHead;
  const headK = num("attention.key_length") ?? nEmbd / nHead;
  const embd = g.tensors.find((t) => t.name === "token_embd.weight");
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
  };
}

export interface GgufTensorSummary {
  name: string;
  shape: number[];
  type: number;
  /** Offset relative to the start of the data section. */
  offset: number;
  bytes: number;
}

export interface GgufSummary {
  version: number;
  /** Metadata with arrays summarised as their length (tokens can be 150k entries). */
  metadata: Map<string, unknown>;
  tensors: GgufTensorSummary[];
  alignment: number;
  dataOffset: number;
  fileSize: number;
}

/** Thrown for any structural problem; the message says what and where. */
export class GgufFormatError extends Error {
  override name = "GgufFormatError";
}

/** A sequential reader over a file handle with a read-ahead buffer. */
class Cursor {
  pos = 0;
  private buf = Buffer.alloc(0);
  private bufStart = 0;
  constructor(
    private readonly fh: FileHandle,
    readonly size: number,
    private readonly what: string,
  ) {}

  private async need(n: number, field: string): Promise<void> {
    if (this.pos + n > this.size) {
      throw new GgufFormatError(
        `${this.what}: file ends at byte ${this.size} while reading ${field} at byte ${this.pos} (truncated?)`,
      );
    }
    const end = this.bufStart + this.buf.length;
    if (this.pos >= this.bufStart && this.pos + n <= end) return;
    const len = Math.min(Math.max(n, 1 << 20), this.size - this.pos);
    const b = Buffer.alloc(len);
    const { bytesRead } = await this.fh.read(b, 0, len, this.pos);
    if (bytesRead < n) throw new GgufFormatError(`${this.what}: short read at byte ${this.pos}`);
    this.buf = b.subarray(0, bytesRead);
    this.bufStart = this.pos;
  }

  async bytes(n: number, field: string): Promise<Buffer> {
    await this.need(n, field);
    const o = this.pos - this.bufStart;
    this.pos += n;
    return this.buf.subarray(o, o + n);
  }
  async u32(field: string): Promise<number> {
    return (await this.bytes(4, field)).readUInt32LE(0);
  }
  async u64(field: string): Promise<number> {
    const v = (await this.bytes(8, field)).readBigUInt64LE(0);
    if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new GgufFormatError(`${this.what}: implausible ${field} ${v} at byte ${this.pos - 8}`);
    }
    return Number(v);
  }
  async str(field: string): Promise<string> {
    const n = await this.u64(`${field} length`);
    return (await this.bytes(n, field)).toString("utf8");
  }
  async skip(n: number, field: string): Promise<void> {
    if (this.pos + n > this.size) await this.need(n, field);
    this.pos += n;
  }
}

async function readValue(c: Cursor, type: number, field: string): Promise<unknown> {
  switch (type) {
    case GgufType.STRING:
      return c.str(field);
    case GgufType.ARRAY: {
      const et = await c.u32(`${field} element type`);
      const n = await c.u64(`${field} element count`);
      if (et === GgufType.ARRAY) throw new GgufFormatError(`${field}: nested arrays are not GGUF`);
      if (et === GgufType.STRING) {
        for (let i = 0; i < n; i++) await c.str(`${field}[${i}]`);
      } else {
        const size = SCALAR_SIZE[et as GgufType];
        if (size === undefined) throw new GgufFormatError(`${field}: unknown element type ${et}`);
        await c.skip(size * n, field);
      }
      return { array: n };
    }
    default: {
      const size = SCALAR_SIZE[type as GgufType];
      if (size === undefined) throw new GgufFormatError(`${field}: unknown value type ${type}`);
      const b = await c.bytes(size, field);
      switch (type as GgufType) {
        case GgufType.UINT8:
          return b.readUInt8(0);
        case GgufType.INT8:
          return b.readInt8(0);
        case GgufType.UINT16:
          return b.readUInt16LE(0);
        case GgufType.INT16:
          return b.readInt16LE(0);
        case GgufType.UINT32:
          return b.readUInt32LE(0);
        case GgufType.INT32:
          return b.readInt32LE(0);
        case GgufType.FLOAT32:
          return b.readFloatLE(0);
        case GgufType.BOOL:
          return b.readUInt8(0) !== 0;
        case GgufType.UINT64:
          return Number(b.readBigUInt64LE(0));
        case GgufType.INT64:
          return Number(b.readBigInt64LE(0));
        default:
          return b.readDoubleLE(0);
      }
    }
  }
}

/**
 * Parses the header of a GGUF file and checks that the file holds every
 * tensor's data. Throws GgufFormatError naming the problem.
 */
export async function inspectGguf(path: string): Promise<GgufSummary> {
  const fh = await open(path, "r");
  try {
    const size = (await fh.stat()).size;
    const c = new Cursor(fh, size, path);
    if (size < 4) throw new GgufFormatError(`${path}: ${size} bytes, too short to be a GGUF file`);
    const magic = (await c.bytes(4, "magic")).toString("latin1");
    if (magic !== GGUF_MAGIC) {
      throw new GgufFormatError(
        `${path}: not a GGUF file (starts with ${JSON.stringify(magic)}, expected "GGUF")`,
      );
    }
    const version = await c.u32("version");
    if (version !== 2 && version !== 3) {
      throw new GgufFormatError(`${path}: GGUF version ${version} is not supported (2 or 3)`);
    }
    const nTensors = await c.u64("tensor count");
    const nKv = await c.u64("metadata count");
    const metadata = new Map<string, unknown>();
    for (let i = 0; i < nKv; i++) {
      const key = await c.str(`metadata key #${i}`);
      const type = await c.u32(`type of ${key}`);
      metadata.set(key, await readValue(c, type, key));
    }
    const al = metadata.get("general.alignment");
    const alignment = typeof al === "number" ? al : GGUF_DEFAULT_ALIGNMENT;
    if (!(alignment > 0 && (alignment & (alignment - 1)) === 0)) {
      throw new GgufFormatError(`${path}: general.alignment ${alignment} is not a power of two`);
    }
    const tensors: GgufTensorSummary[] = [];
    for (let i = 0; i < nTensors; i++) {
      const name = await c.str(`tensor name #${i}`);
      const nDims = await c.u32(`${name} dimension count`);
      if (nDims < 1 || nDims > 4) throw new GgufFormatError(`${path}: ${name} has ${nDims} dims`);
      const shape: number[] = [];
      for (let d = 0; d < nDims; d++) shape.push(await c.u64(`${name} dim ${d}`));
      const type = await c.u32(`${name} type`);
      const offset = await c.u64(`${name} offset`);
      const bytes = tensorBytes(type, shape);
      if (typeof bytes === "string") throw new GgufFormatError(`${path}: tensor ${name}: ${bytes}`);
      if (offset % alignment !== 0) {
        throw new GgufFormatError(`${path}: tensor ${name} offset ${offset} is not aligned`);
      }
      tensors.push({ name, shape, type, offset, bytes });
    }
    const dataOffset = Math.ceil(c.pos / alignment) * alignment;
    let end = dataOffset;
    for (const t of tensors) end = Math.max(end, dataOffset + t.offset + t.bytes);
    if (end > size) {
      throw new GgufFormatError(
        `${path}: truncated: tensor data needs ${end} bytes but the file has ${size}`,
      );
    }
    return { version, metadata, tensors, alignment, dataOffset, fileSize: size };
  } finally {
    await fh.close();
  }
}
