import { closeSync, fstatSync, openSync, readSync } from "node:fs";
import { BadStageInput } from "../engine/stage-api.js";
import type { Numbered } from "./jsonl.js";

export interface ReadOptions {
  /**
   * Columns to decode, when the file has them (the others are never read
   * from disk). Names the file lacks are ignored; undefined reads every column.
   */
  columns?: readonly string[];
}

/**
 * Streams rows of a Parquet file as plain objects, one row group at a time
 * (hyparquet, with hyparquet-compressors for gzip/zstd/brotli/lz4; snappy is
 * built in): memory holds one decoded row group, never the file, so a 72 GB
 * OCR2 download streams through. A file that cannot be decoded is an
 * BadStageInput naming the file and the row group.
 */
export async function* readParquet<T = Record<string, unknown>>(
  file: string,
  opts: ReadOptions = {},
): AsyncGenerator<Numbered<T>> {
  const { parquetMetadataAsync, parquetReadObjects, parquetSchema } = await import("hyparquet");
  const { compressors } = await import("hyparquet-compressors");
  const fd = openSync(file, "r");
  try {
    yield* readGroups<T>(file, fileBuffer(fd), opts, {
      parquetMetadataAsync,
      parquetReadObjects,
      parquetSchema,
      compressors,
    });
  } finally {
    closeSync(fd);
  }
}

/**
 * A file as hyparquet's AsyncBuffer: each slice is one positioned read into
 * a fresh ArrayBuffer (hyparquet's own file buffer streams and concatenates,
 * copying every byte twice).
 */
function fileBuffer(fd: number) {
  const byteLength = fstatSync(fd).size;
  return {
    byteLength,
    slice(start: number, end = byteLength): ArrayBuffer {
      const len = Math.max(0, end - start);
      const out = new ArrayBuffer(len);
      const view = new Uint8Array(out);
      for (let off = 0; off < len;) {
        const n = readSync(fd, view, off, len - off, start + off);
        if (n === 0) throw new Error(`unexpected end of file at byte ${start + off}`);
        off += n;
      }
      return out;
    },
  };
}

async function* readGroups<T>(
  file: string,
  buffer: ReturnType<typeof fileBuffer>,
  opts: ReadOptions,
  hp: {
    parquetMetadataAsync: typeof import("hyparquet").parquetMetadataAsync;
    parquetReadObjects: typeof import("hyparquet").parquetReadObjects;
    parquetSchema: typeof import("hyparquet").parquetSchema;
    compressors: typeof import("hyparquet-compressors").compressors;
  },
): AsyncGenerator<Numbered<T>> {
  const { parquetMetadataAsync, parquetReadObjects, parquetSchema, compressors } = hp;
  let metadata;
  try {
    metadata = await parquetMetadataAsync(buffer);
  } catch (e) {
    throw new BadStageInput(`${file}: not a readable Parquet file (${(e as Error).message})`);
  }
  let columns: string[] | undefined;
  if (opts.columns) {
    const have = new Set(parquetSchema(metadata).children.map((c) => c.element.name));
    columns = opts.columns.filter((c) => have.has(c));
  }
  const groups = metadata.row_groups;
  let start = 0;
  for (let g = 0; g < groups.length; g++) {
    const end = start + Number(groups[g].num_rows);
    if (end === start) continue;
    let rows: Record<string, unknown>[];
    try {
      rows = await parquetReadObjects({
        file: buffer,
        metadata,
        compressors,
        columns,
        rowStart: start,
        rowEnd: end,
      });
    } catch (e) {
      throw new BadStageInput(
        `${file}: corrupted Parquet data in row group ${g + 1} of ${groups.length} (rows ${start + 1}..${end}): ${(e as Error).message}`,
      );
    }
    for (let i = 0; i < rows.length; i++)
      yield { line: start + i + 1, value: jsonSafe(rows[i]) as T };
    start = end;
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

/** Rows from a JSONL or Parquet file, chosen by extension; both stream. */
export async function* readRecords<T = Record<string, unknown>>(
  file: string,
  opts: ReadOptions = {},
): AsyncGenerator<Numbered<T>> {
  if (file.toLowerCase().endsWith(".parquet")) yield* readParquet<T>(file, opts);
  else {
    const { readJsonl } = await import("./jsonl.js");
    yield* readJsonl<T>(file);
  }
}
