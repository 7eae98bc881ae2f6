import { test } from "node:test";
import assert from "node:assert/strict";
import { Limiter } from "../data/ratelimit.js";
import { RequestCache } from "../data/request-cache.js";
import { join } from "node:path";
import { tempDir } from "./helpers/data-ctx.js";

test("limiter: concurrency, requests and tokens per window", async () => {
  const conc = new Limiter({ concurrency: 2 });
  let active = 0;
  let max = 0;
  await Promise.all(
    Array.from({ length: 6 }, async () => {
      const release = await conc.acquire(1);
      max = Math.max(max, ++active);
      await new Promise((r) => setTimeout(r, 10));
      active--;
      release();
    }),
  );
  assert.equal(max, 2);

  const rpm = new Limiter({ concurrency: 10, rpm: 2, windowMs: 200 });
  const t0 = Date.now();
  for (let i = 0; i < 3; i++) (await rpm.acquire(1))();
  assert.ok(Date.now() - t0 >= 190, "the third request did not wait for the window");

  const tpm = new Limiter({ concurrency: 10, tpm: 100, windowMs: 200 });
  const t1 = Date.now();
  (await tpm.acquire(60))(30); // settles to 30 used tokens
  (await tpm.acquire(60))(); // 30 + 60 fits
  assert.ok(Date.now() - t1 < 150);
  (await tpm.acquire(60))(); // 90 + 60 does not: waits for the window
  assert.ok(Date.now() - t1 >= 190);
  // A request larger than the whole budget still runs (alone).
  (await new Limiter({ concurrency: 1, tpm: 10 }).acquire(1000))();
});

test("request cache: two handles on one file (WAL) see each other's answers", async () => {
  const file = join(tempDir(), "r.sqlite");
  const a = await RequestCache.open(file);
  const b = await RequestCache.open(file);
  a.put("k1", { answer: "x" });
  assert.deepEqual(b.get("k1"), { answer: "x" });
  b.put("k2", { answer: "y" });
  assert.equal(a.count(), 2);
  a.close();
  b.close();
});
