import { readFileSync } from "node:fs";
import { parseDocument, LineCounter, isMap, isSeq, isScalar, type Document, type Node } from "yaml";
import { InvalidInput, type Problem, type SourceLocation } from "../errors.js";

export type YamlPath = (string | number)[];

/**
 * A parsed pipeline file that still knows where every value came from, so
 * any later error can name file:line:col.
 */
export class Source {
  private constructor(
    readonly file: string,
    readonly doc: Document,
    private readonly lines: LineCounter,
    readonly data: unknown,
  ) {}

  static load(file: string, text?: string): Source {
    let src: string;
    try {
      src = text ?? readFileSync(file, "utf8");
    } catch (e) {
      throw new InvalidInput([
        { message: `cannot read pipeline ${file}: ${(e as Error).message}` },
      ]);
    }
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
    if (problems.length) throw new InvalidInput(problems);
    const data: unknown = doc.toJS({ maxAliasCount: 100 });
    if (data === null || typeof data !== "object" || Array.isArray(data)) {
      throw new InvalidInput([
        {
          loc: { file, line: 1, col: 1 },
          message: "a pipeline must be a YAML mapping with `version` and `stages`",
        },
      ]);
    }
    return new Source(file, doc, lines, data);
  }

  private at(offset: number): SourceLocation {
    const { line, col } = this.lines.linePos(offset);
    return { file: this.file, line, col };
  }

  /**
   * Location of the value at `path`, or of its key when `key` is set. Falls
   * back to the deepest existing ancestor, so an error about a missing field
   * points at the mapping that lacks it.
   */
  locate(path: YamlPath, opts: { key?: boolean } = {}): SourceLocation {
    let node: Node | null | undefined = this.doc.contents as Node | null;
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
