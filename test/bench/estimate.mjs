#!/usr/bin/env node
// How good is `valley plan --estimate`? On a fresh cache: calibrate, estimate
// the demo, run it, and set each instance's estimate beside its actual time.
//
//   npm run build && node test/bench/estimate.mjs [--source-cache DIR] [--keep]
//
// The llama.cpp build is taken from --source-cache (default: the shared test
// cache, .tmp/test-cache, or $VALLEY_TEST_CACHE) through valley export/import,
// so the bench does not rebuild it; everything else is computed in a fresh
// cache. The demo's data stages (problems → teacher → verified → data, and the
// student) run first: a lab lead estimates a fine-tune once its data exists,
// and they cost seconds. Then `valley calibrate`, `valley plan --estimate`,
// `valley run`, the comparison, and the calibration again (the machine's own
// drift). Target: finetune and evaluate within ±30%
// of the actual (the estimate's midpoint), and inside its low–high range.
import { spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const cli = join(root, "dist", "bin", "valley.js");
const demo = join(root, "pipelines", "demo.yaml");
const arg = (name, dflt) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : dflt;
};
const source = arg(
  "--source-cache",
  process.env.VALLEY_TEST_CACHE ?? join(root, ".tmp", "test-cache"),
);
if (!existsSync(cli)) {
  console.error("compile the project first: npm run build");
  process.exit(2);
}
const cache = mkdtempSync(join(tmpdir(), "valley-bench-estimate-"));
// the machine is shared and noisy: say how busy it was
const { loadavg } = await import("node:os");
const load = () =>
  loadavg()
    .map((x) => x.toFixed(2))
    .join(" ");
console.log(`${new Date().toISOString()} load average at the start: ${load()}`);
const env = { ...process.env, VALLEY_CACHE: cache };
delete env.VALLEY_LLAMA_BIN;

function valley(args, opts = {}) {
  const t0 = Date.now();
  const r = spawnSync(process.execPath, [cli, ...args], {
    env: opts.env ?? env,
    encoding: "utf8",
    maxBuffer: 1 << 28,
  });
  const seconds = (Date.now() - t0) / 1000;
  if (r.status !== 0 && !opts.allowFail) {
    console.error(`valley ${args.join(" ")} exited ${r.status}\n${r.stdout}\n${r.stderr}`);
    process.exit(1);
  }
  return { ...r, seconds };
}

// 1. the llama.cpp build, from the source cache: a pipeline of the demo's
// llama stage alone has the same key (stage names are not keyed), and its
// lockfile lets valley export the result
const { parse, stringify } = await import("yaml");
const work = mkdtempSync(join(tmpdir(), "valley-bench-estimate-llama-"));
const llamaOnly = join(work, "llama.yaml");
const demoDoc = parse(readFileSync(demo, "utf8"));
writeFileSync(
  llamaOnly,
  stringify({ version: 1, name: "demo-llama", stages: { llama: demoDoc.stages.llama } }),
);
const sourceEnv = { ...process.env, VALLEY_CACHE: source };
const bundle = join(work, "llama.tar");
const hit = valley(["run", llamaOnly, "--json"], { env: sourceEnv, allowFail: true });
const exp =
  hit.status === 0 && JSON.parse(hit.stdout).executed === 0
    ? valley(["export", llamaOnly, "-o", bundle], { env: sourceEnv, allowFail: true })
    : { status: 1, stderr: hit.stderr };
if (exp.status !== 0) {
  console.error(
    `no llama.cpp build of the demo in ${source} (${exp.stderr.trim()}); ` +
      `build it there first: VALLEY_CACHE=${source} valley run ${demo} --only llama`,
  );
  process.exit(2);
}
valley(["import", bundle]);
rmSync(work, { recursive: true, force: true });

// 2. the data stages
const data = valley(["run", demo, "--only", "data", "--only", "student", "--json"]);
console.log(`data stages: ${data.seconds.toFixed(1)} s`);

// 3. calibrate
const cal = valley(["calibrate", demo, "--json"]);
console.log(`valley calibrate: ${cal.seconds.toFixed(1)} s`);
process.stdout.write(cal.stderr);

// 4. estimate
const est = JSON.parse(valley(["plan", demo, "--estimate", "--json"]).stdout);
// kept for a closer look at each basis (--keep)
writeFileSync(join(cache, "estimate.json"), JSON.stringify(est, null, 1));

// 5. run
const run = valley(["run", demo, "--json"]);
console.log(`valley run: ${run.seconds.toFixed(1)} s (${run.stdout.trim()})\n`);

