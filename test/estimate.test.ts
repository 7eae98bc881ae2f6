/**
 * `valley plan --estimate` and the run budgets through the real CLI: what a
 * lab lead reads before approving a reservation, without data or models
 * present, with half the teacher's requests already paid for, with and
 * without a price; and bad prices and budgets refused at validation.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync, mkdirSync, mkdtempSync, readdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { PACKAGE_ROOT } from "../engine/root.js";
import { project, valley, valleyChild, type Result } from "./helpers/valley.js";
import { startFakeServer } from "./helpers/data-fake-openai.js";
import { randomModel, resolveRandomParams } from "../llama/random-model.js";
import { writeGguf } from "../llama/gguf-writer.js";

interface Row {
  id: string;
  kind: string;
  cached: boolean;
  estimate: {
    hours: [number, number];
    device: string;
    tokens?: Record<string, [number, number]>;
    usd: [number, number] | null;
    peak_memory_bytes?: number;
    fits?: boolean;
    basis: Record<string, string>;
    extra?: Record<string, unknown>;
  } | null;
  note?: string;
}
interface Report {
  instances: Row[];
  totals: {
    hours: [number, number];
    gpu_hours: [number, number];
    usd: [number, number] | null;
    unpriced: string[];
    to_run: number;
    slurm_jobs?: number;
  };
}

const out = (r: Result) => r.stdout + r.stderr;
const freshCache = () => mkdtempSync(join(tmpdir(), "valley-est-cache-"));
const row = (r: Report, id: string) => {
  const x = r.instances.find((i) => i.id === id);
  assert.ok(x, `no instance ${id} in ${r.instances.map((i) => i.id).join(", ")}`);
  return x;
};

test("valley.yaml estimates with no data or model present: shapes from known models, GPU-hours, memory", () => {
  const r = valley(
    ["plan", join(PACKAGE_ROOT, "pipelines", "valley.yaml"), "--estimate", "--json"],
    { env: { VALLEY_CACHE: freshCache() } },
  );
  assert.equal(r.code, 0, out(r));
  const rep = JSON.parse(r.stdout) as Report;
  const tune = row(rep, "tune1@student=Qwen2.5-7B-Instruct,n=30000").estimate!;
  assert.equal(tune.device, "gpu");
  assert.match(tune.basis.shape, /known model qwen2\.5-7b/);
  assert.match(tune.basis.hours, /^assumed/);
  assert.ok(tune.hours[0] > 0 && tune.hours[1] >= tune.hours[0]);
  assert.ok(tune.tokens!.training[0] > 0);
  assert.ok(tune.peak_memory_bytes! > 0);
  assert.match(
    row(rep, "student@student=Llama-3.1-8B-Instruct").estimate!.basis.shape,
    /llama-3\.1-8b/,
  );
  const ev = row(rep, "evalbase@student=Qwen2.5-7B-Instruct").estimate!;
  assert.ok(ev.hours[1] > 0 && ev.tokens!.generated[1] > 0, JSON.stringify(ev));
  // nothing is paid per token in valley.yaml (imported traces): no dollars, never $0 for unknown
  assert.equal(rep.totals.usd, null);
  assert.ok(rep.totals.gpu_hours[0] > 0);

  const text = valley(
    ["plan", join(PACKAGE_ROOT, "pipelines", "valley.yaml"), "--estimate", "--executor", "slurm"],
    {
      env: { VALLEY_CACHE: freshCache() },
    },
  );
  assert.equal(text.code, 0, out(text));
  assert.match(text.stdout, /slurm: \d+ job\(s\) would be submitted/);
  assert.match(text.stdout, /total: .* GPU/);
});

test("a model's shape from its GGUF header, a shape: hint, or a known name, each said", async () => {
  const dir = project({});
  const params = resolveRandomParams({ n_embd: 64, n_layer: 2, n_head: 4, n_ff: 128 });
  const m = randomModel(params);
  await writeGguf(join(dir, "small.gguf"), m.kvs, m.tensors);
  writeFileSync(
    join(dir, "p.yaml"),
    `version: 1
stages:
  fromfile:
    uses: model
    with: { path: ./small.gguf }
  hinted:
    uses: model
    with:
      path: ./absent.gguf
      shape: { n_layer: 3, n_embd: 256, n_head: 4, n_ff: 512, n_vocab: 1000 }
  named:
    uses: model
    with: { path: ./models/Llama-3.2-1B-Instruct-BF16.gguf }
  unknown:
    uses: model
    with: { path: ./models/mystery.gguf }
`,
  );
  const r = valley(["plan", "p.yaml", "--estimate", "--json"], { cwd: dir });
  assert.equal(r.code, 0, out(r));
  const rep = JSON.parse(r.stdout) as Report;
  assert.match(row(rep, "fromfile").estimate!.basis.shape, /GGUF header .*2 layers × 64/);
  assert.match(row(rep, "hinted").estimate!.basis.shape, /shape: hint.*3 layers × 256/);
  assert.match(row(rep, "named").estimate!.basis.shape, /known model llama-3\.2-1b.*bf16/);
  assert.match(row(rep, "unknown").estimate!.basis.shape, /^unknown: .*give shape:/);
  // the hint is not keyed: adding it re-runs nothing
  const key = (yaml: string) => {
    writeFileSync(join(dir, "k.yaml"), yaml);
    const k = valley(["plan", "k.yaml", "--json"], { cwd: dir });
    assert.equal(k.code, 0, out(k));
    return (JSON.parse(k.stdout) as { instances: { key: string }[] }).instances[0].key;
  };
  const base = "version: 1\nstages:\n  s:\n    uses: model\n    with: { path: ./small.gguf";
  assert.equal(key(base + " }\n"), key(base + ", shape: qwen2.5-7b }\n"));
});

/** Four problems in ./probs and a teacher pipeline per file, on the fake server. */
function teacherProject(url: string, files: Record<string, string>): string {
  const dir = project({});
  mkdirSync(join(dir, "probs"));
  writeFileSync(
    join(dir, "probs/problems.jsonl"),
    Array.from({ length: 4 }, (_, i) =>
      JSON.stringify({
        id: `p${i}`,
        source: "test",
        title: `P${i}`,
        statement: `Problem ${i}: print the sum of two integers.`,
        starter_code: "",
        tests: [{ input: "1 2", output: "3", type: "stdin" }],
        difficulty: "easy",
      }),
    ).join("\n") + "\n",
  );
  for (const [name, extra] of Object.entries(files))
    writeFileSync(
      join(dir, name),
      `version: 1
stages:
  teacher:
    uses: traces
    inputs: { problems: ./probs }
    with:
      backend: openai
      baseUrl: ${url}
      model: t
      max_tokens: 1000
      seed: 1
      concurrency: 2
${extra
  .split("\n")
  .filter(Boolean)
  .map((l) => "      " + l)
  .join("\n")}
`,
    );
  return dir;
}

