// Token embedding lookup and its gradient scatter.
#pragma once

#include "core/tensor.hpp"

namespace st {

// out [N, C] = table [V, C] rows at ids (i32 [N]).
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out);
// dtable [V, C] += scatter of dout [N, C].
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable);

}  // namespace st
