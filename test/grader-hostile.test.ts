/**
 * Hostile and broken programs: each gets the verdict it deserves, has no
 * effect outside its sandbox, leaves no process behind, and the grader keeps
 * going. Short limits (1 s CPU, 3 s wall) keep the file fast.
 */
import assert from "node:assert/strict";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { after, before, describe, it } from "node:test";
import { gradeMany } from "../grader/grade.js";
import { projectRoot } from "../grader/paths.js";
import { probeSandbox } from "../grader/sandbox.js";
import type { Outcome, Problem, SampleResult } from "../grader/types.js";

const MARK = `valleyhostile${process.pid}`;
const SECRET = `s3cr3t-${process.pid}-${Date.now()}`;
const REPO = projectRoot();
const HOST_MARKERS = [`/tmp/${MARK}-tmp`, `${REPO}/${MARK}-repo`, `/tmp/${MARK}-daemon`];

/** Processes of any sandbox: a sandbox uid (we run sandboxes as ≥ 1000000 when root) or the harness's code. */
function sandboxProcesses(): number[] {
  const pids: number[] = [];
  for (const name of readdirSync("/proc")) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const status = readFileSync(`/proc/${name}/status`, "utf8");
      const uid = Number(/^Uid:\s+(\d+)/m.exec(status)?.[1] ?? 0);
      const cmd = readFileSync(`/proc/${name}/cmdline`, "utf8");
      if (uid >= 1_000_000 || cmd.includes("PROTO_OUT = os.fdopen") || cmd.includes(MARK))
        pids.push(Number(name));
    } catch {
      /* exited meanwhile */
    }
  }
  return pids;
}

const py = (code: string) => "Here you go:\n```python\n" + code.trim() + "\n```\n";
const stdinProblem = (
  id: string,
  input: string,
  output: string,
  extra: Partial<Problem> = {},
): Problem => ({
  id,
  tests: [{ input, output, type: "stdin" }],
  time_limit_s: 1,
  memory_limit_mb: 256,
  ...extra,
});

interface Case {
  name: string;
  problem: Problem;
  text: string;
  want: Outcome;
}

