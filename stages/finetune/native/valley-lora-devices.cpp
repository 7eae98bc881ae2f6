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

double valley_check_flash_attn_back(ggml_backend_dev_t dev, int64_t DK, int64_t DV, int64_t N, int64_t M, int64_t H,
                                    int64_t HK, int mask_kind, uint32_t seed) {
    ggml_init_params ip = { ggml_tensor_overhead() * 16 + ggml_graph_overhead(), nullptr, /*no_alloc =*/ true };
    ggml_context * ctx = ggml_init(ip);
    // q as the training graph passes it: [DK, H, N] permuted to [DK, N, H]
    ggml_tensor * q0 = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, DK, H, N);
    ggml_tensor * q  = ggml_permute(ctx, q0, 0, 2, 1, 3);
    ggml_tensor * k  = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, DK, M, HK);
    ggml_tensor * v  = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, DV, M, HK);
    ggml_tensor * m  = mask_kind ? ggml_new_tensor_2d(ctx, GGML_TYPE_F16, M, N) : nullptr;
    ggml_tensor * d  = ggml_new_tensor_3d(ctx, GGML_TYPE_F32, DV, H, N);
    const float scale = 1.0f / std::sqrt((float) DK);
    ggml_tensor * out = ggml_flash_attn_ext_back(ctx, q, k, v, m, d, scale);
    double worst = -1.0;
    ggml_backend_t backend = nullptr;
    ggml_backend_buffer_t buf = nullptr;
    if (ggml_backend_dev_supports_op(dev, out) && (backend = ggml_backend_dev_init(dev, nullptr)) != nullptr) {
        buf = ggml_backend_alloc_ctx_tensors(ctx, backend);
        std::mt19937 rng(seed);
        std::uniform_real_distribution<float> ud(-1.0f, 1.0f);
        std::vector<float> Q(ggml_nelements(q0)), K(ggml_nelements(k)), V(ggml_nelements(v)), D(ggml_nelements(d));
        for (auto * x : { &Q, &K, &V, &D }) {
            for (auto & e : *x) {
                e = ud(rng);
            }
        }
        std::vector<float> mv((size_t) (N * M), 0.0f);
        if (m) {
            std::vector<ggml_fp16_t> mh(mv.size());
            for (int64_t i = 0; i < N; ++i) {
                for (int64_t j = 0; j < M; ++j) {
                    float x;
                    if (mask_kind == 1) {
                        x = i != N - 1 && j <= i && j / 37 == i / 37 ? 0.0f : -INFINITY;
                    } else {
                        x = (i * 7 + j * 3) % 11 == 0 ? -INFINITY : ud(rng);
                    }
                    mh[(size_t) (i * M + j)] = ggml_fp32_to_fp16(x);
                    mv[(size_t) (i * M + j)] = ggml_fp16_to_fp32(mh[(size_t) (i * M + j)]);
                }
            }
            ggml_backend_tensor_set(m, mh.data(), 0, mh.size() * sizeof(ggml_fp16_t));
        }
        ggml_backend_tensor_set(q0, Q.data(), 0, Q.size() * sizeof(float));
        ggml_backend_tensor_set(k, K.data(), 0, K.size() * sizeof(float));
        ggml_backend_tensor_set(v, V.data(), 0, V.size() * sizeof(float));
        ggml_backend_tensor_set(d, D.data(), 0, D.size() * sizeof(float));
        ggml_cgraph * gf = ggml_new_graph(ctx);
        ggml_build_forward_expand(gf, out);
        if (ggml_backend_graph_compute(backend, gf) == GGML_STATUS_SUCCESS) {
            std::vector<float> gq(Q.size()), gk(K.size()), gv(V.size());
            ggml_backend_tensor_get(out, gq.data(), ggml_flash_attn_ext_back_offset(out, 0), gq.size() * sizeof(float));
            ggml_backend_tensor_get(out, gk.data(), ggml_flash_attn_ext_back_offset(out, 1), gk.size() * sizeof(float));
            ggml_backend_tensor_get(out, gv.data(), ggml_flash_attn_ext_back_offset(out, 2), gv.size() * sizeof(float));
            // reference: dQ is laid out as q ([DK, N, H]), dK and dV as k and v
            std::vector<double> rq(Q.size(), 0.0), rk(K.size(), 0.0), rv(V.size(), 0.0), P((size_t) M), dP((size_t) M);
            for (int64_t h = 0; h < H; ++h) {
                const int64_t hk = h / (H / HK);
                for (int64_t i = 0; i < N; ++i) {
                    const float * qi = Q.data() + (i * H + h) * DK;
                    const float * di = D.data() + (i * H + h) * DV;
                    double mx = -INFINITY;
                    for (int64_t j = 0; j < M; ++j) {
                        const float mj = mv[(size_t) (i * M + j)];
                        double s = 0.0;
                        for (int64_t c = 0; c < DK; ++c) {
                            s += (double) qi[c] * K[(size_t) ((hk * M + j) * DK + c)];
                        }
                        P[j] = mj == -INFINITY ? -INFINITY : s * scale + mj;
                        mx = std::max(mx, P[j]);
                    }
                    if (mx == -INFINITY) {
                        continue;  // a fully masked row: zero gradients
                    }
                    double sum = 0.0, Ds = 0.0;
                    for (int64_t j = 0; j < M; ++j) {
                        P[j] = std::exp(P[j] - mx);
                        sum += P[j];
                    }
                    for (int64_t j = 0; j < M; ++j) {
                        P[j] /= sum;
                        double dp = 0.0;
                        for (int64_t c = 0; c < DV; ++c) {
                            dp += (double) di[c] * V[(size_t) ((hk * M + j) * DV + c)];
                        }
                        dP[j] = dp;
                        Ds += P[j] * dp;
                    }
                    for (int64_t j = 0; j < M; ++j) {
                        const double ds = P[j] * (dP[j] - Ds) * scale;
                        for (int64_t c = 0; c < DK; ++c) {
                            rq[(size_t) ((h * N + i) * DK + c)] += ds * K[(size_t) ((hk * M + j) * DK + c)];
                            rk[(size_t) ((hk * M + j) * DK + c)] += ds * qi[c];
                        }
                        for (int64_t c = 0; c < DV; ++c) {
                            rv[(size_t) ((hk * M + j) * DV + c)] += P[j] * di[c];
                        }
                    }
                }
            }
            auto rel = [](const std::vector<float> & a, const std::vector<double> & r) {
                double num = 0.0, den = 0.0;
                for (size_t i = 0; i < r.size(); ++i) {
                    num += (a[i] - r[i]) * (a[i] - r[i]);
                    den += r[i] * r[i];
                }
                return std::sqrt(num / std::max(den, 1e-300));
            };
            const double e[3] = { rel(gq, rq), rel(gk, rk), rel(gv, rv) };
            worst = 0.0;
            for (double x : e) {
                worst = std::isfinite(x) ? std::max(worst, x) : INFINITY;
                if (!std::isfinite(worst)) {
                    break;
                }
            }
        }
    }
    if (buf) {
        ggml_backend_buffer_free(buf);
    }
    if (backend) {
        ggml_backend_free(backend);
    }
    ggml_free(ctx);
    return worst;
}
