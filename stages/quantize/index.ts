/** `quantize`: llama-quantize over a model artifact. */
import { expectedOf, modelInput, rewriteEstimate, trainedAnswers } from "../../data/estimate.js";
import { join } from "node:path";
import { BadStageInput, type ParamIssue, type StageKind } from "../../engine/stage-api.js";
import { checkGguf, recordModel, untrainedModel } from "../../llama/model-info.js";
import { inputFile } from "../../llama/inputs.js";
import { resolveLlama, runLlama } from "../../llama/toolchain.js";

export interface QuantizeParams {
  type: string;
  allowRequantize?: boolean;
  threads?: number;
}

/** The types llama-quantize accepts by name (tools/quantize/quantize.cpp, llama.cpp v0.4.0). */
// prettier-ignore
export const QUANT_TYPES = [
  "Q1_0", "Q2_0", "Q4_0", "Q4_1", "MXFP4_MOE", "Q5_0", "Q5_1",
  "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ2_M", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0",
  "Q2_K", "Q2_K_S", "IQ3_XXS", "IQ3_S", "IQ3_M", "Q3_K", "IQ3_XS", "Q3_K_S", "Q3_K_M", "Q3_K_L",
  "IQ4_NL", "IQ4_XS", "Q4_K", "Q4_K_S", "Q4_K_M", "Q5_K", "Q5_K_S", "Q5_K_M", "Q6_K", "Q8_0",
  "F16", "BF16", "F32", "COPY",
] as const;

function typeIssues(p: QuantizeParams): ParamIssue[] {
  if ((QUANT_TYPES as readonly string[]).includes(p.type)) return [];
  return [
    {
      path: ["type"],
      message: `unknown quantization type ${JSON.stringify(p.type)}; valid types: ${QUANT_TYPES.join(", ")}`,
    },
  ];
}

const quantize: StageKind<QuantizeParams> = {
  kind: "quantize",
  version: "1",
  tools: ["llama"],
  resources: (p) => ({ cpu: p.threads ?? 2 }),
  async estimate(ctx) {
    const d = await modelInput(ctx.inputs.model, ctx.expected.model);
    return rewriteEstimate(
      d,
      d && { ...d, weightType: ctx.params.type.toLowerCase(), source: `${d.source}, quantized` },
      {
        ...trainedAnswers(ctx.expected.model),
        untrained: expectedOf(ctx.expected.model)?.untrained,
      },
    );
  },
  check: typeIssues,
  async run(ctx) {
    const p = ctx.params;
    const issues = typeIssues(p);
    if (issues.length) throw new BadStageInput(issues[0].message);
    const llama = resolveLlama(ctx);
    const src = inputFile(ctx.input("model"), "model.gguf", "input model");
    await checkGguf(src, "input model");
    const out = join(ctx.out, "model.gguf");
    const threads = p.threads ?? ctx.resources.cpu ?? 2;
    const args = [
      ...(p.allowRequantize ? ["--allow-requantize"] : []),
      src,
      out,
      p.type,
      String(threads),
    ];
    ctx.log.info({ type: p.type, threads }, "quantizing");
    await runLlama(llama, "llama-quantize", args, { signal: ctx.signal, log: ctx.log });
    // a quantized random model is still untrained
    const metrics = await recordModel(
      ctx.out,
      untrainedModel(ctx.input("model").path) ? { weights: "random" } : {},
    );
    return { metrics: { type: p.type, ...metrics } };
  },
};

export default quantize;
