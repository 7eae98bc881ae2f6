/* global fetch, URL, setTimeout, performance, AbortController */
// Request throughput: the traces stage's openai backend vs a plain load
// generator sending same-shaped requests with the same concurrency.
//
//   npm run build
//   node test/bench/traces.mjs --base-url http://127.0.0.1:8080/v1 [--model m]
//        [--requests 64] [--concurrency 8] [--max-tokens 64] [--dist dist] [--json]
//   node test/bench/traces.mjs --llama <llama.cpp bin folder>   (starts the managed
//        llama-server with a tiny random model itself: the figure)
//
// Without --base-url it starts a tiny built-in echo server (a self-check of
// the harness, not a meaningful figure). The figure the issue asks for is the
// ratio stage/plain ≥ 0.9 against llama-server with a tiny model.
import { createServer } from "node:http";
import { mkdtempSync, mkdirSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { pathToFileURL } from "node:url";

const { values: a } = parseArgs({
  options: {
    "base-url": { type: "string" },
    model: { type: "string", default: "bench" },
    requests: { type: "string", default: "64" },
    concurrency: { type: "string", default: "8" },
    "max-tokens": { type: "string", default: "64" },
    dist: { type: "string", default: "dist" },
    json: { type: "boolean", default: false },
    llama: { type: "string" },
  },
});
const N = Number(a.requests);
const C = Number(a.concurrency);
const maxTokens = Number(a["max-tokens"]);

let server;
let managed;
let baseUrl = a["base-url"];
if (!baseUrl && a.llama) {
  // The real thing: llama-server (engine-managed) serving a tiny random model.
  const dist = resolve(a.dist);
  const { randomModel, resolveRandomParams } = await import(
    pathToFileURL(join(dist, "llama/random-model.js")).href
  );
  const { writeGguf } = await import(pathToFileURL(join(dist, "llama/gguf-writer.js")).href);
  const { startLlamaServer } = await import(pathToFileURL(join(dist, "llama/server.js")).href);
  const dir = mkdtempSync(join(tmpdir(), "valley-bench-model-"));
  const m = randomModel(resolveRandomParams({ preset: "tiny", seed: 1 }));
  await writeGguf(join(dir, "model.gguf"), m.kvs, m.tensors);
  const bin = resolve(a.llama);
  managed = await startLlamaServer({
    llama: { bin, lib: join(bin, "..", "lib"), digest: "sha256:" + "0".repeat(64) },
    model: join(dir, "model.gguf"),
    parallel: C,
    contextSize: C * 1024,
    threads: 2,
  });
  baseUrl = managed.url + "/v1";
}
if (!baseUrl) {
  server = createServer(async (req, res) => {
    for await (const chunk of req) void chunk;
    setTimeout(() => {
      res.writeHead(200, { "content-type": "application/json" });
      res.end(
        JSON.stringify({
          choices: [
            {
              message: { role: "assistant", content: "<think>x</think>ok" },
              finish_reason: "stop",
            },
          ],
          usage: { prompt_tokens: 5, completion_tokens: 5 },
        }),
      );
    }, 20);
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  baseUrl = `http://127.0.0.1:${server.address().port}/v1`;
}

// Two prompt sets of the same shape, so the second run gets no prompt-cache advantage.
const statement = (set, i) =>
  `Set ${set}, problem ${i}: read two integers and print their sum. ${"Constraints apply. ".repeat(8)}`;
const sampling = { temperature: 0.6, top_p: 0.95, max_tokens: maxTokens };

async function plain(set) {
  const url = new URL(baseUrl.replace(/\/+$/, "") + "/chat/completions");
  let next = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: C }, async () => {
      while (next < N) {
        const i = next++;
        const body = {
          model: a.model,
          messages: [{ role: "user", content: statement(set, i) }],
          ...sampling,
        };
        const r = await fetch(url, {
          method: "POST",
          headers: { "content-type": "application/json" },
          body: JSON.stringify(body),
        });
        await r.text();
        if (!r.ok) throw new Error(`plain: HTTP ${r.status}`);
      }
    }),
  );
  return N / ((performance.now() - t0) / 1000);
}

async function stage(set) {
  const dist = resolve(a.dist);
  const { default: traces } = await import(
    pathToFileURL(join(dist, "stages/traces/index.js")).href
  );
  const { pino } = await import("pino");
  const root = mkdtempSync(join(tmpdir(), "valley-bench-"));
  const problems = join(root, "problems");
  mkdirSync(problems);
  mkdirSync(join(root, "out"));
  const rows = Array.from({ length: N }, (_, i) => ({
    id: `b${i}`,
    source: "bench",
    title: "",
    statement: statement(set, i),
    starter_code: "",
    tests: [{ input: "", output: "", type: "stdin" }],
    difficulty: "easy",
    difficulty_raw: "easy",
  }));
  writeFileSync(
    join(problems, "problems.jsonl"),
    rows.map((r) => JSON.stringify(r)).join("\n") + "\n",
  );
  delete process.env.VALLEY_REQUEST_CACHE;
  const ctx = {
    instanceId: "bench",
    coords: {},
    inputs: {
      problems: { id: "p", coords: {}, digest: "sha256:" + "0".repeat(64), path: problems },
    },
    params: {
      backend: "openai",
      baseUrl,
      model: a.model,
      samples: 1,
      concurrency: C,
      retries: 2,
      backoffMs: 100,
      backoffMaxMs: 1000,
      timeoutS: 600,
      failureBudget: 0,
      prompt: { user: "{{statement}}" },
      ...sampling,
    },
    out: join(root, "out"),
    scratch: join(root, "scratch"),
    log: pino({ level: "silent" }),
    progress() {},
    signal: new AbortController().signal,
    tools: {},
    env: {},
    resources: { cpu: 1, gpu: 0, memory: 0 },
  };
  const t0 = performance.now();
  await traces.run(ctx);
  return N / ((performance.now() - t0) / 1000);
}

// Rounds in alternating order (plain first, then stage first, …), each with
// its own prompts, so warm-up and a busy machine do not favour either side;
// the medians are compared.
const rounds = Number(process.env.ROUNDS ?? 3);
const plains = [];
const stages = [];
for (let r = 0; r < rounds; r++) {
  if (r % 2 === 0) {
    plains.push(await plain(`P${r}`));
    stages.push(await stage(`S${r}`));
  } else {
    stages.push(await stage(`S${r}`));
    plains.push(await plain(`P${r}`));
  }
}
const median = (xs) => [...xs].sort((x, y) => x - y)[Math.floor(xs.length / 2)];
const plainRps = median(plains);
const stageRps = median(stages);
const result = {
  baseUrl,
  requests: N,
  concurrency: C,
  max_tokens: maxTokens,
  plain_rps: plainRps,
  stage_rps: stageRps,
  ratio: stageRps / plainRps,
};
if (a.json) console.log(JSON.stringify(result));
else
  console.log(
    `plain ${plainRps.toFixed(1)} req/s, stage ${stageRps.toFixed(1)} req/s, ratio ${(stageRps / plainRps).toFixed(3)} (medians of ${rounds} rounds of ${N} requests, concurrency ${C})`,
  );
server?.close();
await managed?.stop();
