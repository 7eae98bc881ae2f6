// valley-lora: the memory model; see valley-lora-memory.h and stages/finetune/memory.ts (the reference).
#include "valley-lora-memory.h"

#include "ggml.h"
#include "gguf.h"

#include <algorithm>
#include <stdexcept>

namespace {

// keep in step with stages/finetune/memory.ts
constexpr double ACTIVATION_PER_EMBD        = 4.36;
constexpr double ACTIVATION_PER_FF          = 2.92;
constexpr double ACTIVATION_PER_RANK_TARGET = 0.3;
constexpr double FLASH_PER_EMBD_LAYER       = 4.8;
constexpr double LOGIT_COPIES               = 3;
constexpr double RUNTIME_BYTES              = 14.5 * 1024 * 1024;
constexpr double F32                        = 4;

int64_t get_int(gguf_context * g, const std::string & key, int64_t dflt) {
    const int64_t id = gguf_find_key(g, key.c_str());
    if (id < 0) {
        return dflt;
    }
    switch (gguf_get_kv_type(g, id)) {
        case GGUF_TYPE_UINT32: return gguf_get_val_u32(g, id);
        case GGUF_TYPE_INT32:  return gguf_get_val_i32(g, id);
        case GGUF_TYPE_UINT64: return (int64_t) gguf_get_val_u64(g, id);
        case GGUF_TYPE_INT64:  return gguf_get_val_i64(g, id);
        default:               return dflt;
    }
}

bool ends_with(const std::string & s, const std::string & suffix) {
    return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

valley_attention_dims valley_read_attention_dims(const std::string & model_path) {
    valley_attention_dims a;
    gguf_init_params p = { /*.no_alloc =*/ true, /*.ctx =*/ nullptr };
    gguf_context * g = gguf_init_from_file(model_path.c_str(), p);
    if (!g) {
        return a;
    }
    const int64_t kid = gguf_find_key(g, "general.architecture");
    const std::string arch = kid >= 0 ? gguf_get_val_str(g, kid) : "";
    const int64_t n_embd = get_int(g, arch + ".embedding_length", 0);
    a.n_head    = get_int(g, arch + ".attention.head_count", 0);
    a.n_head_kv = get_int(g, arch + ".attention.head_count_kv", a.n_head);
    a.head_k    = get_int(g, arch + ".attention.key_length", a.n_head > 0 ? n_embd / a.n_head : 0);
    a.head_v    = get_int(g, arch + ".attention.value_length", a.head_k);
    gguf_free(g);
    return a;
}

valley_memory_estimate valley_estimate_memory(const std::string & model_path, const valley_memory_config & cfg) {
    ggml_context * meta = nullptr;
    gguf_init_params p = { /*.no_alloc =*/ true, /*.ctx =*/ &meta };
    gguf_context * g = gguf_init_from_file(model_path.c_str(), p);
    if (!g) {
        throw std::runtime_error("cannot read " + model_path + " as GGUF");
    }
    const int64_t kid = gguf_find_key(g, "general.architecture");
    const std::string arch = kid >= 0 ? gguf_get_val_str(g, kid) : "";
    const int64_t n_layer = get_int(g, arch + ".block_count", -1);
    const int64_t n_embd  = get_int(g, arch + ".embedding_length", -1);
    const int64_t n_head  = get_int(g, arch + ".attention.head_count", -1);
    const int64_t n_ff    = get_int(g, arch + ".feed_forward_length", -1);
    if (n_layer <= 0 || n_embd <= 0 || n_head <= 0 || n_ff <= 0) {
        gguf_free(g);
        ggml_free(meta);
        throw std::runtime_error(model_path + ": the header lacks the block count, embedding length, head count or "
                                 "feed-forward length of " + arch);
    }
    const int64_t n_head_kv = get_int(g, arch + ".attention.head_count_kv", n_head);
    const int64_t head_k    = get_int(g, arch + ".attention.key_length", n_embd / n_head);

    double weights = 0, half_weights = 0, lora_params = 0;
    int64_t n_vocab = 0;
    for (int64_t i = 0; i < gguf_get_n_tensors(g); ++i) {
        const std::string name = gguf_get_tensor_name(g, i);
        const ggml_tensor * t = ggml_get_tensor(meta, name.c_str());
        const double bytes = (double) ggml_nbytes(t);
        const bool matrix = t->ne[1] > 1;
        weights += bytes;
        half_weights += matrix ? std::min(bytes, 2.0 * (double) ggml_nelements(t)) : bytes;
        if (name == "token_embd.weight") {
            n_vocab = t->ne[1];
        }
        if (!matrix) {
            continue;
        }
        for (const auto & tg : cfg.targets) {
            const bool hit = tg == "output" ? name == "output.weight"
                                            : name.rfind("blk.", 0) == 0 && ends_with(name, "." + tg + ".weight");
            if (hit) {
                lora_params += (double) cfg.rank * (double) (t->ne[0] + t->ne[1]);
            }
        }
    }
    gguf_free(g);
    ggml_free(meta);

    const double L = (double) ((std::max<int64_t>(1, cfg.window) + 255) / 256 * 256);
    const double N = (double) n_layer;
    const double targets_per_layer = (double) std::count_if(cfg.targets.begin(), cfg.targets.end(),
                                                            [](const std::string & t) { return t != "output"; });
    const double per_layer_token = ACTIVATION_PER_EMBD * (double) n_embd + ACTIVATION_PER_FF * (double) n_ff +
                                   ACTIVATION_PER_RANK_TARGET * (double) cfg.rank * targets_per_layer;
    const double layers_kept = cfg.checkpointing ? 1 : N;

    valley_memory_estimate e;
    e.window      = (int64_t) L;
    e.weights     = cfg.half_weights ? half_weights : weights;
    e.adapter     = F32 * lora_params * (4 + (cfg.batch > 1 ? 1 : 0));
    e.kv_cache    = F32 * 2 * N * L * (double) (n_head_kv * head_k);
    e.attention   = cfg.flash_attn
                        // the F16 mask, and one layer's dQ, dK, dV and row statistics in flight
                        ? 2 * L * L + F32 * L * (double) (n_head * head_k + 2 * n_head_kv * head_k + 2 * n_head)
                        : F32 * L * L * ((double) n_head * ((cfg.checkpointing ? 1 : N) + 1) + 1);
    const double flash_per_layer_token = cfg.flash_attn ? FLASH_PER_EMBD_LAYER * (double) n_embd : 0;
    e.activations = F32 * L * ((per_layer_token + flash_per_layer_token) * layers_kept +
                               (cfg.checkpointing ? N * (double) n_embd : 0));
    e.logits      = F32 * LOGIT_COPIES * L * (double) n_vocab;
    e.runtime     = RUNTIME_BYTES;
    return e;
}
