import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { projectRoot } from "../data/root.js";
import { problemIssues, type Problem } from "../data/problem.js";
import { tempDir } from "./helpers/data-ctx.js";

const PY = "/usr/bin/python3";
const FILE = join(projectRoot(), "pipelines/data/demo/problems.jsonl");
const problems = readFileSync(FILE, "utf8")
  .trim()
  .split("\n")
  .map((l) => JSON.parse(l) as Problem);

/** LCB's stdin comparison: strip, split into lines, strip each line. */
function same(a: string, b: string): boolean {
  const lines = (s: string) =>
    s
      .trim()
      .split("\n")
      .map((l) => l.trim());
  const x = lines(a);
  const y = lines(b);
  return x.length === y.length && x.every((l, i) => l === y[i]);
}

// Until the sandboxed grader exists: plain /usr/bin/python3. Every test of
// every problem runs in one interpreter (fresh globals and stdin per test);
// the first test of each problem also runs as its own process.
const DRIVER = `
import contextlib, io, json, sys
out = []
for line in sys.stdin:
    p = json.loads(line)
    res = []
    for t in p["tests"]:
        buf = io.StringIO()
        sys.stdin = io.StringIO(t["input"])
        try:
            with contextlib.redirect_stdout(buf):
                exec(compile(p["reference_solution"], p["id"], "exec"), {"__name__": "__main__"})
            res.append(buf.getvalue())
        except BaseException as e:
            res.append("ERROR " + repr(e))
        finally:
            sys.stdin = sys.__stdin__
    out.append(res)
print(json.dumps(out))
`;

test("demo set: records validate against schemas/problem.schema.json", async () => {
  const { Ajv } = await import("ajv");
  const schema = JSON.parse(
    readFileSync(join(projectRoot(), "schemas/problem.schema.json"), "utf8"),
  ) as object;
  const validate = new Ajv({ allErrors: true }).compile(schema);
  for (const p of problems) assert.ok(validate(p), `${p.id}: ${JSON.stringify(validate.errors)}`);
});

test("demo set: records match the problem schema", () => {
  const ids = new Set<string>();
  for (const p of problems) {
    assert.deepEqual(problemIssues(p, true), [], p.id);
    assert.ok(!ids.has(p.id), `duplicate ${p.id}`);
    ids.add(p.id);
    assert.ok(p.tests.length >= 5 && p.tests.every((t) => t.type === "stdin"), p.id);
    assert.ok(p.reference_trace!.length < 300, `${p.id}: trace should stay short`);
  }
  const evalShare = problems.filter((p) => p.split === "eval").length / problems.length;
  assert.ok(evalShare > 0.25 && evalShare < 0.45, `eval share ${evalShare}`);
});

test("demo set: every reference solution passes its tests with /usr/bin/python3", () => {
  const input = problems.map((p) => JSON.stringify(p)).join("\n") + "\n";
  const got = JSON.parse(
    execFileSync(PY, ["-I", "-c", DRIVER], { input, encoding: "utf8" }),
  ) as string[][];
  problems.forEach((p, i) =>
    p.tests.forEach((t, j) =>
      assert.ok(
        same(got[i][j], t.output),
        `${p.id} test ${j}: got ${JSON.stringify(got[i][j])}, want ${JSON.stringify(t.output)}`,
      ),
    ),
  );
});

test("demo set: solutions run as standalone processes", async () => {
  const runOne = (p: Problem) =>
    new Promise<string>((resolve, reject) => {
      const c = spawn(PY, ["-I", "-c", p.reference_solution!], {
        stdio: ["pipe", "pipe", "inherit"],
      });
      let out = "";
      c.stdout.on("data", (d) => (out += d));
      c.on("error", reject);
      c.on("close", (code) =>
        code === 0 ? resolve(out) : reject(new Error(`${p.id} exited ${code}`)),
      );
      c.stdin.end(p.tests[0].input);
    });
  const queue = [...problems];
  await Promise.all(
    Array.from({ length: 4 }, async () => {
      for (let p = queue.shift(); p; p = queue.shift())
        assert.ok(same(await runOne(p), p.tests[0].output), p.id);
    }),
  );
});

test("demo set: generate.py is deterministic and the shipped file is up to date", () => {
  const dir = join(projectRoot(), "pipelines/data/demo");
  const fresh = join(tempDir(), "problems.jsonl");
  execFileSync(PY, [join(dir, "generate.py"), "--out", fresh], { stdio: "ignore" });
  assert.ok(
    readFileSync(fresh).equals(readFileSync(FILE)),
    "generate.py output differs from the shipped problems.jsonl: re-run it",
  );
});
