// FP8 E4M3 kernels (cuda/fp8.cu) and the FP8 GEMM through cuBLASLt (cuda/matmul_fp8.cu) behind
// src/ops/fp8.hpp, which checks the arguments. Quantize, dequantize, transpose and scale updates
// give the same bits as the CPU reference; conversions use NVIDIA's __nv_cvt_float_to_fp8
// (round to nearest even, __NV_SATFINITE), the hardware instruction on sm_89+.
#pragma once

#include "core/tensor.hpp"
#include "ops/fp8.hpp"

namespace st::cuda {

// scale null: current scaling (amax of x first, then the codes); else the given scale(s), with
// x's amax recorded in q.amax in the same pass.
void fp8_quantize(const Tensor& x, const Tensor* scale, Fp8Tensor& q);
void fp8_dequantize(const Fp8Tensor& q, Tensor& out);
void fp8_transpose(const Fp8Tensor& q, Fp8Tensor& qt);
void fp8_update_scale(Tensor& history, const Tensor& amax, int64_t step, int margin, Tensor& scale);

// C = A B^T (+ C_in when not null); A [M, K], B [N, K]; shapes and types checked by the op layer.
void matmul_fp8(Tensor& C, const Fp8Tensor& A, const Fp8Tensor& B, const Tensor* C_in);
Fp8Support fp8_support();

}  // namespace st::cuda
