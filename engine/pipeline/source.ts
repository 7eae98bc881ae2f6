import { createHash } from "node:crypto";
import { mkdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { isDeepStrictEqual } from "node:util";
import type { Document, LineCounter, Node } from "yaml";
import { writeFileAtomic } from "../../cache/atomic.js";
import { InvalidPipeline, type Problem, type SourceLocation } from "../errors.js";
import { readText } from "../../cache/read-text.js";
import { sha256Bytes, type Digest } from "../../cache/digest.js";

const isMapping = (v: unknown): v is Record<string, unknown> =>
  v !== null && typeof v === "object" && !Array.isArray(v);

export type YamlPath = (string | number)[];

const require = createRequire(import.meta.url);
type YamlModule = typeof import("yaml");
let yamlModule: YamlModule | undefined;
/**
 * The yaml library, loaded on first use: its ~35 ms of module loading is
 * wasted on a no-op run of a remembered pipeline (see Source).
 */
export function yaml(): YamlModule {
  return (yamlModule ??= require("yaml") as YamlModule);
}

/**
 * Bumped when what a parse memo holds changes meaning. The yaml library's
 * version joins it: a new parser must not be served an old one's results.
 */
const MEMO_FORMAT = "1";
let yamlVersion: string | undefined;
function memoTag(): string {
  if (yamlVersion === undefined) {
    try {
      const pkg = require.resolve("yaml/package.json");
      yamlVersion = (JSON.parse(readFileSync(pkg, "utf8")) as { version: string }).version;
    } catch {
      yamlVersion = "?";
    }
  }
  return `valley-parse ${MEMO_FORMAT} yaml ${yamlVersion}\n`;
}

interface Parsed {
  doc: Document;
  lines: LineCounter;
}

/**
 * A parsed pipeline file that still knows where every value came from, so
 * any later error can name file:line:col.
 *
 * Parsing YAML with source positions is the largest part of a no-op run of a
 * big pipeline (~40 ms for a 1,000-value matrix). So a valid pipeline's data
 * is remembered by the bytes of its text (`memo`, a folder of the cache); the
 * next load of the same bytes reads that JSON back and parses the YAML only
 * if an error must be located.
 */
export class Source {
  private constructor(
    readonly file: string,
    private readonly text: string,
    readonly data: unknown,
    private parsed: Parsed | undefined,
    private readonly memoFile: string | undefined,
  ) {}

  static load(file: string, text?: string, opts: { memo?: string } = {}): Source {
    let src: string;
    try {
      src = text ?? readFileSync(file, "utf8");
    } catch (e) {
      throw new InvalidPipeline([
        { message: `cannot read pipeline ${file}: ${(e as Error).message}` },
      ]);
    }
    const memoFile = opts.memo
      ? join(opts.memo, createHash("sha256").update(memoTag()).update(src).digest("hex") + ".json")
      : undefined;
    if (memoFile) {
      try {
        const data: unknown = JSON.parse(readText(memoFile));
        if (isMapping(data)) return new Source(file, src, data, undefined, memoFile);
      } catch {
        // no memo yet (or a broken one): parse
      }
    }
    const parsed = Source.parse(file, src);
    const data: unknown = parsed.doc.toJS({ maxAliasCount: 100 });
    if (!isMapping(data)) {
      throw new InvalidPipeline([
        {
          loc: { file, line: 1, col: 1 },
          message: "a pipeline must be a YAML mapping with `version` and `stages`",
        },
      ]);
    }
    return new Source(file, src, data, parsed, memoFile);
  }

  private static parse(file: string, src: string): Parsed {
    const { LineCounter, parseDocument } = yaml();
    const lines = new LineCounter();
    // uniqueKeys: a duplicated key is an error, not a silent override.
    const doc = parseDocument(src, { lineCounter: lines, uniqueKeys: true, prettyErrors: true });
    const problems: Problem[] = doc.errors.map((e) => {
      const [pos] = e.linePos ?? [{ line: 1, col: 1 }];
      return {
        loc: { file, line: pos.line, col: pos.col },
        message: `YAML ${e.code.toLowerCase().replace(/_/g, " ")}: ${e.message.split("\n")[0].replace(/ at line \d+, column \d+:?$/, "")}`,
      };
    });
    if (problems.length) throw new InvalidPipeline(problems);
    return { doc, lines };
  }

  /** The digest of the text this pipeline was loaded from (not of the file as it is now). */
  textDigest(): Digest {
    return sha256Bytes(this.text);
  }

  /** The positions, parsed on first use when the data came from the memo. */
  private get positions(): Parsed {
    this.parsed ??= Source.parse(this.file, this.text);
    return this.parsed;
  }

  /**
   * Remembers this (valid) pipeline's data for the next load of the same
   * text. Only `run` calls it: plan, status and show never write a cache,
   * and bad input never reaches here. Data that JSON cannot carry exactly
   * (e.g. .inf) is not remembered.
   */
  remember(): void {
    // Loaded from the memo: nothing to add. Parsed: the memo was missing or
    // unreadable, and is (re)written.
    if (!this.memoFile || !this.parsed) return;
    const json = JSON.stringify(this.data);
    if (!isDeepStrictEqual(JSON.parse(json), this.data)) return;
    try {
      mkdirSync(dirname(this.memoFile), { recursive: true });
      writeFileAtomic(this.memoFile, json);
    } catch {
      // Only a speed-up (a full disk, a concurrent gc): the run goes on without it.
    }
  }

  private at(offset: number): SourceLocation {
    const { line, col } = this.positions.lines.linePos(offset);
    return { file: this.file, line, col };
  }

  /**
   * Location of the value at `path`, or of its key when `key` is set. Falls
   * back to the deepest existing ancestor, so an error about a missing field
   * points at the mapping that lacks it.
   */
  locate(path: YamlPath, opts: { key?: boolean } = {}): SourceLocation {
    const { isMap, isSeq, isScalar } = yaml();
    let node: Node | null | undefined = this.positions.doc.contents as Node | null;
    let best: number = node?.range?.[0] ?? 0;
    for (let i = 0; i < path.length; i++) {
      const seg = path[i];
      const last = i === path.length - 1;
      if (isMap(node)) {
        const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(seg));
        if (!pair) break;
        const k = pair.key as Node;
        if (last && opts.key && k.range) return this.at(k.range[0]);
        node = pair.value as Node | null;
        best = node?.range?.[0] ?? k.range?.[0] ?? best;
      } else if (isSeq(node) && typeof seg === "number") {
        const item = node.items[seg] as Node | undefined;
        if (!item) break;
        node = item;
        best = item.range?.[0] ?? best;
      } else break;
    }
    return this.at(best);
  }

  problem(path: YamlPath, message: string, opts: { key?: boolean } = {}): Problem {
    return { loc: this.locate(path, opts), path: path.join("."), message };
  }
}