const cases: Case[] = [
  {
    name: "infinite loop",
    problem: stdinProblem("loop", "", "1"),
    text: py("while True:\n    pass"),
    want: "TLE",
  },
  {
    name: "long sleep",
    problem: stdinProblem("sleep", "", "1"),
    text: py("import time\ntime.sleep(600)"),
    want: "TLE",
  },
  {
    name: "fork bomb",
    problem: stdinProblem("forkbomb", "", "1"),
    text: py("import os\nwhile True:\n    os.fork()"),
    want: "RE",
  },
  {
    name: "thread bomb",
    problem: stdinProblem("threadbomb", "", "1"),
    text: py(
      "import threading, time\nwhile True:\n    threading.Thread(target=time.sleep, args=(100,), daemon=True).start()",
    ),
    want: "RE",
  },
  {
    name: "memory bomb",
    // Zero-filling 256 MB costs ~0.9 s of CPU in page faults on these VMs:
    // a 1 s CPU limit would race the memory limit, so give the CPU room.
    problem: stdinProblem("membomb", "", "1", { time_limit_s: 5 }),
    text: py("a = []\nwhile True:\n    a.append(bytearray(10**7))"),
    want: "MLE",
  },
  {
    name: "deep recursion past the C stack",
    problem: stdinProblem("deeprec", "", "1"),
    // Hashing nested tuples recurses in C with no depth check.
    text: py("t = ()\nfor _ in range(10**6):\n    t = (t,)\nprint(hash(t))"),
    want: "RE",
  },
  {
    name: "deep but legitimate Python recursion",
    problem: stdinProblem("deepok", "", "100000"),
    text: py(
      "import sys\nsys.setrecursionlimit(10**6)\ndef f(n):\n    return 0 if n == 0 else f(n - 1) + 1\nprint(f(10**5))",
    ),
    want: "AC",
  },
  {
    name: "recursion error",
    problem: stdinProblem("recerr", "", "1"),
    text: py("def f(n):\n    return f(n + 1)\nf(0)"),
    want: "RE",
  },
  {
    name: "1 GB of output",
    problem: stdinProblem("gig", "", "1"),
    text: py(
      "import sys\nblock = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(block)",
    ),
    want: "OLE",
  },
  {
    name: "endless output",
    problem: stdinProblem("endless", "", "1"),
    text: py("while True:\n    print('y' * 4096)"),
    want: "OLE",
  },
  {
    name: "invalid UTF-8 and NUL bytes",
    problem: stdinProblem("badutf8", "", "abc"),
    text: py("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe\\x00abc\\x00\\n')"),
    want: "WA",
  },
  {
    name: "reading /etc/shadow",
    problem: stdinProblem("shadow", "", "root"),
    text: py("print(open('/etc/shadow').read().split(':')[0])"),
    want: "RE",
  },
  {
    name: "reading the repo",
    problem: stdinProblem("repo", "", readFileSync(`${REPO}/package.json`, "utf8")),
    text: py(`print(open(${JSON.stringify(REPO + "/package.json")}).read())`),
    want: "RE",
  },
  {
    name: "reading /proc/1/environ",
    problem: stdinProblem("environ1", "", SECRET),
    text: py("print(open('/proc/1/environ', 'rb').read().decode(errors='replace'))"),
    want: "RE",
  },
  {
    name: "reading environment variables",
    problem: stdinProblem("envvars", "", SECRET),
    text: py(
      "import os\nprint(os.environ.get('VALLEY_TEST_SECRET', 'none'))\nprint(' '.join(os.environ))",
    ),
    want: "WA",
  },
  {
    name: "a socket",
    problem: stdinProblem("socket", "", "blocked"),
    text: py(
      "import socket\ntry:\n    socket.create_connection(('1.1.1.1', 80), timeout=1)\n    print('connected')\nexcept OSError:\n    print('blocked')",
    ),
    want: "AC",
  },
  {
    name: "a DNS lookup",
    problem: stdinProblem("dns", "", "blocked"),
    text: py(
      "import socket\ntry:\n    socket.getaddrinfo('example.com', 80)\n    print('resolved')\nexcept OSError:\n    print('blocked')",
    ),
    want: "AC",
  },
  {
    name: "killing the parent",
    problem: stdinProblem("killparent", "2\n", "4"),
    text: py(
      "import os\ntry:\n    os.kill(os.getppid(), 9)\nexcept OSError:\n    pass\nprint(int(input()) * 2)",
    ),
    want: "AC",
  },
  {
    name: "killing every process",
    problem: stdinProblem("killall", "2\n", "4"),
    text: py(
      "import os\ntry:\n    os.kill(-1, 9)\nexcept OSError:\n    pass\nprint(int(input()) * 2)",
    ),
    want: "AC",
  },
  {
    name: "killing every process, uncaught",
    problem: stdinProblem("killall2", "2\n", "4"),
    text: py("import os\nos.kill(-1, 9)\nprint(int(input()) * 2)"),
    want: "RE",
  },
  {
    name: "a double-forked daemon",
    problem: stdinProblem("daemon", "2\n", "4"),
    text: py(
      `import os, time
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        time.sleep(3)
        open(${JSON.stringify(HOST_MARKERS[2])}, 'w').write('escaped')
        time.sleep(600)
    os._exit(0)
print(int(input()) * 2)`,
    ),
    want: "AC",
  },
  {
    name: "writing files",
    problem: stdinProblem("writefiles", "", "done"),
    text: py(
      `for path in [${JSON.stringify(HOST_MARKERS[0])}, ${JSON.stringify(HOST_MARKERS[1])}, '/usr/${MARK}']:
    try:
        open(path, 'w').write('x')
    except OSError:
        pass
print('done')`,
    ),
    want: "AC",
  },
  {
    name: "filling /tmp",
    problem: stdinProblem("filltmp", "", "1"),
    text: py(
      "f = open('/tmp/fill', 'wb')\nwhile True:\n    f.write(b'\\0' * (1 << 20))\n    f.flush()",
    ),
    want: "RE",
  },
  {
    name: "os._exit(0) after partial output",
    problem: stdinProblem("partial", "", "1 2 3"),
    text: py("import os, sys\nsys.stdout.write('1 2')\nsys.stdout.flush()\nos._exit(0)"),
    want: "WA",
  },
  {
    name: "a correct answer then a crash",
    problem: stdinProblem("crash", "2\n", "4"),
    text: py("print(int(input()) * 2, flush=True)\nraise ValueError('late')"),
    want: "RE",
  },
  {
    name: "closing stdout early",
    problem: stdinProblem("closeout", "2\n", "4"),
    text: py("import os\nos.close(1)\nprint(int(input()) * 2)"),
    want: "RE",
  },
  {
    name: "never reading a large stdin",
    problem: stdinProblem("noread", "9\n".repeat(1 << 19), "ok"),
    text: py("print('ok')"),
    want: "AC",
  },
  {
    name: "raising its own limits",
    problem: stdinProblem("rlimit", "", "1"),
    text: py(
      "import resource\ntry:\n    resource.setrlimit(resource.RLIMIT_CPU, (10**6, 10**6))\nexcept (ValueError, OSError):\n    pass\nwhile True:\n    pass",
    ),
    want: "TLE",
  },
  {
    name: "forging harness output through /proc/1/fd/1",
    problem: stdinProblem("forge", "", "42"),
    text: py(
      "try:\n    open('/proc/1/fd/1', 'w').write('{\"i\":0}\\n')\nexcept OSError:\n    pass\ntry:\n    open('/proc/1/mem', 'rb').read(1)\nexcept OSError:\n    pass\nprint(41)",
    ),
    want: "WA",
  },
  {
    name: "a segfault through ctypes",
    problem: stdinProblem("segv", "", "1"),
    text: py("import ctypes\nctypes.string_at(0)"),
    want: "RE",
  },
  {
    name: "sys.exit(3)",
    problem: stdinProblem("exit3", "", "1"),
    text: py("import sys\nprint(1)\nsys.exit(3)"),
    want: "RE",
  },
  {
    name: "a syntax error",
    problem: stdinProblem("syntax", "", "1"),
    text: py("print(1"),
    want: "CE",
  },
  {
    name: "no code block",
    problem: stdinProblem("nocode", "", "1"),
    text: "print(1)\nI think the answer is 1.",
    want: "NO_CODE",
  },
  {
    name: "code only inside the think block",
    problem: stdinProblem("thinkonly", "", "1"),
    text: "<think>\n```python\nprint(1)\n```\n</think>\nThe answer prints 1.",
    want: "NO_CODE",
  },
  {
    name: "an unclosed think block",
    problem: stdinProblem("unclosed", "", "1"),
    text: "<think>\nlet me write\n```python\nprint(1)\n```\n",
    want: "NO_CODE",
  },
  {
    name: "a subprocess shell",
    problem: stdinProblem("shell", "", "ok"),
    text: py(
      "import subprocess\nprint(subprocess.run(['/bin/sh', '-c', 'echo ok'], capture_output=True, text=True).stdout.strip())",
    ),
    want: "AC",
  },
  {
    name: "a functional solution that hangs",
    problem: {
      id: "fnhang",
      tests: [{ input: "1", output: "1", type: "functional" }],
      fn_name: "f",
      time_limit_s: 1,
    },
    text: py("class Solution:\n    def f(self, x):\n        while True:\n            pass"),
    want: "TLE",
  },
];

