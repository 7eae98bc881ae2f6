import { existsSync, readdirSync, readFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";
import { createRequire } from "node:module";
import type { Ajv as AjvType, ValidateFunction, ErrorObject } from "ajv";
import { hashJson, digestHex } from "../cache/digest.js";
import { writeFileAtomic } from "../cache/atomic.js";
import type { StageKind } from "./stage-api.js";
import { PACKAGE_ROOT, DIST_ROOT } from "./root.js";

/**
 * Stage kinds are discovered, not registered: every folder stages/<kind>/ with
 * a schema.json is a kind, its code is dist/stages/<kind>/index.js. Adding a
 * kind means adding a folder and nothing else.
 */
export interface LoadedKind {
  name: string;
  impl: StageKind<Record<string, unknown>>;
  schema: Record<string, unknown>;
  /** Validates (and fills defaults into) a params object. */
  validate: ValidateFunction;
}

// One Ajv for all schemas: allErrors so a user sees every problem at once;
// useDefaults so params after defaults are what gets keyed. Loaded only when a
// schema is not in the cache below: most commands never load Ajv itself.
let ajvInstance:
  { ajv: AjvType; standaloneCode: (a: AjvType, v: ValidateFunction) => string } | undefined;
function compiler() {
  if (!ajvInstance) {
    const { Ajv } = requireCjs("ajv") as typeof import("ajv");
    const standalone = requireCjs("ajv/dist/standalone") as {
      default: (a: AjvType, v: ValidateFunction) => string;
    };
    const ajv = new Ajv({
      allErrors: true,
      useDefaults: true,
      strict: false,
      code: { source: true },
    });
    ajvInstance = { ajv, standaloneCode: standalone.default };
  }
  return ajvInstance;
}

const SCHEMA_CACHE = join(DIST_ROOT, ".schema-cache");
const requireCjs = createRequire(import.meta.url);

/**
 * Compiles a JSON Schema, keeping the generated validator as a module under
 * dist/.schema-cache so that later commands load it instead of compiling
 * again (compiling is most of a no-op run's validation cost).
 */
export function compileSchema(schema: Record<string, unknown>): ValidateFunction {
  const file = join(SCHEMA_CACHE, digestHex(hashJson({ schema, v: 1 })).slice(0, 24) + ".cjs");
  try {
    return requireCjs(file) as ValidateFunction;
  } catch {
    // not cached yet (or unreadable): compile below
  }
  const { ajv, standaloneCode } = compiler();
  const validate = ajv.compile(schema);
  try {
    mkdirSync(SCHEMA_CACHE, { recursive: true });
    writeFileAtomic(file, standaloneCode(ajv, validate));
  } catch {
    // a read-only install: compile every time
  }
  return validate;
}

const STAGES_DIR = join(PACKAGE_ROOT, "stages");

export function listKinds(): string[] {
  if (!existsSync(STAGES_DIR)) return [];
  return readdirSync(STAGES_DIR, { withFileTypes: true })
    .filter((d) => d.isDirectory() && existsSync(join(STAGES_DIR, d.name, "schema.json")))
    .map((d) => d.name)
    .sort();
}

export function kindSchema(name: string): Record<string, unknown> {
  const schema = JSON.parse(readFileSync(join(STAGES_DIR, name, "schema.json"), "utf8")) as Record<
    string,
    unknown
  >;
  // An unknown param is a typo until proven otherwise: close every kind's
  // top level unless its schema says otherwise.
  if (schema.type === "object" && schema.additionalProperties === undefined) {
    schema.additionalProperties = false;
  }
  return schema;
}

/**
 * A kind's params as the engine would run them: `given` validated against the
 * kind's schema, with the schema's defaults filled in (the one source of
 * defaults). For callers that run a stage without a pipeline (tests); throws
 * on invalid params.
 */
export function kindParams<P>(name: string, given: object): P {
  const { $schema: _ignored, ...body } = kindSchema(name);
  const validate = compileSchema(body);
  const p = structuredClone(given);
  if (!validate(p)) {
    const why = (validate.errors ?? []).map((e) => `${e.instancePath || "/"} ${e.message}`);
    throw new Error(`invalid ${name} params: ${why.join("; ")}`);
  }
  return p as P;
}

const loaded = new Map<string, Promise<LoadedKind>>();

export function loadKind(name: string): Promise<LoadedKind> {
  let p = loaded.get(name);
  if (!p) {
    p = (async () => {
      const schema = kindSchema(name);
      const mod = (await import(
        pathToFileURL(join(DIST_ROOT, "stages", name, "index.js")).href
      )) as {
        default: StageKind<Record<string, unknown>>;
      };
      if (!mod.default || mod.default.kind !== name) {
        throw new Error(
          `stages/${name}/index.ts must default-export a StageKind with kind "${name}"`,
        );
      }
      const { $schema: _ignored, ...body } = schema;
      return { name, impl: mod.default, schema, validate: compileSchema(body) };
    })();
    loaded.set(name, p);
  }
  return p;
}

export type { ErrorObject };
