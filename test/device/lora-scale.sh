#!/usr/bin/env bash
# Issue 13 on a GPU, one device call (prepared, NOT yet run: no device was lent
# to the sessions that wrote it; the CUDA parts of patches 0009 and 0011 were
# compiled with nvcc 13 for sm_90 but never linked or run: 0009 against cuBLAS 13
# headers, 0011 (flash attention's backward kernel, fattn-back.cu, and its
# dispatch in ggml-cuda.cu) against a declarations-only cuBLAS stub, the machine
# having no cuBLAS).
#
# Steps, each with its own time-out so that one slow step leaves the others
# their share of the device time; results in $OUT/lora-scale.json and the log:
#   1. CUDA build of llama.cpp + stages/llama-build/patches + valley-lora,
#      llama-quantize and test-backend-ops (tests on for that one target);
#   2. patch 0009 on CUDA: test-backend-ops -o OUT_PROD (CUDA vs CPU, every
#      type pair it covers, F16 and BF16 src0 among them) and
#      valley-lora --check-backward f16|bf16 (vs a double reference);
#   2b. patch 0011 on CUDA: test-backend-ops test -o FLASH_ATTN_EXT_BACK (the
#      CUDA backward kernel vs the CPU one: head sizes 40/64/128/256, GQA,
#      no mask / random additive mask / packing mask with a fully masked row)
#      and grad -o FLASH_ATTN_EXT_GRAD (dQ, dK, dV vs finite differences on
#      the GPU); valley-lora --check-flash-attn (the op on each device vs a
#      double-precision reference, ≤ 1e-5); valley-lora's flash-vs-materialised gradient test
#      (finetune-gradcheck.test.js, "flash attention") with this CUDA build.
#      Expect more than the CPU's 1e-4 there: CUDA's forward FLASH_ATTN_EXT
#      converts F32 K/V to F16 (fattn.cu), the backward kernel is F32; the
#      figures are recorded either way (flash_vs_materialised_cuda);
#   3. resources.gpu (issue 13 item 5): --gpus 1 and the default give the same
#      adapter on the tiny model (bit for bit);
#   4. a random Qwen2.5-7B-shaped F16 model with the real 152,064-token
#      vocabulary (gguf-py from the bundle; 15 GB), converted to BF16 by
#      llama-quantize; the memory model's estimate at 32,768 tokens, and one
#      32K training step when the estimate fits 80 GB (flash attention is on
#      for CUDA with patch 0011, checkpointing from 4K: the estimate should
#      fit; otherwise the step is skipped and the estimate is the result);
#      peak GPU memory from nvidia-smi sampled every 0.2 s;
#   5. L = 4,096, r = 64, the seven targets (five when this trainer still
#      refuses attn_k/attn_v: said in the result): valley-lora tokens/s on the
#      BF16 base vs PyTorch + PEFT in bf16 with SDPA and gradient
#      checkpointing, same shape, rank, targets and sequence.
#
# Through the device tool, from the repository root, after
# `bash test/device/all.sh --pack` (node for step 3's data, git):
#   carry: ["node_modules/node-llama-cpp/llama/gitRelease.bundle", ".tmp/device", "dist"]
#   bash test/device/lora-scale.sh
# Knobs: CUDA_ARCH (90), JOBS (nproc), WORK, OUT, STEPS (3 timed, after 1
# warm-up), SKIP_7B=1 (steps 1-3 only), BUILD (reuse a build folder), FA (ON:
# CUDA's FlashAttention forward kernels, which training graphs with flash
# attention need on the GPU; they lengthen the build: OFF keeps the earlier
# 293 s build, and valley-lora then leaves flash attention off on the GPU).
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-$ROOT/.tmp/lora-scale-out}
WORK=${WORK:-/tmp/valley-lora-scale}
CUDA_ARCH=${CUDA_ARCH:-90}
JOBS=${JOBS:-$(nproc)}
STEPS=${STEPS:-3}
BUNDLE=$ROOT/node_modules/node-llama-cpp/llama/gitRelease.bundle
mkdir -p "$OUT" "$WORK"
exec > >(tee "$OUT/lora-scale.log") 2>&1
t0=$(date +%s)
stamp() { echo "=== $(( $(date +%s) - t0 )) s: $*"; }
RES=$OUT/lora-scale.json
echo '{}' > "$RES"
put() { # put KEY JSON-VALUE
  python3 - "$RES" "$1" "$2" <<'PY'
import json, sys
r = json.load(open(sys.argv[1])); r[sys.argv[2]] = json.loads(sys.argv[3]); json.dump(r, open(sys.argv[1], "w"), indent=2)
PY
}
mkdir -p /tmp/valley-bin
for tool in node git; do
  if ! command -v "$tool" > /dev/null && [ -f ".tmp/device/$tool.xz" ]; then
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      ".tmp/device/$tool.xz" "/tmp/valley-bin/$tool"
    chmod +x "/tmp/valley-bin/$tool"
  fi
