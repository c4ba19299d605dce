// RMSNorm (Llama, T5): y = w * x / sqrt(mean(x^2) + eps) over the last dimension.
#pragma once

#include "core/tensor.hpp"

namespace st {

// x, y: [..., C]; w: [C]; rstd: [rows] (saved for backward).
void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd);
// dx += ..., dw += ... (dw null or undefined when the weight is frozen).
void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor* dw);

}  // namespace st
