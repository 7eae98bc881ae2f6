import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, readFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { PACKAGE_ROOT } from "../engine/root.js";
import { valley } from "./helpers/valley.js";

/**
 * The README's demo, end to end, through the real CLI: built-in problems →
 * traces → verify → subsets → LoRA → merge → quantize → evaluate → report.
 * The cache is shared with the other tests that need llama.cpp
 * ($VALLEY_TEST_CACHE, default .tmp/test-cache), so the build happens once.
 */
const cache = process.env.VALLEY_TEST_CACHE ?? join(PACKAGE_ROOT, ".tmp", "test-cache");
const demo = join(PACKAGE_ROOT, "pipelines", "demo.yaml");
const env = { VALLEY_CACHE: cache };

test(
  "the demo pipeline runs end to end, re-runs nothing, and a changed size re-runs only its branch",
  { timeout: 45 * 60_000 },
  () => {
    mkdirSync(cache, { recursive: true });
    // A fresh cache builds llama.cpp first (~8 min on 2 cores).
    const first = valley(["run", demo, "--json"], { env, timeoutMs: 40 * 60_000 });
    assert.equal(first.code, 0, first.stderr.slice(-3000));
    const s1 = JSON.parse(first.stdout) as {
      instances: number;
      failed: number;
      executed: number;
      cached: number;
    };
    assert.equal(s1.failed, 0);
    assert.equal(s1.executed + s1.cached, s1.instances);

    const again = valley(["run", demo, "--json"], { env });
    assert.equal(again.code, 0, again.stderr);
    const s2 = JSON.parse(again.stdout) as { executed: number; cached: number; instances: number };
    assert.equal(s2.executed, 0, "a second run executed something");
    assert.equal(s2.cached, s2.instances);

    // The report exists and holds the numbers of every evaluation.
    const show = valley(["show", "report", "-f", demo, "--json"], { env });
    assert.equal(show.code, 0, show.stderr);
    const rep = JSON.parse(show.stdout) as { tree: { path: string }; metrics: { rows: number } };
    for (const f of ["index.html", "valley.svg", "valley.png", "table.csv", "table.md"]) {
      assert.ok(existsSync(join(rep.tree.path, f)), `report lacks ${f}`);
    }
    const csv = readFileSync(join(rep.tree.path, "table.csv"), "utf8").trim().split("\n");
    assert.equal(csv.length - 1, 4, "one row per size plus the base");

    // Changing one size re-runs only that branch (and the report that gathers it).
    const plan = valley(["plan", demo, "--json", "-p", "sizes=[10, 30, 60]"], { env });
    assert.equal(plan.code, 0, plan.stderr);
    const rows = (JSON.parse(plan.stdout) as { instances: { id: string; status: string }[] })
      .instances;
    const miss = rows
      .filter((r) => r.status === "miss")
      .map((r) => r.id)
      .sort();
    assert.deepEqual(miss, [
      "data@n=60",
      "evalmerged@n=60",
      "evaluate@n=60",
      "merged@n=60",
      "quantized@n=60",
      "report",
      "tune@n=60",
    ]);
  },
);
