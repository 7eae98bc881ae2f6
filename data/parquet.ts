import { InputError } from "../engine/stage-api.js";
import type { Numbered } from "./jsonl.js";

const BATCH = 2000;

/**
 * Streams rows of a Parquet file as plain objects (hyparquet, with
 * hyparquet-compressors for gzip/zstd/brotli/lz4; snappy is built in). Reads in
 * batches so a large OCR2 shard is not held in memory at once. A file that
 * cannot be decoded is an InputError naming the file (and the rows, if known).
 */
export async function* readParquet<T = Record<string, unknown>>(
  file: string,
): AsyncGenerator<Numbered<T>> {
  const { asyncBufferFromFile, parquetMetadataAsync, parquetReadObjects } =
    await import("hyparquet");
  const { compressors } = await import("hyparquet-compressors");
  let buffer, metadata;
  try {
    buffer = await asyncBufferFromFile(file);
    metadata = await parquetMetadataAsync(buffer);
  } catch (e) {
    throw new InputError(`${file}: not a readable Parquet file (${(e as Error).message})`);
  }
  const total = Number(metadata.num_rows);
  for (let start = 0; start < total; start += BATCH) {
    const end = Math.min(total, start + BATCH);
    let rows: Record<string, unknown>[];
    try {
      rows = await parquetReadObjects({
        file: buffer,
        metadata,
        compressors,
        rowStart: start,
        rowEnd: end,
      });
    } catch (e) {
      throw new InputError(
        `${file}: corrupted Parquet data in rows ${start + 1}..${end} (${(e as Error).message})`,
      );
    }
    for (let i = 0; i < rows.length; i++)
      yield { line: start + i + 1, value: jsonSafe(rows[i]) as T };
  }
}

/** Parquet integers may come back as bigint; JSON cannot hold them. */
function jsonSafe(v: unknown): unknown {
  if (typeof v === "bigint") return Number.isSafeInteger(Number(v)) ? Number(v) : v.toString();
  if (v instanceof Date) return v.toISOString();
  if (v instanceof Uint8Array) return Buffer.from(v).toString("utf8");
  if (Array.isArray(v)) return v.map(jsonSafe);
  if (v && typeof v === "object") {
    const o: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) o[k] = jsonSafe(x);
    return o;
  }
  return v;
}

/** Rows from a JSONL or Parquet file, chosen by extension. */
export async function* readRecords<T = Record<string, unknown>>(
  file: string,
): AsyncGenerator<Numbered<T>> {
  if (file.toLowerCase().endsWith(".parquet")) yield* readParquet<T>(file);
  else {
    const { readJsonl } = await import("./jsonl.js");
    yield* readJsonl<T>(file);
  }
}
