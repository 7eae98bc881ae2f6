/**
 * The traces stage through the real CLI against a fault-injecting teacher on
 * loopback: what a user paying per request sees across instances and runs.
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { join } from "node:path";
import { project, valleyChild, type Result } from "./helpers/valley.js";
import { startFakeServer } from "./helpers/data-fake-openai.js";

/** A project with `n` problems in ./probs and one pipeline file per entry of `pipelines`. */
function setup(n: number, pipelines: Record<string, string>): string {
  const dir = project(pipelines);
  mkdirSync(join(dir, "probs"));
  const ps = Array.from({ length: n }, (_, i) => ({
    id: `p${i}`,
    source: "test",
    title: `P${i}`,
    statement: `Problem ${i}`,
    starter_code: "",
    tests: [{ input: "", output: "1", type: "stdin" }],
    difficulty: "easy",
    difficulty_raw: "easy",
  }));
  writeFileSync(
    join(dir, "probs/problems.jsonl"),
    ps.map((p) => JSON.stringify(p)).join("\n") + "\n",
  );
  return dir;
}

function teacher(url: string, withLines: string, extra = ""): string {
  return `
version: 1
stages:
  teacher:
    uses: traces
    inputs:
      problems: ./probs
${extra}    with:
      backend: openai
      baseUrl: ${url}
      model: t
      max_tokens: 16
${/seed:/.test(withLines) ? "" : "      seed: 1\n"}      backoffMs: 5
      backoffMaxMs: 50
      timeoutS: 10
${withLines
  .split("\n")
  .filter(Boolean)
  .map((l) => "      " + l.trim())
  .join("\n")}
`;
}

const run = (dir: string, args: string[], env: Record<string, string> = {}): Promise<Result> =>
  valleyChild(args, { cwd: dir, env }).done;
const out = (r: Result) => r.stdout + r.stderr;

test("a matrix {s: [2, 3]} sends each distinct request once; so do two concurrent runs", async () => {
  const server = await startFakeServer({ delayMs: 10 });
  try {
    const dir = setup(10, {
      "m.yaml": teacher(server.url, "samples: ${{ matrix.s }}", "    matrix:\n      s: [2, 3]\n"),
    });
    const r = await run(dir, ["run", "m.yaml"]);
    assert.equal(r.code, 0, out(r));
    // 20 + 30 requests, 30 distinct bodies.
    assert.equal(server.bodies.size, 30);
    assert.equal(server.received, 30, "one request was sent twice");

    // Two runs at once, samples 2 and 3, on one cache (new problems: a fresh seed).
    writeFileSync(join(dir, "a.yaml"), teacher(server.url, "samples: 2\nseed: 50"));
    writeFileSync(join(dir, "b.yaml"), teacher(server.url, "samples: 3\nseed: 50"));
    const before = server.received;
    const [a, b] = await Promise.all([run(dir, ["run", "a.yaml"]), run(dir, ["run", "b.yaml"])]);
    assert.equal(a.code, 0, out(a));
    assert.equal(b.code, 0, out(b));
    assert.equal(server.received - before, 30);

    // Two runs differing only in concurrency: one key (concurrency is not keyed), computed once.
    writeFileSync(
      join(dir, "c4.yaml"),
      teacher(server.url, "samples: 4\nseed: 90\nconcurrency: 4"),
    );
    writeFileSync(
      join(dir, "c3.yaml"),
      teacher(server.url, "samples: 4\nseed: 90\nconcurrency: 3"),
    );
    const before2 = server.received;
    const [c4, c3] = await Promise.all([
      run(dir, ["run", "c4.yaml"]),
      run(dir, ["run", "c3.yaml"]),
    ]);
    assert.equal(c4.code, 0, out(c4));
    assert.equal(c3.code, 0, out(c3));
    assert.equal(server.received - before2, 40);
    assert.ok([...server.answered.values()].every((n) => n === 1));
  } finally {
    await server.close();
  }
});

