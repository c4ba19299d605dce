// Optimizer and gradient-norm primitives over flat parameter tensors.
#pragma once

#include "core/tensor.hpp"

namespace st {

struct AdamWHyper {
  double lr = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  int64_t step = 1;  // 1-based, for bias correction
};

// PyTorch torch.optim.AdamW semantics. param, grad, m, v: same element count.
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h);
double sum_squares(const Tensor& x);      // accumulated in double
void scale_inplace(Tensor& x, double s);
void axpy(double a, const Tensor& x, Tensor& y);  // y += a x

}  // namespace st
