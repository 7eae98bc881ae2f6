/** Extraction, comparison and metrics: pure functions, no sandbox. */
import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { compareFunctional, compareStdout, parseDecimal } from "../grader/compare.js";
import { extractCode, startsWithThink, stripThink } from "../grader/extract.js";
import {
  bootstrapPassAt1,
  byDifficulty,
  completionRate,
  meanPassAtK,
  passAt1,
  passAtK,
  tally,
  thinkTagRate,
} from "../grader/metrics.js";

describe("extraction", () => {
  it("strips think blocks, closed and unclosed", () => {
    assert.equal(stripThink("<think>a</think>b<think>c</think>d"), "bd");
    assert.equal(stripThink("x<think>never closed ```python\nprint(1)\n```"), "x");
  });
  it("takes the first python block by default and the last by option", () => {
    const t =
      "<think>```python\nprint(0)\n```</think>\n```python\nprint(1)\n```\ntext\n```py\nprint(2)\n```\n";
    assert.equal(extractCode(t), "print(1)\n");
    assert.equal(extractCode(t, "last"), "print(2)\n");
  });
  it("prefers python-tagged blocks, falls back to untagged, ignores other languages", () => {
    assert.equal(extractCode("```\nprint(3)\n```"), "print(3)\n");
    assert.equal(extractCode("```cpp\nint main(){}\n```"), null);
    assert.equal(extractCode("```\nx\n```\n```python\nprint(4)\n```"), "print(4)\n");
    assert.equal(extractCode("no code"), null);
    assert.equal(extractCode("```python\nunclosed"), null);
  });
  it("handles CRLF answers", () => {
    assert.equal(extractCode("```python\r\nprint(5)\r\n```\r\n"), "print(5)\n");
  });
  it("detects a leading think tag", () => {
    assert.equal(startsWithThink("  \n<think>x"), true);
    assert.equal(startsWithThink("answer <think>"), false);
  });
});

describe("stdin comparison (LiveCodeBench rules)", () => {
  it("ignores CRLF, trailing spaces and surrounding blank lines", () => {
    assert.ok(compareStdout("1 2  \r\n3\r\n\r\n", "\n1 2\n3").ok);
  });
  it("requires equal line counts after stripping", () => {
    assert.equal(compareStdout("1\n\n2", "1\n2").ok, false);
  });
  it("compares numbers as exact decimals", () => {
    assert.ok(compareStdout("1.0 2", "1.00 2.0").ok);
    assert.ok(compareStdout("1e3", "1000").ok);
    assert.equal(compareStdout("0.1000001", "0.1").ok, false);
    assert.equal(compareStdout("abc", "abd").ok, false);
    assert.equal(compareStdout("1 2", "1 2 3").ok, false);
  });
  it("applies a float tolerance when given", () => {
    assert.equal(compareStdout("3.14159", "3.14160").ok, false);
    assert.ok(compareStdout("3.14159", "3.14160", 1e-4).ok);
    assert.equal(compareStdout("3.2", "3.14160", 1e-4).ok, false);
  });
  it("compares big integers exactly", () => {
    assert.equal(
      compareStdout("123456789012345678901234567891", "123456789012345678901234567890").ok,
      false,
    );
    assert.ok(compareStdout("123456789012345678901234567890", "123456789012345678901234567890").ok);
  });
  it("parses decimals as Python does", () => {
    assert.deepEqual(parseDecimal("-0.0"), { kind: "finite", neg: false, digits: "0", exp: 0 });
    assert.equal(parseDecimal("1_000")?.kind, "finite");
    assert.equal(parseDecimal("abc"), null);
    assert.equal(parseDecimal("-Infinity")?.kind, "inf");
  });
});

describe("functional comparison", () => {
  it("compares integers above 2^53 exactly", () => {
    assert.equal(compareFunctional("9007199254740993", "9007199254740992").ok, false);
    assert.ok(compareFunctional("[9007199254740993]", "[9007199254740993]").ok);
  });
  it("compares int and float by value, as Python's ==", () => {
    assert.ok(compareFunctional("2.0", "2").ok);
    assert.equal(compareFunctional("0.30000000000000004", "0.3").ok, false);
  });
  it("compares structures, key order free", () => {
    assert.ok(compareFunctional('{"b": [1, 2], "a": "x"}', '{"a":"x","b":[1,2]}').ok);
    assert.equal(compareFunctional("[1, 2]", "[2, 1]").ok, false);
    assert.equal(compareFunctional("true", "1").ok, false);
  });
  it("reports an expected output that is not JSON", () => {
    const r = compareFunctional("1", "not json");
    assert.equal(r.ok, false);
    assert.match(r.note ?? "", /expected output is not JSON/);
  });
});

describe("metrics", () => {
  it("pass@k is the unbiased estimator", () => {
    assert.equal(passAtK(10, 0, 1), 0);
    assert.ok(Math.abs(passAtK(10, 3, 1) - 0.3) < 1e-12);
    assert.equal(passAtK(5, 5, 3), 1);
    // 1 − C(7,2)/C(10,2) = 1 − 21/45
    assert.ok(Math.abs(passAtK(10, 3, 2) - (1 - 21 / 45)) < 1e-12);
    assert.throws(() => passAtK(2, 1, 3), /at least 3 samples/);
  });
  it("averages over problems", () => {
    const t = [
      { id: "a", n: 2, c: 2 },
      { id: "b", n: 2, c: 0 },
      { id: "c", n: 4, c: 1 },
    ];
    assert.equal(passAt1(t), (1 + 0 + 0.25) / 3);
    assert.equal(meanPassAtK(t, 1), passAt1(t));
  });
  it("gives a seeded bootstrap interval around pass@1", () => {
    const t = Array.from({ length: 50 }, (_, i) => ({
      id: String(i),
      n: 1,
      c: i % 4 === 0 ? 1 : 0,
    }));
    const a = bootstrapPassAt1(t, { seed: 7 });
    const b = bootstrapPassAt1(t, { seed: 7 });
    assert.deepEqual(a, b);
    assert.ok(a.low <= passAt1(t) && passAt1(t) <= a.high && a.low < a.high);
  });
  it("breaks down by difficulty and tallies samples", () => {
    const t = tally(
      [
        { id: "e", correct: true },
        { id: "e", correct: false },
        { id: "h", correct: false },
      ],
      (id) => (id === "e" ? "easy" : "hard"),
    );
    assert.deepEqual(byDifficulty(t), {
      easy: { problems: 1, samples: 2, pass_at_1: 0.5 },
      hard: { problems: 1, samples: 1, pass_at_1: 0 },
    });
  });
  it("computes completion and think-tag rates", () => {
    assert.equal(completionRate([{ finish_reason: "stop" }, { finish_reason: "length" }]), 0.5);
    assert.equal(
      thinkTagRate([
        { text: " <think>a</think>" },
        { text: "b" },
        { text: "<think>" },
        { text: "x<think>" },
      ]),
      0.5,
    );
  });
});