test("half the teacher's requests cached: half the requests and tokens; price 0 gives $0, no price null", async () => {
  const server = await startFakeServer();
  try {
    const dir = teacherProject(server.url, {
      "one.yaml": "samples: 1",
      "two.yaml": "samples: 2\nprice: { input: 1.5, output: 6 }",
      "free.yaml": "samples: 2\nprice: { input: 0, output: 0 }",
      "unpriced.yaml": "samples: 2",
    });
    const first = await valleyChild(["run", "one.yaml"], { cwd: dir }).done;
    assert.equal(first.code, 0, out(first));
    assert.equal(server.received, 4);

    const est = (file: string, env: Record<string, string> = {}) => {
      const r = valley(["plan", file, "--estimate", "--json"], { cwd: dir, env });
      assert.equal(r.code, 0, out(r));
      return row(JSON.parse(r.stdout) as Report, "teacher").estimate!;
    };
    // the run's own result is cached: it costs nothing and is shown so
    const again = valley(["plan", "one.yaml", "--estimate", "--json"], { cwd: dir });
    assert.equal(again.code, 0, out(again));
    const cachedRep = JSON.parse(again.stdout) as Report;
    assert.equal(row(cachedRep, "teacher").cached, true);
    assert.equal(row(cachedRep, "teacher").estimate, null);
    assert.equal(cachedRep.totals.to_run, 0);
    // samples 2: sample 0 of each problem is answered, sample 1 is not
    const half = est("two.yaml");
    assert.equal(half.extra!.requests, 8);
    assert.equal(half.extra!.requests_to_send, 4);
    // the fake teacher reports 10 prompt and 20 completion tokens per answer: measured, for 4 requests
    const mid = (r: [number, number]) => (r[0] + r[1]) / 2;
    assert.ok(Math.abs(mid(half.tokens!.prompt) - 40) < 2, JSON.stringify(half.tokens));
    assert.ok(Math.abs(mid(half.tokens!.completion) - 80) < 4, JSON.stringify(half.tokens));
    assert.match(half.basis.completion_tokens, /^measured: mean 20 tokens/);
    // dollars from the price: 40 × 1.5 + 80 × 6 per million
    assert.ok(
      Math.abs(mid(half.usd!) - (40 * 1.5 + 80 * 6) / 1e6) < 1e-5,
      JSON.stringify(half.usd),
    );

    // nothing cached (another cache): all 8 to send, completion up to max_tokens
    const fresh = est("two.yaml", { VALLEY_CACHE: freshCache() });
    assert.equal(fresh.extra!.requests_to_send, 8);
    assert.equal(fresh.tokens!.completion[1], 8 * 1000);
    assert.match(fresh.basis.completion_tokens, /^assumed/);

    assert.deepEqual(est("free.yaml").usd, [0, 0]);
    assert.equal(est("unpriced.yaml").usd, null);
    const text = valley(["plan", "unpriced.yaml", "--estimate"], { cwd: dir });
    assert.match(text.stdout, /—/);
    assert.match(text.stdout, /no price given/);
    assert.equal(server.received, 4, "an estimate sent a request");
  } finally {
    await server.close();
  }
});