describe("hostile programs in the sandbox", { skip: process.platform !== "linux" }, () => {
  let results: SampleResult[] = [];
  let sandboxUnavailable: string | null = null;

  before(async () => {
    sandboxUnavailable = await probeSandbox("bwrap");
    if (sandboxUnavailable) return;
    process.env.VALLEY_TEST_SECRET = SECRET;
    results = await gradeMany(
      cases.map((c) => ({ problem: c.problem, text: c.text })),
      { jobs: 2, wallFactor: 2, limits: { tmpBytes: 8 << 20, fileSizeBytes: 64 << 20 } },
    );
  });
  after(() => {
    delete process.env.VALLEY_TEST_SECRET;
  });

  it("the sandbox starts", () => {
    assert.equal(sandboxUnavailable, null);
  });

  it(`has at least 30 hostile or broken programs (${cases.length})`, () => {
    assert.ok(cases.length >= 30);
  });

  for (const [k, c] of cases.entries()) {
    it(`${c.name} → ${c.want}`, () => {
      const r = results[k];
      assert.ok(r, "graded");
      assert.equal(r.verdict, c.want, `${c.name}: ${JSON.stringify(r)}`);
    });
  }

  it("no program had an effect outside its sandbox", async () => {
    // The daemon would have written its marker 3 s after starting.
    await new Promise((r) => setTimeout(r, 500));
    for (const f of HOST_MARKERS) assert.equal(existsSync(f), false, `${f} must not exist`);
  });

  it("no process of any sandbox is left", () => {
    const left = sandboxProcesses().map((pid) => {
      try {
        const status = readFileSync(`/proc/${pid}/status`, "utf8");
        return `${pid} ${/^State:.*$/m.exec(status)?.[0]} ${/^PPid:.*$/m.exec(status)?.[0]} ${/^Name:.*$/m.exec(status)?.[0]} ${readFileSync(`/proc/${pid}/cmdline`, "utf8").slice(0, 120)}`;
      } catch {
        return `${pid} (gone)`;
      }
    });
    assert.deepEqual(left, []);
  });

  it("the grader keeps going after hostile programs", async () => {
    const [r] = await gradeMany([
      { problem: stdinProblem("after", "20\n", "40"), text: py("print(int(input()) * 2)") },
    ]);
    assert.equal(r.verdict, "AC");
  });
});

