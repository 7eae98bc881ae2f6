/**
 * `model`: a base model as an artifact (model.gguf + model.json), from a local
 * GGUF, a Hugging Face URI, or random initialisation.
 */
import { existsSync } from "node:fs";
import { mkdir, rename, rm, stat } from "node:fs/promises";
import { join, resolve } from "node:path";
import { BadStageInput, type ParamIssue, type StageKind } from "../../engine/stage-api.js";
import { linkOrCopy } from "../../llama/files.js";
import { checkGguf, recordModel } from "../../llama/model-info.js";
import {
  randomModel,
  resolveRandomParams,
  shapeIssues,
  type RandomModelSpec,
} from "../../llama/random-model.js";
import { writeGguf } from "../../llama/gguf-writer.js";
import { dimsFromGguf, dimsFromHint, dimsFromRandom, type ShapeHint } from "../../llama/dims.js";
import { knownModel, weightBytes, type Expected, type ModelDims } from "../../data/estimate.js";

export interface ModelParams {
  path?: string;
  hf?: string;
  random?: RandomModelSpec;
  /** For estimates only (unkeyed): the shape when the GGUF is not at hand. */
  shape?: ShapeHint;
}

function sourceIssues(p: ModelParams): ParamIssue[] {
  const given = (["path", "hf", "random"] as const).filter((k) => p[k] !== undefined);
  if (given.length === 1) return [];
  return [
    {
      path: [],
      message:
        given.length === 0
          ? "give one model source: path (a local GGUF), hf (a Hugging Face URI) or random (a random model)"
          : `give exactly one model source, not ${given.join(" and ")}`,
    },
  ];
}

function randomIssues(p: ModelParams): ParamIssue[] {
  if (p.random === undefined) return [];
  try {
    const r = resolveRandomParams(p.random);
    return shapeIssues(r).map(([field, message]) => ({
      path: ["random", ...field.split(".")],
      message,
    }));
  } catch (e) {
    return [{ path: ["random"], message: (e as Error).message }];
  }
}

async function fromPath(src: string, out: string): Promise<string> {
  const abs = resolve(src);
  if (!existsSync(abs)) throw new BadStageInput(`model path ${abs} does not exist`);
  if (!(await stat(abs)).isFile()) throw new BadStageInput(`model path ${abs} is not a file`);
  // Validate before admitting: a truncated or foreign file must not be cached.
  await checkGguf(abs, "model path");
  return linkOrCopy(abs, out);
}

/** Needs network access (Hugging Face or the URL's host); HF_TOKEN unlocks gated models. */
async function fromHf(
  uri: string,
  dir: string,
  out: string,
  ctx: {
    signal: AbortSignal;
    env: Record<string, string>;
    progress: (d: number, t?: number, n?: string) => void;
  },
): Promise<void> {
  const { createModelDownloader } = await import("node-llama-cpp");
  await mkdir(dir, { recursive: true });
  const token = ctx.env.HF_TOKEN ?? process.env.HF_TOKEN;
  let file: string;
  try {
    const downloader = await createModelDownloader({
      modelUri: uri,
      dirPath: dir,
      showCliProgress: false,
      // Scratch survives retries of the same key: a finished file is not fetched again.
      skipExisting: true,
      tokens: token ? { huggingFace: token } : undefined,
      onProgress: (s) => ctx.progress(s.downloadedSize, s.totalSize, "download"),
    });
    if (downloader.totalFiles > 1) {
      throw new BadStageInput(
        `${uri} is split into ${downloader.totalFiles} GGUF files; merge them with llama-gguf-split --merge and use path:`,
      );
    }
    file = await downloader.download({ signal: ctx.signal });
  } catch (e) {
    if (e instanceof BadStageInput || ctx.signal.aborted) throw e;
    throw new Error(
      `cannot download ${uri}: ${(e as Error).message} ` +
        "(the hf source needs network access to Hugging Face; set HF_TOKEN for gated models)",
      { cause: e },
    );
  }
  await checkGguf(file, uri);
  // Move, not copy: scratch is on the same filesystem as the output folder.
  try {
    await rename(file, out);
  } catch {
    await linkOrCopy(file, out);
  }
}

