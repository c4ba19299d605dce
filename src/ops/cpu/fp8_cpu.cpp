// CPU reference of the FP8 ops: the definition the CUDA kernels are tested against.
#include "ops/cpu/fp8_cpu.hpp"

#include <array>
#include <cmath>

#include "ops/fp8_codec.hpp"

namespace st::cpu {

namespace {

// max |x| over n values; NaN ignored (fmax returns the other operand), so a group of NaN gives 0.
float group_amax(const float* x, int64_t n) {
  float m = 0.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float a = std::fabs(x[i]);
    if (a > m) m = a;  // false for NaN (quiet or signalling: glibc's fmax returns NaN for a signalling one)
  }
  return m;
}

template <typename T>
const std::array<T, 256>& e4m3_table() {
  static const std::array<T, 256> t = [] {
    std::array<T, 256> v{};
    for (int c = 0; c < 256; ++c) v[static_cast<size_t>(c)] = static_cast<T>(fp8::e4m3_to_float(static_cast<uint8_t>(c)));
    return v;
  }();
  return t;
}

}  // namespace

void fp8_quantize(int64_t rows, int64_t cols, const float* x, bool per_row, const float* scale, uint8_t* codes,
                  float* scale_inv, float* amax) {
  const int64_t groups = per_row ? rows : 1, group_len = per_row ? cols : rows * cols;
#pragma omp parallel for schedule(static) if (groups > 1)
  for (int64_t g = 0; g < groups; ++g) {
    const float* xg = x + g * group_len;
    uint8_t* cg = codes + g * group_len;
    amax[g] = group_amax(xg, group_len);
    const float s = scale ? scale[g] : fp8::scale_from_amax(amax[g]);
    scale_inv[g] = fp8::scale_inv_of(s);
    for (int64_t i = 0; i < group_len; ++i) cg[i] = fp8::e4m3_from_float(xg[i] * s);
  }
}

template <typename T>
void fp8_dequantize(int64_t rows, int64_t cols, const uint8_t* codes, bool per_row, const float* scale_inv, T* out) {
  const auto& value = e4m3_table<float>();
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float si = scale_inv[per_row ? r : 0];
    for (int64_t c = 0; c < cols; ++c) {
      const int64_t i = r * cols + c;
      out[i] = static_cast<T>(value[codes[i]] * si);  // the product rounded to f32, as on the GPU
    }
  }
}

void fp8_transpose(int64_t rows, int64_t cols, const uint8_t* in, uint8_t* out) {
#pragma omp parallel for schedule(static)
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t r = 0; r < rows; ++r) out[c * rows + r] = in[r * cols + c];
}

void fp8_update_scale(int64_t L, int64_t n, float* history, const float* amax, int64_t step, int margin, float* scale) {
  const int64_t slot = ((step % L) + L) % L;
  for (int64_t j = 0; j < n; ++j) {
    history[slot * n + j] = amax[j];
    float m = 0.0f;
    for (int64_t l = 0; l < L; ++l) m = std::fmax(m, history[l * n + j]);
    scale[j] = fp8::scale_from_amax(m, margin);
  }
}

template <typename T>
void gemm_fp8(int64_t M, int64_t N, int64_t K, const uint8_t* a, const float* sa, const uint8_t* b, const float* sb,
              bool per_row, const T* c_in, T* C) {
  const auto& value = e4m3_table<T>();  // E4M3 values are exact in f32 and f64, and so are their products
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; ++m) {
    const uint8_t* am = a + m * K;
    const T sam = static_cast<T>(sa[per_row ? m : 0]);
    for (int64_t n = 0; n < N; ++n) {
      const uint8_t* bn = b + n * K;
      T acc = 0;
      for (int64_t k = 0; k < K; ++k) acc += value[am[k]] * value[bn[k]];
      T c = sam * static_cast<T>(sb[per_row ? n : 0]) * acc;
      if (c_in) c += c_in[m * N + n];
      C[m * N + n] = c;
    }
  }
}

template void fp8_dequantize<float>(int64_t, int64_t, const uint8_t*, bool, const float*, float*);
template void fp8_dequantize<double>(int64_t, int64_t, const uint8_t*, bool, const float*, double*);
template void gemm_fp8<float>(int64_t, int64_t, int64_t, const uint8_t*, const float*, const uint8_t*, const float*,
                              bool, const float*, float*);
template void gemm_fp8<double>(int64_t, int64_t, int64_t, const uint8_t*, const float*, const uint8_t*, const float*,
                               bool, const double*, double*);

}  // namespace st::cpu
