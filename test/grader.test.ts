/** Correct and wrong answers through the real sandbox, and `valley grade`. */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { io, main } from "../engine/commands/grade.js";
import { gradeSample, ProblemError } from "../grader/grade.js";
import type { Problem } from "../grader/types.js";

const py = (code: string) => "```python\n" + code.trim() + "\n```";
const fast = { timeoutScale: 1, wallFactor: 2 };

const doubler: Problem = {
  id: "double",
  difficulty: "easy",
  time_limit_s: 2,
  tests: [
    { input: "3\n", output: "6\n", type: "stdin" },
    { input: "5\n", output: "10", type: "stdin" },
    {
      input: "123456789012345678901234567890\n",
      output: "246913578024691357802469135780\n",
      type: "stdin",
    },
  ],
};

const bigFn: Problem = {
  id: "bigfn",
  fn_name: "mul",
  difficulty: "medium",
  time_limit_s: 2,
  tests: [
    { input: "3\n4", output: "12", type: "functional" },
    { input: "9007199254740993\n3", output: "27021597764222979", type: "functional" },
  ],
};

describe("grading correct and wrong answers", () => {
  it("accepts a correct stdin solution, big integers included", async () => {
    const r = await gradeSample(doubler, py("print(int(input()) * 2)"), fast);
    assert.equal(r.verdict, "AC");
    assert.equal(r.tests.length, 3);
    assert.equal(r.policy, "first");
  });

  it("accepts CRLF, trailing spaces and blank lines in the output", async () => {
    const r = await gradeSample(
      doubler,
      py("import sys\nsys.stdout.write('\\n' + str(int(input()) * 2) + '   \\r\\n\\r\\n')"),
      fast,
    );
    assert.equal(r.verdict, "AC");
  });

  it("gives the program what python3 -I would: sys.path from site, exit() and quit()", async () => {
    // The harness starts without the site module (faster); it must restore
    // what site gives a program.
    const hostPath = execFileSync("/usr/bin/python3", ["-I", "-c", "import sys; print(sys.path)"], {
      encoding: "utf8",
    });
    const echoPath: Problem = {
      id: "path",
      time_limit_s: 2,
      tests: [{ input: "", output: hostPath, type: "stdin" }],
    };
    assert.equal(
      (await gradeSample(echoPath, py("import sys\nprint(sys.path)"), fast)).verdict,
      "AC",
    );
    const r = await gradeSample(
      doubler,
      py("print(int(input()) * 2)\nexit(0)\nprint('after')"),
      fast,
    );
    assert.equal(r.verdict, "AC");
    const q = await gradeSample(doubler, py("print(int(input()) * 2)\nquit()"), fast);
    assert.equal(q.verdict, "AC");
    const bad = await gradeSample(doubler, py("print(int(input()) * 2)\nexit(3)"), fast);
    assert.equal(bad.verdict, "RE");
  });

  it("stops at the first failing test, or runs all by option", async () => {
    const code = py("n = int(input())\nprint(n * 2 if n == 3 else n)");
    const first = await gradeSample(doubler, code, fast);
    assert.equal(first.verdict, "WA");
    assert.deepEqual(
      first.tests.map((t) => t.verdict),
      ["AC", "WA"],
    );
    const all = await gradeSample(doubler, code, { ...fast, allTests: true });
    assert.equal(all.verdict, "WA");
    assert.deepEqual(
      all.tests.map((t) => t.verdict),
      ["AC", "WA", "WA"],
    );
  });

  it("calls Solution().<fn_name>(*args) and compares big integers exactly", async () => {
    const ok = await gradeSample(
      bigFn,
      py("class Solution:\n    def mul(self, a, b):\n        return a * b"),
      fast,
    );
    assert.equal(ok.verdict, "AC");
    // Off by one at 2^54: a float-based comparison would call this equal.
    const off = await gradeSample(
      bigFn,
      py(
        "class Solution:\n    def mul(self, a, b):\n        return a * b if a < 100 else a * b + 1",
      ),
      fast,
    );
    assert.equal(off.verdict, "WA");
  });

  it("counts a returned tuple as a list", async () => {
    const p: Problem = {
      id: "pair",
      fn_name: "pair",
      tests: [{ input: "[1, 2]", output: "[2, 1]", type: "functional" }],
      time_limit_s: 2,
    };
    const r = await gradeSample(
      p,
      py(
        "from typing import List\nclass Solution:\n    def pair(self, xs: List[int]):\n        return (xs[1], xs[0])",
      ),
      fast,
    );
    assert.equal(r.verdict, "AC");
  });

  it("applies a per-problem float tolerance", async () => {
    const p: Problem = {
      id: "pi",
      tests: [{ input: "", output: "3.14159265", type: "stdin" }],
      time_limit_s: 2,
    };
    const code = py("print('%.5f' % 3.14159265)");
    assert.equal((await gradeSample(p, code, fast)).verdict, "WA");
    assert.equal((await gradeSample({ ...p, float_tolerance: 1e-5 }, code, fast)).verdict, "AC");
  });

  it("takes the last block by option and records the policy", async () => {
    const text = py("print(0)") + "\nbetter:\n" + py("print(int(input()) * 2)");
    assert.equal((await gradeSample(doubler, text, fast)).verdict, "WA");
    const r = await gradeSample(doubler, text, { ...fast, policy: "last" });
    assert.equal(r.verdict, "AC");
    assert.equal(r.policy, "last");
  });

  it("refuses a problem with zero tests", async () => {
    await assert.rejects(gradeSample({ id: "empty", tests: [] }, py("print(1)")), ProblemError);
  });

  it("reports a sandbox that cannot start as an infrastructure error", async () => {
    const r = await gradeSample(doubler, py("print(int(input()) * 2)"), {
      ...fast,
      bwrap: "/nonexistent/bwrap",
    });
    assert.equal(r.verdict, "IE");
    assert.match(r.message ?? "", /sandbox/);
  });

  it("reports a uid it cannot switch to (root in a user namespace) as an infrastructure error", (t) => {
    if (!existsSync("/usr/bin/unshare")) return t.skip("no /usr/bin/unshare (util-linux) here");
    // Root inside a fresh user namespace maps only itself: setting the
    // sandbox's own uid fails, which must be a verdict, not a crash.
    const script = [
      `const { gradeSample } = await import(${JSON.stringify(new URL("../grader/grade.js", import.meta.url).href)});`,
      `const r = await gradeSample(${JSON.stringify(doubler)}, ${JSON.stringify(py("print(int(input()) * 2)"))});`,
      "console.log(JSON.stringify(r));",
    ].join("\n");
    const out = spawnSync(
      "/usr/bin/unshare",
      ["--user", "--map-root-user", process.execPath, "--input-type=module", "-e", script],
      { encoding: "utf8" },
    );
    if (out.status !== 0 && /unshare failed|Operation not permitted/.test(out.stderr))
      return t.skip(`user namespaces are not available here: ${out.stderr.trim()}`);
    assert.equal(out.status, 0, out.stderr);
    const r = JSON.parse(out.stdout) as { verdict: string; message?: string };
    assert.equal(r.verdict, "IE");
    assert.match(r.message ?? "", /uid of its own.*Run valley as a regular user/);
  });

  it("runs without a sandbox only when asked", async () => {
    const r = await gradeSample(doubler, py("print(int(input()) * 2)"), {
      ...fast,
      sandbox: "none",
    });
    assert.equal(r.verdict, "AC");
  });
});