const model: StageKind<ModelParams> = {
  kind: "model",
  version: "1",
  // a hint for estimates, never read by run()
  unkeyedParams: ["shape"],
  resources: () => ({ cpu: 1 }),
  check(p) {
    return [...sourceIssues(p), ...randomIssues(p)];
  },
  fingerprint(p, tools) {
    // A local file is named by path in the params; its bytes are what the
    // output depends on, so editing the file in place must change the key.
    // Through the engine's stat cache: a 30 GB model is not re-read per run.
    if (p.path !== undefined) {
      const file = tools.digestFile(p.path);
      if (file) return { file };
    }
    return {};
  },
  async estimate(ctx) {
    const p = ctx.params;
    // The shape, from the best source at hand, saying which.
    let dims: ModelDims | undefined;
    const tried: string[] = [];
    if (p.random !== undefined) dims = dimsFromRandom(p.random);
    else if (p.path !== undefined && existsSync(resolve(p.path)))
      dims = await dimsFromGguf(resolve(p.path));
    else {
      if (p.path !== undefined) tried.push(`${p.path} is not there`);
      if (p.shape !== undefined) dims = dimsFromHint(p.shape);
      else dims = knownModel(p.path ?? p.hf ?? "");
    }
    const output: Expected = { model: dims, untrained: p.random !== undefined || undefined };
    const bytes = dims ? weightBytes(dims) : undefined;
    const basis: Record<string, string> = {
      shape: dims
        ? `${dims.source}${tried.length ? ` (${tried.join("; ")})` : ""}: ${dims.nLayer} layers × ${dims.nEmbd}, ${dims.weightType}`
        : `unknown: ${tried.join("; ") || "no GGUF"} and no known model in the name; give shape: (a known model or its dimensions)`,
    };
    // Writing or linking a local file takes seconds; a download, its size at an assumed 20-100 MB/s.
    let hours: [number, number] = [0, 60 / 3600];
    if (p.hf !== undefined) {
      hours = bytes ? [bytes / 100e6 / 3600, bytes / 20e6 / 3600] : [0, 1];
      basis.hours = bytes
        ? `assumed: a download of ${(bytes / 1e9).toFixed(1)} GB at 20-100 MB/s`
        : "assumed: up to an hour's download (size unknown)";
    } else basis.hours = "assumed: under a minute (a local file or a random model)";
    return { hours, device: "cpu", usd: null, basis, output: output as Record<string, unknown> };
  },
  async run(ctx) {
    const p = ctx.params;
    const issues = [...sourceIssues(p), ...randomIssues(p)];
    if (issues.length) throw new BadStageInput(issues.map((i) => i.message).join("; "));
    const out = join(ctx.out, "model.gguf");
    let source: string;
    if (p.path !== undefined) {
      source = "path";
      const how = await fromPath(p.path, out);
      ctx.log.info({ path: p.path, how }, "local model admitted");
    } else if (p.hf !== undefined) {
      source = "hf";
      await fromHf(p.hf, join(ctx.scratch, "download"), out, ctx);
    } else {
      const params = resolveRandomParams(p.random ?? {});
      const m = randomModel(params);
      ctx.log.info(
        { params: m.parameterCount, arch: params.architecture, type: params.type },
        "writing random model",
      );
      try {
        await writeGguf(out, m.kvs, m.tensors, ctx.signal, (done, total) =>
          ctx.progress(done, total, "writing weights"),
        );
      } catch (e) {
        await rm(out, { force: true });
        throw e;
      }
      source = "random";
    }
    const metrics = await recordModel(ctx.out, source === "random" ? { weights: "random" } : {});
    ctx.log.info({ source, ...metrics }, "model ready");
    return { metrics: { source, ...metrics } };
  },
};

export default model;