test("run budgets: over --max-usd or --max-gpu-hours, or no price for --max-usd, nothing starts (exit 2)", async () => {
  const server = await startFakeServer();
  try {
    const dir = teacherProject(server.url, {
      "priced.yaml": "samples: 2\nprice: { input: 100, output: 1000 }",
      "unpriced.yaml": "samples: 2",
    });
    const over = valley(["run", "priced.yaml", "--max-usd", "0.5"], { cwd: dir });
    assert.equal(over.code, 2, out(over));
    assert.match(
      over.stderr,
      /not started: up to \$[\d.]+ of teacher requests, over --max-usd 0\.5/,
    );
    assert.match(over.stderr, /run {5}teacher {2}traces:/);
    const unpriced = valley(["run", "unpriced.yaml", "--max-usd", "100"], { cwd: dir });
    assert.equal(unpriced.code, 2, out(unpriced));
    assert.match(unpriced.stderr, /no price .*give them a price/);
    assert.equal(server.received, 0, "a refused run sent requests");
    // and wrote nothing: no cache folder, no lockfile
    assert.deepEqual(
      readdirSync(dir).filter((f) => f === ".valley" || f.endsWith(".lock")),
      [],
    );
    // within budget: it runs (the teacher's requests need no GPU)
    const ok = await valleyChild(
      ["run", "priced.yaml", "--max-usd", "100", "--max-gpu-hours", "0"],
      {
        cwd: dir,
      },
    ).done;
    assert.equal(ok.code, 0, out(ok));
    assert.equal(server.received, 8);
  } finally {
    await server.close();
  }
});

