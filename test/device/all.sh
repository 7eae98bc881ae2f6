#!/usr/bin/env bash
# Every GPU check in one device call (a session has 15 minutes of device time):
#   1. cuda-smoke.sh — the llama-build stage with backend: cuda (one CUDA build),
#      llama-bench tokens/s on a random Qwen2.5-0.5B-shaped F16 model, one chat
#      request through the managed llama-server;
#   2. lora-bench.sh — valley-lora on the GPU vs PyTorch + PEFT, reusing that build.
# Results land in $OUT (cuda-smoke.json, lora-bench.json, all.log); the figures
# measured are copied into test/device/RESULTS.md by hand.
#
# Through the device tool, from the repository root:
#   carry: ["dist", "node_modules/node-llama-cpp/llama", "node_modules/node-llama-cpp/package.json", ".tmp/device"]
#   bash test/device/all.sh
# .tmp/device holds node.xz (this machine's node, xz-compressed: the CUDA image
# has no node), git.xz, and nm/ (execa and its dependencies, which the stages'
# process runner loads); prepare it with `bash test/device/all.sh --pack`.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
if [ "${1:-}" = --pack ]; then
  mkdir -p .tmp/device
  xz -T0 -9 -c "$(readlink -f "$(command -v node)")" > .tmp/device/node.xz
  xz -T0 -9 -c "$(readlink -f "$(command -v git)")" > .tmp/device/git.xz
  rm -rf .tmp/device/nm
  for p in $(node -e '
    const fs = require("fs"), seen = new Set(), q = ["execa"];
    while (q.length) {
      const p = q.pop();
      if (seen.has(p)) continue;
      seen.add(p);
      q.push(...Object.keys(JSON.parse(fs.readFileSync(`node_modules/${p}/package.json`)).dependencies ?? {}));
    }
    console.log([...seen].join(" "))'); do
    mkdir -p ".tmp/device/nm/$(dirname "$p")" && cp -r "node_modules/$p" ".tmp/device/nm/$p"
  done
  ls -la .tmp/device
  exit 0
fi
OUT=${OUT:-$ROOT/.tmp/device-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/all.log") 2>&1
t0=$(date +%s)
stamp() { echo "=== $(( $(date +%s) - t0 )) s: $*"; }

# Tools the image may lack: unpack the carried ones (python's lzma: xz may be missing too).
mkdir -p /tmp/valley-bin
for tool in node git; do
  if ! command -v "$tool" > /dev/null && [ -f ".tmp/device/$tool.xz" ]; then
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      ".tmp/device/$tool.xz" "/tmp/valley-bin/$tool"
    chmod +x "/tmp/valley-bin/$tool"
  fi
done
export PATH=$PATH:/tmp/valley-bin
[ -d .tmp/device/nm ] && [ ! -d node_modules/execa ] && cp -r .tmp/device/nm/. node_modules/
stamp "tools"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
nvcc --version | tail -1 || true
node --version; git --version; cmake --version | head -1; nproc

export WORK_SMOKE=/tmp/valley-cuda-smoke
stamp "cuda-smoke"
WORK=$WORK_SMOKE timeout "${SMOKE_TIMEOUT:-400}" bash test/device/cuda-smoke.sh
echo "cuda-smoke exit $?"
stamp "lora-bench"
[ -x "$WORK_SMOKE/build/scratch/build/bin/valley-lora" ] || { echo "no CUDA build: lora-bench skipped"; exit 1; }
BUILD=$WORK_SMOKE/build/scratch/build SRC=$WORK_SMOKE/build/scratch/src WORK=/tmp/valley-lora-bench \
  timeout "${LORA_TIMEOUT:-180}" bash test/device/lora-bench.sh
echo "lora-bench exit $?"
stamp "done"
head -n 3 /tmp/valley-lora-bench/peft.log 2>/dev/null || true
