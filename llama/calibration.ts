/**
 * Models made up for `valley calibrate`: a random GGUF with a pipeline
 * model's dimensions (valley's character-level vocabulary), or a smaller
 * stand-in when the real shape would not run within the benchmark's time on
 * this device; the estimate then scales by FLOPs per token and says so.
 */
import { join } from "node:path";
import { writeGguf } from "./gguf-writer.js";
import { randomModel, resolveRandomParams } from "./random-model.js";
import { dimsFromRandom } from "./dims.js";
import { matrixParams, type ModelDims } from "../data/estimate.js";

/** The stand-in for shapes too large to benchmark quickly on a CPU: 4 layers × 512. */
const STAND_IN = { n_embd: 512, n_layer: 4, n_head: 8, n_head_kv: 8, n_ff: 1536 };

export async function benchmarkModel(
  want: ModelDims,
  dir: string,
  opts: { maxParams: number; contextLength: number; signal?: AbortSignal },
): Promise<{ path: string; dims: ModelDims }> {
  const fits = matrixParams({ ...want, nVocab: 400 }) <= opts.maxParams;
  const type = want.weightType === "f16" || want.weightType === "bf16" ? "F16" : "F32";
  const spec = fits
    ? {
        architecture: (want.arch === "qwen2" ? "qwen2" : "llama") as "llama" | "qwen2",
        n_embd: want.nEmbd,
        n_layer: want.nLayer,
        n_head: want.nHead,
        n_head_kv: want.nHeadKv,
        n_ff: want.nFf,
      }
    : { architecture: "llama" as const, ...STAND_IN };
  const params = resolveRandomParams({
    ...spec,
    type,
    context_length: Math.max(256, opts.contextLength),
    seed: 1,
  });
  const dims = dimsFromRandom({ ...params });
  const path = join(dir, `bench-${dims.nLayer}x${dims.nEmbd}-${dims.nFf}-${type}.gguf`);
  const m = randomModel(params);
  await writeGguf(path, m.kvs, m.tensors, opts.signal);
  return { path, dims: { ...dims, source: fits ? "this shape" : "a stand-in shape" } };
}