done
export PATH=$PATH:/tmp/valley-bin
CARD=$(nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null | head -1 || echo unknown)
put card "\"$CARD\""

# 1. build
SRC=$WORK/llama.cpp
BUILD=${BUILD:-$SRC/build-cuda}
stamp "build"
if [ ! -x "$BUILD/bin/valley-lora" ]; then
  rm -rf "$SRC"
  git clone -q "$BUNDLE" "$SRC" || exit 1
  for p in "$ROOT"/stages/llama-build/patches/*.patch; do git -C "$SRC" apply "$p" || { echo "patch $p failed"; exit 1; }; done
  for d in "$ROOT"/stages/*/native; do
    [ -f "$d/CMakeLists.txt" ] && echo "add_subdirectory($d \${CMAKE_BINARY_DIR}/valley-$(basename "$(dirname "$d")"))" >> "$SRC/CMakeLists.txt"
  done
  cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" \
    -DGGML_CUDA_FA="${FA:-ON}" -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=ON > "$WORK/cmake.log" 2>&1 \
    || { tail -20 "$WORK/cmake.log"; exit 1; }
  timeout 540 cmake --build "$BUILD" -j"$JOBS" --target valley-lora llama-quantize test-backend-ops > "$WORK/build.log" 2>&1 \
    || { grep -m5 -A3 "error" "$WORK/build.log"; tail -5 "$WORK/build.log"; exit 1; }
fi
B=$BUILD/bin
put build_seconds "$(( $(date +%s) - t0 ))"

# 2. OUT_PROD with F16/BF16 src0 on CUDA
stamp "OUT_PROD"
timeout 120 "$B/test-backend-ops" test -o OUT_PROD -b CUDA0 > "$WORK/backend-ops.log" 2>&1
echo "test-backend-ops exit $?"
grep -E "OUT_PROD\(type_a=(f16|bf16)" "$WORK/backend-ops.log" | head -20
PASSED=$(grep -c "OK" "$WORK/backend-ops.log"); FAILED=$(grep -c "FAIL" "$WORK/backend-ops.log")
put backend_ops_out_prod "{\"ok\": $PASSED, \"fail\": $FAILED, \"half_cases\": $(grep -cE 'OUT_PROD\(type_a=(f16|bf16)' "$WORK/backend-ops.log")}"
for t in f32 f16 bf16; do
  "$B/valley-lora" --check-backward $t | tee "$WORK/check-$t.jsonl"
  put "check_backward_$t" "[$(paste -sd, "$WORK/check-$t.jsonl")]"
done

