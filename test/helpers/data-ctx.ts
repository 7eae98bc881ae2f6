/**
 * A hand-built StageContext for calling a stage's run() directly (until the
 * engine exists): temp out and scratch folders, a silent logger, a signal.
 */
import { mkdtempSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import {
  inputAccess,
  type InstanceId,
  type StageContext,
  type StageInput,
} from "../../engine/stage-api.js";
import { asDigest } from "../../cache/digest.js";

export function tempDir(prefix = "valley-data-"): string {
  return mkdtempSync(join(tmpdir(), prefix));
}

export function artifact(path: string, id = "x") {
  return { id: id as InstanceId, coords: {}, digest: asDigest("sha256:" + "0".repeat(64)), path };
}

export function makeCtx<P>(
  params: P,
  inputs: Record<string, StageInput> = {},
  opts: { scratch?: string; signal?: AbortSignal; env?: Record<string, string> } = {},
): StageContext<P> {
  const root = tempDir();
  const out = join(root, "out");
  mkdirSync(out);
  const scratch = opts.scratch ?? join(root, "scratch");
  mkdirSync(scratch, { recursive: true });
  return {
    instanceId: "test" as InstanceId,
    coords: {},
    params,
    inputs,
    ...inputAccess("test", inputs),
    out,
    scratch,
    log: pino({ level: "silent" }),
    progress: () => {},
    signal: opts.signal ?? new AbortController().signal,
    tools: {},
    env: opts.env ?? {},
    resources: { cpu: 1, gpu: 0, memory: 0 },
  };
}
