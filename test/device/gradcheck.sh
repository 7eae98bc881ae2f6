#!/usr/bin/env bash
# The gradient check of test/finetune-gradcheck.test.ts with CUDA: valley-lora's
# --grad-out against central differences of --eval-only, on random qwen2 and
# llama models (3 layers, grouped-query attention, F32, every target), plus the
# packing, sparse-label and lossNorm checks, all on the GPU (device auto: the
# model's layers and the backward pass run there).
#
# Through the device tool, from the repository root, after `npm run build`:
#   carry: ["dist", "node_modules/node-llama-cpp/llama/gitRelease.bundle", ".tmp/device"]
#   bash test/device/gradcheck.sh
# (.tmp/device: node.xz when the image has no node; see all.sh --pack.)
# Knobs: CUDA_ARCH (90), JOBS (nproc), BUILD (reuse a CUDA build folder holding
# valley-lora and llama-quantize). Writes $OUT/gradcheck.log.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/.tmp/gradcheck-out}
WORK=${WORK:-/tmp/valley-gradcheck}
CUDA_ARCH=${CUDA_ARCH:-90}
JOBS=${JOBS:-$(nproc)}
BUNDLE=$ROOT/node_modules/node-llama-cpp/llama/gitRelease.bundle
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/gradcheck.log") 2>&1

if ! command -v node > /dev/null && [ -f .tmp/device/node.xz ]; then
  mkdir -p /tmp/valley-bin
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    .tmp/device/node.xz /tmp/valley-bin/node
  chmod +x /tmp/valley-bin/node
  export PATH=$PATH:/tmp/valley-bin
fi
nvidia-smi --query-gpu=name,memory.total --format=csv || true

SRC=$WORK/llama.cpp
BUILD=${BUILD:-$SRC/build-cuda}
if [ ! -x "$BUILD/bin/valley-lora" ] || [ ! -x "$BUILD/bin/llama-quantize" ]; then
  rm -rf "$SRC"
  git clone -q "$BUNDLE" "$SRC"
  for p in "$ROOT"/stages/llama-build/patches/*.patch; do git -C "$SRC" apply "$p"; done
  for d in "$ROOT"/stages/*/native; do
    [ -f "$d/CMakeLists.txt" ] && echo "add_subdirectory($d \${CMAKE_BINARY_DIR}/valley-$(basename "$(dirname "$d")"))" >> "$SRC/CMakeLists.txt"
  done
  cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" \
    -DGGML_CUDA_FA=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF > "$WORK/cmake.log"
  cmake --build "$BUILD" -j"$JOBS" --target valley-lora llama-quantize > "$WORK/build.log"
fi
"$BUILD/bin/valley-lora" --help 2>&1 | head -1 || true

VALLEY_LLAMA_BIN=$BUILD/bin node --test --test-concurrency=1 dist/test/finetune-gradcheck.test.js
