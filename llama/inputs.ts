/** A file inside an input artifact, the way the llama stages expect them (read inputs with ctx.input). */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { BadStageInput, type InputArtifact } from "../engine/stage-api.js";

/** `<folder>/<file>`, or a BadStageInput naming the producer. */
export function inputFile(a: InputArtifact, file: string, role: string): string {
  const p = join(a.path, file);
  if (!existsSync(p)) {
    throw new BadStageInput(`${role} ${a.id} has no ${file}: is it the right kind of artifact?`);
  }
  return p;
}
