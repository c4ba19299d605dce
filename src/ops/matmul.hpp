// Matrix products. Tensors are row-major; leading dimensions are flattened, so x [B, T, C] is
// the matrix [B*T, C]. Weights follow the Hugging Face layout [out_features, in_features].
#pragma once

#include "core/tensor.hpp"
#include "ops/rope.hpp"

namespace st {

// The cuBLASLt workspace the CUDA backend keeps for all GEMMs (one buffer, made on first use).
constexpr size_t kCublasLtWorkspaceBytes = size_t{32} << 20;

// C = alpha * op(A) op(B) + beta * C_in with op = transpose when trans_* is set; C_in is C
// itself unless given (a residual input: C = x + A B without a copy of x into C first).
// op(A) is [M, K], op(B) is [K, N], C is [M, N] (as 2-D views with the given last dims).
void matmul(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b,
            double alpha = 1.0, double beta = 0.0, const Tensor* C_in = nullptr);

// C = rope_forward(C + alpha op(A) op(B)) on C = [B*T, H*D] (tables.head_dim = D; positions as
// rope_forward's): LoRA's rank-r update of q or k added after the base GEMM wrote C, with the
// rotation that follows it. On CUDA the skinny expand kernel does both in one pass over C
// (cuda/matmul.cuh skinny_expand_rope) where it takes the call; elsewhere, and on the CPU, it is
// matmul (beta 1) then rope_forward.
void matmul_add_rope(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha,
                     int64_t batch, int64_t T, const RopeTables& tables, const Tensor& positions = Tensor());
// Whether matmul_add_rope is one pass on this device: CUDA with the rope kind of SHARDTUNE_SKINNY
// (on by default). LoRA groups defer their rotated outputs (base GEMM first) only then.
bool matmul_add_rope_one_pass(Device device);

// LoRA's two products of the output gradient dy [M, out], in this order:
//   dB (+)= alpha dy^T xa    dB [out, r]; beta_dB 0 (=) or 1 (+=)
//   dxa   = alpha dy B       dxa [M, r] or, dxa_t, its transpose [r, M]
// with xa [M, r] or, xa_t, [r, M] and B [out, r]. On CUDA the skinny pair kernel reads dy once for
// both where it takes the call (SHARDTUNE_SKINNY's pair kind, on by default; f32 partial
// sums added in a fixed order); elsewhere, and on the CPU, the two matmuls (the same arithmetic
// up to the order of the f32 sums).
void matmul_dy_pair(Tensor& dB, double beta_dB, Tensor& dxa, bool dxa_t, const Tensor& dy, const Tensor& xa, bool xa_t,
                    const Tensor& B, double alpha);

// y [M, out] (+)= x [M, in] W^T   (W: [out, in]); accumulate adds into y. With residual,
// y = residual + x W^T.
void linear_forward(const Tensor& x, const Tensor& W, Tensor& y, bool accumulate, const Tensor* residual = nullptr);
// dx [M, in] += dy [M, out] W (= with dx_accumulate false);  dW [out, in] += dy^T x (dW may be
// undefined: frozen weight).
void linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, Tensor* dx, Tensor* dW,
                     bool dx_accumulate = true);

}  // namespace st
