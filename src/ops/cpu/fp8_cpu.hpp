// CPU reference kernels of the FP8 ops (src/ops/fp8.hpp): raw pointers, row-major, shapes in the
// comments. The CUDA kernels (cuda/fp8.cu) produce the same bits for quantize, dequantize,
// transpose and scale updates; the FP8 GEMM is this arithmetic up to accumulation order.
#pragma once

#include <cstdint>

namespace st::cpu {

// Quantize x [rows, cols] to E4M3 codes. per_row: one scale group per row, else one for all.
// scale (null: current scaling, the scale from each group's own amax) is the quantization scale
// of each group [groups]; scale_inv [groups] = 1 / scale; amax [groups] = max |x| of each group
// (NaN ignored).
void fp8_quantize(int64_t rows, int64_t cols, const float* x, bool per_row, const float* scale, uint8_t* codes,
                  float* scale_inv, float* amax);
// out [rows, cols] = e4m3(codes) * scale_inv of the group, rounded to f32 (then widened to T).
template <typename T>
void fp8_dequantize(int64_t rows, int64_t cols, const uint8_t* codes, bool per_row, const float* scale_inv, T* out);
// out [cols, rows] = in [rows, cols]^T (bytes).
void fp8_transpose(int64_t rows, int64_t cols, const uint8_t* in, uint8_t* out);
// history [L, n]: row (step mod L) = amax [n]; scale[j] = scale_from_amax(max_l history[l, j], margin).
void fp8_update_scale(int64_t L, int64_t n, float* history, const float* amax, int64_t step, int margin, float* scale);
// C [M, N] = sa[m] * sb[n] * sum_k e4m3(a[m, k]) e4m3(b[n, k])  (+ c_in [M, N] when not null), the sum
// in T. a: [M, K], b: [N, K] codes; sa, sb: [M] / [N] when per_row, else [1].
template <typename T>
void gemm_fp8(int64_t M, int64_t N, int64_t K, const uint8_t* a, const float* sa, const uint8_t* b, const float* sb,
              bool per_row, const T* c_in, T* C);

}  // namespace st::cpu
