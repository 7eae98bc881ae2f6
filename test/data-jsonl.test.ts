/**
 * JSONL streaming: the writer's bytes are exactly JSON.stringify's lines
 * (digests of imported data depend on them), and the reader gives back the
 * records whatever falls on its read boundaries (multi-byte characters, CRLF,
 * lines far longer than a read).
 */
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtemp, readFile, writeFile } from "node:fs/promises";
import { existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { JsonlWriter, readJsonl, readJsonlAll } from "../data/jsonl.js";
import { BadStageInput } from "../engine/stage-api.js";

const dir = await mkdtemp(join(tmpdir(), "valley-jsonl-"));

// Records that cross the writer's 8 MB block and the reader's 1 MB reads at
// awkward places: 4-byte and 3-byte UTF-8 characters, a lone surrogate (which
// JSON.stringify escapes), control characters, and one 10 MB line (longer than
// a block can take).
function records(): unknown[] {
  const out: unknown[] = [];
  for (let i = 0; i < 400; i++)
    out.push({
      i,
      text: "a".repeat((i * 7919) % 50_000) + "😀" + "漢".repeat(i % 13) + '\n\t"\\',
      lone: i % 50 === 0 ? "x\ud800y" : null,
    });
  out.push({ big: "é".repeat(5_000_000) + "😀" });
  out.push({ after: [1, 2, { k: "v" }] });
  return out;
}

test("JsonlWriter writes exactly JSON.stringify's lines, renamed into place on close", async () => {
  const file = join(dir, "w.jsonl");
  const recs = records();
  const w = await JsonlWriter.open(file);
  for (const r of recs) await w.write(r);
  assert.equal(existsSync(file), false, "nothing under the final name before close");
  await w.close();
  assert.equal(w.count, recs.length);
  const want = recs.map((r) => JSON.stringify(r) + "\n").join("");
  assert.ok((await readFile(file)).equals(Buffer.from(want, "utf8")));
  await assert.rejects(w.write({}), /written after close/);
});

test("readJsonl gives back every record with its line number, across read boundaries", async () => {
  const file = join(dir, "w.jsonl");
  const recs = records().map((r) => JSON.parse(JSON.stringify(r)));
  assert.deepEqual(await readJsonlAll(file), recs);
  const lines: number[] = [];
  for await (const { line } of readJsonl(file)) lines.push(line);
  assert.deepEqual(
    lines,
    recs.map((_, i) => i + 1),
  );
});

test("readJsonl: CRLF, blank lines, no final newline; a bad line names file and line", async () => {
  const file = join(dir, "crlf.jsonl");
  await writeFile(file, '{"a":1}\r\n\r\n  \n{"b":"ü"}\r\n{"c":3}');
  const got = [];
  for await (const r of readJsonl(file)) got.push(r);
  assert.deepEqual(got, [
    { line: 1, value: { a: 1 } },
    { line: 4, value: { b: "ü" } },
    { line: 5, value: { c: 3 } },
  ]);
  const bad = join(dir, "bad.jsonl");
  await writeFile(bad, '{"a":1}\n{"a":\n');
  await assert.rejects(readJsonlAll(bad), (e: Error) => {
    assert.ok(e instanceof BadStageInput);
    assert.match(e.message, /bad\.jsonl: line 2 is not valid JSON/);
    return true;
  });
});

test("JsonlWriter.abandon leaves no file behind", async () => {
  const file = join(dir, "gone.jsonl");
  const w = await JsonlWriter.open(file);
  await w.write({ x: 1 });
  await w.abandon();
  assert.equal(existsSync(file), false);
  assert.equal(existsSync(file + ".tmp"), false);
});
