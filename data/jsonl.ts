import { closeSync, createReadStream, openSync, rmSync, writeSync } from "node:fs";
import { open, readdir, rename, stat } from "node:fs/promises";
import { basename, extname, join } from "node:path";
import { BadStageInput } from "../engine/stage-api.js";

/** One parsed line with its 1-based line number, for error messages. */
export interface Numbered<T> {
  line: number;
  value: T;
}

/**
 * Streams a JSONL file. Blank lines are skipped; a line that is not JSON is an
 * BadStageInput naming the file and line. Lines are split on the bytes (\n, and a
 * \r before it is dropped) and decoded one by one: readline's regex splitter
 * over a decoded stream cost more than the JSON parsing of multi-kilobyte
 * trace lines.
 */
export async function* readJsonl<T = Record<string, unknown>>(
  file: string,
): AsyncGenerator<Numbered<T>> {
  let line = 0;
  const parse = (bytes: Buffer): Numbered<T> | undefined => {
    line++;
    let end = bytes.length;
    if (end > 0 && bytes[end - 1] === 13) end--;
    const text = bytes.toString("utf8", 0, end);
    if (text.trim() === "") return undefined;
    try {
      return { line, value: JSON.parse(text) as T };
    } catch (e) {
      throw new BadStageInput(`${file}: line ${line} is not valid JSON (${(e as Error).message})`);
    }
  };
  let carry: Buffer[] = [];
  for await (const chunk of createReadStream(file, {
    highWaterMark: 1 << 20,
  }) as AsyncIterable<Buffer>) {
    let from = 0;
    let nl: number;
    while ((nl = chunk.indexOf(10, from)) >= 0) {
      const piece = chunk.subarray(from, nl);
      const rec = parse(carry.length ? Buffer.concat([...carry, piece]) : piece);
      carry = [];
      from = nl + 1;
      if (rec) yield rec;
    }
    if (from < chunk.length) carry.push(chunk.subarray(from));
  }
  if (carry.length) {
    const rec = parse(Buffer.concat(carry));
    if (rec) yield rec;
  }
}

export async function readJsonlAll<T = Record<string, unknown>>(file: string): Promise<T[]> {
  const out: T[] = [];
  for await (const { value } of readJsonl<T>(file)) out.push(value);
  return out;
}

/** Writes records as JSONL through a temp file renamed into place. */
export async function writeJsonl(file: string, records: Iterable<unknown>): Promise<number> {
  const tmp = file + ".tmp";
  const fh = await open(tmp, "w");
  let n = 0;
  try {
    let buf = "";
    for (const r of records) {
      buf += JSON.stringify(r) + "\n";
      n++;
      if (buf.length > 1 << 20) {
        await fh.write(buf);
        buf = "";
      }
    }
    await fh.write(buf);
  } finally {
    await fh.close();
  }
  await rename(tmp, file);
  return n;
}

/**
 * A `path` param may name a file or a folder; a folder means every file in it
 * with one of the extensions, in name order (e.g. LCB's test.jsonl … test6.jsonl).
 */
export async function listDataFiles(path: string, exts: string[]): Promise<string[]> {
  let st;
  try {
    st = await stat(path);
  } catch {
    throw new BadStageInput(`${path}: no such file or folder`);
  }
  if (!st.isDirectory()) return [path];
  const names = (await readdir(path))
    .filter((n) => exts.includes(extname(n).toLowerCase()) && !basename(n).startsWith("."))
    .sort();
  if (names.length === 0)
    throw new BadStageInput(`${path}: folder holds no ${exts.join("/")} files`);
  return names.map((n) => join(path, n));
}

/**
 * Writes JSONL as records arrive, through a temp file renamed into place on
 * close: a stage that streams millions of records never holds them, and a
 * failure leaves no half-written file under the final name. Lines are encoded
 * straight into one reused 8 MB buffer, written synchronously when full:
 * joining strings and converting each block allocated fresh memory for every
 * block (page faults, GC), and promise round trips per block cost more than
 * the write itself when a single stage streams gigabytes.
 */
export class JsonlWriter {
  private static readonly BLOCK = 8 << 20;
  private buf = Buffer.allocUnsafe(JsonlWriter.BLOCK);
  private used = 0;
  count = 0;
  private constructor(
    readonly file: string,
    private fd: number | undefined,
  ) {}

  static async open(file: string): Promise<JsonlWriter> {
    return new JsonlWriter(file, openSync(file + ".tmp", "w"));
  }

  async write(record: unknown): Promise<void> {
    if (this.fd === undefined) throw new Error(`${this.file}: written after close`);
    const line = JSON.stringify(record) + "\n";
    this.count++;
    // UTF-8 takes at most 3 bytes per UTF-16 code unit.
    if (this.used + line.length * 3 > this.buf.length) {
      this.flush();
      if (line.length * 3 > this.buf.length) {
        this.writeAll(Buffer.from(line, "utf8"));
        return;
      }
    }
    this.used += this.buf.write(line, this.used, "utf8");
  }

  private writeAll(b: Buffer): void {
    if (this.fd === undefined) throw new Error(`${this.file}: written after close`);
    for (let off = 0; off < b.length;) off += writeSync(this.fd, b, off, b.length - off);
  }

  private flush(): void {
    if (this.fd === undefined) throw new Error(`${this.file}: written after close`);
    this.writeAll(this.buf.subarray(0, this.used));
    this.used = 0;
  }

  /** Flushes, closes and renames into place. */
  async close(): Promise<void> {
    this.flush();
    closeSync(this.fd!);
    this.fd = undefined;
    await rename(this.file + ".tmp", this.file);
  }

  /** Closes without renaming and removes the temp file. */
  async abandon(): Promise<void> {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
    rmSync(this.file + ".tmp", { force: true });
  }
}