test("failures within the budget: the run says so and the next one sends exactly those", async () => {
  const failing = new Set<string>();
  const server = await startFakeServer({
    plan: (key) => {
      if (failing.has(key)) return "500";
      if (failing.size < 7 && !server.answered.has(key)) {
        failing.add(key);
        return "500";
      }
      return "ok";
    },
  });
  try {
    const dir = setup(20, {
      "p.yaml": teacher(server.url, "samples: 2\nretries: 1\nfailureBudget: 20"),
    });
    const r1 = await run(dir, ["run", "p.yaml"]);
    assert.equal(r1.code, 0, out(r1));
    assert.match(
      out(r1),
      /done\s+teacher \([\d.]+s\): INCOMPLETE, 33\/40 answered, 7 failed within budget/,
    );
    const lock1 = readFileSync(join(dir, "p.lock"), "utf8");
    // Plain `valley logs` names each request that failed, and why.
    const log1 = await run(dir, ["logs", "teacher", "-f", "p.yaml"]);
    assert.equal(
      log1.stdout.match(
        /warn traces: p\d+#\d not answered \(2 attempt\(s\)\): failed after 1 retries: HTTP 500/g,
      )?.length,
      7,
      log1.stdout,
    );
    const plan = await run(dir, ["plan", "p.yaml", "--why"]);
    assert.match(plan.stdout, /teacher\s+— incomplete: 33\/40 answered, 7 failed within budget/);

    server.plan = () => "ok";
    const before = server.received;
    const r2 = await run(dir, ["run", "p.yaml"]);
    assert.equal(r2.code, 0, out(r2));
    assert.equal(server.received - before, 7);
    assert.match(out(r2), /done\s+teacher \([\d.]+s\)\n/);
    const logs = await run(dir, ["logs", "teacher", "-f", "p.yaml"]);
    assert.match(logs.stdout, /7 failed in an earlier run and are sent again \(http_500 ×7\)/);
    assert.notEqual(readFileSync(join(dir, "p.lock"), "utf8"), lock1);

    // Complete now: a cache hit, nothing sent.
    const r3 = await run(dir, ["run", "p.yaml", "--json"]);
    assert.equal(r3.code, 0, out(r3));
    assert.deepEqual(
      { ...(JSON.parse(r3.stdout) as object), outcomes: undefined },
      { ...(JSON.parse(r3.stdout) as object), outcomes: undefined, executed: 0, cached: 1 },
    );
    assert.equal(server.received - before, 7);
  } finally {
    await server.close();
  }
});

test("a stage time-out says why, on the console and in the log", async () => {
  const server = await startFakeServer({ plan: () => "stall" });
  try {
    const dir = setup(2, { "p.yaml": teacher(server.url, "samples: 1", "    timeout: 1s\n") });
    const r = await run(dir, ["run", "p.yaml"]);
    assert.notEqual(r.code, 0);
    assert.match(out(r), /FAILED\s+teacher: traces stopped: timed out after 1000 ms/);
    const logs = await run(dir, ["logs", "teacher", "-f", "p.yaml"]);
    assert.match(logs.stdout, /failed: traces stopped: timed out after 1000 ms/);
    assert.doesNotMatch(logs.stdout, /undefined/);
  } finally {
    await server.close();
  }
});

test("secrets: a key-looking env: entry and an apiKeyEnv outside secrets: are refused (exit 2)", async () => {
  const dir = setup(1, {
    "env.yaml": teacher(
      "http://127.0.0.1:9/v1",
      "apiKeyEnv: TEACHER_API_KEY",
      "    env: [HOME, TEACHER_API_KEY]\n",
    ),
    "none.yaml": teacher("http://127.0.0.1:9/v1", "apiKeyEnv: TEACHER_API_KEY"),
    "ok.yaml": teacher(
      "http://127.0.0.1:9/v1",
      "apiKeyEnv: TEACHER_API_KEY",
      "    secrets: [TEACHER_API_KEY]\n",
    ),
  });
  const env = { TEACHER_API_KEY: "sk-abcdef123456" };
  const a = await run(dir, ["run", "env.yaml"], env);
  assert.equal(a.code, 2, out(a));
  assert.match(
    a.stderr,
    /env\.yaml:\d+:\d+.*TEACHER_API_KEY looks like a credential: list it under secrets:/,
  );
  const b = await run(dir, ["run", "none.yaml"], env);
  assert.equal(b.code, 2, out(b));
  assert.match(
    b.stderr,
    /none\.yaml:\d+:\d+.*TEACHER_API_KEY is not listed under secrets: of this stage/,
  );
  const c = await run(dir, ["plan", "ok.yaml"], env);
  assert.equal(c.code, 0, out(c));
});
