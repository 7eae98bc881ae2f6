import { createReadStream } from "node:fs";
import { open, readdir, rename, stat } from "node:fs/promises";
import { basename, extname, join } from "node:path";
import { createInterface } from "node:readline";
import { InputError } from "../engine/stage-api.js";

/** One parsed line with its 1-based line number, for error messages. */
export interface Numbered<T> {
  line: number;
  value: T;
}

/**
 * Streams a JSONL file. Blank lines are skipped; a line that is not JSON is an
 * InputError naming the file and line.
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
      throw new InputError(`${file}: line ${line} is not valid JSON (${(e as Error).message})`);
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
    throw new InputError(`${path}: no such file or folder`);
  }
  if (!st.isDirectory()) return [path];
  const names = (await readdir(path))
    .filter((n) => exts.includes(extname(n).toLowerCase()) && !basename(n).startsWith("."))
    .sort();
  if (names.length === 0) throw new InputError(`${path}: folder holds no ${exts.join("/")} files`);
  return names.map((n) => join(path, n));
}
