// Scalar FP8 E4M3 pieces (see src/ops/fp8.hpp for the format).
//
// e4m3_from_float / e4m3_to_float are the CPU reference conversions, written from the format's
// definition (nearest representable value, ties to the even code, saturation to +-448, NaN kept),
// independently of NVIDIA's conversion, which the CUDA kernels use (__nv_cvt_float_to_fp8 with
// __NV_SATFINITE): the GPU tests check that the two agree on every input they try.
//
// fp8_scale_from_amax is shared by the CPU and CUDA code (host and device), so both derive the
// same scale from the same amax.
#pragma once

#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/hd.hpp"

namespace st::fp8 {

constexpr float kE4M3Max = 448.0f;       // largest finite E4M3 value
constexpr uint8_t kE4M3MaxCode = 0x7E;   // S.1111.110
constexpr uint8_t kE4M3NaNCode = 0x7F;   // S.1111.111

// The quantization scale for a scale group whose largest magnitude is `amax`: 448 / amax
// (correctly rounded f32 division), 1 when amax is 0, NaN or infinite (nothing to scale by), and
// FLT_MAX where the quotient overflows (amax below 448 / FLT_MAX). Then divided by 2^margin
// (delayed scaling's head room; exact).
ST_HD float scale_from_amax(float amax, int margin = 0) {
  if (!(amax > 0.0f) || amax == INFINITY) return 1.0f;
#if defined(__CUDA_ARCH__)
  float s = __fdiv_rn(kE4M3Max, amax);
#else
  float s = kE4M3Max / amax;
#endif
  if (s == INFINITY) s = FLT_MAX;
  return margin == 0 ? s : ldexpf(s, -margin);
}

// The dequantization factor of a scale: 1 / s (correctly rounded f32 division).
ST_HD float scale_inv_of(float s) {
#if defined(__CUDA_ARCH__)
  return __fdiv_rn(1.0f, s);
#else
  return 1.0f / s;
#endif
}

// The value of an E4M3 code (NaN for S.1111.111). Exact in f32.
inline float e4m3_to_float(uint8_t code) {
  const bool negative = (code & 0x80u) != 0;
  const int e = (code >> 3) & 0xF, m = code & 0x7;
  if (e == 15 && m == 7) return negative ? -NAN : NAN;
  // Subnormal: m x 2^-9; normal: (1 + m/8) x 2^(e-7) = (8 + m) x 2^(e-10).
  const float mag = e == 0 ? std::ldexp(static_cast<float>(m), -9) : std::ldexp(static_cast<float>(8 + m), e - 10);
  return negative ? -mag : mag;
}

// The E4M3 code nearest to x: round to nearest, ties to the even code (the one whose mantissa's
// last bit is 0); |x| >= 448 (infinity included) saturates to the largest finite code; NaN gives
// the NaN code; the sign bit of x is kept (so -0 and values that round to zero from below give
// 0x80).
inline uint8_t e4m3_from_float(float x) {
  uint32_t bits;
  std::memcpy(&bits, &x, 4);
  const uint8_t sign = static_cast<uint8_t>((bits >> 31) << 7);
  if (std::isnan(x)) return static_cast<uint8_t>(kE4M3NaNCode | sign);
  const float a = std::fabs(x);
  // Everything from 448 up saturates: (448, 464) rounds to 448 anyway; beyond it, satfinite.
  if (a >= kE4M3Max) return static_cast<uint8_t>(kE4M3MaxCode | sign);
  // The spacing of E4M3 values around a: 2^(floor(log2 a) - 3) in the normal range (a >= 2^-6),
  // 2^-9 below it. a / spacing is then exact (a power-of-two scaling) and rounding it to an
  // integer n (nearbyint: the default round-to-nearest-even mode) is the rounding to E4M3.
  int e2 = 0;
  (void)std::frexp(a, &e2);  // a = f x 2^e2, f in [0.5, 1): floor(log2 a) = e2 - 1
  int floor_log2 = a == 0.0f ? -7 : e2 - 1;
  if (floor_log2 < -6) floor_log2 = -6;
  const int spacing_exp = floor_log2 - 3;
  int n = static_cast<int>(std::nearbyint(std::ldexp(a, -spacing_exp)));  // 0..16
  // value = n x 2^spacing_exp. Subnormal range (spacing 2^-9): the code is n itself (n = 8 is
  // the smallest normal, code 0x08). Normal range: n in [8, 16], exponent field floor_log2 + 7,
  // mantissa n - 8; n = 16 carries into the next exponent.
  int exp_field = floor_log2 + 7;
  if (n == 16) {
    n = 8;
    ++exp_field;
  }
  const int code = spacing_exp == -9 && n < 8 ? n : (exp_field << 3) | (n - 8);
  return static_cast<uint8_t>(code | sign);
}

}  // namespace st::fp8

