/** Reading model and adapter inputs the way the llama stages expect them. */
import { existsSync } from "node:fs";
import { join } from "node:path";
import { BadStageInput, type InputArtifact, type StageInput } from "../engine/stage-api.js";

export function inputList(inputs: Record<string, StageInput>, name: string): InputArtifact[] {
  const v = inputs[name];
  if (v === undefined) throw new BadStageInput(`missing input \`${name}\``);
  return Array.isArray(v) ? v : [v];
}

/** A single-artifact input, e.g. `model` or `base`. */
export function singleInput(inputs: Record<string, StageInput>, name: string): InputArtifact {
  const list = inputList(inputs, name);
  if (list.length !== 1) {
    throw new BadStageInput(`input \`${name}\` must be one artifact, got ${list.length}`);
  }
  return list[0];
}

/** `<folder>/<file>`, or an BadStageInput naming the producer. */
export function inputFile(a: InputArtifact, file: string, role: string): string {
  const p = join(a.path, file);
  if (!existsSync(p)) {
    throw new BadStageInput(`${role} ${a.id} has no ${file}: is it the right kind of artifact?`);
  }
  return p;
}
