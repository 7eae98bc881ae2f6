// valley-lora: devices and weight types; see valley-lora-devices.h.
#include "valley-lora-devices.h"

#include "ggml-alloc.h"
#include "ggml-backend.h"
#include "ggml.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

std::vector<ggml_backend_dev_t> valley_pick_gpus(int n, std::string & err) {
    std::vector<ggml_backend_dev_t> gpus;
    for (size_t i = 0; i < ggml_backend_dev_count(); ++i) {
        ggml_backend_dev_t d = ggml_backend_dev_get(i);
        const auto t = ggml_backend_dev_type(d);
        if (t == GGML_BACKEND_DEVICE_TYPE_GPU || t == GGML_BACKEND_DEVICE_TYPE_IGPU) {
            gpus.push_back(d);
        }
    }
    if (n < 0) {
        return gpus;
    }
    if ((size_t) n > gpus.size()) {
        err = std::to_string(n) + " GPU(s) asked for, but this build sees " + std::to_string(gpus.size()) +
              (gpus.empty() ? " (a CPU build, or no device visible)" : "");
        return {};
    }
    gpus.resize((size_t) n);
    return gpus;
}

namespace {

// W [n_in, n_out] of type t, g [n_out, n_tok] F32; the backward of mul_mat(W, x) w.r.t. x is
// out_prod(W, transpose(g)) -> [n_in, n_tok]
struct probe {
    ggml_context * ctx = nullptr;
    ggml_tensor * w = nullptr;
    ggml_tensor * w32 = nullptr;
    ggml_tensor * g = nullptr;
    ggml_tensor * out = nullptr;
    ggml_tensor * out32 = nullptr;

    probe(ggml_type t, int64_t n_in, int64_t n_out, int64_t n_tok) {
        ggml_init_params ip = { ggml_tensor_overhead() * 16 + ggml_graph_overhead(), nullptr, /*no_alloc =*/ true };
        ctx   = ggml_init(ip);
        w     = ggml_new_tensor_2d(ctx, t, n_in, n_out);
        w32   = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_in, n_out);
        g     = ggml_new_tensor_2d(ctx, GGML_TYPE_F32, n_out, n_tok);
        out   = ggml_out_prod(ctx, w, ggml_transpose(ctx, g));
        out32 = ggml_out_prod(ctx, w32, ggml_transpose(ctx, g));
    }
    ~probe() { ggml_free(ctx); }
};

}  // namespace

bool valley_backward_supported(ggml_backend_dev_t dev, ggml_type t) {
    probe p(t, 64, 32, 8);
    return ggml_backend_dev_supports_op(dev, p.out);
}

