#!/usr/bin/env node
// Import figures (issue 15): `valley run` on an OCR2-shaped Parquet file of
// ~2 GB (snappy, row groups of 1,000 rows, every column a string, question
// "-", several generations per question, index/difficulty as strings) whose
// questions are rebuilt from a TACO source in its published layout
// (ALL/train-*.parquet), then the teacher traces imported from it.
// Prints the peak RSS of the whole `valley run` process tree (sampled every
// 50 ms from /proc) and the read rate (file bytes / stage wall time), with a
// baseline in the same script: the time `cat FILE > /dev/null` takes for the
// same bytes (the disk), so the ratio says how close to I/O-bound it is.
// Targets: peak RSS <= 500 MB, >= 50 MB/s.
//
// Usage: node test/bench/import.mjs [--gb 2] [--keep DIR]
// Needs `npm run build` (dist/) and the dev dependency hyparquet-writer.
import { spawn, spawnSync } from "node:child_process";
import {
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { randomBytes } from "node:crypto";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { setInterval, clearInterval } from "node:timers";
import { ParquetWriter, fileWriter } from "hyparquet-writer";

const ROOT = join(dirname(fileURLToPath(import.meta.url)), "..", "..");
const CLI = join(ROOT, "dist", "bin", "valley.js");
const args = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : dflt;
};
const GB = Number(opt("--gb", "2"));
const dir = opt("--keep", "") || mkdtempSync(join(tmpdir(), "valley-bench-import-"));
mkdirSync(dir, { recursive: true });

// ---- text that compresses like prose/code (snappy ~2x): words from a
// 4,096-word vocabulary drawn with crypto random bytes
const WORDS = Array.from({ length: 4096 }, (_, i) => {
  const b = randomBytes(2 + (i % 9));
  return Array.from(b, (x) => String.fromCharCode(97 + (x % 26))).join("");
});
function text(chars) {
  const r = randomBytes(Math.ceil(chars / 3));
  const parts = [];
  let n = 0;
  for (let k = 0; n < chars && k + 1 < r.length; k += 2) {
    const w = WORDS[((r[k] << 8) | r[k + 1]) & 4095];
    parts.push(w);
    n += w.length + 1;
    if (r[k] < 20) parts.push(r[k] < 10 ? "\n" : ".");
  }
  return parts.join(" ");
}

const STR = (name) => ({
  name,
  type: "BYTE_ARRAY",
  converted_type: "UTF8",
  repetition_type: "OPTIONAL",
});
const OCR2_COLUMNS = [
  "question",
  "r1_generation",
  "qwq_critique",
  "solution",
  "judgement",
  "pass_rate",
  "source",
  "license",
  "dataset",
  "split",
  "difficulty",
  "index",
  "id",
  "question_id",
];
const TACO_ROWS = 2000;
const LABELS = ["EASY", "MEDIUM", "MEDIUM_HARD", "HARD", "VERY_HARD"];

function writeParquet(file, columns, batches) {
  const w = new ParquetWriter({
    writer: fileWriter(file),
    schema: [{ name: "root", num_children: columns.length }, ...columns.map(STR)],
  });
  for (const rows of batches())
    w.write({
      columnData: columns.map((c) => ({ name: c, data: rows.map((r) => r[c]) })),
      rowGroupSize: rows.length,
    });
  w.finish();
}

const ocr = join(dir, "ocr2", "train-00000-of-00001.parquet");
const taco = join(dir, "taco");
if (!args.includes("--keep") || !statSafe(ocr)) {
  mkdirSync(join(taco, "ALL"), { recursive: true });
  mkdirSync(dirname(ocr), { recursive: true });
  const t0 = Date.now();
  writeParquet(
    join(taco, "ALL", "train-00000-of-00001.parquet"),
    [
      "question",
      "solutions",
      "starter_code",
      "input_output",
      "difficulty",
      "raw_tags",
      "name",
      "source",
      "tags",
      "skill_types",
      "url",
      "Expected Auxiliary Space",
      "time_limit",
      "date",
      "picture_num",
      "memory_limit",
      "Expected Time Complexity",
    ],
    function* () {
      for (let s = 0; s < TACO_ROWS; s += 500)
        yield Array.from({ length: 500 }, (_, k) => ({
          question: text(1500),
          solutions: JSON.stringify([text(400)]),
          starter_code: "",
          input_output: JSON.stringify({ inputs: ["1 2\n", "3 4\n"], outputs: ["3\n", "7\n"] }),
          difficulty: LABELS[(s + k) % 5],
          raw_tags: "[]",
          name: `p${s + k}`,
          source: "codeforces",
          tags: "[]",
          skill_types: "[]",
          url: "",
          "Expected Auxiliary Space": null,
          time_limit: "1 seconds",
          date: "2020-01-01",
          picture_num: "0",
          memory_limit: "256 megabytes",
          "Expected Time Complexity": null,
        }));
    },
  );
  const target = GB * 1e9;
  let row = 0;
  writeParquet(ocr, OCR2_COLUMNS, function* () {
    for (;;) {
      if (row > 0 && statSync(ocr).size >= target) return;
      yield Array.from({ length: 1000 }, () => {
        const q = Math.floor(row / 8); // 8 generations per question
        const r = {
          question: "-",
          r1_generation: `<think>\n${text(30000)}\n</think>\n\n\`\`\`python\n${text(600)}\n\`\`\``,
          qwq_critique: text(8000),
          solution: text(600),
          judgement: row % 3 ? "right" : "wrong",
          pass_rate: row % 3 ? "1.0" : "0.0",
          source: "codeforces",
          license: "cc-by-4.0",
          dataset: "taco",
          split: "train",
          difficulty: LABELS[(q % TACO_ROWS) % 5],
          index: String(q % TACO_ROWS),
          id: `row${row}`,
          question_id: `q${q % TACO_ROWS}`,
        };
        row++;
        return r;
      });
    }
  });
  console.log(
    `generated ${row} rows, ${(statSync(ocr).size / 1e9).toFixed(2)} GB in ${((Date.now() - t0) / 1000).toFixed(0)} s: ${ocr}`,
  );
}

