import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { detectGpus, ResourcePool } from "../engine/resources.js";

test("GPUs: VALLEY_GPUS, else CUDA_VISIBLE_DEVICES as the allowed set, else the machine's", () => {
  assert.deepEqual(detectGpus({ VALLEY_GPUS: "3" }), ["0", "1", "2"]);
  assert.deepEqual(detectGpus({ VALLEY_GPUS: "2", CUDA_VISIBLE_DEVICES: "5,7,9" }), ["5", "7"]);
  assert.deepEqual(detectGpus({ CUDA_VISIBLE_DEVICES: "2,3" }), ["2", "3"]);
  assert.deepEqual(detectGpus({ CUDA_VISIBLE_DEVICES: "GPU-aa11,GPU-bb22" }), [
    "GPU-aa11",
    "GPU-bb22",
  ]);
  assert.deepEqual(detectGpus({ CUDA_VISIBLE_DEVICES: "" }), []);
  assert.deepEqual(detectGpus({ CUDA_VISIBLE_DEVICES: "-1" }), []);
  // CUDA ignores everything from the first invalid entry on.
  assert.deepEqual(detectGpus({ CUDA_VISIBLE_DEVICES: "0,-1,1" }), ["0"]);
  assert.throws(() => detectGpus({ VALLEY_GPUS: "two" }), /VALLEY_GPUS=two/);
  // Neither set: the machine's own GPUs (none on a machine without the NVIDIA driver).
  if (!existsSync("/proc/driver/nvidia/gpus")) assert.deepEqual(detectGpus({}), []);
});

test("the pool hands out distinct device ids and takes them back", async () => {
  const pool = new ResourcePool({ cpu: 8, gpu: 3, memory: 1000 }, ["a", "b", "c"]);
  const one = { cpu: 1, gpu: 1, memory: 0 };
  const two = { cpu: 1, gpu: 2, memory: 0 };
  const x = await pool.acquire(one);
  const y = await pool.acquire(two);
  assert.deepEqual([...x, ...y].sort(), ["a", "b", "c"]);
  let got: string[] | undefined;
  void pool.acquire(two).then((g) => (got = g));
  await Promise.resolve();
  assert.equal(got, undefined, "waits while only one GPU is free");
  pool.release(one, x);
  await Promise.resolve();
  assert.equal(got, undefined);
  pool.release(two, y);
  await Promise.resolve();
  assert.equal((got as string[] | undefined)?.length, 2);
  assert.deepEqual(await pool.acquire({ cpu: 1, gpu: 0, memory: 0 }), []);
});
