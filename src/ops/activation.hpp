// SwiGLU feed-forward activation: h = silu(gate) * up, elementwise.
#pragma once

#include "core/tensor.hpp"

namespace st {

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& h);
// dgate += ..., dup += ... (or = with accumulate false)
void swiglu_backward(const Tensor& dh, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup,
                     bool accumulate = true);

// A LoRA layer's rank-r term scale xa B^T, left out of the layer's output for a consumer that adds
// it itself: xa [M, r] or, xa_t, [r, M]; B [N, r] or, b_t, [r, N] (the term is then scale xa B:
// an input-gradient term dxa A). Undefined xa: no term.
struct LowRankTerm {
  Tensor xa;
  bool xa_t = false;
  Tensor B;
  double scale = 0;
  bool b_t = false;
  bool defined() const { return xa.defined(); }
  int64_t rank() const { return defined() ? (b_t ? B.numel() / B.dim(-1) : B.dim(-1)) : 0; }
};

// SwiGLU on projections whose LoRA terms were left out: g' = gate + tg, u' = up + tu (tg, tu the
// terms; either may be undefined), h = silu(g') up'; the backward writes dgate = dL/dg' and dup =
// dL/du' (the gradients the projections and their adapters take) and adds the terms again; tdh
// (may be null or undefined): the down projection's input-gradient term left out of dh (dh' = dh
// + tdh is the gradient SwiGLU's output gets). gate and up stay as the base GEMMs wrote them. On CUDA with SHARDTUNE_SKINNY's swiglu kind (opt-in:
// slower than the separate passes in session 15) the terms are made inside the tile and never stored (cuda/matmul.cuh
// skinny_swiglu_lora); elsewhere, and on the CPU, g' and u' are formed (matmul) and swiglu runs.
void swiglu_lora_forward(const Tensor& gate, const Tensor& up, const LowRankTerm& tg, const LowRankTerm& tu, Tensor& h);
void swiglu_lora_backward(const Tensor& dh, const Tensor& gate, const Tensor& up, const LowRankTerm& tg,
                          const LowRankTerm& tu, Tensor& dgate, Tensor& dup, const LowRankTerm* tdh = nullptr);
// Whether swiglu_lora_* makes terms of these ranks (0: none) in one pass for outputs like `gate`
// (CUDA, bf16, the swiglu kind on, shapes and ranks the kernel takes): the Llama MLP leaves
// gate's and up's LoRA terms (rg, ru) and down's input-gradient term (rd) to SwiGLU only then.
bool swiglu_lora_one_pass(const Tensor& gate, int64_t rg, int64_t ru, int64_t rd);

// T5 v1.1 / FlanT5 gated-GELU feed-forward: h = gelu_tanh(gate) * up, with the tanh
// approximation of transformers' "gelu_new": 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
void geglu_forward(const Tensor& gate, const Tensor& up, Tensor& h);
void geglu_backward(const Tensor& dh, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup,
                    bool accumulate = true);
// Original T5's ReLU feed-forward: h = max(x, 0); dx (+)= dh where x > 0.
void relu_forward(const Tensor& x, Tensor& h);
void relu_backward(const Tensor& dh, const Tensor& x, Tensor& dx, bool accumulate = true);

}  // namespace st

namespace st {
// Inverted dropout whose mask is a pure function of (seed, stream, element index), so the
// backward pass (and a checkpointed recompute) regenerates it instead of storing it.
// out = mask * x / (1 - p); with accumulate, out += that. The backward is the same call on dy.
void dropout_apply(const Tensor& x, Tensor& out, double p, uint64_t seed, uint64_t stream, bool accumulate);
}  // namespace st