valley_backward_check valley_check_backward(ggml_backend_dev_t dev, ggml_type t, int64_t n_in, int64_t n_out,
                                            int64_t n_tok, uint32_t seed) {
    valley_backward_check res;
    const auto * traits = ggml_get_type_traits(t);
    if (t != GGML_TYPE_F32 && (!traits->to_float || !traits->from_float_ref)) {
        return res;
    }
    probe p(t, n_in, n_out, n_tok);
    if (!ggml_backend_dev_supports_op(dev, p.out)) {
        return res;
    }
    ggml_backend_t backend = ggml_backend_dev_init(dev, nullptr);
    if (!backend) {
        return res;
    }
    ggml_backend_buffer_t buf = ggml_backend_alloc_ctx_tensors(p.ctx, backend);

    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<float> w((size_t) (n_in * n_out)), g((size_t) (n_out * n_tok));
    for (auto & x : w) {
        x = nd(rng);
    }
    for (auto & x : g) {
        x = 1e-3f * nd(rng);  // gradients are small; an F16 copy of them would lose the smallest
    }
    // the weight as stored (rounded to t), and its exact F32 widening
    std::vector<uint8_t> wt(ggml_row_size(t, n_in) * (size_t) n_out);
    std::vector<float> ww(w.size());
    if (t == GGML_TYPE_F32) {
        ww = w;
        memcpy(wt.data(), w.data(), wt.size());
    } else {
        traits->from_float_ref(w.data(), wt.data(), (int64_t) w.size());
        traits->to_float(wt.data(), ww.data(), (int64_t) w.size());
    }
    ggml_backend_tensor_set(p.w, wt.data(), 0, wt.size());
    ggml_backend_tensor_set(p.w32, ww.data(), 0, ww.size() * sizeof(float));
    ggml_backend_tensor_set(p.g, g.data(), 0, g.size() * sizeof(float));

    ggml_cgraph * gf = ggml_new_graph(p.ctx);
    ggml_build_forward_expand(gf, p.out);
    ggml_build_forward_expand(gf, p.out32);
    if (ggml_backend_graph_compute(backend, gf) == GGML_STATUS_SUCCESS) {
        std::vector<float> o((size_t) (n_in * n_tok)), o32(o.size());
        ggml_backend_tensor_get(p.out, o.data(), 0, o.size() * sizeof(float));
        ggml_backend_tensor_get(p.out32, o32.data(), 0, o32.size() * sizeof(float));
        double num = 0.0, num32 = 0.0, den = 0.0;
        for (int64_t j = 0; j < n_tok; ++j) {
            for (int64_t i = 0; i < n_in; ++i) {
                double ref = 0.0;  // sum_k W[i, k] g[k, j], in double
                for (int64_t k = 0; k < n_out; ++k) {
                    ref += (double) ww[(size_t) (k * n_in + i)] * (double) g[(size_t) (j * n_out + k)];
                }
                const size_t at = (size_t) (j * n_in + i);
                num   += (o[at] - ref) * (o[at] - ref);
                num32 += (o32[at] - ref) * (o32[at] - ref);
                den   += ref * ref;
            }
        }
        res.err_typed = std::sqrt(num / std::max(den, 1e-300));
        res.err_f32   = std::sqrt(num32 / std::max(den, 1e-300));
    }
    ggml_backend_buffer_free(buf);
    ggml_backend_free(backend);
    return res;
}

bool valley_flash_attn_supported(ggml_backend_dev_t dev, int64_t head_k, int64_t head_v, int64_t n_head, int64_t n_head_kv) {
    if (head_k <= 0 || head_v <= 0 || n_head <= 0 || n_head_kv <= 0 || n_head % n_head_kv != 0) {
        return false;
    }
    const int64_t n_tok = 256;
    ggml_init_params ip = { ggml_tensor_overhead() * 16, nullptr, /*no_alloc =*/ true };
    ggml_context * ctx = ggml_init(ip);
    // as llm_graph_context::build_attn lays them out for training: [head, heads, tokens] permuted to [head, tokens, heads]
    ggml_tensor * q = ggml_permute(ctx, ggml_new_tensor_3d(ctx, GGML_TYPE_F32, head_k, n_head, n_tok), 0, 2, 1, 3);
    ggml_tensor * k = ggml_permute(ctx, ggml_new_tensor_3d(ctx, GGML_TYPE_F32, head_k, n_head_kv, n_tok), 0, 2, 1, 3);
    ggml_tensor * v = ggml_permute(ctx, ggml_new_tensor_3d(ctx, GGML_TYPE_F32, head_v, n_head_kv, n_tok), 0, 2, 1, 3);
    ggml_tensor * m = ggml_new_tensor_2d(ctx, GGML_TYPE_F16, n_tok, n_tok);
    const float scale = 1.0f / std::sqrt((float) head_k);
    ggml_tensor * fwd = ggml_flash_attn_ext(ctx, q, k, v, m, scale, 0.0f, 0.0f);
    ggml_flash_attn_ext_set_prec(fwd, GGML_PREC_F32);
    ggml_tensor * d = ggml_new_tensor_4d(ctx, GGML_TYPE_F32, head_v, n_head, n_tok, 1);
    ggml_tensor * back = ggml_flash_attn_ext_back(ctx, q, k, v, m, d, scale);
    const bool ok = ggml_backend_dev_supports_op(dev, fwd) && ggml_backend_dev_supports_op(dev, back);
    ggml_free(ctx);
    return ok;
}