test("bad prices and budgets: exit 2 at validation, with the field's location", () => {
  const dir = teacherProject("http://127.0.0.1:9/v1", {
    "neg.yaml": "price: { input: -1, output: 2 }",
    "text.yaml": "price: { input: 1, output: cheap }",
  });
  const neg = valley(["plan", "neg.yaml", "--estimate"], { cwd: dir });
  assert.equal(neg.code, 2, out(neg));
  assert.match(neg.stderr, /neg\.yaml:\d+:\d+.*input/);
  const text = valley(["run", "text.yaml"], { cwd: dir });
  assert.equal(text.code, 2, out(text));
  assert.match(text.stderr, /text\.yaml:\d+:\d+.*output/);
  for (const args of [
    ["--max-usd=-5"],
    ["--max-usd", "ten"],
    ["--max-gpu-hours", ""],
    ["--max-gpu-hours=-0.1"],
  ]) {
    const r = valley(["run", "neg.yaml", ...args], { cwd: dir });
    assert.equal(r.code, 2, out(r));
    assert.match(r.stderr, /--max-(usd|gpu-hours) .*expected a number ≥ 0/);
  }
});

test("calibrate --gpu on a machine without a GPU: exit 2, saying so, and nothing calibrated", (t) => {
  // this test's premise: no NVIDIA GPU here (the project's CI machines have none)
  if (existsSync("/proc/driver/nvidia/gpus")) return t.skip("this machine has a GPU");
  const cache = freshCache();
  // VALLEY_GPUS lets a CPU machine schedule GPU stages; a benchmark still needs a real device
  for (const env of [{}, { VALLEY_GPUS: "1" }] as Record<string, string>[]) {
    const r = valley(["calibrate", join(PACKAGE_ROOT, "pipelines", "demo.yaml"), "--gpu"], {
      env: { VALLEY_CACHE: cache, ...env },
    });
    assert.equal(r.code, 2, out(r));
    assert.match(r.stderr, /calibrate --gpu: no GPU on this machine/);
    assert.match(r.stderr, /without --gpu/);
  }
  assert.equal(existsSync(join(cache, "calibration")), false);
});