function statSafe(f) {
  try {
    return statSync(f);
  } catch {
    return null;
  }
}

// ---- baseline: the disk, reading the same bytes
const size = statSync(ocr).size;
spawnSync("sync");
const c0 = process.hrtime.bigint();
spawnSync("sh", ["-c", `cat '${ocr}' > /dev/null`]);
const catS = Number(process.hrtime.bigint() - c0) / 1e9;

// ---- valley run, RSS of the process tree sampled from /proc
writeFileSync(
  join(dir, "import.yaml"),
  `version: 1
stages:
  ocr2:
    uses: problems
    with: { format: ocr, path: ./ocr2, sources: { taco: ./taco } }
  teacher:
    uses: traces
    inputs: { problems: ocr2 }
    with: { backend: import, samples: 1 }
`,
);
const cache = join(dir, "cache");
rmSync(cache, { recursive: true, force: true });

function treeRss(root) {
  const kids = new Map();
  for (const p of readdirSync("/proc")) {
    if (!/^\d+$/.test(p)) continue;
    try {
      const ppid = Number(readFileSync(`/proc/${p}/stat`, "utf8").split(") ")[1].split(" ")[1]);
      if (!kids.has(ppid)) kids.set(ppid, []);
      kids.get(ppid).push(Number(p));
    } catch {
      // exited
    }
  }
  let total = 0;
  const stack = [root];
  while (stack.length) {
    const p = stack.pop();
    try {
      const m = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${p}/status`, "utf8"));
      if (m) total += Number(m[1]) * 1024;
    } catch {
      // exited
    }
    stack.push(...(kids.get(p) ?? []));
  }
  return total;
}

const t0 = process.hrtime.bigint();
// GNU time adds the CPU seconds of the whole tree (the machine is shared:
// CPU seconds say what one free core would do, wall seconds what it did).
const child = spawn(
  "/usr/bin/time",
  ["-f", "CPU %U %S", process.execPath, CLI, "run", join(dir, "import.yaml"), "--json"],
  { env: { ...process.env, VALLEY_CACHE: cache }, stdio: ["ignore", "pipe", "pipe"] },
);
let err = "";
child.stderr.on("data", (d) => (err += d));
let out = "";
child.stdout.on("data", (d) => (out += d));
let peak = 0;
const timer = setInterval(() => (peak = Math.max(peak, treeRss(child.pid))), 50);
const code = await new Promise((res) => child.on("close", res));
clearInterval(timer);
const wall = Number(process.hrtime.bigint() - t0) / 1e9;
if (code !== 0) {
  console.error(`valley run failed (${code}):\n${out}\n${err}`);
  process.exit(1);
}
const show = (id) =>
  JSON.parse(
    spawnSync(process.execPath, [CLI, "show", id, "-f", join(dir, "import.yaml"), "--json"], {
      env: { ...process.env, VALLEY_CACHE: cache },
      encoding: "utf8",
    }).stdout,
  );
const p = show("ocr2");
const t = show("teacher");
const secs = (x) => x.timings.seconds;
const mb = size / 1e6;
const [, user, sys] = /CPU ([\d.]+) ([\d.]+)/.exec(err) ?? [];
const cpu = Number(user) + Number(sys);
console.log(
  JSON.stringify(
    { ocr2: p.metrics, teacher: t.metrics, timings: { ocr2: p.timings, teacher: t.timings } },
    null,
    1,
  ),
);
console.log(
  [
    `file: ${mb.toFixed(0)} MB (${(mb / catS).toFixed(0)} MB/s for cat, the disk baseline: ${catS.toFixed(1)} s)`,
    `valley run (problems + traces import): ${wall.toFixed(1)} s wall`,
    `problems stage: ${secs(p).toFixed(1)} s = ${(mb / secs(p)).toFixed(0)} MB/s (target >= 50; ${(catS / secs(p)).toFixed(2)}x of cat's rate)`,
    `whole run: ${(mb / wall).toFixed(0)} MB/s of OCR2 file by wall clock; ${cpu.toFixed(1)} CPU s (user ${user} + sys ${sys}) = ${(mb / cpu).toFixed(0)} MB/s per CPU second`,
    `load average at the end: ${readFileSync("/proc/loadavg", "utf8").split(" ").slice(0, 3).join(" ")} (2 cores)`,
    `peak RSS of the valley process tree: ${(peak / 1e6).toFixed(0)} MB (target <= 500)`,
  ].join("\n"),
);
if (!args.includes("--keep")) rmSync(dir, { recursive: true, force: true });
