import { cpus, totalmem } from "node:os";
import { readdirSync } from "node:fs";
import { spawnSync } from "node:child_process";
import type { Resources } from "./stage-api.js";

/**
 * The GPUs this run may use, as the device ids a child is given in
 * CUDA_VISIBLE_DEVICES:
 *   - $VALLEY_GPUS=N: N devices (the first N of CUDA_VISIBLE_DEVICES when it
 *     is set, else 0…N-1);
 *   - else $CUDA_VISIBLE_DEVICES when set: exactly the devices it allows
 *     (indexes, UUIDs or MIG ids; empty, or -1, allows none);
 *   - else the machine's GPUs: one per entry of /proc/driver/nvidia/gpus,
 *     or per line of `nvidia-smi -L` where that folder is absent.
 */
export function detectGpus(env: NodeJS.ProcessEnv = process.env): string[] {
  const visible = env.CUDA_VISIBLE_DEVICES;
  const allowed =
    visible === undefined
      ? undefined
      : visible
          .split(",")
          .map((s) => s.trim())
          .filter((s) => s !== "");
  // CUDA stops at the first invalid entry; -1 is the usual way to say "none".
  const cut = allowed?.findIndex((s) => s.startsWith("-"));
  const usable = allowed && cut !== undefined && cut >= 0 ? allowed.slice(0, cut) : allowed;
  if (env.VALLEY_GPUS !== undefined && env.VALLEY_GPUS !== "") {
    const n = Number(env.VALLEY_GPUS);
    if (!Number.isInteger(n) || n < 0)
      throw new Error(`VALLEY_GPUS=${env.VALLEY_GPUS}: expected a whole number of GPUs`);
    return Array.from({ length: n }, (_, i) => usable?.[i] ?? String(i));
  }
  if (usable) return usable;
  return Array.from({ length: machineGpuCount() }, (_, i) => String(i));
}

/** GPUs the machine has, whatever VALLEY_GPUS says (a benchmark needs a real one). */
export function machineGpuCount(): number {
  try {
    // One folder per GPU the driver knows (named by PCI address); no process to start.
    return readdirSync("/proc/driver/nvidia/gpus").length;
  } catch {
    // No NVIDIA driver in /proc (some containers): ask nvidia-smi, if there is one.
  }
  const r = spawnSync("nvidia-smi", ["-L"], { encoding: "utf8", timeout: 10_000 });
  if (r.status !== 0 || typeof r.stdout !== "string") return 0;
  return r.stdout.split("\n").filter((l) => /^GPU \d+:/.test(l)).length;
}

/**
 * Counts what running instances occupy, and which GPUs each holds: an
 * instance that reserves k GPUs is given k device ids no other running
 * instance holds. An instance asking for more than the machine has is
 * clamped to the machine (it then runs alone), except GPUs: asking for a
 * GPU the machine lacks is an error the caller reports.
 */
export class ResourcePool {
  private free: Resources;
  /** Device ids not held by a running instance; undefined when GPUs are not placed here (Slurm). */
  private freeGpus: string[] | undefined;
  private waiters: { need: Resources; resolve: (gpus: string[]) => void }[] = [];

  constructor(
    readonly total: Resources,
    gpuIds?: string[],
  ) {
    this.free = { ...total };
    this.freeGpus = gpuIds ? [...gpuIds] : undefined;
  }

  /**
   * This machine's size. GPUs are looked for only when `probeGpus` (some
   * instance wants one): a run of CPU stages starts no nvidia-smi.
   */
  static detect(overrides: Partial<Resources> = {}, probeGpus = true): ResourcePool {
    const ids = overrides.gpu === undefined && probeGpus ? detectGpus() : undefined;
    return new ResourcePool(
      {
        cpu: overrides.cpu ?? cpus().length,
        gpu: overrides.gpu ?? ids?.length ?? 0,
        memory: overrides.memory ?? Math.floor(totalmem() / (1 << 20)),
      },
      ids,
    );
  }

  clamp(need: Resources): Resources {
    return {
      cpu: Math.min(need.cpu, this.total.cpu),
      gpu: need.gpu,
      memory: Math.min(need.memory, this.total.memory),
    };
  }

  private fits(n: Resources): boolean {
    return n.cpu <= this.free.cpu + 1e-9 && n.gpu <= this.free.gpu && n.memory <= this.free.memory;
  }

  /** Waits until `need` fits; resolves with the device ids given to the instance (none without GPUs). */
  acquire(need: Resources): Promise<string[]> {
    if (this.fits(need)) return Promise.resolve(this.take(need));
    return new Promise((resolve) => this.waiters.push({ need, resolve }));
  }

  private take(n: Resources): string[] {
    this.free.cpu -= n.cpu;
    this.free.gpu -= n.gpu;
    this.free.memory -= n.memory;
    return this.freeGpus && n.gpu > 0 ? this.freeGpus.splice(0, n.gpu) : [];
  }

  release(n: Resources, gpus: string[] = []): void {
    this.free.cpu += n.cpu;
    this.free.gpu += n.gpu;
    this.free.memory += n.memory;
    this.freeGpus?.push(...gpus);
    // Wake every waiter that now fits, in arrival order (smaller ones may pass a big one).
    this.waiters = this.waiters.filter((w) => {
      if (!this.fits(w.need)) return true;
      w.resolve(this.take(w.need));
      return false;
    });
  }
}
