import { mkdirSync, symlinkSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { StageKind, InputArtifact } from "../../engine/stage-api.js";
import { runCommand } from "../../engine/process.js";

interface ShellParams {
  run: string;
  shell: "bash" | "sh";
  cwd: "scratch" | "out";
}

/** `data` → `IN_DATA`; `train-set` → `IN_TRAIN_SET`. */
function envName(input: string): string {
  return "IN_" + input.toUpperCase().replace(/[^A-Z0-9]/g, "_");
}

function safeName(id: string): string {
  return id.replace(/[^A-Za-z0-9@=,._-]/g, "_");
}

const shell: StageKind<ShellParams> = {
  kind: "shell",
  version: "1",
  // an arbitrary command: valley has nothing to scale; the totals list it as not estimated
  estimate: () => {
    throw new Error("a shell command's cost is unknown to valley (not estimated)");
  },
  async run(ctx) {
    // A clean environment: what a command sees is what the key covers.
    const env: Record<string, string> = {
      PATH: process.env.PATH ?? "/usr/local/bin:/usr/bin:/bin",
      HOME: ctx.scratch,
      LANG: "C.UTF-8",
      OUT: ctx.out,
      SCRATCH: ctx.scratch,
      VALLEY_INSTANCE: ctx.instanceId,
      ...ctx.env,
    };
    for (const [name, input] of Object.entries(ctx.inputs)) {
      if (Array.isArray(input)) {
        const dir = join(ctx.scratch, ".inputs", name);
        mkdirSync(dir, { recursive: true });
        for (const a of input as InputArtifact[]) {
          try {
            symlinkSync(a.path, join(dir, safeName(a.id)));
          } catch (e) {
            if ((e as NodeJS.ErrnoException).code !== "EEXIST") throw e;
          }
        }
        writeFileSync(join(dir, "..", `${name}.list`), input.map((a) => a.path).join("\n") + "\n");
        env[envName(name)] = dir;
        env[envName(name) + "_LIST"] = input.map((a) => a.path).join("\n");
      } else {
        env[envName(name)] = input.path;
      }
    }
    await runCommand(ctx.params.shell, ["-c", ctx.params.run], {
      signal: ctx.signal,
      log: ctx.log,
      env,
      cwd: ctx.params.cwd === "out" ? ctx.out : ctx.scratch,
    });
  },
};

export default shell;
