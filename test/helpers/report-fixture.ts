/** Fake `evaluate` outputs and a hand-built ctx for the report stage. */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { pino } from "pino";
import { Ajv } from "ajv";
import type { Digest } from "../../cache/digest.js";
import {
  inputAccess,
  type Coords,
  type InstanceId,
  type InputArtifact,
  type StageContext,
  type StageInput,
} from "../../engine/stage-api.js";
import type { ReportParams } from "../../stages/report/index.js";
import { sha256Bytes } from "../../cache/digest.js";

export const digestOf = (s: string): Digest => sha256Bytes(s);

/** The paper's LCB pass@1 (base, 1K, 10K, 30K), Qwen and Llama. */
export const PAPER: Record<string, number[]> = {
  qwen: [0.127, 0.055, 0.188, 0.264],
  llama: [0.103, 0.019, 0.15, 0.299],
};
export const SIZES = [1000, 10000, 30000];

export function artifact(root: string, id: string, coords: Coords, files: Record<string, string>) {
  const path = join(root, id.replace(/[^A-Za-z0-9@=,._-]/g, "_"));
  mkdirSync(path, { recursive: true });
  for (const [name, text] of Object.entries(files)) writeFileSync(join(path, name), text);
  return { id: id as InstanceId, coords, digest: digestOf(id), path } satisfies InputArtifact;
}

export function metricsFor(student: string, i: number): Record<string, unknown> {
  const p = PAPER[student][i];
  const m: Record<string, unknown> = {
    pass_at_1: p,
    pass_at_1_ci: [Math.max(0, p - 0.04), p + 0.04],
    pass_at_1_ci_level: 0.95,
    pass_at_k: { "1": p, "5": Math.min(1, p * 1.8) },
    by_difficulty: { easy: { pass_at_1: p * 1.5, problems: 10 } },
    completion_rate: (student === "qwen" ? 0.5 : 0.4) + 0.15 * i,
    think_rate: i === 0 ? 0 : (student === "qwen" ? 0.3 : 0.25) * i,
    mean_completion_tokens: 800 + 100 * i + (student === "qwen" ? 0.25 : 0),
    problems: 40,
    samples: 160,
    max_tokens: 1024,
    extraction: "first",
  };
  // One value left out: the table must show it as missing.
  if (student === "llama" && i === 1) delete m.think_rate;
  return m;
}

/** 2 students × (base + 3 sizes), with models, adapters, datasets and traces for provenance. */
export function fakeInputs(root: string): Record<string, StageInput> {
  const evals: InputArtifact[] = [];
  for (const student of Object.keys(PAPER)) {
    // Two spellings of "untuned": no n at all (qwen), n = "base" (llama).
    const baseCoords: Coords = student === "qwen" ? { student } : { student, n: "base" };
    evals.push(
      artifact(
        root,
        `evaluate@${Object.entries(baseCoords)
          .map(([k, v]) => `${k}=${v}`)
          .join(",")}`,
        baseCoords,
        {
          "metrics.json": JSON.stringify(metricsFor(student, 0)),
          "samples.jsonl": "",
        },
      ),
    );
    SIZES.forEach((n, j) => {
      const coords = { student, n, subset: "all", stage: 1 };
      evals.push(
        artifact(root, `evaluate@student=${student},n=${n},subset=all,stage=1`, coords, {
          "metrics.json": JSON.stringify(metricsFor(student, j + 1)),
          "samples.jsonl": "",
        }),
      );
    });
  }
  evals.sort((a, b) => (a.id < b.id ? -1 : 1));
  const models = Object.keys(PAPER).map((student) =>
    artifact(root, `model@student=${student}`, { student }, { "model.gguf": "x" }),
  );
  const adapters = Object.keys(PAPER).flatMap((student) =>
    SIZES.map((n) =>
      artifact(
        root,
        `tune@student=${student},n=${n},subset=all,stage=1`,
        { student, n, subset: "all", stage: 1 },
        { "a.gguf": "x" },
      ),
    ),
  );
  const datasets = SIZES.map((n) =>
    artifact(root, `subsample@n=${n}`, { n }, { "train.jsonl": "" }),
  );
  const traces = [artifact(root, "traces", {}, { "traces.jsonl": "" })];
  return { evals, models, adapters, datasets, traces };
}

/** The project root: the nearest folder above this module holding package.json. */
export function projectRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, "package.json"))) {
    const up = dirname(dir);
    if (up === dir) throw new Error("no package.json above " + import.meta.url);
    dir = up;
  }
  return dir;
}

const schema = JSON.parse(
  readFileSync(join(projectRoot(), "stages", "report", "schema.json"), "utf8"),
) as Record<string, unknown>;

/** Params as the engine would give them: the schema's defaults filled in by ajv. */
export function params(given: Partial<ReportParams> = {}): ReportParams {
  const { $schema: _s, ...body } = schema;
  const ajv = new Ajv({ useDefaults: true, strict: false });
  const validate = ajv.compile(body);
  const p = structuredClone(given) as Record<string, unknown>;
  if (!validate(p)) throw new Error(ajv.errorsText(validate.errors));
  return p as unknown as ReportParams;
}

export function ctxFor(
  out: string,
  inputs: Record<string, StageInput>,
  given: Partial<ReportParams> = {},
): StageContext<ReportParams> {
  return {
    instanceId: "report" as InstanceId,
    coords: {},
    params: params(given),
    inputs,
    ...inputAccess("report", inputs),
    out,
    scratch: join(out, "..", "scratch"),
    log: pino({ level: "silent" }),
    progress: () => {},
    signal: new AbortController().signal,
    tools: {},
    env: {},
    resources: { cpu: 1, gpu: 0, memory: 0 },
  };
}
