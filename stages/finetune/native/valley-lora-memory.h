// valley-lora: the memory model (valley-lora --estimate-memory), a mirror of stages/finetune/memory.ts;
// the terms and their reasons are documented there. test/finetune-scale.test.ts checks both agree.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

struct valley_memory_config {
    int64_t                  window = 0;  // tokens; rounded up to a multiple of 256
    int64_t                  rank = 8;
    std::vector<std::string> targets;
    int64_t                  batch = 1;
    bool                     checkpointing = false;
    bool                     flash_attn = false;    // flash attention with its recomputing backward pass
    bool                     half_weights = false;  // as if the weight matrices were F16/BF16
};

struct valley_memory_estimate {
    int64_t window = 0;
    double  weights = 0, adapter = 0, kv_cache = 0, attention = 0, activations = 0, logits = 0, runtime = 0;
    double  total() const { return weights + adapter + kv_cache + attention + activations + logits + runtime; }
};

// Attention shape of the base (its GGUF header): heads, K/V heads, K and V head sizes; zeros if unreadable.
struct valley_attention_dims {
    int64_t n_head = 0, n_head_kv = 0, head_k = 0, head_v = 0;
};
valley_attention_dims valley_read_attention_dims(const std::string & model_path);

// Reads the base's shape from its GGUF header; throws std::runtime_error if it cannot.
valley_memory_estimate valley_estimate_memory(const std::string & model_path, const valley_memory_config & cfg);
