import { UsageError, didYouMean } from "../errors.js";
import { listKinds, kindSchema } from "../kinds.js";
import { pipelineSchema } from "../pipeline/expand.js";
import { parse } from "./common.js";

/**
 * The pipeline schema with every stage kind's params folded in (if uses is
 * K then with follows K's schema), for editors:
 * `# yaml-language-server: $schema=../schemas/valley.schema.json`.
 */
export function fullSchema(): Record<string, unknown> {
  const schema = pipelineSchema();
  const defs = schema.definitions as Record<string, Record<string, unknown>>;
  const stage = defs.stage;
  const kinds = listKinds();
  (stage.properties as Record<string, unknown>).uses = {
    description: "The stage kind.",
    enum: kinds,
  };
  stage.allOf = kinds.map((k) => {
    const { $schema: _s, ...body } = kindSchema(k);
    return {
      if: { properties: { uses: { const: k } }, required: ["uses"] },
      then: { properties: { with: body } },
    };
  });
  return schema;
}

type S = {
  type?: string | string[];
  description?: string;
  default?: unknown;
  enum?: unknown[];
  const?: unknown;
  properties?: Record<string, S>;
  required?: string[];
  items?: S;
  oneOf?: S[];
  anyOf?: S[];
  $ref?: string;
  minimum?: number;
  maximum?: number;
};

function typeOf(s: S): string {
  if (s.enum) return s.enum.map((e) => JSON.stringify(e)).join(" \\| ");
  if (s.const !== undefined) return JSON.stringify(s.const);
  if (s.$ref) return s.$ref.split("/").pop() ?? "";
  const alts = s.oneOf ?? s.anyOf;
  if (alts) return alts.map(typeOf).join(" \\| ");
  const t = Array.isArray(s.type) ? s.type.join(" \\| ") : (s.type ?? "any");
  if (t === "array" && s.items) return `list of ${typeOf(s.items)}`;
  return t;
}

function oneLine(text: string | undefined): string {
  // Escape what Markdown (and prettier) would read as emphasis or table syntax.
  return (text ?? "")
    .replace(/\s+/g, " ")
    .replace(/([|*_])/g, "\\$1")
    .trim();
}

function table(props: Record<string, S>, required: string[] = [], prefix = ""): string[] {
  const rows: string[] = [];
  for (const [name, p] of Object.entries(props)) {
    const def =
      p.default !== undefined
        ? `\`${JSON.stringify(p.default)}\``
        : required.includes(name)
          ? "**required**"
          : "";
    rows.push(`| \`${prefix}${name}\` | ${typeOf(p)} | ${def} | ${oneLine(p.description)} |`);
    if (p.properties && (p.type === "object" || p.type === undefined))
      rows.push(...table(p.properties, p.required, `${prefix}${name}.`));
  }
  return rows;
}

/** The YAML reference in Markdown, generated from the schemas (README includes it). */
export function markdownReference(): string {
  const ps = pipelineSchema() as S & { definitions: Record<string, S> };
  const out: string[] = [];
  const head = ["| key | type | default | meaning |", "|---|---|---|---|"];
  out.push("### Pipeline file", "", ...head, ...table(ps.properties ?? {}, ps.required), "");
  const stage = ps.definitions.stage;
  out.push(
    "### A stage (`stages.<name>`)",
    "",
    ...head,
    ...table(stage.properties ?? {}, stage.required),
    "",
  );
  for (const k of listKinds()) {
    const ks = kindSchema(k) as S;
    out.push(`### \`${k}\``, "", oneLine(ks.description), "");
    if (ks.properties && Object.keys(ks.properties).length)
      out.push(...head, ...table(ks.properties, ks.required), "");
  }
  return out.join("\n");
}

export async function schema(argv: string[]): Promise<number> {
  const { positionals, values } = parse(
    argv,
    { markdown: { type: "boolean" } },
    "valley schema [kind] [--markdown]",
  );
  if (values.markdown) {
    process.stdout.write(markdownReference() + "\n");
    return 0;
  }
  const kind = positionals[0];
  if (kind) {
    const kinds = listKinds();
    if (!kinds.includes(kind))
      throw new UsageError(`unknown stage kind "${kind}"${didYouMean(kind, kinds)}`);
    process.stdout.write(JSON.stringify(kindSchema(kind), null, 2) + "\n");
  } else {
    process.stdout.write(JSON.stringify(fullSchema(), null, 2) + "\n");
  }
  return 0;
}