# 2b. flash attention's backward pass on CUDA (patch 0011)
stamp "FLASH_ATTN_EXT_BACK"
timeout 120 "$B/test-backend-ops" test -o FLASH_ATTN_EXT_BACK -b CUDA0 > "$WORK/backend-ops-fab.log" 2>&1
rc_fab=$?
timeout 120 "$B/test-backend-ops" grad -o FLASH_ATTN_EXT_GRAD -b CUDA0 > "$WORK/backend-ops-fag.log" 2>&1
rc_fag=$?
grep -E "FLASH_ATTN_EXT_(BACK|GRAD)" "$WORK/backend-ops-fab.log" "$WORK/backend-ops-fag.log" | head -40
put backend_ops_flash_back "{\"exit\": $rc_fab, \"ok\": $(grep -c "OK" "$WORK/backend-ops-fab.log"), \"fail\": $(grep -c "FAIL" "$WORK/backend-ops-fab.log"), \"grad_exit\": $rc_fag, \"grad_ok\": $(grep -c "OK" "$WORK/backend-ops-fag.log"), \"grad_fail\": $(grep -c "FAIL" "$WORK/backend-ops-fag.log")}"
# the op on every device (CPU and CUDA) against a double-precision reference, one JSON line per case
timeout 120 "$B/valley-lora" --check-flash-attn | tee "$WORK/check-flash.jsonl"
put check_flash_attn "{\"exit\": ${PIPESTATUS[0]}, \"rows\": [$(paste -sd, "$WORK/check-flash.jsonl")]}"
if command -v node > /dev/null && [ -f dist/test/finetune-gradcheck.test.js ]; then
  VALLEY_LLAMA_BIN=$B timeout 300 node --test --test-concurrency=1 --test-name-pattern "flash attention" \
    dist/test/finetune-gradcheck.test.js > "$WORK/flash-vs-materialised.log" 2>&1
  rc=$?
  grep "# flash vs materialised" "$WORK/flash-vs-materialised.log"
  put flash_vs_materialised_cuda "{\"exit\": $rc, \"lines\": $(grep "# flash vs materialised" "$WORK/flash-vs-materialised.log" | python3 -c 'import json, sys; print(json.dumps([l.strip() for l in sys.stdin]))')}"
fi

# 3. --gpus 1 vs the default: the same adapter
stamp "gpus"
if command -v node > /dev/null && [ -f dist/llama/random-model.js ]; then
  node --input-type=module -e '
    const { randomModel, resolveRandomParams } = await import(process.cwd() + "/dist/llama/random-model.js");
    const { writeGguf } = await import(process.cwd() + "/dist/llama/gguf-writer.js");
    const m = randomModel(resolveRandomParams({ preset: "tiny", seed: 1 }));
    await writeGguf(process.argv[1], m.kvs, m.tensors);' "$WORK/tiny.gguf"
  python3 -c '
import json, random
random.seed(0)
a = "abcdefghijklmnopqrstuvwxyz"
with open("'"$WORK"'/tiny.jsonl", "w") as f:
    for _ in range(16):
        f.write(json.dumps({"messages": [{"role": "user", "content": "".join(random.choices(a, k=60))},
                                         {"role": "assistant", "content": "".join(random.choices(a, k=60))}]}) + "\n")'
  for g in default 1; do
    extra=(); [ $g = default ] || extra=(--gpus $g)
    "$B/valley-lora" --model "$WORK/tiny.gguf" --data "$WORK/tiny.jsonl" --out "$WORK/tiny-$g.gguf" --max-steps 4 --lr 1e-3 "${extra[@]}" 2> "$WORK/tiny-$g.log" \
      || tail -5 "$WORK/tiny-$g.log"
  done
  if cmp -s "$WORK/tiny-default.gguf" "$WORK/tiny-1.gguf"; then put gpus1_same_adapter true; else put gpus1_same_adapter false; fi
fi
[ "${SKIP_7B:-0}" = 1 ] && { stamp "done (SKIP_7B)"; cat "$RES"; exit 0; }

# 4. a Qwen2.5-7B-shaped model, real vocabulary size
stamp "7B model"
M16=$WORK/qwen7b-f16.gguf
M=$WORK/qwen7b-bf16.gguf
if [ ! -f "$M" ]; then
  timeout 300 python3 - "$SRC/gguf-py" "$M16" <<'PY' || { echo "writing the 7B model failed"; exit 1; }
import sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import gguf
rng = np.random.default_rng(0)
V, E, L, H, HKV, F = 152064, 3584, 28, 28, 4, 18944
D = E // H
chars = [chr(c) for c in range(33, 127)]
toks = ['<unk>', '<s>', '</s>', '<|im_start|>', '<|im_end|>', '<0x0A>', '\u2581'] + chars
types = [2, 3, 3, 3, 3, 6, 1] + [1] * len(chars)
toks += [f'<|unused_{i}|>' for i in range(V - len(toks))]
types += [5] * (V - len(types))
w = gguf.GGUFWriter(sys.argv[2], 'qwen2')
w.add_context_length(32768); w.add_embedding_length(E); w.add_block_count(L)
w.add_feed_forward_length(F); w.add_head_count(H); w.add_head_count_kv(HKV)
w.add_rope_freq_base(1000000.0); w.add_layer_norm_rms_eps(1e-6)
w.add_tokenizer_model('llama'); w.add_tokenizer_pre('default')
w.add_token_list(toks); w.add_token_scores([0.0] * V); w.add_token_types(types)
w.add_bos_token_id(1); w.add_eos_token_id(4); w.add_add_bos_token(False); w.add_add_space_prefix(False)
w.add_chat_template("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
def h(*shape, std=0.02):  # F16, drawn in F32 row blocks to bound the host memory
    return (rng.standard_normal(shape, dtype=np.float32) * std).astype(np.float16)
w.add_tensor('token_embd.weight', h(V, E))
w.add_tensor('output.weight', h(V, E, std=0.05))
w.add_tensor('output_norm.weight', np.ones(E, np.float32))
for i in range(L):
    p = f'blk.{i}.'
    w.add_tensor(p + 'attn_norm.weight', np.ones(E, np.float32))
    w.add_tensor(p + 'ffn_norm.weight', np.ones(E, np.float32))
    w.add_tensor(p + 'attn_q.weight', h(E, E)); w.add_tensor(p + 'attn_q.bias', np.zeros(E, np.float32))
    w.add_tensor(p + 'attn_k.weight', h(HKV * D, E)); w.add_tensor(p + 'attn_k.bias', np.zeros(HKV * D, np.float32))
    w.add_tensor(p + 'attn_v.weight', h(HKV * D, E)); w.add_tensor(p + 'attn_v.bias', np.zeros(HKV * D, np.float32))
    w.add_tensor(p + 'attn_output.weight', h(E, E))
    w.add_tensor(p + 'ffn_gate.weight', h(F, E)); w.add_tensor(p + 'ffn_up.weight', h(F, E)); w.add_tensor(p + 'ffn_down.weight', h(E, F))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
PY
  timeout 240 "$B/llama-quantize" "$M16" "$M" BF16 "$JOBS" > "$WORK/quantize.log" 2>&1 || { tail -5 "$WORK/quantize.log"; exit 1; }
  rm -f "$M16"
fi
# one example of a given length (one token per character): a short user turn, the rest assistant
mkdata() { python3 -c '
import json, random, sys
random.seed(1); n = int(sys.argv[1]) - 40
a = "abcdefghijklmnopqrstuvwxyz0123456789"
print(json.dumps({"messages": [{"role": "user", "content": "go"}, {"role": "assistant", "content": "".join(random.choices(a, k=n))}]}))' "$1" > "$2"; }
peak() { # peak GPU memory (MiB) while "$@" runs
  ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; sleep 0.2; done ) > "$WORK/mem.txt" &
  local sampler=$!
  "$@"; local rc=$?
  kill $sampler 2> /dev/null; wait $sampler 2> /dev/null
  PEAK=$(sort -n "$WORK/mem.txt" | tail -1)
  return $rc
}
TARGETS=attn_q,attn_k,attn_v,attn_output,ffn_gate,ffn_up,ffn_down
# does this trainer take attn_k/attn_v? (it resolves targets before reading the data: an empty
# data set then fails with another message)
"$B/valley-lora" --model "$M" --data /dev/null --out "$WORK/x.gguf" --targets $TARGETS > /dev/null 2> "$WORK/targets.log"
grep -q "is not supported" "$WORK/targets.log" && TARGETS=attn_q,attn_output,ffn_gate,ffn_up,ffn_down
put targets "\"$TARGETS\""

stamp "32K"
"$B/valley-lora" --model "$M" --estimate-memory --targets $TARGETS --rank 64 --alpha 128 --max-seq-len 32769 | tee "$WORK/est32k.json"
put estimate_32k "$(cat "$WORK/est32k.json")"
EST=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["total"])' "$WORK/est32k.json")
if python3 -c "import sys; sys.exit(0 if $EST <= 80 * 2**30 else 1)"; then
  mkdata 32768 "$WORK/d32k.jsonl"
  peak timeout 400 "$B/valley-lora" --model "$M" --data "$WORK/d32k.jsonl" --out "$WORK/a32k.gguf" --summary "$WORK/s32k.json" \
    --targets $TARGETS --rank 64 --alpha 128 --max-seq-len 32769 --masking off --max-steps 2 --lr 1e-5 2> "$WORK/v32k.log"
  rc=$?
  put run_32k "{\"exit\": $rc, \"peak_gpu_mib\": ${PEAK:-null}, \"summary\": $(cat "$WORK/s32k.json" 2> /dev/null || echo null)}"