describe("valley grade", () => {
  const dir = mkdtempSync(join(tmpdir(), "valley-grade-"));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const file = (name: string, lines: unknown[] | string) => {
    const f = join(dir, name);
    writeFileSync(
      f,
      typeof lines === "string" ? lines : lines.map((l) => JSON.stringify(l)).join("\n") + "\n",
    );
    return f;
  };
  const problems = file("problems.jsonl", [doubler, bigFn]);

  /** Runs main() and captures what it prints. */
  async function run(argv: string[]): Promise<{ code: number; out: string; err: string }> {
    let out = "";
    let err = "";
    const saved = { ...io };
    io.stdout = (s) => void (out += s);
    io.stderr = (s) => void (err += s);
    try {
      const code = await main(argv);
      return { code, out, err };
    } finally {
      Object.assign(io, saved);
    }
  }

  it("grades answers and prints one JSON object", async () => {
    const answers = file("answers.jsonl", [
      { id: "double", sample: 0, text: py("print(int(input()) * 2)") },
      { id: "double", sample: 1, text: "no code here" },
      {
        id: "bigfn",
        sample: 0,
        text: py("class Solution:\n    def mul(self, a, b):\n        return a * b"),
      },
      {
        id: "bigfn",
        sample: 1,
        text: py("class Solution:\n    def mul(self, a, b):\n        return a + b"),
      },
    ]);
    const { code, out } = await run([problems, answers, "--json"]);
    assert.equal(code, 0);
    const doc = JSON.parse(out) as {
      results: { id: string; sample: number; verdict: string; tests: unknown[] }[];
      summary: {
        by_verdict: Record<string, number>;
        pass_at_1: number;
        pass_at_k: Record<string, number>;
        samples: number;
      };
    };
    assert.deepEqual(
      doc.results.map((r) => [r.id, r.sample, r.verdict]),
      [
        ["double", 0, "AC"],
        ["double", 1, "NO_CODE"],
        ["bigfn", 0, "AC"],
        ["bigfn", 1, "WA"],
      ],
    );
    assert.equal(doc.summary.samples, 4);
    assert.equal(doc.summary.by_verdict.AC, 2);
    assert.equal(doc.summary.pass_at_1, 0.5);
    assert.equal(doc.summary.pass_at_k["2"], 1);
    assert.equal(out.trim().split("\n").length, 1);
  });

  it("prints a table without --json", async () => {
    const answers = file("answers-table.jsonl", [
      { id: "double", text: py("print(int(input()) * 2)") },
    ]);
    const { code, out } = await run([problems, answers]);
    assert.equal(code, 0);
    assert.match(out, /double\s+0\s+AC/);
    assert.match(out, /pass@1 1\.0000/);
  });

  const bad: [string, () => string[], RegExp][] = [
    ["an unreadable file", () => [problems, join(dir, "missing.jsonl")], /cannot read/],
    [
      "bad JSON, with file:line",
      () => [problems, file("bad.jsonl", '{"id":"double","text":"x"}\n{oops\n')],
      /bad\.jsonl:2: invalid JSON/,
    ],
    [
      "a missing id",
      () => [problems, file("noid.jsonl", [{ text: "x" }])],
      /noid\.jsonl:1: missing string "id"/,
    ],
    [
      "an answer for an unknown problem",
      () => [problems, file("unknown.jsonl", [{ id: "nope", text: "x" }])],
      /unknown problem "nope"/,
    ],
    [
      "a problem with zero tests",
      () => [
        file("zero.jsonl", [{ id: "z", tests: [] }]),
        file("za.jsonl", [{ id: "z", text: "x" }]),
      ],
      /zero\.jsonl:1: problem z has no tests/,
    ],
    ["a wrong argument count", () => [problems], /expected 2 files/],
  ];
  for (const [name, argv, msg] of bad) {
    it(`exits 2 on ${name}`, async () => {
      const { code, err, out } = await run(argv());
      assert.equal(code, 2);
      assert.match(err, msg);
      assert.equal(out, "");
    });
  }
});
