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

}  // namespace st::cuda