else
  put run_32k "\"skipped: the estimate ($EST bytes) exceeds 80 GiB with this trainer (quadratic attention)\""
fi

# 5. L = 4096: valley-lora (BF16 base) vs PyTorch + PEFT (bf16, SDPA, gradient checkpointing)
stamp "4K valley-lora"
mkdata 4096 "$WORK/d4k.jsonl"
for i in $(seq 2 $((STEPS + 1))); do cat "$WORK/d4k.jsonl"; done >> "$WORK/d4k.jsonl"
peak timeout 300 "$B/valley-lora" --model "$M" --data "$WORK/d4k.jsonl" --out "$WORK/a4k.gguf" --metrics "$WORK/m4k.jsonl" \
  --summary "$WORK/s4k.json" --targets $TARGETS --rank 64 --alpha 128 --max-seq-len 4097 --ctx 4096 --masking off \
  --max-steps $((STEPS + 1)) --lr 1e-5 --threads 8 2> "$WORK/v4k.log"
rc=$?
VTPS=$(python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][1:]
print(sum(r["seq_tokens"] for r in rows) / sum(r["seconds"] for r in rows) if rows else "null")' "$WORK/m4k.jsonl" 2> /dev/null || echo null)
put valley_4k "{\"exit\": $rc, \"tokens_per_s\": ${VTPS:-null}, \"peak_gpu_mib\": ${PEAK:-null}}"
[ $rc = 0 ] || tail -20 "$WORK/v4k.log"

stamp "4K PEFT"
TARGETS=$TARGETS STEPS=$STEPS timeout 300 python3 - > "$WORK/peft.json" 2> "$WORK/peft.log" <<'PY'
import json, os, sys, time, torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from peft import LoraConfig, get_peft_model
steps, seq = int(os.environ["STEPS"]), 4096
names = {"attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj", "attn_output": "o_proj",
         "ffn_gate": "gate_proj", "ffn_up": "up_proj", "ffn_down": "down_proj"}
targets = [names[t] for t in os.environ["TARGETS"].split(",")]
torch.manual_seed(0)
cfg = Qwen2Config(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                  num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=False, attn_implementation="sdpa", torch_dtype=torch.bfloat16)
torch.set_default_dtype(torch.bfloat16)
with torch.device("cuda"):
    model = Qwen2ForCausalLM(cfg)
model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
model.enable_input_require_grads()
model = get_peft_model(model, LoraConfig(r=64, lora_alpha=128, lora_dropout=0.0, target_modules=targets))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
ids = torch.randint(7, 50, (1, seq), device="cuda")
def step():
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
step(); torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
t = time.perf_counter()
for _ in range(steps): step()
torch.cuda.synchronize()
print(json.dumps({"tokens_per_s": steps * seq / (time.perf_counter() - t),
                  "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20, "torch": torch.__version__}))
PY
rc=$?
put peft_4k "$(cat "$WORK/peft.json" 2> /dev/null | tail -1 | grep . || echo "{\"exit\": $rc}")"
[ $rc = 0 ] || tail -20 "$WORK/peft.log"
stamp "done"
cat "$RES"
