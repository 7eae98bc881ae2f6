/** `merge`: LoRA adapters folded into a base model (llama-export-lora). */
import { modelInput, rewriteEstimate, trainedAnswers } from "../../data/estimate.js";
import { mkdir, rm, symlink } from "node:fs/promises";
import { join } from "node:path";
import { BadStageInput, type InputArtifact, type StageKind } from "../../engine/stage-api.js";
import { inputFile } from "../../llama/inputs.js";
import { checkGguf, recordModel } from "../../llama/model-info.js";
import { resolveLlama, runLlama } from "../../llama/toolchain.js";

export interface MergeParams {
  scales?: number | number[] | Record<string, number>;
  threads?: number;
}

export function adapterScales(p: MergeParams, adapters: InputArtifact[]): number[] {
  const s = p.scales;
  if (s === undefined) return adapters.map(() => 1);
  if (typeof s === "number") return adapters.map(() => s);
  if (Array.isArray(s)) {
    if (s.length !== adapters.length) {
      throw new BadStageInput(
        `scales lists ${s.length} numbers but there are ${adapters.length} adapters (${adapters.map((a) => a.id).join(", ")})`,
      );
    }
    return s;
  }
  const ids = new Set<string>(adapters.map((a) => a.id));
  const unknown = Object.keys(s).filter((k) => !ids.has(k));
  if (unknown.length) {
    throw new BadStageInput(
      `scales names ${unknown.join(", ")}, which are not adapters here (${[...ids].join(", ")})`,
    );
  }
  return adapters.map((a) => s[a.id] ?? 1);
}

const merge: StageKind<MergeParams> = {
  kind: "merge",
  version: "1",
  tools: ["llama"],
  resources: (p) => ({ cpu: p.threads ?? 2 }),
  async estimate(ctx) {
    const d = await modelInput(ctx.inputs.base, ctx.expected.base);
    return rewriteEstimate(
      d,
      d && { ...d, source: `merged onto ${d.source}` },
      trainedAnswers(ctx.expected.adapters, ctx.expected.base),
    );
  },
  async run(ctx) {
    const llama = resolveLlama(ctx);
    const base = inputFile(ctx.input("base"), "model.gguf", "base model");
    await checkGguf(base, "base model");
    const adapters = ctx.inputList("adapters");
    if (adapters.length === 0)
      throw new BadStageInput("input `adapters` is empty: nothing to merge");
    const scales = adapterScales(ctx.params, adapters);
    // llama-export-lora splits --lora-scaled on ',' and ':'; store paths may
    // contain neither, but symlinks with plain names make sure of it.
    const links = join(ctx.scratch, "adapters");
    await rm(links, { recursive: true, force: true });
    await mkdir(links, { recursive: true });
    const args = ["-m", base, "-o", join(ctx.out, "model.gguf")];
    for (let i = 0; i < adapters.length; i++) {
      const file = inputFile(adapters[i], "adapter.gguf", "adapter");
      await checkGguf(file, `adapter ${adapters[i].id}`);
      const link = join(links, `a${i}.gguf`);
      await symlink(file, link);
      args.push("--lora-scaled", `${link}:${scales[i]}`);
    }
    args.push("-t", String(ctx.params.threads ?? ctx.resources.cpu ?? 2));
    ctx.log.info({ adapters: adapters.map((a, i) => `${a.id}×${scales[i]}`) }, "merging");
    await runLlama(llama, "llama-export-lora", args, { signal: ctx.signal, log: ctx.log });
    const metrics = await recordModel(ctx.out);
    return { metrics: { adapters: adapters.length, ...metrics } };
  },
};

export default merge;
