import { cpus, totalmem } from "node:os";
import type { Resources } from "./stage-api.js";

/**
 * Counts what running instances occupy. An instance asking for more than the
 * machine has is clamped to the machine (it then runs alone), except GPUs:
 * asking for a GPU the machine lacks is an error the caller reports.
 */
export class ResourcePool {
  private free: Resources;
  private waiters: { need: Resources; resolve: () => void }[] = [];

  constructor(readonly total: Resources) {
    this.free = { ...total };
  }

  static detect(overrides: Partial<Resources> = {}): ResourcePool {
    // GPUs: $VALLEY_GPUS if set, else the devices CUDA_VISIBLE_DEVICES lists, else none.
    const visible = process.env.CUDA_VISIBLE_DEVICES;
    const gpus = process.env.VALLEY_GPUS
      ? Number(process.env.VALLEY_GPUS)
      : visible
        ? visible.split(",").filter(Boolean).length
        : 0;
    return new ResourcePool({
      cpu: overrides.cpu ?? cpus().length,
      gpu: overrides.gpu ?? gpus,
      memory: overrides.memory ?? Math.floor(totalmem() / (1 << 20)),
    });
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

  acquire(need: Resources): Promise<void> {
    if (this.fits(need)) {
      this.take(need);
      return Promise.resolve();
    }
    return new Promise((resolve) => this.waiters.push({ need, resolve }));
  }

  private take(n: Resources): void {
    this.free.cpu -= n.cpu;
    this.free.gpu -= n.gpu;
    this.free.memory -= n.memory;
  }

  release(n: Resources): void {
    this.free.cpu += n.cpu;
    this.free.gpu += n.gpu;
    this.free.memory += n.memory;
    // Wake every waiter that now fits, in arrival order (smaller ones may pass a big one).
    this.waiters = this.waiters.filter((w) => {
      if (!this.fits(w.need)) return true;
      this.take(w.need);
      w.resolve();
      return false;
    });
  }
}
