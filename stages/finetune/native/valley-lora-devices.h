// valley-lora: which devices train, and what they can do with the base's weight types
// (valley-lora-devices.cpp). Kept apart from valley-lora.cpp so that the trainer's graph code and
// these checks change independently.
#pragma once

#include "ggml-backend.h"
#include "ggml.h"

#include <cstdint>
#include <string>
#include <vector>

// The GPUs a run trains on: the first n of them in ggml's device order (n < 0: all of them; 0: none,
// i.e. the CPU). More than there are is an error: `err` says so and the list is empty.
std::vector<ggml_backend_dev_t> valley_pick_gpus(int n, std::string & err);

// Can `dev` run the backward pass through a frozen weight of type `t`? That is OUT_PROD with a src0 of
// type t and the transposed F32 gradient as src1, exactly as ggml builds it for MUL_MAT.
bool valley_backward_supported(ggml_backend_dev_t dev, ggml_type t);

// Runs that OUT_PROD on `dev` for a weight of type t (random values) and for its F32 widening, and
// compares both with a double-precision reference on the host. Returns the largest relative error
// (Frobenius) of the two, or a negative number when the device cannot run it.
struct valley_backward_check {
    double err_typed = -1.0;  // out_prod(W of type t, g) vs reference
    double err_f32   = -1.0;  // out_prod(widened W, g) vs reference
};
valley_backward_check valley_check_backward(ggml_backend_dev_t dev, ggml_type t, int64_t n_in, int64_t n_out,
                                            int64_t n_tok, uint32_t seed);

// Can `dev` run flash attention in a training graph for these head sizes: FLASH_ATTN_EXT with F32 Q/K/V
// (permuted views, as the graph passes them) and an F16 mask, and its backward pass ggml_flash_attn_ext_back
// (patch 0010, CUDA kernel in patch 0011)? Both must, or the step would run attention on the CPU.
bool valley_flash_attn_supported(ggml_backend_dev_t dev, int64_t head_k, int64_t head_v, int64_t n_head, int64_t n_head_kv);

// Runs ggml_flash_attn_ext_back on `dev` for random Q, K, V, dO of this shape (H query heads over HK K/V
// heads) under a mask (0: none; 1: causal packing of 37-token documents with the last row fully masked;
// 2: random additive values with -inf holes), and compares dQ, dK, dV with a double-precision reference on
// the host. Returns the largest relative (Frobenius) error of the three, or a negative number when the
// device cannot run the op.
double valley_check_flash_attn_back(ggml_backend_dev_t dev, int64_t DK, int64_t DV, int64_t N, int64_t M, int64_t H,
                                    int64_t HK, int mask_kind, uint32_t seed);
