// Multi-head attention core (after the q/k/v projections, before the output projection).
// Grouped-query: Hq query heads share Hkv key/value heads (Hq % Hkv == 0).
#pragma once

#include "core/tensor.hpp"

namespace st {

struct AttentionShape {
  int64_t B = 0, T = 0, Hq = 0, Hkv = 0, D = 0;
  bool causal = true;
  double scale = 0;  // usually 1/sqrt(D); T5 uses 1
};

// q: [B*T, Hq*D], k, v: [B*T, Hkv*D], out: [B*T, Hq*D], lse: [B*Hq*T] (f32 or compute dtype).
// lengths: i32 [B] (keys at j >= lengths[b] are masked) or undefined for no padding mask.
void attention_forward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                       const Tensor& lengths, Tensor& out, Tensor& lse);
// dq, dk, dv accumulate (+=); with accumulate = false they are overwritten (no zeroing needed).
void attention_backward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const Tensor& dout,
                        const Tensor& lengths, Tensor& dq, Tensor& dk, Tensor& dv, bool accumulate = true);

}  // namespace st
