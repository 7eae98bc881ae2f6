import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import type { ActionKey } from "../cache/digest.js";
import { writeFileAtomic } from "../cache/atomic.js";
import { readText } from "../cache/read-text.js";

/**
 * The last key per instance id of one pipeline, for `plan --why` and
 * `show`: one file per pipeline in the cache's history/ folder, read once
 * and written once per run, merged with what a concurrent run wrote.
 */
export class KeyHistory {
  private cache: Record<string, ActionKey> | undefined;
  private dirty = new Map<string, ActionKey>();

  /** `dir`: the cache's history folder; `name`: the pipeline's file name there. */
  constructor(
    private readonly dir: string,
    private readonly name: string,
  ) {}

  private get path(): string {
    return join(this.dir, this.name + ".json");
  }

  private all(): Record<string, ActionKey> {
    if (!this.cache) {
      try {
        this.cache = JSON.parse(readText(this.path)) as Record<string, ActionKey>;
      } catch {
        this.cache = {};
      }
    }
    return this.cache;
  }

  get(id: string): ActionKey | undefined {
    const all = this.all();
    return Object.hasOwn(all, id) ? all[id] : undefined;
  }

  remember(id: string, key: ActionKey): void {
    if (this.all()[id] === key) return;
    this.all()[id] = key;
    this.dirty.set(id, key);
  }

  /** Writes remembered keys, merging with what a concurrent run wrote meanwhile. */
  save(): void {
    if (this.dirty.size === 0 || !existsSync(this.dir)) return;
    let onDisk: Record<string, ActionKey> = {};
    try {
      onDisk = JSON.parse(readFileSync(this.path, "utf8")) as Record<string, ActionKey>;
    } catch {
      // first write
    }
    for (const [id, e] of this.dirty) onDisk[id] = e;
    writeFileAtomic(this.path, JSON.stringify(onDisk));
    this.cache = onDisk;
    this.dirty.clear();
  }
}
