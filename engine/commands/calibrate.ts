import { openPipeline, parse } from "./common.js";
import { calibratePipeline } from "./estimate.js";
import { enterCache } from "../../cache/cache-lock.js";
import { waitingForGc } from "./common.js";
import { UsageError } from "../errors.js";
import { detectGpus, machineGpuCount } from "../resources.js";

/**
 * `valley calibrate [file] [--gpu] [--json]`: each stage kind of the pipeline
 * that can benchmark itself does so on this machine, for the model shapes the
 * pipeline uses (under a minute on the CPU), and the throughput is kept in the
 * cache (calibration/), so a cache that never ran a fine-tune can estimate one.
 */
export async function calibrate(argv: string[]): Promise<number> {
  const { values, positionals } = parse(
    argv,
    {
      gpu: { type: "boolean" },
      json: { type: "boolean" },
      seconds: { type: "string" },
      param: { type: "string", short: "p", multiple: true },
      file: { type: "string", short: "f" },
    },
    "valley calibrate [file] [--gpu] [--seconds S] [--json] [-p name=value]...",
  );
  if (values.gpu) {
    // a benchmark needs a real device: VALLEY_GPUS (which lets a CPU machine
    // schedule GPU stages) does not count, CUDA_VISIBLE_DEVICES=-1 does
    const visible = detectGpus({ ...process.env, VALLEY_GPUS: undefined });
    if (machineGpuCount() === 0 || visible.length === 0)
      throw new UsageError(
        "valley calibrate --gpu: no GPU on this machine (none in /proc/driver/nvidia/gpus or nvidia-smi -L, " +
          "or CUDA_VISIBLE_DEVICES allows none); run it on a GPU node, or calibrate the CPU without --gpu",
      );
  }
  const { pl, engine } = await openPipeline(values.file ?? positionals[0], values.param);
  await engine.prepareFingerprints();
  const lock = await enterCache(engine.store.root, "calibrate", {
    onWait: waitingForGc("calibrate"),
  });
  try {
    const seconds = values.seconds !== undefined ? Number(values.seconds) : values.gpu ? 300 : 50;
    const results = await calibratePipeline(pl, engine, {
      gpu: !!values.gpu,
      budgetSeconds: seconds,
      out: (s) => process.stderr.write(s),
    });
    if (values.json) process.stdout.write(JSON.stringify({ calibrated: results }) + "\n");
    return results.some((r) => r.error) ? 1 : 0;
  } finally {
    lock.release();
  }
}
