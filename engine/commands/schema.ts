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

export async function schema(argv: string[]): Promise<number> {
  const { positionals } = parse(argv, {}, "valley schema [kind]");
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
