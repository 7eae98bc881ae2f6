import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readdirSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { valley, valleyChild, project, waitFor } from "./helpers/valley.js";
import { testLlama } from "./llama-fixture.js";

/**
 * Through the engine: kill -9 valley while the LoRA trainer runs, run again:
 * the stage resumes from its checkpoint in the key's scratch folder, and the
 * adapter is recorded once (one action record for the key).
 */
test(
  "kill -9 during fine-tuning: the re-run resumes from a checkpoint and records the adapter once",
  { timeout: 30 * 60_000 },
  async () => {
    const llama = await testLlama();
    const dir = project({});
    mkdirSync(join(dir, "data"));
    const rows = Array.from({ length: 24 }, (_, i) => ({
      messages: [
        { role: "user", content: `question ${i}: add ${i} and ${i + 1}` },
        {
          role: "assistant",
          content: `<think>\nsum\n</think>\n\n\`\`\`python\nprint(${2 * i + 1})\n\`\`\``,
        },
      ],
    }));
    writeFileSync(
      join(dir, "data", "train.jsonl"),
      rows.map((r) => JSON.stringify(r)).join("\n") + "\n",
    );
    writeFileSync(
      join(dir, "p.yaml"),
      `
version: 1
tools:
  llama: {path: ${llama.bin}}
stages:
  student:
    uses: model
    with: {random: {preset: tiny, seed: 5}}
  tune:
    uses: finetune
    inputs: {from: student, data: ./data}
    with: {method: lora, epochs: 40, lr: 0.001, checkpointEvery: 5, threads: 1}
`,
    );
    const { child, done } = valleyChild(["run", "p.yaml"], { cwd: dir });
    const scratch = join(dir, ".valley", "scratch");
    // checkpoint.json is written last, once the checkpoint's files are complete (the folder
    // also holds the initial adapter and .tmp files for a moment)
    const checkpointed = () =>
      existsSync(scratch) &&
      readdirSync(scratch).some((k) =>
        existsSync(join(scratch, k, "checkpoints", "checkpoint.json")),
      );
    await waitFor(checkpointed, 20 * 60_000, "a training checkpoint");
    child.kill("SIGKILL");
    await done;
    assert.equal(
      readdirSync(join(dir, ".valley", "actions")).length,
      1,
      "only the model stage finished before the kill",
    );

    const r = valley(["run", "p.yaml", "--json"], { cwd: dir, timeoutMs: 20 * 60_000 });
    assert.equal(r.code, 0, r.stderr);
    const s = JSON.parse(r.stdout) as { executed: number; cached: number };
    assert.equal(s.executed, 1);
    assert.equal(s.cached, 1);
    const show = JSON.parse(
      valley(["show", "tune", "-f", "p.yaml", "--json"], { cwd: dir }).stdout,
    ) as {
      metrics: { resumed_from_step: number };
      outputs: Record<string, { digest: string }>;
    };
    assert.ok(
      show.metrics.resumed_from_step > 0,
      `resumed_from_step = ${show.metrics.resumed_from_step}`,
    );
    assert.ok(show.outputs["adapter.gguf"], "no adapter recorded");
    assert.equal(
      readdirSync(join(dir, ".valley", "actions")).length,
      2,
      "the adapter's key has exactly one action record",
    );
    // Run again: nothing executes.
    const again = JSON.parse(valley(["run", "p.yaml", "--json"], { cwd: dir }).stdout) as {
      executed: number;
    };
    assert.equal(again.executed, 0);
  },
);
