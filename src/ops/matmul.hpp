// Matrix products. Tensors are row-major; leading dimensions are flattened, so x [B, T, C] is
// the matrix [B*T, C]. Weights follow the Hugging Face layout [out_features, in_features].
#pragma once

#include "core/tensor.hpp"

namespace st {

// The cuBLASLt workspace the CUDA backend keeps for all GEMMs (one buffer, made on first use).
constexpr size_t kCublasLtWorkspaceBytes = size_t{32} << 20;

// C = alpha * op(A) op(B) + beta * C_in with op = transpose when trans_* is set; C_in is C
// itself unless given (a residual input: C = x + A B without a copy of x into C first).
// op(A) is [M, K], op(B) is [K, N], C is [M, N] (as 2-D views with the given last dims).
void matmul(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b,
            double alpha = 1.0, double beta = 0.0, const Tensor* C_in = nullptr);

// y [M, out] (+)= x [M, in] W^T   (W: [out, in]); accumulate adds into y. With residual,
// y = residual + x W^T.
void linear_forward(const Tensor& x, const Tensor& W, Tensor& y, bool accumulate, const Tensor* residual = nullptr);
// dx [M, in] += dy [M, out] W (= with dx_accumulate false);  dW [out, in] += dy^T x (dW may be
// undefined: frozen weight).
void linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, Tensor* dx, Tensor* dW,
                     bool dx_accumulate = true);

}  // namespace st
