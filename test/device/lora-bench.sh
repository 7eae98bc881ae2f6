#!/usr/bin/env bash
# LoRA training throughput on a GPU: valley-lora (llama.cpp, CUDA) vs PyTorch + PEFT
# on the same random Qwen2.5-0.5B-shaped F32 model, rank 16, sequences of 2048
# tokens, same batch, fixed number of steps. Prints tokens/s for each and the ratio,
# and writes them (with the card's name) to $OUT/lora-bench.json.
#
# Run from the repository root on a machine with an NVIDIA GPU, the CUDA toolkit
# and python3 with numpy, torch, transformers and peft, e.g. through the device
# tool with carry: ["node_modules/node-llama-cpp/llama/gitRelease.bundle"]:
#   bash test/device/lora-bench.sh
# Knobs (environment): STEPS (10), WARMUP (2, steps left out of the timing), SEQ (2048),
# BATCH (1), RANK (16), SKIP_PEFT (1: stop after valley-lora, for a CPU rehearsal), CUDA_ARCH (90), JOBS (nproc), BUILD (reuse a build folder),
# BUNDLE (the llama.cpp git bundle), SRC (its clone: gguf-py is read from there).
# With BUILD and SRC pointing at the llama-build stage's scratch (build/ and src/)
# the script reuses that build, as test/device/all.sh does.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
OUT=${OUT:-$ROOT/.tmp/lora-bench-out}
WORK=${WORK:-/tmp/valley-lora-bench}
STEPS=${STEPS:-10}
WARMUP=${WARMUP:-2}
SEQ=${SEQ:-2048}
BATCH=${BATCH:-1}
RANK=${RANK:-16}
CUDA_ARCH=${CUDA_ARCH:-90}
JOBS=${JOBS:-$(nproc)}
BUNDLE=${BUNDLE:-$ROOT/node_modules/node-llama-cpp/llama/gitRelease.bundle}
mkdir -p "$OUT" "$WORK"
log() { echo "[lora-bench $(date +%H:%M:%S)] $*" >&2; }

CARD=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 || echo unknown)
log "card: $CARD"

# 1. CUDA build of llama.cpp + the project's patches + valley-lora
SRC=${SRC:-$WORK/llama.cpp}
BUILD=${BUILD:-$SRC/build-cuda}
if [ ! -x "$BUILD/bin/valley-lora" ]; then
  log "building llama.cpp with CUDA (arch $CUDA_ARCH, -j$JOBS)"
  rm -rf "$SRC"
  git clone -q "$BUNDLE" "$SRC"
  for p in "$ROOT"/stages/llama-build/patches/*.patch; do git -C "$SRC" apply "$p"; done
  for d in "$ROOT"/stages/*/native; do
    [ -f "$d/CMakeLists.txt" ] && echo "add_subdirectory($d \${CMAKE_BINARY_DIR}/valley-$(basename "$(dirname "$d")"))" >> "$SRC/CMakeLists.txt"
  done
  cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$CUDA_ARCH" \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF > "$WORK/cmake.log"
  cmake --build "$BUILD" -j"$JOBS" --target valley-lora > "$WORK/build.log"
fi

