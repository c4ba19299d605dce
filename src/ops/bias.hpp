// Bias of a linear layer (Qwen2's q, k, v projections): y [M, N] += b [N] for every row, and its
// gradient db [N] += the column sums of dy [M, N].
#pragma once

#include "core/tensor.hpp"

namespace st {

// y and b share a dtype (f32/f64 on CPU; bf16 or f32 on CUDA, summed in f32 and rounded once).
void bias_add(Tensor& y, const Tensor& b);
// db accumulates (+=) in the master precision: CPU the dtype of dy (summed in double), CUDA f32
// from bf16 or f32 dy, each column summed by one thread in row order (deterministic).
void bias_backward(const Tensor& dy, Tensor& db);

}  // namespace st
