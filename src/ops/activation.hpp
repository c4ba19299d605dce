// SwiGLU feed-forward activation: h = silu(gate) * up, elementwise.
#pragma once

#include "core/tensor.hpp"

namespace st {

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& h);
// dgate += ..., dup += ... (or = with accumulate false)
void swiglu_backward(const Tensor& dh, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup,
                     bool accumulate = true);

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