// 6. compare
const rows = [];
for (const r of est.instances) {
  if (r.cached || !r.estimate) continue;
  const show = JSON.parse(valley(["show", r.id, "-f", demo, "--json"]).stdout);
  const actual = show.timings.seconds;
  const [lo, hi] = r.estimate.hours.map((h) => h * 3600);
  const mid = (lo + hi) / 2;
  // evaluate: the same estimate with the answers' actual lengths in place of
  // the assumed 10-100% of max_tokens: the error of the rate model alone
  let given;
  let graded;
  const x = r.estimate.extra ?? {};
  if (r.kind === "evaluate" && x.decode_tokens_per_s && show.metrics?.mean_completion_tokens) {
    const g = show.metrics.mean_completion_tokens * x.answers_to_generate;
    const [t0, t1] = x.decode_tokens_per_s;
    const part = (i) =>
      (x.start_seconds?.[i] ?? 0) +
      (x.prompt_seconds?.[i] ?? 0) +
      g / (i === 0 ? t1 : t0) +
      ((x.grading_cpu_hours?.[i] ?? 0) * 3600) / (x.grading_jobs ?? 1);
    given = (part(0) + part(1)) / 2;
    // and the grading as the run measured it (the estimate's share assumes
    // half the answers have code; the demo's students write almost none)
    const grade = (show.measured ?? []).find((m) => m.what === "grade");
    const gradeMid =
      (((x.grading_cpu_hours?.[0] ?? 0) + (x.grading_cpu_hours?.[1] ?? 0)) / 2) * 3600;
    const gradeRun = grade
      ? (grade.seconds_per_sample * x.answers_to_generate) / (x.grading_jobs ?? 1)
      : 0;
    graded = given - gradeMid / (x.grading_jobs ?? 1) + gradeRun;
  }
  rows.push({ id: r.id, kind: r.kind, lo, hi, mid, actual, err: mid / actual - 1, given, graded });
}
const pad = (s, n) => String(s).padEnd(n);
console.log(
  `${pad("instance", 34)} ${pad("kind", 10)} ${pad("estimate (s)", 18)} ${pad("mid", 7)} ${pad("actual", 7)} error`,
);
for (const r of rows)
  console.log(
    `${pad(r.id, 34)} ${pad(r.kind, 10)} ${pad(`${r.lo.toFixed(1)}–${r.hi.toFixed(1)}`, 18)} ${pad(r.mid.toFixed(1), 7)} ${pad(r.actual.toFixed(1), 7)} ${(r.err * 100).toFixed(0)}%` +
      (r.actual >= r.lo && r.actual <= r.hi ? "" : "  (outside the range)") +
      (r.given !== undefined
        ? `  [with the actual answer lengths: ${r.given.toFixed(1)} s, ${((r.given / r.actual - 1) * 100).toFixed(0)}%; and the grading measured: ${r.graded.toFixed(1)} s, ${((r.graded / r.actual - 1) * 100).toFixed(0)}%]`
        : ""),
  );
for (const kind of ["finetune", "evaluate"]) {
  const k = rows.filter((r) => r.kind === kind);
  const within = k.filter((r) => Math.abs(r.err) <= 0.3).length;
  const inRange = k.filter((r) => r.actual >= r.lo && r.actual <= r.hi).length;
  const sumMid = k.reduce((a, r) => a + r.mid, 0);
  const sumActual = k.reduce((a, r) => a + r.actual, 0);
  // what the estimate cannot know before the students answer (their lengths, and how
  // many answers have code to run) taken from the run: the error of the rest
  const known = k.filter((r) => r.graded !== undefined);
  const knownWithin = known.filter((r) => Math.abs(r.graded / r.actual - 1) <= 0.3).length;
  console.log(
    `${kind}: ${within}/${k.length} within ±30% of the midpoint, ${inRange}/${k.length} inside the range; ` +
      `total ${sumMid.toFixed(0)} s estimated vs ${sumActual.toFixed(0)} s actual (${((sumMid / sumActual - 1) * 100).toFixed(0)}%)` +
      (known.length
        ? `; with the answers' actual lengths and the grading as measured: ${knownWithin}/${known.length} within ±30%`
        : ""),
  );
}
// 7. the machine's own drift: the same micro-benchmarks again, after the run. An
// estimate made from the first calibration cannot follow a machine whose speed
// moved between the two; their ratios bound what any estimate here can do.
const after = valley(["calibrate", demo, "--json"]);
const rates = (r) =>
  new Map(
    JSON.parse(r.stdout).calibrated.flatMap((c) =>
      c.measured.map((m) => [
        `${m.what} ${m.shape?.weightType ?? ""}${m.window ? ` window ${m.window}` : ""}`.trim(),
        m.what === "grade" ? 1 / m.seconds_per_sample : m.tokens_per_s,
      ]),
    ),
  );
const [r0, r1] = [rates(cal), rates(after)];
const drift = [...r0]
  .filter(([k]) => r1.has(k))
  .map(([k, v]) => `${k} ×${(r1.get(k) / v).toFixed(2)}`);
console.log(
  `calibrated again after the run, speed relative to before: ${drift.join(", ")} (grade: samples/s)`,
);
console.log(`${new Date().toISOString()} load average at the end: ${load()}`);
if (!process.argv.includes("--keep")) rmSync(cache, { recursive: true, force: true });
else console.log(`cache kept: ${cache}`);
