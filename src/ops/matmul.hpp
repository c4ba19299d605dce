// Matrix products. Tensors are row-major; leading dimensions are flattened, so x [B, T, C] is
// the matrix [B*T, C]. Weights follow the Hugging Face layout [out_features, in_features].
#pragma once

#include "core/tensor.hpp"

namespace st {

// C = alpha * op(A) op(B) + beta * C with op = transpose when trans_* is set.
// op(A) is [M, K], op(B) is [K, N], C is [M, N] (as 2-D views with the given last dims).
void matmul(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b,
            double alpha = 1.0, double beta = 0.0);

// y [M, out] (+)= x [M, in] W^T   (W: [out, in]); accumulate adds into y.
void linear_forward(const Tensor& x, const Tensor& W, Tensor& y, bool accumulate);
// dx [M, in] += dy [M, out] W;  dW [out, in] += dy^T x (dW may be undefined: frozen weight).
void linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, Tensor* dx, Tensor* dW);

}  // namespace st
