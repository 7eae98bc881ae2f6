/**
 * A streaming GGUF v3 writer: the header is laid out first (all tensor sizes
 * are known from their shapes), then each tensor's data is produced in chunks
 * and written, so a 7B-shaped model never has to fit in memory.
 */
import { open } from "node:fs/promises";
import {
  GGML_TYPE_F16,
  GGML_TYPE_F32,
  GGUF_DEFAULT_ALIGNMENT,
  GgufType,
  tensorBytes,
} from "./gguf.js";

export type GgufKv =
  | { key: string; type: GgufType.STRING; value: string }
  | { key: string; type: GgufType.BOOL; value: boolean }
  | {
      key: string;
      type: GgufType.UINT32 | GgufType.INT32 | GgufType.FLOAT32 | GgufType.UINT64;
      value: number;
    }
  | { key: string; type: GgufType.ARRAY; elemType: GgufType.STRING; value: readonly string[] }
  | {
      key: string;
      type: GgufType.ARRAY;
      elemType: GgufType.FLOAT32 | GgufType.INT32;
      value: readonly number[];
    };

export const kv = {
  str: (key: string, value: string): GgufKv => ({ key, type: GgufType.STRING, value }),
  bool: (key: string, value: boolean): GgufKv => ({ key, type: GgufType.BOOL, value }),
  u32: (key: string, value: number): GgufKv => ({ key, type: GgufType.UINT32, value }),
  f32: (key: string, value: number): GgufKv => ({ key, type: GgufType.FLOAT32, value }),
  strs: (key: string, value: readonly string[]): GgufKv => ({
    key,
    type: GgufType.ARRAY,
    elemType: GgufType.STRING,
    value,
  }),
  f32s: (key: string, value: readonly number[]): GgufKv => ({
    key,
    type: GgufType.ARRAY,
    elemType: GgufType.FLOAT32,
    value,
  }),
  i32s: (key: string, value: readonly number[]): GgufKv => ({
    key,
    type: GgufType.ARRAY,
    elemType: GgufType.INT32,
    value,
  }),
};

export interface TensorSpec {
  name: string;
  /** ggml order: ne0 (the contiguous dimension) first. */
  shape: readonly number[];
  type: typeof GGML_TYPE_F32 | typeof GGML_TYPE_F16;
  /** Fills `dst` with elements [start, start + dst.length) of the tensor. */
  fill(dst: Float32Array, start: number): void;
}

/** Grows a byte buffer for the header. */
class Bytes {
  private buf = Buffer.alloc(1 << 16);
  len = 0;
  private room(n: number): void {
    if (this.len + n <= this.buf.length) return;
    const b = Buffer.alloc(Math.max(this.buf.length * 2, this.len + n));
    this.buf.copy(b, 0, 0, this.len);
    this.buf = b;
  }
  u32(v: number): void {
    this.room(4);
    this.buf.writeUInt32LE(v, this.len);
    this.len += 4;
  }
  i32(v: number): void {
    this.room(4);
    this.buf.writeInt32LE(v, this.len);
    this.len += 4;
  }
  u64(v: number): void {
    this.room(8);
    this.buf.writeBigUInt64LE(BigInt(v), this.len);
    this.len += 8;
  }
  f32(v: number): void {
    this.room(4);
    this.buf.writeFloatLE(v, this.len);
    this.len += 4;
  }
  u8(v: number): void {
    this.room(1);
    this.buf.writeUInt8(v, this.len);
    this.len += 1;
  }
  str(s: string): void {
    const b = Buffer.from(s, "utf8");
    this.u64(b.length);
    this.room(b.length);
    b.copy(this.buf, this.len);
    this.len += b.length;
  }
  pad(alignment: number): void {
    const n = (alignment - (this.len % alignment)) % alignment;
    this.room(n);
    this.buf.fill(0, this.len, this.len + n);
    this.len += n;
  }
  bytes(): Buffer {
    return this.buf.subarray(0, this.len);
  }
}

