// Graded programs per second in the sandbox vs bare `/usr/bin/python3 -I`
// spawns of the same programs on the same inputs, with the same parallelism.
// Build first (npm run build), then:
//   node test/bench/grader.mjs [--programs N] [--tests T] [--jobs J] [--rounds R] [--dist DIR]
// It also compares the lcb semantics with strict on the same programs (last line).
// The bare side only runs the programs (no sandbox, no limits, no checking);
// the sandboxed side does everything a real grading does.
import { spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : dflt;
}
const programs = Number(arg("programs", 40));
const testsPer = Number(arg("tests", 5));
const jobs = Number(arg("jobs", 2));
const root = resolve(dirname(fileURLToPath(import.meta.url)), "../..");
const dist = resolve(arg("dist") ?? join(root, "dist"));
if (!existsSync(join(dist, "grader/grade.js"))) {
  console.error("build first: npm run build");
  process.exit(2);
}
const { gradeMany } = await import(pathToFileURL(join(dist, "grader/grade.js")).href);

// A typical small stdin solution: read numbers, print their sum.
const code = "import sys\nnums = list(map(int, sys.stdin.read().split()))\nprint(sum(nums))\n";
const problem = (k) => ({
  id: `p${k}`,
  time_limit_s: 6,
  tests: Array.from({ length: testsPer }, (_, t) => ({
    input: `${k} ${t} ${k * t}\n`,
    output: String(k + t + k * t),
    type: "stdin",
  })),
});
const work = Array.from({ length: programs }, (_, k) => ({
  problem: problem(k),
  text: "```python\n" + code + "```",
}));

function bare(input) {
  return new Promise((res, rej) => {
    const c = spawn("/usr/bin/python3", ["-I", "-c", code], { stdio: ["pipe", "pipe", "pipe"] });
    let out = "";
    c.stdout.on("data", (d) => (out += d));
    c.stderr.resume();
    c.on("error", rej);
    c.on("close", () => res(out));
    c.stdin.end(input);
  });
}

async function runBare() {
  let next = 0;
  const worker = async () => {
    while (next < work.length) {
      const w = work[next++];
      for (const t of w.problem.tests) await bare(t.input);
    }
  };
  await Promise.all(Array.from({ length: jobs }, worker));
}

async function time(f) {
  const t0 = process.hrtime.bigint();
  await f();
  return Number(process.hrtime.bigint() - t0) / 1e9;
}

// Warm both paths (page cache, the harness source) before timing.
await runBare();
await gradeMany(work.slice(0, 4), { jobs });
const rounds = Number(arg("rounds", 3));
const bareS = [];
const boxS = [];
let verdicts;
for (let r = 0; r < rounds; r++) {
  bareS.push(await time(runBare));
  boxS.push(
    await time(async () => {
      const res = await gradeMany(work, { jobs });
      verdicts = res.map((x) => x.verdict);
    }),
  );
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const bareRate = programs / median(bareS);
const boxRate = programs / median(boxS);
const bad = verdicts.filter((v) => v !== "AC").length;
console.log(`programs ${programs} × ${testsPer} tests, jobs ${jobs}, rounds ${rounds} (median)`);
console.log(
  `bare python3 -I spawns: ${bareRate.toFixed(1)} programs/s (${((median(bareS) * 1000) / (programs * testsPer)).toFixed(1)} ms per test run)`,
);
console.log(
  `sandboxed grading:      ${boxRate.toFixed(1)} programs/s (${((median(boxS) * 1000) / programs).toFixed(1)} ms per program)`,
);
console.log(
  `ratio sandboxed/bare:   ${(boxRate / bareRate).toFixed(2)}x${bad ? ` (WARNING: ${bad} not AC)` : ""}`,
);

// Semantics: the same programs as LiveCodeBench problems, graded with valley's
// strict semantics and with lcb (LiveCodeBench's, one process for all tests,
// its import preamble), alternating rounds. Target: lcb ≥ 0.9× strict.
const lcbWork = work.map((w) => ({ ...w, problem: { ...w.problem, source: "lcb" } }));
const semS = { strict: [], lcb: [] };
const semBad = { strict: 0, lcb: 0 };
await gradeMany(lcbWork.slice(0, 4), { jobs, semantics: "lcb" });
for (let r = 0; r < rounds; r++) {
  for (const semantics of ["strict", "lcb"]) {
    semS[semantics].push(
      await time(async () => {
        const res = await gradeMany(lcbWork, { jobs, semantics });
        semBad[semantics] = res.filter((x) => x.verdict !== "AC").length;
      }),
    );
  }
}
const strictRate = programs / median(semS.strict);
const lcbRate = programs / median(semS.lcb);
console.log(
  `semantics strict: ${strictRate.toFixed(1)} programs/s, lcb: ${lcbRate.toFixed(1)} programs/s; ` +
    `ratio lcb/strict: ${(lcbRate / strictRate).toFixed(2)}x (target ≥ 0.9x)` +
    (semBad.strict + semBad.lcb
      ? ` (WARNING: not AC: strict ${semBad.strict}, lcb ${semBad.lcb})`
      : ""),
);
