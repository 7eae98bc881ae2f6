/**
 * The window a fine-tune's estimate uses is the one valley-lora will use.
 * valley-lora puts one example per window as long as the longest example
 * (less its last token) rounded up to 256, so an example a few tokens either
 * side of a multiple of 256 changes the window by 256. When the training set
 * and the student model exist, the estimate counts the longest examples the
 * way the trainer does (its chat template, turn by turn, in the student's
 * vocabulary); from characters alone it can only give a range.
 *
 * The trainer's own count: valley-lora with `--ctx 1` refuses a data set
 * whose longest example does not fit and names that example's length in its
 * tokens (every token but the last).
 *
 * Needs the llama.cpp test build (llama-fixture.ts), through VALLEY_LLAMA_BIN.
 */
import { before, test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { project, valley, type Result } from "./helpers/valley.js";
import { testLlama, type BuiltLlama } from "./llama-fixture.js";
import { kv, writeGguf } from "../llama/gguf-writer.js";
import { randomModel, resolveRandomParams } from "../llama/random-model.js";
import { trainerCounter } from "../stages/finetune/tokens.js";
import { dimsFromGguf } from "../llama/dims.js";
import { shapeRecord } from "../data/estimate.js";

const out = (r: Result) => r.stdout + r.stderr;
let llama: BuiltLlama;
let dir = "";
let env: Record<string, string> = {};

// The longest example: 745 characters of content. From characters alone its
// tokens (one a character in the tiny model's vocabulary, plus the template)
// may be either side of 768; counted, it is below.
const LONGEST = {
  messages: [
    { role: "user", content: "Sum the numbers.\n" + "1 2 3 ".repeat(100) },
    {
      role: "assistant",
      content: "<think>\nadd</think>\n" + "print(sum(map(int, input().split())))\n".repeat(3),
    },
  ],
};
const EXAMPLES = [
  {
    messages: [
      { role: "user", content: "add 1 and 1" },
      { role: "assistant", content: "print(2)" },
    ],
  },
  // several turns, a system turn, text parts, characters outside ASCII, a special token's text
  {
    messages: [
      { role: "system", content: "Answer in Python." },
      { role: "user", content: "  café: ü × 漢字?  " },
      {
        role: "assistant",
        content: [
          { type: "text", text: "print(" },
          { type: "text", text: "'ok')" },
        ],
      },
      { role: "user", content: "again <|im_end|> please" },
      { role: "assistant", content: " done \n" },
    ],
  },
  LONGEST,
  {
    messages: [
      { role: "user", content: "x".repeat(300) },
      { role: "assistant", content: "y" },
    ],
  },
];

const pipeline = `version: 1
stages:
  student:
    uses: model
    with:
      random: { preset: tiny, seed: 11 }
  tune:
    uses: finetune
    inputs: { from: student, data: ./data }
    with:
      method: lora
      lora: { rank: 2, alpha: 4 }
      epochs: 1
      maxSeqLen: 2048
      threads: 1
`;

before(async () => {
  llama = await testLlama();
  dir = project({ "p.yaml": pipeline });
  mkdirSync(join(dir, "data"));
  writeFileSync(
    join(dir, "data", "train.jsonl"),
    EXAMPLES.map((e) => JSON.stringify(e)).join("\n") + "\n",
  );
  env = {
    VALLEY_CACHE: mkdtempSync(join(tmpdir(), "valley-window-")),
    VALLEY_LLAMA_BIN: llama.bin,
  };
});

/** The longest example of a data file in valley-lora's tokens, as it reports it (every token but the last). */
function trainerLongest(model: string, data: string): number {
  const r = spawnSync(
    join(llama.bin, "valley-lora"),
    [
      "--model",
      model,
      "--data",
      data,
      "--out",
      join(dir, "unused.gguf"),
      "--ctx",
      "1",
      "--max-seq-len",
      "100000",
    ],
    {
      encoding: "utf8",
      env: { ...process.env, LD_LIBRARY_PATH: [llama.lib, llama.bin].join(":") },
    },
  );
  const m = /longest example \((\d+) tokens\)/.exec(r.stderr + r.stdout);
  assert.ok(m, `valley-lora (exit ${r.status}) did not name the longest example:\n${r.stderr}`);
  return Number(m[1]);
}

type Row = {
  id: string;
  cached: boolean;
  estimate: {
    hours: number[];
    basis: Record<string, string>;
    extra?: Record<string, unknown>;
  } | null;
};
function tuneEstimate(): NonNullable<Row["estimate"]> {
  const r = valley(["plan", "p.yaml", "--estimate", "--json"], { cwd: dir, env });
  assert.equal(r.code, 0, out(r));
  const row = (JSON.parse(r.stdout) as { instances: Row[] }).instances.find((x) => x.id === "tune");
  assert.ok(row?.estimate, r.stdout);
  return row.estimate;
}

test(
  "the estimate's window is the trainer's: the longest examples counted as valley-lora counts them",
  { timeout: 10 * 60_000 },
  async () => {
    // no student yet: a guess from characters, which cannot tell 768 from 1024, saying why
    const guess = tuneEstimate();
    assert.match(guess.basis.window, /^768 or 1024 tokens: the longest example \(\d+ characters\)/);
    assert.match(
      guess.basis.window,
      /guessed from its characters.*not counted in tokens: the student model is not there yet/,
    );
    assert.equal(guess.extra?.longest_example_tokens, undefined);

    const student = valley(["run", "p.yaml", "--only", "student"], { cwd: dir, env });
    assert.equal(student.code, 0, out(student));
    const show = valley(["show", "student", "-f", "p.yaml", "--json"], { cwd: dir, env });
    assert.equal(show.code, 0, out(show));
    const model = join(
      (JSON.parse(show.stdout) as { tree: { path: string } }).tree.path,
      "model.gguf",
    );

    // with the student there: one window, from the exact count
    const est = tuneEstimate();
    const counted = est.extra?.longest_example_tokens as number;
    assert.equal(counted, trainerLongest(model, join(dir, "data", "train.jsonl")) + 1);
    assert.ok(counted - 1 <= 768 && counted - 1 > 700, `${counted}`);
    assert.match(
      est.basis.window,
      new RegExp(
        `^768 tokens: the longest example, ${counted} tokens as valley-lora counts them \\(chatml template`,
      ),
    );

    // A rate calibrated on full windows, applied to this data's shorter examples
    // (the rest of each window padding, whose attention flash attention skips):
    // faster by the ratio of FLOPs, said in the basis. Without the fill it
    // was measured at, the rate is taken as it is.
    const tinyShape = shapeRecord(await dimsFromGguf(model));
    const calibration = (fill?: number) => {
      mkdirSync(join(env.VALLEY_CACHE, "calibration"), { recursive: true });
      writeFileSync(
        join(env.VALLEY_CACHE, "calibration", "finetune.json"),
        JSON.stringify([
          {
            source: "calibrate",
            what: "train",
            tokens_per_s: 1000,
            window: 768,
            threads: 1,
            device: "cpu",
            shape: tinyShape,
            overhead_s: 0,
            ...(fill ? { fill_tokens: fill } : {}),
            at: new Date().toISOString(),
          },
        ]),
      );
      return tuneEstimate();
    };
    const asIs = calibration();
    assert.match(asIs.basis.hours, /^calibrated: 1000\.0 tokens\/s on this shape/);
    assert.doesNotMatch(asIs.basis.hours, /tokens of examples/);
    const scaled = calibration(767);
    const m =
      /its windows held 767 tokens of examples, these ~(\d+) \(the rest padding, whose attention flash attention skips\): ×([\d.]+) the rate/.exec(
        scaled.basis.hours,
      );
    assert.ok(m, scaled.basis.hours);
    const faster = Number(m[2]);
    assert.ok(Number(m[1]) < 767 && faster > 1, scaled.basis.hours);
    const mid = (e: { hours: number[] }) => (e.hours[0] + e.hours[1]) / 2;
    assert.ok(Math.abs(mid(asIs as never) / mid(scaled as never) / faster - 1) < 0.01);
    rmSync(join(env.VALLEY_CACHE, "calibration"), { recursive: true, force: true });

    // the fine-tune itself: the trainer's window is the estimate's
    const run = valley(["run", "p.yaml"], { cwd: dir, env, timeoutMs: 8 * 60_000 });
    assert.equal(run.code, 0, out(run));
    const tune = valley(["show", "tune", "-f", "p.yaml", "--json"], { cwd: dir, env });
    assert.equal(tune.code, 0, out(tune));
    const train = (
      JSON.parse(tune.stdout) as { measured: Record<string, unknown>[] }
    ).measured.find((m) => m.what === "train");
    assert.equal(train?.window, 768, tune.stdout);
  },
);

test("every example, chatml and Llama 3 templates: the count is valley-lora's, token for token", async () => {
  const work = mkdtempSync(join(tmpdir(), "valley-window-tpl-"));
  const m = randomModel(resolveRandomParams({ preset: "tiny", seed: 5 }));
  const llama3 =
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + " +
    "message['content'] | trim + '<|eot_id|>' }}{% endfor %}" +
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
  const models: Record<string, string> = {};
  for (const [name, tpl] of [
    ["chatml", undefined],
    ["llama3", llama3],
  ] as const) {
    const file = join(work, `${name}.gguf`);
    const kvs = tpl
      ? m.kvs.map((x) =>
          x.key === "tokenizer.chat_template" ? kv.str("tokenizer.chat_template", tpl) : x,
        )
      : m.kvs;
    await writeGguf(file, kvs, m.tensors);
    models[name] = file;
  }
  for (const [name, file] of Object.entries(models)) {
    const counter = await trainerCounter(file);
    try {
      assert.equal(counter.template, name);
      for (const [i, e] of EXAMPLES.entries()) {
        const data = join(work, `one-${i}.jsonl`);
        // the shortest examples fit the 256 window --ctx 1 gives: lengthen them alike for both counts
        const padded =
          i === 0 || i === 1
            ? { messages: [{ role: "user", content: "z".repeat(300) }, ...e.messages] }
            : e;
        writeFileSync(data, JSON.stringify(padded) + "\n");
        assert.equal(
          counter.count(padded),
          trainerLongest(file, data) + 1,
          `${name}, example ${i}`,
        );
      }
    } finally {
      await counter.dispose();
    }
  }
});