// The same programs under LiveCodeBench's and TACO's semantics: verdicts follow
// those harnesses (one process for all tests, in-process patching, wall-clock
// alarms), but containment must not change. Alarms scaled to 1 s; the address
// space capped at 1 GiB here only to spare the shared test machine.
for (const [semantics, timeoutScale] of [
  ["lcb", 1 / 6],
  ["taco", 1 / 4],
] as const) {
  describe(
    `hostile programs under ${semantics} semantics`,
    { skip: process.platform !== "linux" },
    () => {
      let results: SampleResult[] = [];
      let sandboxUnavailable: string | null = null;

      before(async () => {
        sandboxUnavailable = await probeSandbox("bwrap");
        if (sandboxUnavailable) return;
        process.env.VALLEY_TEST_SECRET = SECRET;
        results = await gradeMany(
          cases.map((c) => ({ problem: c.problem, text: c.text })),
          {
            semantics,
            timeoutScale,
            memoryCapMb: 1024,
            jobs: 2,
            limits: { tmpBytes: 8 << 20, fileSizeBytes: 64 << 20 },
          },
        );
      });
      after(() => {
        delete process.env.VALLEY_TEST_SECRET;
      });

      it("every program gets a verdict (no infrastructure error)", () => {
        assert.equal(sandboxUnavailable, null);
        assert.equal(results.length, cases.length);
        for (const [k, r] of results.entries()) {
          assert.notEqual(r.verdict, "IE", `${cases[k].name}: ${r.message}`);
          assert.equal(r.semantics, semantics);
        }
      });

      it("nothing of the host reaches a program (its files, environment, network)", () => {
        // Each of these passes only if the program could read or reach the host.
        for (const id of ["shadow", "repo", "environ1", "envvars"]) {
          const k = cases.findIndex((c) => c.problem.id === id);
          assert.notEqual(results[k].verdict, "AC", `${id}: ${JSON.stringify(results[k])}`);
        }
      });

      it("no program had an effect outside its sandbox", async () => {
        await new Promise((r) => setTimeout(r, 500));
        for (const f of HOST_MARKERS) assert.equal(existsSync(f), false, `${f} must not exist`);
      });

      it("no process of any sandbox is left", () => {
        assert.deepEqual(sandboxProcesses(), []);
      });
    },
  );
}
