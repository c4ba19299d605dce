// FP8 E4M3 building blocks (issue 20, item 3): quantize / dequantize with per-tensor or per-row
// scales, the scale rule of current and delayed scaling, and the FP8 GEMM (cuBLASLt on sm_89+).
//
// Format. OCP / NVIDIA E4M3 ("fn"): 1 sign, 4 exponent (bias 7), 3 mantissa bits; no infinity;
// S.1111.111 is NaN; the largest finite value is 448 (S.1111.110); subnormals 2^-9 .. 7 x 2^-9.
// Conversion from f32 (src/ops/fp8_codec.hpp) is that of NVIDIA's __nv_fp8_e4m3 / the PTX
// cvt.rn.satfinite.e4m3x2.f32 instruction: round to nearest even, finite values beyond 448
// (and +-infinity) saturate to +-448, NaN stays NaN, the sign of zero is kept.
//
// Storage. An Fp8Tensor is a row-major [rows, cols] matrix of E4M3 codes in a u8 tensor, with
// f32 dequantization factors scale_inv (one, or one per row): value = e4m3(code) * scale_inv.
// It also keeps the amax (max |x| of what was quantized, NaN ignored) of each scale group, so a
// delayed-scaling caller can push it into an amax history (fp8_update_scale).
//
// Scaling (as Transformer Engine's recipes): the quantization scale is s = 448 / amax, so the
// largest value maps to the top of the E4M3 range; s = 1 when amax is 0, infinite or NaN, and
// s = FLT_MAX where 448 / amax overflows. codes = e4m3(x * s) (the product rounded to f32 once),
// scale_inv = 1 / s (f32 division).
//  * current scaling (fp8_quantize): amax is that of x itself (per tensor or per row), found in
//    the same call. Costs one extra read of x; exact for this tensor.
//  * delayed scaling (fp8_quantize_scaled + fp8_update_scale): s comes from an amax history of
//    earlier steps (max over the last L amax values, divided by 2^margin); the quantization
//    records this tensor's amax for the next update. One read of x, but values above the
//    history's amax saturate.
// Precision: a value in E4M3's normal range keeps 4 significant bits (relative error <= 2^-4
// after round to nearest); below 2^-6 (in units of the scaled value) the absolute error is at
// most 2^-10 (half the smallest subnormal), i.e. 2^-10 * scale_inv in the original units.
//
// Devices. CPU: the reference (and the arithmetic the GPU is tested against, bit for bit for
// quantize / dequantize / transpose / scale updates). CUDA: cuda/fp8.cu and cuda/matmul_fp8.cu.
// In a dry run every op returns after its argument checks; matmul_fp8 reserves the cuBLASLt
// workspace the GPU backend shares with the bf16 GEMMs.
#pragma once

#include <cstdint>
#include <string>

#include "core/tensor.hpp"

namespace st {

enum class Fp8Scaling : uint8_t { per_tensor, per_row };
const char* fp8_scaling_name(Fp8Scaling s);

struct Fp8Tensor {
  int64_t rows = 0, cols = 0;
  Fp8Scaling scaling = Fp8Scaling::per_tensor;
  Tensor codes;      // u8  [rows, cols]  E4M3 codes, row-major
  Tensor scale_inv;  // f32 [num_scales]  dequantization factor of the tensor / of each row
  Tensor amax;       // f32 [num_scales]  max |x| of the last quantized input (NaN ignored)

  int64_t num_scales() const { return scaling == Fp8Scaling::per_row ? rows : 1; }
  Device device() const { return codes.device(); }
  size_t nbytes() const;  // codes + scale_inv + amax
  std::string str() const;  // "fp8e4m3[rows, cols] per_row cuda"
};

// Storage for a [rows, cols] FP8 matrix on `device`, contents undefined.
Fp8Tensor fp8_allocate(int64_t rows, int64_t cols, Fp8Scaling scaling, Device device,
                       MemCategory cat = MemCategory::activations);

// Current scaling: q = quantize(x) with the scale(s) from x's own amax. x: f32 or bf16 (CPU also
// f64, first rounded to f32), numel rows * cols, on q's device.
void fp8_quantize(const Tensor& x, Fp8Tensor& q);
// Delayed scaling: q = quantize(x) with the given quantization scale(s) `scale` (f32
// [q.num_scales()], same device); q.amax receives x's amax.
void fp8_quantize_scaled(const Tensor& x, const Tensor& scale, Fp8Tensor& q);
// out (f32 or bf16; CPU f32 or f64; numel rows * cols) = the dequantized values of q.
void fp8_dequantize(const Fp8Tensor& q, Tensor& out);
// qt = q^T: qt is [q.cols, q.rows], per-tensor scaling only (a per-row scale of q would be a
// per-column one of q^T); the codes are moved, not requantized, so qt holds exactly q's values.
void fp8_transpose(const Fp8Tensor& q, Fp8Tensor& qt);

// Delayed scaling: write `amax` (f32 [n]) into row (step mod L) of `history` (f32 [L, n]), then
// scale[j] = scale_from_amax(max over the L rows of column j) / 2^margin  (f32 [n]). A history
// starts as zeros (a zero amax gives scale 1 until real values arrive).
void fp8_update_scale(Tensor& history, const Tensor& amax, int64_t step, int margin, Tensor& scale);

// C [M, N] = (A dequantized) [M, K] x (B dequantized)^T [K, N]  (+ beta * C_in; C_in is C when
// null). A: Fp8Tensor [M, K], B: Fp8Tensor [N, K] (e.g. a frozen weight [out, in] in the Hugging
// Face layout), both row-major with K contiguous: the only operand layout cuBLASLt's FP8 kernels
// take ("TN" in its column-major terms). Computed as C[m, n] = sa[m] * sb[n] * sum_k a[m, k] b[n, k]
// (sa, sb: the scale_inv of A's and B's rows, or their one per-tensor factor): E4M3 products are
// exact in f32; accumulation in f32. A and B use the same scaling (per tensor or per row:
// cuBLASLt's outer-vector mode needs both). Requirements (checked on every device, so a CPU or dry
// run refuses what the GPU would): K and N multiples of 16. C: CUDA bf16 or f32; CPU f32 or f64.
// beta is 0 or 1 (1: C = C_in + A B^T, e.g. a residual).
void matmul_fp8(Tensor& C, const Fp8Tensor& A, const Fp8Tensor& B, double beta = 0.0, const Tensor* C_in = nullptr);

// What the device can do with FP8. CPU: everything (the reference). CUDA: the GEMM needs FP8
// tensor cores (compute capability 8.9 or newer) and a cuBLASLt that has FP8 kernels; per-row
// (outer-vector) scales in the GEMM need a cuBLASLt that accepts them on this GPU (probed once
// with a tiny GEMM). `reason` says why not, for an error message such as refusing
// base_precision = fp8. CUDA: refused during a dry run (the probe uses the backend's cuBLASLt
// context); the answer is cached for the process.
struct Fp8Support {
  bool gemm = false;
  bool gemm_per_row = false;
  int compute_capability = 0;  // major * 10 + minor (CUDA), 0 on the CPU
  std::string reason;
};
Fp8Support fp8_support(Device d);

}  // namespace st
