import { closeSync, createReadStream, openSync, rmSync, writeSync } from "node:fs";
import { open, readdir, rename, stat } from "node:fs/promises";
import { basename, extname, join } from "node:path";
import { createInterface } from "node:readline";
import { BadStageInput } from "../engine/stage-api.js";

/** One parsed line with its 1-based line number, for error messages. */
export interface Numbered<T> {
  line: number;
  value: T;
}

/**
 * Streams a JSONL file. Blank lines are skipped; a line that is not JSON is an
 * BadStageInput naming the file and line.
 */
export async function* readJsonl<T = Record<string, unknown>>(
  file: string,
): AsyncGenerator<Numbered<T>> {
  const rl = createInterface({
    input: createReadStream(file, { encoding: "utf8" }),
    crlfDelay: Infinity,
  });
  let line = 0;
  for await (const text of rl) {
    line++;
    if (text.trim() === "") continue;
    let value: T;
    try {
      value = JSON.parse(text) as T;
    } catch (e) {
      throw new BadStageInput(`${file}: line ${line} is not valid JSON (${(e as Error).message})`);
    }
    yield { line, value };
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
 * failure leaves no half-written file under the final name. Writes are
 * synchronous in 8 MB blocks: promise round trips per block cost more than
 * the write itself when a single stage streams gigabytes.
 */
export class JsonlWriter {
  private buf: string[] = [];
  private size = 0;
  count = 0;
  private constructor(
    readonly file: string,
    private fd: number | undefined,
  ) {}

  static async open(file: string): Promise<JsonlWriter> {
    return new JsonlWriter(file, openSync(file + ".tmp", "w"));
  }

  async write(record: unknown): Promise<void> {
    const line = JSON.stringify(record) + "\n";
    this.buf.push(line);
    this.size += line.length;
    this.count++;
    if (this.size > 8 << 20) this.flush();
  }

  private flush(): void {
    if (this.fd === undefined) throw new Error(`${this.file}: written after close`);
    if (this.buf.length) writeSync(this.fd, this.buf.join(""));
    this.buf = [];
    this.size = 0;
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
