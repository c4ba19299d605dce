// SwiGLU feed-forward activation: h = silu(gate) * up, elementwise.
#pragma once

#include "core/tensor.hpp"

namespace st {

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& h);
// dgate += ..., dup += ... (or = with accumulate false)
void swiglu_backward(const Tensor& dh, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup,
                     bool accumulate = true);

}  // namespace st

namespace st {
// Inverted dropout whose mask is a pure function of (seed, stream, element index), so the
// backward pass (and a checkpointed recompute) regenerates it instead of storing it.
// out = mask * x / (1 - p); with accumulate, out += that. The backward is the same call on dy.
void dropout_apply(const Tensor& x, Tensor& out, double p, uint64_t seed, uint64_t stream, bool accumulate);
}  // namespace st
