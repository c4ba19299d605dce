// GEMMs through cuBLASLt: bf16 (or f32) inputs, f32 accumulation, bf16 or f32 output, row-major
// operands as in src/ops/matmul.hpp. Algorithms are chosen by cuBLASLt's heuristic once per
// (shape, transposes, types, alignment) and cached; one 32 MiB workspace (Hopper's advice).
#pragma once

#include <cstdint>

#include "core/tensor.hpp"

namespace st::cuda {

// C[M,N] = alpha * op(A)[M,K] op(B)[K,N] + beta * C_in (C_in = C when null); beta == 0 does not
// read it.
void matmul(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha, double beta,
            int64_t M, int64_t N, int64_t K, const Tensor* C_in = nullptr);

// The same through cuBLASLt only (K > 0), whatever SHARDTUNE_SKINNY says: the skinny benchmark's
// baseline.
void matmul_cublaslt(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha,
                     double beta, int64_t M, int64_t N, int64_t K, const Tensor* C_in = nullptr);

// Skinny GEMMs (LoRA's rank-r products) by shardtune's kernels (cuda/skinny.cu) instead of
// cuBLASLt: SHARDTUNE_SKINNY=custom; cublaslt (the default) or unset keeps cuBLASLt. Read once.
enum class SkinnyMode { cublaslt = 0, custom = 1 };
SkinnyMode skinny_mode();
// Tests and benchmarks: force a mode for this process; clear_skinny_mode returns to the environment's.
void set_skinny_mode(SkinnyMode mode);
void clear_skinny_mode();

// The custom kernels, when they take the call: bf16 A and B, bf16 or f32 C, one of K, N, M (the
// smallest such, ties in that order) a multiple of 8 in [8, 64] (r), A and B 16-byte aligned
// with row lengths (ta ? M : K, tb ? K : N) multiples of 8; for r = K (C = P W, "expand") or a
// sum over K with r = M or N ("reduce": M = r with B not transposed, N = r with A transposed)
// also C (and C_in) 16-byte aligned, and N a multiple of 8 for expand. Returns false, having done
// nothing, otherwise. Same arguments and result as matmul (up to f32 summation order); every
// transposition of the three kinds (thin: C[*, r] = X W with X's rows along K; reduce; expand).
bool skinny_matmul(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha, double beta,
                   int64_t M, int64_t N, int64_t K, const Tensor* C_in = nullptr);

}  // namespace st::cuda