# 2. a random Qwen2.5-0.5B-shaped F32 GGUF (qwen2, 24 layers, 896 wide, 14 heads / 2 KV heads,
#    FFN 4864, vocabulary 151936, tied output) and chats of SEQ tokens
log "writing the model and the data"
python3 - "$SRC/gguf-py" "$WORK" "$SEQ" <<'PY'
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import gguf
work, seq = sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
V, E, L, H, HKV, F = 151936, 896, 24, 14, 2, 4864
chars = [chr(c) for c in range(33, 127)]
toks = ['<unk>', '<s>', '</s>', '<|im_start|>', '<|im_end|>', '<0x0A>', '\u2581'] + chars
types = [2, 3, 3, 3, 3, 6, 1] + [1] * len(chars)
toks += [f'<|unused_{i}|>' for i in range(V - len(toks))]
types += [5] * (V - len(types))
w = gguf.GGUFWriter(f'{work}/qwen-0.5b-shape.gguf', 'qwen2')
w.add_context_length(32768); w.add_embedding_length(E); w.add_block_count(L)
w.add_feed_forward_length(F); w.add_head_count(H); w.add_head_count_kv(HKV)
w.add_rope_freq_base(1000000.0); w.add_layer_norm_rms_eps(1e-6)
w.add_tokenizer_model('llama'); w.add_tokenizer_pre('default')
w.add_token_list(toks); w.add_token_scores([0.0] * V); w.add_token_types(types)
w.add_bos_token_id(1); w.add_eos_token_id(4); w.add_add_bos_token(False); w.add_add_space_prefix(False)
w.add_chat_template("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
f32 = lambda *shape, std=0.02: (rng.standard_normal(shape, dtype=np.float32) * std)
w.add_tensor('token_embd.weight', f32(V, E))
w.add_tensor('output_norm.weight', np.ones(E, np.float32))
D = E // H
for i in range(L):
    p = f'blk.{i}.'
    w.add_tensor(p + 'attn_norm.weight', np.ones(E, np.float32))
    w.add_tensor(p + 'ffn_norm.weight', np.ones(E, np.float32))
    w.add_tensor(p + 'attn_q.weight', f32(E, E)); w.add_tensor(p + 'attn_q.bias', np.zeros(E, np.float32))
    w.add_tensor(p + 'attn_k.weight', f32(HKV * D, E)); w.add_tensor(p + 'attn_k.bias', np.zeros(HKV * D, np.float32))
    w.add_tensor(p + 'attn_v.weight', f32(HKV * D, E)); w.add_tensor(p + 'attn_v.bias', np.zeros(HKV * D, np.float32))
    w.add_tensor(p + 'attn_output.weight', f32(E, E))
    w.add_tensor(p + 'ffn_gate.weight', f32(F, E)); w.add_tensor(p + 'ffn_up.weight', f32(F, E)); w.add_tensor(p + 'ffn_down.weight', f32(E, F))
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
# chats of about seq tokens (one token per character): half user, half assistant
alpha = 'abcdefghijklmnopqrstuvwxyz0123456789+-*/=()'
n = (seq - 48) // 2  # room for the template's tokens
with open(f'{work}/train.jsonl', 'w') as f:
    for _ in range(64):
        u = ''.join(rng.choice(list(alpha), n)); a = ''.join(rng.choice(list(alpha), n))
        f.write(json.dumps({'messages': [{'role': 'user', 'content': u}, {'role': 'assistant', 'content': a}]}) + '\n')
PY

# 3. valley-lora on the GPU
log "valley-lora: $STEPS + $WARMUP steps, batch $BATCH, seq $SEQ, r=$RANK"
"$BUILD/bin/valley-lora" --model "$WORK/qwen-0.5b-shape.gguf" --data "$WORK/train.jsonl" --out "$WORK/adapter.gguf" \
  --metrics "$WORK/metrics.jsonl" --summary "$WORK/summary.json" --rank "$RANK" --alpha $((2 * RANK)) \
  --batch "$BATCH" --ctx "$SEQ" --max-seq-len "$SEQ" --max-steps $((STEPS + WARMUP)) --lr 1e-4 --threads 8 2> "$WORK/valley-lora.log" \
  || { tail -30 "$WORK/valley-lora.log"; exit 1; }
LLAMA_TPS=$(python3 - "$WORK/metrics.jsonl" "$WARMUP" "$BATCH" "$SEQ" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()][int(sys.argv[2]):]
print(len(rows) * int(sys.argv[3]) * int(sys.argv[4]) / sum(r['seconds'] for r in rows))
PY
)
log "valley-lora: $LLAMA_TPS tokens/s"

if [ "${SKIP_PEFT:-0}" = 1 ]; then log "SKIP_PEFT=1: no PyTorch comparison (rehearsal)"; exit 0; fi

# 4. PyTorch + PEFT, same shape, F32 weights, same targets, batch and sequence length
log "PyTorch + PEFT"
PEFT_TPS=$(python3 - "$STEPS" "$WARMUP" "$BATCH" "$SEQ" "$RANK" <<'PY' 2> "$WORK/peft.log"
import sys, time, torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from peft import LoraConfig, get_peft_model
import transformers, peft
print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, file=sys.stderr)
steps, warm, batch, seq, rank = map(int, sys.argv[1:6])
torch.manual_seed(0)
cfg = Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                  num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768,
                  rope_theta=1e6, rms_norm_eps=1e-6, tie_word_embeddings=True)
model = Qwen2ForCausalLM(cfg).to('cuda', torch.float32)
model = get_peft_model(model, LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0,
                       target_modules=['q_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj']))
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.randint(7, 50, (batch, seq), device='cuda')
labels = ids.clone(); labels[:, : seq // 2] = -100   # loss on the second half, like an assistant turn
def step():
    loss = model(input_ids=ids, labels=labels).loss
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(warm): step()
torch.cuda.synchronize(); t = time.perf_counter()
for _ in range(steps): step()
torch.cuda.synchronize()
print(steps * batch * seq / (time.perf_counter() - t))
PY
) || { tail -30 "$WORK/peft.log"; exit 1; }
log "PEFT: $PEFT_TPS tokens/s"

python3 - "$CARD" "$LLAMA_TPS" "$PEFT_TPS" "$STEPS" "$BATCH" "$SEQ" "$RANK" "$OUT/lora-bench.json" <<'PY'
import json, sys
card, llama, peft = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
steps, batch, seq, rank = map(int, sys.argv[4:8])
r = {'card': card, 'model': 'random Qwen2.5-0.5B shape, F32', 'rank': rank, 'seq': seq, 'batch': batch,
     'steps_timed': steps, 'valley_lora_tokens_per_s': round(llama, 1), 'peft_fp32_tokens_per_s': round(peft, 1),
     'ratio_valley_over_peft': round(llama / peft, 3)}
json.dump(r, open(sys.argv[8], 'w'), indent=2)
print(f"card: {card}")
print(f"valley-lora (llama.cpp CUDA, F32 base): {llama:,.0f} tokens/s")
print(f"PyTorch + PEFT (F32):                   {peft:,.0f} tokens/s")
print(f"ratio valley-lora / PEFT: {llama / peft:.2f}x")
PY
