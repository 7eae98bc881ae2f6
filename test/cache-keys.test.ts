import { test } from "node:test";
import assert from "node:assert/strict";
import { canonicalJson, hashJson } from "../cache/digest.js";

// Every cached result is found by a key hashed over canonicalJson: a change to
// its output for the same value would silently recompute every cache there is.

test("a key hashed today is the key hashed by earlier versions (pinned digest)", () => {
  // Integer-like, upper-case and non-ASCII keys, nesting, arrays, null: the
  // digest below was printed by the implementation before the sorting change.
  const fields = {
    kind: "finetune",
    version: "3",
    params: {
      lr: 0.0002,
      epochs: 5,
      target: ["q", "v"],
      "10": "ten",
      "2": "two",
      Zeta: null,
      alpha: { b: [1, { y: 2, x: 1 }], a: true },
    },
    inputs: {
      data: "sha256:" + "a".repeat(64),
      base: [{ coords: { n: 10, seed: 1 }, digest: "sha256:" + "b".repeat(64) }],
    },
    tools: { llama: "sha256:" + "c".repeat(64) },
    env: { HF_HOME: "/x", É: "ü" },
    fingerprint: {},
  };
  assert.equal(
    hashJson(fields),
    "sha256:876f6ef5b4ba4b23c62347cc57f3f4254d1218533837a3527315c1a520aa97bd",
  );
});

/**
 * The definition, written plainly: keys in Array.prototype.sort order at every
 * level, undefined members left out. (Not via an object: integer-like keys
 * would be moved first again.)
 */
function reference(x: unknown): string {
  if (Array.isArray(x)) return "[" + x.map(reference).join(",") + "]";
  if (x === null || typeof x !== "object") return JSON.stringify(x);
  const o = x as Record<string, unknown>;
  const members = Object.keys(o)
    .sort()
    .filter((k) => o[k] !== undefined)
    .map((k) => JSON.stringify(k) + ":" + reference(o[k]));
  return "{" + members.join(",") + "}";
}

test("canonicalJson sorts keys at every level, for objects of every size (random values)", () => {
  let seed = 42;
  const rand = () => (seed = (seed * 1103515245 + 12345) % 2 ** 31) / 2 ** 31;
  const alphabet = ["a", "b", "Z", "0", "1", "9", "_", "é", "ß", "-", "10", ""];
  const key = () =>
    Array.from(
      { length: 1 + Math.floor(rand() * 3) },
      () => alphabet[Math.floor(rand() * alphabet.length)],
    ).join("");
  const value = (depth: number): unknown => {
    const r = rand();
    if (depth > 3 || r < 0.3) return [1.5, -2, "s", true, null, 'ü"\\'][Math.floor(rand() * 6)];
    if (r < 0.5) return Array.from({ length: Math.floor(rand() * 4) }, () => value(depth + 1));
    // Up to 40 keys: both the small-object path (≤ 16) and the large one.
    const o: Record<string, unknown> = {};
    const n = Math.floor(rand() * (rand() < 0.2 ? 40 : 8));
    for (let i = 0; i < n; i++) o[key() + (rand() < 0.5 ? String(i) : "")] = value(depth + 1);
    if (rand() < 0.2) o.gone = undefined;
    return o;
  };
  for (let i = 0; i < 2000; i++) {
    const v = value(0);
    assert.equal(canonicalJson(v), reference(v));
  }
});