function writeKv(b: Bytes, e: GgufKv): void {
  b.str(e.key);
  b.u32(e.type);
  switch (e.type) {
    case GgufType.STRING:
      b.str(e.value);
      return;
    case GgufType.BOOL:
      b.u8(e.value ? 1 : 0);
      return;
    case GgufType.UINT32:
      b.u32(e.value);
      return;
    case GgufType.INT32:
      b.i32(e.value);
      return;
    case GgufType.FLOAT32:
      b.f32(e.value);
      return;
    case GgufType.UINT64:
      b.u64(e.value);
      return;
    case GgufType.ARRAY:
      b.u32(e.elemType);
      b.u64(e.value.length);
      if (e.elemType === GgufType.STRING) for (const s of e.value) b.str(s);
      else if (e.elemType === GgufType.FLOAT32) for (const v of e.value) b.f32(v);
      else for (const v of e.value) b.i32(v);
      return;
  }
}

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE half from a float, rounding to nearest even (what numpy/ggml do). */
export function toHalf(x: number): number {
  f32[0] = x;
  const bits = u32[0];
  const sign = (bits >>> 16) & 0x8000;
  const exp = (bits >>> 23) & 0xff;
  let mant = bits & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0); // inf / nan
  let e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00; // overflow to inf
  if (e <= 0) {
    if (e < -10) return sign; // underflow to zero
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let m = mant >>> shift;
    const rest = mant & ((1 << shift) - 1);
    if (rest > half || (rest === half && m & 1)) m++;
    return sign | m;
  }
  let m = mant >>> 13;
  const rest = mant & 0x1fff;
  if (rest > 0x1000 || (rest === 0x1000 && m & 1)) {
    m++;
    if (m === 0x400) {
      m = 0;
      e++;
      if (e >= 0x1f) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | m;
}

const CHUNK = 1 << 20; // elements per write

/** Writes a GGUF v3 file; returns its size in bytes. */
export async function writeGguf(
  path: string,
  kvs: readonly GgufKv[],
  tensors: readonly TensorSpec[],
  signal?: AbortSignal,
  onProgress?: (bytesWritten: number, bytesTotal: number) => void,
): Promise<number> {
  const alignment = GGUF_DEFAULT_ALIGNMENT;
  const h = new Bytes();
  h.u32(0x46554747); // "GGUF" little-endian
  h.u32(3);
  h.u64(tensors.length);
  h.u64(kvs.length);
  for (const e of kvs) writeKv(h, e);
  let offset = 0;
  const sizes: number[] = [];
  for (const t of tensors) {
    const bytes = tensorBytes(t.type, t.shape);
    if (typeof bytes === "string") throw new Error(`${t.name}: ${bytes}`);
    h.str(t.name);
    h.u32(t.shape.length);
    for (const d of t.shape) h.u64(d);
    h.u32(t.type);
    h.u64(offset);
    sizes.push(bytes);
    offset += Math.ceil(bytes / alignment) * alignment;
  }
  h.pad(alignment);
  const total = h.len + offset;

  const fh = await open(path, "w");
  try {
    let pos = 0;
    const put = async (b: Uint8Array) => {
      await fh.write(b, 0, b.length, pos);
      pos += b.length;
    };
    await put(h.bytes());
    const src = new Float32Array(CHUNK);
    const half = new Uint16Array(CHUNK);
    for (let i = 0; i < tensors.length; i++) {
      signal?.throwIfAborted();
      const t = tensors[i];
      const n = t.shape.reduce((a, d) => a * d, 1);
      for (let start = 0; start < n; start += CHUNK) {
        const len = Math.min(CHUNK, n - start);
        const dst = src.subarray(0, len);
        t.fill(dst, start);
        if (t.type === GGML_TYPE_F32) {
          // Buffers are little-endian on every platform node runs on here.
          await put(new Uint8Array(dst.buffer, 0, len * 4));
        } else {
          for (let k = 0; k < len; k++) half[k] = toHalf(dst[k]);
          await put(new Uint8Array(half.buffer, 0, len * 2));
        }
      }
      const padded = Math.ceil(sizes[i] / alignment) * alignment;
      if (padded > sizes[i]) await put(new Uint8Array(padded - sizes[i]));
      onProgress?.(pos, total);
    }
    return pos;
  } finally {
    await fh.close();
  }
}