test("llama-build and report estimate themselves; shell is listed as not estimated, saying why", () => {
  const rep = (file: string, cwd?: string) => {
    const r = valley(["plan", file, "--estimate", "--json"], {
      cwd,
      env: { VALLEY_CACHE: freshCache() },
    });
    assert.equal(r.code, 0, out(r));
    return JSON.parse(r.stdout) as Report & { totals: { not_estimated: string[] } };
  };
  const demo = rep(join(PACKAGE_ROOT, "pipelines", "demo.yaml"));
  const build = row(demo, "llama").estimate!;
  assert.match(build.basis.hours, /^assumed: 8-30 CPU-minutes .* over 2 jobs/);
  // 8-30 CPU-minutes over 2 jobs, plus configuring: 4-15 min and a bit
  assert.ok(build.hours[0] * 60 > 4 && build.hours[1] * 60 < 17, JSON.stringify(build.hours));
  assert.ok(row(demo, "report").estimate!.hours[1] > 0);
  assert.equal(demo.totals.not_estimated.length, 0, JSON.stringify(demo.totals));

  const dir = project({
    "s.yaml":
      "version: 1\nstages:\n  cmd:\n    uses: shell\n    with: { run: 'echo 1 > $OUT/x' }\n",
  });
  const sh = rep("s.yaml", dir);
  assert.equal(row(sh, "cmd").estimate, null);
  assert.match(row(sh, "cmd").note!, /shell command's cost is unknown/);
  assert.deepEqual(sh.totals.not_estimated, ["cmd"]);
});

test("llama-build: a past build of the same backend scales by jobs; another backend does not count", async () => {
  const { estimateBuild } = await import("../stages/llama-build/index.js");
  const p = { backend: "cpu" as const, buildType: "Release" as const, cmakeFlags: [] };
  const past = [
    { what: "build", device: "cpu", backend: "cuda", jobs: 2, compile_seconds: 5000 },
    {
      what: "build",
      device: "cpu",
      backend: "cpu",
      jobs: 2,
      compile_seconds: 420,
      source: "run llama",
    },
  ];
  const e = estimateBuild({ ...p, jobs: 4 }, 2, past);
  assert.match(
    e.basis.hours,
    /^measured: a cpu build compiled in 420 s with 2 jobs \(run llama\); 4 jobs now/,
  );
  // 840 CPU-seconds over 4 jobs: 210 s, ×0.7-1.5, plus 20-90 s of configuring
  assert.ok(Math.abs(e.hours[0] * 3600 - (20 + 147)) < 1, JSON.stringify(e.hours));
  assert.ok(Math.abs(e.hours[1] * 3600 - (90 + 315)) < 1, JSON.stringify(e.hours));
  const cuda = estimateBuild({ ...p, backend: "cuda" }, 2, past.slice(1));
  assert.match(cuda.basis.hours, /^assumed: 150-600 CPU-minutes .*cudaArchitectures/);
});

test("calibration arithmetic: prompt and decode rates from two rounds; a run's first step is overhead", async () => {
  const { splitRates } = await import("../stages/evaluate/calibrate.js");
  // 1,000 prompt tokens/s and 100 generated tokens/s, seen through two mixed rounds
  const r = splitRates(
    { seconds: 100 / 1000 + 1000 / 100, prompt: 100, generated: 1000 },
    { seconds: 4000 / 1000 + 4 / 100, prompt: 4000, generated: 4 },
  );
  assert.ok(Math.abs(r.prompt - 1000) < 1e-6 && Math.abs(r.decode - 100) < 1e-6, JSON.stringify(r));
  // inconsistent (noisy) rounds still give positive rates
  const noisy = splitRates(
    { seconds: 10, prompt: 100, generated: 1000 },
    { seconds: 0.01, prompt: 4000, generated: 4 },
  );
  assert.ok(noisy.prompt > 0 && noisy.decode > 0, JSON.stringify(noisy));

  const { trainMeasurement } = await import("../stages/finetune/estimate.js");
  // 4 windows of 256 in 6 s, the first step 2 s slower than the others; 8 s in all
  const m = trainMeasurement(
    { train_seconds: 6, windows: 4, window: 256 },
    undefined,
    "cpu",
    2,
    8,
    [3, 1, 1, 1],
  )!;
  assert.equal(m.tokens_per_s, 256);
  assert.equal(m.overhead_s, 4);
  assert.equal(m.first_step_s, 2);
  // without the steps' seconds: the first step stays in the rate
  assert.equal(
    trainMeasurement({ train_seconds: 6, windows: 4, window: 256 }, undefined, "cpu", 2, 8)!
      .tokens_per_s,
    1024 / 6,
  );
});

test("a fine-tuned student's evaluation: answers from half as long as its training answers to max_tokens, through merge and quantize", () => {
  // answers of exactly 120 characters; the random model's vocabulary is character-level
  const answer = "x".repeat(120);
  const dir = project({
    "data/train.jsonl":
      Array.from({ length: 6 }, (_, i) =>
        JSON.stringify({
          messages: [
            { role: "user", content: `question ${i} with a longer prompt than answer` },
            { role: "assistant", content: answer },
          ],
        }),
      ).join("\n") + "\n",
    "probs/problems.jsonl":
      Array.from({ length: 3 }, (_, i) =>
        JSON.stringify({
          id: `p${i}`,
          source: "test",
          title: `P${i}`,
          statement: `Problem ${i}.`,
          starter_code: "",
          tests: [{ input: "1", output: "1", type: "stdin" }],
          difficulty: "easy",
          split: "eval",
        }),
      ).join("\n") + "\n",
    "p.yaml": `version: 1
stages:
  student:
    uses: model
    with: { random: { preset: tiny } }
  tune:
    uses: finetune
    inputs: { from: student, data: ./data }
    with: { method: lora, maxSeqLen: 256 }
  merged:
    uses: merge
    inputs: { base: student, adapters: tune }
  quantized:
    uses: quantize
    inputs: { model: merged }
    with: { type: Q8_0 }
  evaluate:
    uses: evaluate
    inputs: { model: quantized, problems: ./probs }
    with: { samples: 2, max_tokens: 500, split: eval }
  runtime:
    uses: evaluate
    inputs: { model: student, adapter: tune, problems: ./probs }
    with: { samples: 1, max_tokens: 500, split: eval }
  base:
    uses: evaluate
    inputs: { model: student, problems: ./probs }
    with: { samples: 1, max_tokens: 500, split: eval }
  greedy:
    uses: evaluate
    inputs: { model: student, problems: ./probs }
    with: { samples: 1, max_tokens: 500, split: eval, temperature: 0 }
  qstudent:
    uses: quantize
    inputs: { model: student }
    with: { type: Q8_0 }
  qgreedy:
    uses: evaluate
    inputs: { model: qstudent, problems: ./probs }
    with: { samples: 1, max_tokens: 500, split: eval, temperature: 0 }
  full:
    uses: finetune
    inputs: { from: student, data: ./data }
    with: { method: full, maxSeqLen: 256 }
  evalfull:
    uses: evaluate
    inputs: { model: full, problems: ./probs }
    with: { samples: 1, max_tokens: 500, split: eval }
`,
  });
  const r = valley(["plan", "p.yaml", "--estimate", "--json"], {
    cwd: dir,
    env: { VALLEY_CACHE: freshCache() },
  });
  assert.equal(r.code, 0, out(r));
  const rep = JSON.parse(r.stdout) as Report;
  // 120 characters and the end token: 121 tokens learnt, half of it the low end
  const ev = row(rep, "evaluate").estimate!;
  assert.deepEqual(ev.tokens?.generated, [3 * 2 * 60.5, 3 * 2 * 500]);
  assert.match(
    ev.basis.generated_tokens,
    /^assumed: from half as long as the answers it was fine-tuned on \(~121 tokens: measured: mean 120 characters an answer over all 6 records of .*train\.jsonl\) to max_tokens \(500\)/,
  );
  // an adapter served at run time: the same
  assert.deepEqual(row(rep, "runtime").estimate!.tokens?.generated, [3 * 60.5, 3 * 500]);
  // a full fine-tune's model: its shape from the base's, and what it learnt
  const full = row(rep, "evalfull").estimate!;
  assert.match(full.basis.shape, /^fine-tuned from .*2 layers × 64/);
  assert.deepEqual(full.tokens?.generated, [3 * 60.5, 3 * 500]);
  // the untuned model learnt nothing of the kind: sampled, its answers end at random
  const base = row(rep, "base").estimate!;
  assert.deepEqual(base.tokens?.generated, [3 * 50, 3 * 500]);
  assert.match(base.basis.generated_tokens, /^assumed: 10% of max_tokens/);
  // greedy, random weights run every answer to max_tokens and write no code,
  // quantized or not
  for (const id of ["greedy", "qgreedy"]) {
    const g = row(rep, id).estimate!;
    assert.deepEqual(g.tokens?.generated, [3 * 450, 3 * 500], id);
    assert.match(g.basis.generated_tokens, /^assumed: random weights, never trained/, id);
    assert.match(g.basis.grading, /^assumed: random weights, never trained, write no fenced code/);
    assert.deepEqual(g.extra?.grading_cpu_hours, [0, 0], id);
  }
  assert.match(base.basis.grading, /^assumed: random weights/);
});
