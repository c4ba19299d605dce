// FP8 E4M3 on the CPU (src/ops/fp8.*, the reference the CUDA kernels are tested against): the
// code table, round to nearest even at every midpoint (subnormals included), saturation and NaN,
// a brute-force nearest-value oracle on sampled floats, quantize / dequantize error bounds from
// E4M3's 3 mantissa bits (per tensor and per row, zero / infinite / NaN rows), delayed scaling's
// amax history, the transpose, the FP8 GEMM against f64, the argument checks cuBLASLt imposes,
// and dry runs.
#include <gtest/gtest.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/dryrun.hpp"
#include "core/rng.hpp"
#include "ops/fp8.hpp"
#include "ops/fp8_codec.hpp"
#include "ops/matmul.hpp"

namespace st {
namespace {

using fp8::e4m3_from_float;
using fp8::e4m3_to_float;

constexpr double kE4M3Rel = 1.0 / 16;      // 2^-4: half an ulp of a 4-significant-bit value
constexpr double kE4M3SubAbs = 1.0 / 1024;  // 2^-10: half the smallest subnormal (2^-9)
constexpr double kF32 = 1.0 / (1 << 24);    // f32 unit roundoff

float pow2(int e) { return std::ldexp(1.0f, e); }

TEST(Fp8Codec, DecodesTheFormat) {
  EXPECT_EQ(e4m3_to_float(0x00), 0.0f);
  EXPECT_FALSE(std::signbit(e4m3_to_float(0x00)));
  EXPECT_TRUE(std::signbit(e4m3_to_float(0x80)) && e4m3_to_float(0x80) == 0.0f);
  EXPECT_EQ(e4m3_to_float(0x01), pow2(-9));        // smallest subnormal
  EXPECT_EQ(e4m3_to_float(0x07), 7 * pow2(-9));    // largest subnormal
  EXPECT_EQ(e4m3_to_float(0x08), pow2(-6));        // smallest normal
  EXPECT_EQ(e4m3_to_float(0x38), 1.0f);            // exponent field 7 = bias
  EXPECT_EQ(e4m3_to_float(0x3F), 1.875f);
  EXPECT_EQ(e4m3_to_float(0x40), 2.0f);
  EXPECT_EQ(e4m3_to_float(0x77), 240.0f);          // 1.875 x 2^7
  EXPECT_EQ(e4m3_to_float(0x78), 256.0f);          // exponent field 15 is finite in E4M3
  EXPECT_EQ(e4m3_to_float(0x7E), 448.0f);
  EXPECT_EQ(e4m3_to_float(0xFE), -448.0f);
  EXPECT_TRUE(std::isnan(e4m3_to_float(0x7F)));
  EXPECT_TRUE(std::isnan(e4m3_to_float(0xFF)));
  for (int c = 1; c <= 0x7E; ++c) {  // the non-negative finite codes are in ascending order
    EXPECT_LT(e4m3_to_float(static_cast<uint8_t>(c - 1)), e4m3_to_float(static_cast<uint8_t>(c))) << c;
    EXPECT_EQ(e4m3_to_float(static_cast<uint8_t>(c | 0x80)), -e4m3_to_float(static_cast<uint8_t>(c)));
  }
}

TEST(Fp8Codec, EveryFiniteCodeRoundTrips) {
  for (int c = 0; c < 256; ++c) {
    if ((c & 0x7F) == 0x7F) continue;
    EXPECT_EQ(e4m3_from_float(e4m3_to_float(static_cast<uint8_t>(c))), c) << "code " << c;
  }
}

// Between every two neighbouring values: the midpoint goes to the even code, the floats on
// either side of it to the nearer value. This covers the subnormals (spacing 2^-9), the
// subnormal / normal boundary and every binade.
TEST(Fp8Codec, RoundsToNearestEvenAtEveryMidpoint) {
  for (int c = 0; c < 0x7E; ++c) {
    const float lo = e4m3_to_float(static_cast<uint8_t>(c)), hi = e4m3_to_float(static_cast<uint8_t>(c + 1));
    const float mid = (lo + hi) / 2;  // exact: 5 significant bits
    ASSERT_EQ(static_cast<double>(mid), (static_cast<double>(lo) + hi) / 2);
    const int even = (c % 2 == 0) ? c : c + 1;
    for (float sign : {1.0f, -1.0f}) {
      const int s = sign < 0 ? 0x80 : 0;
      SCOPED_TRACE(testing::Message() << "between codes " << c << " and " << c + 1 << " sign " << sign);
      EXPECT_EQ(e4m3_from_float(sign * mid), even | s);
      EXPECT_EQ(e4m3_from_float(sign * std::nextafter(mid, 0.0f)), c | s);
      EXPECT_EQ(e4m3_from_float(sign * std::nextafter(mid, 1000.0f)), (c + 1) | s);
    }
  }
  // Named cases.
  EXPECT_EQ(e4m3_from_float(1.0625f), 0x38);           // 1 + 1/16: tie between 1.0 and 1.125 -> even (1.0)
  EXPECT_EQ(e4m3_from_float(1.1875f), 0x3A);           // tie between 1.125 (odd) and 1.25 (even)
  EXPECT_EQ(e4m3_from_float(pow2(-10)), 0x00);         // half the smallest subnormal -> 0
  EXPECT_EQ(e4m3_from_float(-pow2(-10)), 0x80);        // ... keeping the sign
  EXPECT_EQ(e4m3_from_float(3 * pow2(-10)), 0x02);     // tie between 2^-9 (odd) and 2^-8 (even)
  EXPECT_EQ(e4m3_from_float(15 * pow2(-10)), 0x08);    // tie between 7 x 2^-9 and 2^-6: the smallest normal
  EXPECT_EQ(e4m3_from_float(1e-45f), 0x00);            // an f32 subnormal
}

TEST(Fp8Codec, SaturatesAndKeepsNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  for (float v : {448.0f, std::nextafter(448.0f, inf), 460.0f, 464.0f, 465.0f, 1e30f, FLT_MAX, inf}) {
    EXPECT_EQ(e4m3_from_float(v), 0x7E) << v;
    EXPECT_EQ(e4m3_from_float(-v), 0xFE) << -v;
  }
  EXPECT_EQ(e4m3_from_float(std::nextafter(448.0f, 0.0f)), 0x7E);  // rounds to 448
  EXPECT_EQ(e4m3_from_float(440.0f), 0x7E);                        // nearer 448 than 416
  EXPECT_EQ(e4m3_from_float(420.0f), 0x7D);                        // nearer 416
  EXPECT_EQ(e4m3_from_float(432.0f), 0x7E);                        // tie 416 (odd) / 448 (even)
  EXPECT_EQ(e4m3_from_float(std::nanf("")), 0x7F);
  EXPECT_EQ(e4m3_from_float(-std::nanf("")), 0xFF);
  EXPECT_EQ(e4m3_from_float(-0.0f), 0x80);
}

// An oracle written differently: the nearest of the 127 non-negative finite values by distance in
// double, ties to the even code, everything from 448 up saturated.
uint8_t nearest_e4m3(float x) {
  const double a = std::fabs(static_cast<double>(x));
  int best = 0x7E;
  if (a < 448.0) {
    double best_d = INFINITY;
    for (int c = 0; c <= 0x7E; ++c) {
      const double d = std::fabs(a - e4m3_to_float(static_cast<uint8_t>(c)));
      if (d < best_d || (d == best_d && c % 2 == 0)) best_d = d, best = c;
    }
  }
  return static_cast<uint8_t>(best | (std::signbit(x) ? 0x80 : 0));
}

TEST(Fp8Codec, MatchesABruteForceNearestValueOnSampledFloats) {
  int checked = 0;
  for (uint64_t i = 0; i < (uint64_t{1} << 32); i += 65519) {  // a prime stride: every exponent, many mantissas
    const uint32_t bits = static_cast<uint32_t>(i);
    float x;
    std::memcpy(&x, &bits, 4);
    if (std::isnan(x)) continue;
    ASSERT_EQ(e4m3_from_float(x), nearest_e4m3(x)) << "x = " << x << " (bits " << std::hex << bits << ")";
    ++checked;
  }
  EXPECT_GT(checked, 60000);
}

// ------------------------------------------------------------------------------ quantize

Tensor random_matrix(int64_t rows, int64_t cols, Rng& rng, double scale) {
  Tensor t = Tensor::empty({rows, cols}, DType::f32);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<float>()[i] = static_cast<float>(rng.uniform(-scale, scale));
  return t;
}

std::vector<float> dequantized(const Fp8Tensor& q) {
  Tensor out = Tensor::empty({q.rows, q.cols}, DType::f32);
  fp8_dequantize(q, out);
  return std::vector<float>(out.ptr<float>(), out.ptr<float>() + out.numel());
}

// |dequantized - x| within E4M3's precision: 2^-4 relative in the normal range, 2^-10 x scale_inv
// absolute below it, plus the f32 roundings of x * scale, 1 / scale and code * scale_inv.
void expect_round_trip_bound(const Tensor& x, const Fp8Tensor& q) {
  const std::vector<float> d = dequantized(q);
  const float* xp = x.ptr<float>();
  for (int64_t r = 0; r < q.rows; ++r) {
    const double si = q.scale_inv.ptr<float>()[q.scaling == Fp8Scaling::per_row ? r : 0];
    for (int64_t c = 0; c < q.cols; ++c) {
      const int64_t i = r * q.cols + c;
      if (!std::isfinite(xp[i])) continue;
      const double err = std::fabs(static_cast<double>(d[static_cast<size_t>(i)]) - xp[i]);
      const double bound = (kE4M3Rel + 4 * kF32) * std::fabs(xp[i]) + kE4M3SubAbs * si * (1 + 4 * kF32);
      ASSERT_LE(err, bound) << "element (" << r << ", " << c << ") x = " << xp[i] << " scale_inv " << si;
    }
  }
}

TEST(Fp8Quantize, PerTensorCurrentScaling) {
  Rng rng(7);
  Tensor x = random_matrix(33, 48, rng, 0.02);
  x.ptr<float>()[100] = -3.5f;  // the outlier sets the scale
  x.ptr<float>()[7] = 1e-9f;    // far below the smallest subnormal after scaling: 0
  Fp8Tensor q = fp8_allocate(33, 48, Fp8Scaling::per_tensor, Device::cpu);
  fp8_quantize(x, q);
  EXPECT_EQ(q.amax.ptr<float>()[0], 3.5f);
  const float s = 448.0f / 3.5f;
  EXPECT_EQ(q.scale_inv.ptr<float>()[0], 1.0f / s);
  EXPECT_EQ(q.codes.ptr<uint8_t>()[100], 0xFE);  // the amax element maps to -448
  EXPECT_EQ(q.codes.ptr<uint8_t>()[7], 0x00);
  for (int64_t i = 0; i < x.numel(); ++i)  // codes are e4m3(x * s) with the product rounded to f32
    ASSERT_EQ(q.codes.ptr<uint8_t>()[i], e4m3_from_float(x.ptr<float>()[i] * s)) << i;
  expect_round_trip_bound(x, q);
  // The error is E4M3's, not something much coarser: no element is off by more than 2^-4, and
  // typical ones are well inside it.
  const std::vector<float> d = dequantized(q);
  double worst = 0;
  for (int64_t i = 0; i < x.numel(); ++i)
    if (std::fabs(x.ptr<float>()[i]) * s >= 1.0f)  // normal range
      worst = std::max(worst, std::fabs(static_cast<double>(d[static_cast<size_t>(i)]) - x.ptr<float>()[i]) /
                                  std::fabs(x.ptr<float>()[i]));
  EXPECT_GT(worst, 1.0 / 64);
  EXPECT_LE(worst, kE4M3Rel + 4 * kF32);
}

TEST(Fp8Quantize, ValuesOnTheGridComeBackExactly) {
  // x = e4m3 value x scale_inv for scale_inv a power of two: quantize -> dequantize is the identity.
  Tensor x = Tensor::empty({2, 128}, DType::f32);
  for (int c = 0; c < 128; ++c) {
    const uint8_t code = static_cast<uint8_t>(c == 0x7F ? 0x7E : c);
    x.ptr<float>()[c] = e4m3_to_float(code) * pow2(-5);
    x.ptr<float>()[128 + c] = -e4m3_to_float(code) * pow2(-5);
  }
  Fp8Tensor q = fp8_allocate(2, 128, Fp8Scaling::per_tensor, Device::cpu);
  fp8_quantize(x, q);
  EXPECT_EQ(q.scale_inv.ptr<float>()[0], pow2(-5));
  const std::vector<float> d = dequantized(q);
  for (int64_t i = 0; i < x.numel(); ++i) ASSERT_EQ(d[static_cast<size_t>(i)], x.ptr<float>()[i]) << i;
}

TEST(Fp8Quantize, PerRowScalesEachRowOnItsOwnAndHandlesZeroInfAndNaN) {
  Rng rng(11);
  const int64_t rows = 6, cols = 40;
  Tensor x = random_matrix(rows, cols, rng, 1.0);
  const float mags[] = {1e-3f, 1.0f, 1e3f, 0.0f, 1.0f, 1.0f};
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) x.ptr<float>()[r * cols + c] *= mags[r];
  const float inf = std::numeric_limits<float>::infinity();
  x.ptr<float>()[4 * cols + 3] = -inf;           // row 4: infinite amax -> scale 1
  x.ptr<float>()[5 * cols + 9] = std::nanf("");  // row 5: NaN ignored by the amax
  Fp8Tensor q = fp8_allocate(rows, cols, Fp8Scaling::per_row, Device::cpu);
  fp8_quantize(x, q);
  const float* amax = q.amax.ptr<float>();
  const float* si = q.scale_inv.ptr<float>();
  for (int64_t r : {0, 1, 2, 5}) {
    float m = 0;
    for (int64_t c = 0; c < cols; ++c)
      if (!std::isnan(x.ptr<float>()[r * cols + c])) m = std::max(m, std::fabs(x.ptr<float>()[r * cols + c]));
    EXPECT_EQ(amax[r], m) << "row " << r;
    EXPECT_EQ(si[r], 1.0f / (448.0f / m)) << "row " << r;
  }
  EXPECT_EQ(amax[3], 0.0f);  // zero row: scale 1, all codes 0
  EXPECT_EQ(si[3], 1.0f);
  for (int64_t c = 0; c < cols; ++c) EXPECT_EQ(q.codes.ptr<uint8_t>()[3 * cols + c] & 0x7F, 0);
  EXPECT_EQ(amax[4], inf);  // infinite row: scale 1, the infinity saturates
  EXPECT_EQ(si[4], 1.0f);
  EXPECT_EQ(q.codes.ptr<uint8_t>()[4 * cols + 3], 0xFE);
  EXPECT_EQ(q.codes.ptr<uint8_t>()[5 * cols + 9], 0x7F);  // NaN stays NaN
  expect_round_trip_bound(x, q);
  // Scales differ by the rows' magnitudes (per-row), so the small row keeps its precision.
  EXPECT_GT(si[2] / si[0], 1e5);
}

TEST(Fp8Quantize, F64AndBf16InputsAreRoundedToF32First) {
  Rng rng(5);
  Tensor x64 = Tensor::empty({4, 32}, DType::f64);
  for (int64_t i = 0; i < x64.numel(); ++i) x64.ptr<double>()[i] = rng.uniform(-2, 2);
  Fp8Tensor a = fp8_allocate(4, 32, Fp8Scaling::per_row, Device::cpu), b = fp8_allocate(4, 32, Fp8Scaling::per_row, Device::cpu);
  fp8_quantize(x64, a);
  fp8_quantize(x64.to_cpu(DType::f32), b);
  EXPECT_EQ(std::memcmp(a.codes.data(), b.codes.data(), 128), 0);
  EXPECT_EQ(std::memcmp(a.scale_inv.data(), b.scale_inv.data(), 16), 0);
  const Tensor xb = x64.to_cpu(DType::bf16);
  fp8_quantize(xb, a);
  fp8_quantize(xb.to_cpu(DType::f32), b);
  EXPECT_EQ(std::memcmp(a.codes.data(), b.codes.data(), 128), 0);
}

TEST(Fp8Quantize, DelayedScalingUsesTheAmaxHistory) {
  const int64_t L = 3;
  Tensor history = Tensor::zeros({L, 1}, DType::f32), scale = Tensor::empty({1}, DType::f32);
  scale.ptr<float>()[0] = 1.0f;  // a zero history gives scale 1
  Fp8Tensor q = fp8_allocate(1, 16, Fp8Scaling::per_tensor, Device::cpu);
  const float amax_of_step[] = {8.0f, 2.0f, 1.0f, 0.5f, 0.25f};
  for (int64_t step = 0; step < 5; ++step) {
    Tensor x = Tensor::zeros({1, 16}, DType::f32);
    x.ptr<float>()[3] = amax_of_step[step];
    x.ptr<float>()[4] = 0.001f;
    const float s_used = scale.ptr<float>()[0];
    fp8_quantize_scaled(x, scale, q);
    EXPECT_EQ(q.amax.ptr<float>()[0], amax_of_step[step]);  // this tensor's amax, for the history
    EXPECT_EQ(q.scale_inv.ptr<float>()[0], 1.0f / s_used);
    EXPECT_EQ(q.codes.ptr<uint8_t>()[3], e4m3_from_float(amax_of_step[step] * s_used));
    fp8_update_scale(history, q.amax, step, 0, scale);
    // The window holds the last L amax values.
    float m = 0;
    for (int64_t k = std::max<int64_t>(0, step - L + 1); k <= step; ++k) m = std::max(m, amax_of_step[k]);
    EXPECT_EQ(scale.ptr<float>()[0], 448.0f / m) << "after step " << step;
  }
  // Margin: 2^-margin head room. Step 5 records step 4's amax again: the window is {0.5, 0.25, 0.25}.
  fp8_update_scale(history, q.amax, 5, 2, scale);
  EXPECT_EQ(scale.ptr<float>()[0], 448.0f / 0.5f / 4);
  // A value above the history's amax saturates.
  Tensor big = Tensor::zeros({1, 16}, DType::f32);
  big.ptr<float>()[0] = 1000.0f;
  fp8_quantize_scaled(big, scale, q);
  EXPECT_EQ(q.codes.ptr<uint8_t>()[0], 0x7E);
  EXPECT_EQ(q.amax.ptr<float>()[0], 1000.0f);
  EXPECT_THROW(fp8_update_scale(history, q.amax, -1, 0, scale), Error);
}

TEST(Fp8Quantize, ScaleRule) {
  EXPECT_EQ(fp8::scale_from_amax(0.0f), 1.0f);
  EXPECT_EQ(fp8::scale_from_amax(std::numeric_limits<float>::infinity()), 1.0f);
  EXPECT_EQ(fp8::scale_from_amax(std::nanf("")), 1.0f);
  EXPECT_EQ(fp8::scale_from_amax(1e-45f), FLT_MAX);  // 448 / amax overflows
  EXPECT_EQ(fp8::scale_from_amax(448.0f), 1.0f);
  EXPECT_EQ(fp8::scale_from_amax(7.0f, 3), 8.0f);
}

TEST(Fp8Quantize, RefusesMismatchedArguments) {
  Fp8Tensor q = fp8_allocate(4, 16, Fp8Scaling::per_row, Device::cpu);
  EXPECT_THROW(fp8_quantize(Tensor::zeros({4, 15}, DType::f32), q), Error);
  EXPECT_THROW(fp8_quantize(Tensor::zeros({4, 16}, DType::i32), q), Error);
  EXPECT_THROW(fp8_quantize_scaled(Tensor::zeros({4, 16}, DType::f32), Tensor::zeros({1}, DType::f32), q), Error);
  Fp8Tensor empty;
  EXPECT_THROW(fp8_quantize(Tensor::zeros({4, 16}, DType::f32), empty), Error);
  EXPECT_THROW(fp8_allocate(0, 16, Fp8Scaling::per_tensor, Device::cpu), Error);
  Tensor out = Tensor::empty({4, 16}, DType::i32);
  EXPECT_THROW(fp8_dequantize(q, out), Error);
}

TEST(Fp8Transpose, MovesCodesAndScale) {
  Rng rng(3);
  Tensor x = random_matrix(37, 70, rng, 3.0);
  Fp8Tensor q = fp8_allocate(37, 70, Fp8Scaling::per_tensor, Device::cpu);
  Fp8Tensor qt = fp8_allocate(70, 37, Fp8Scaling::per_tensor, Device::cpu);
  fp8_quantize(x, q);
  fp8_transpose(q, qt);
  for (int64_t r = 0; r < 37; ++r)
    for (int64_t c = 0; c < 70; ++c) ASSERT_EQ(qt.codes.ptr<uint8_t>()[c * 37 + r], q.codes.ptr<uint8_t>()[r * 70 + c]);
  EXPECT_EQ(qt.scale_inv.ptr<float>()[0], q.scale_inv.ptr<float>()[0]);
  EXPECT_EQ(qt.amax.ptr<float>()[0], q.amax.ptr<float>()[0]);
  Fp8Tensor wrong = fp8_allocate(37, 70, Fp8Scaling::per_tensor, Device::cpu);
  EXPECT_THROW(fp8_transpose(q, wrong), Error);
  Fp8Tensor rowwise = fp8_allocate(37, 70, Fp8Scaling::per_row, Device::cpu);
  EXPECT_THROW(fp8_transpose(rowwise, qt), Error);
}

// ------------------------------------------------------------------------------ GEMM

// sum_k deq(a)[m, k] deq(b)[n, k] in f64, with deq = e4m3 value x scale_inv (exact in f64), and
// sum_k |deq(a)| |deq(b)|.
void reference_gemm(const Fp8Tensor& A, const Fp8Tensor& B, std::vector<double>& ref, std::vector<double>& abs_sum) {
  const int64_t M = A.rows, N = B.rows, K = A.cols;
  ref.assign(static_cast<size_t>(M * N), 0.0);
  abs_sum.assign(static_cast<size_t>(M * N), 0.0);
  auto deq = [](const Fp8Tensor& q, int64_t r, int64_t k) {
    return static_cast<double>(e4m3_to_float(q.codes.ptr<uint8_t>()[r * q.cols + k])) *
           q.scale_inv.ptr<float>()[q.scaling == Fp8Scaling::per_row ? r : 0];
  };
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k) {
        const double p = deq(A, m, k) * deq(B, n, k);
        ref[static_cast<size_t>(m * N + n)] += p;
        abs_sum[static_cast<size_t>(m * N + n)] += std::fabs(p);
      }
}

TEST(Fp8Gemm, CpuReferenceAgreesWithF64OfTheDequantizedOperands) {
  Rng rng(21);
  for (Fp8Scaling scaling : {Fp8Scaling::per_tensor, Fp8Scaling::per_row}) {
    SCOPED_TRACE(fp8_scaling_name(scaling));
    const int64_t M = 13, N = 48, K = 96;
    Tensor a = random_matrix(M, K, rng, 1.5), b = random_matrix(N, K, rng, 0.05);
    for (int64_t r = 0; r < N; ++r) b.ptr<float>()[r * K] *= static_cast<float>(r + 1);  // rows of different size
    Fp8Tensor A = fp8_allocate(M, K, scaling, Device::cpu), B = fp8_allocate(N, K, scaling, Device::cpu);
    fp8_quantize(a, A);
    fp8_quantize(b, B);
    std::vector<double> ref, abs_sum;
    reference_gemm(A, B, ref, abs_sum);
    Tensor c64 = Tensor::empty({M, N}, DType::f64), c32 = Tensor::empty({M, N}, DType::f32);
    matmul_fp8(c64, A, B);
    matmul_fp8(c32, A, B);
    for (int64_t i = 0; i < M * N; ++i) {
      const double r = ref[static_cast<size_t>(i)], s = abs_sum[static_cast<size_t>(i)];
      // f64: K exact products summed in f64, scaled once (the reference sums the scaled products).
      ASSERT_LE(std::fabs(c64.ptr<double>()[i] - r), 1e-12 * s + 1e-300) << i;
      // f32: the classic bound of recursive summation, gamma_K sum |a b|, plus the scaling's roundings.
      const double gamma = K * kF32 / (1 - K * kF32);
      ASSERT_LE(std::fabs(c32.ptr<float>()[i] - r), gamma * s * (1 + 4 * kF32) + 3 * kF32 * std::fabs(r)) << i;
    }
    // beta = 1: C = C_in + A B^T.
    Tensor c_in = random_matrix(M, N, rng, 1.0), c = Tensor::empty({M, N}, DType::f64);
    Tensor c_in64 = c_in.to_cpu(DType::f64);
    matmul_fp8(c, A, B, 1.0, &c_in64);
    for (int64_t i = 0; i < M * N; ++i)
      ASSERT_NEAR(c.ptr<double>()[i], c_in64.ptr<double>()[i] + ref[static_cast<size_t>(i)],
                  1e-12 * (abs_sum[static_cast<size_t>(i)] + 1));
  }
}

TEST(Fp8Gemm, RefusesWhatCublasLtWould) {
  auto q = [](int64_t r, int64_t c, Fp8Scaling s = Fp8Scaling::per_tensor) {
    Fp8Tensor t = fp8_allocate(r, c, s, Device::cpu);
    t.codes.zero_();
    t.scale_inv.fill_(1.0);
    return t;
  };
  Tensor C = Tensor::empty({8, 32}, DType::f32);
  EXPECT_NO_THROW(matmul_fp8(C, q(8, 32), q(32, 32)));
  Tensor C40 = Tensor::empty({8, 40}, DType::f32);
  EXPECT_THROW(matmul_fp8(C, q(8, 40), q(32, 40)), Error);             // K not a multiple of 16
  EXPECT_THROW(matmul_fp8(C40, q(8, 32), q(40, 32)), Error);           // N not a multiple of 16
  EXPECT_THROW(matmul_fp8(C, q(8, 32), q(32, 48)), Error);             // K disagrees
  EXPECT_THROW(matmul_fp8(C, q(8, 32, Fp8Scaling::per_row), q(32, 32)), Error);  // mixed scaling
  EXPECT_THROW(matmul_fp8(C, q(8, 32), q(32, 32), 0.5), Error);        // beta must be 0 or 1
  Tensor Cb = Tensor::empty({8, 32}, DType::bf16);
  EXPECT_THROW(matmul_fp8(Cb, q(8, 32), q(32, 32)), Error);            // CPU output: f32 or f64
  Tensor Cwrong = Tensor::empty({8, 48}, DType::f32);
  EXPECT_THROW(matmul_fp8(Cwrong, q(8, 32), q(32, 32)), Error);
}

// ------------------------------------------------------------------------------ dry runs, support

TEST(Fp8DryRun, OpsCheckArgumentsComputeNothingAndShareTheCublasWorkspace) {
  DryRun dry;
  const int64_t M = 64, N = 32, K = 48;
  Tensor x = Tensor::empty({M, K}, DType::bf16, Device::cuda, MemCategory::activations);
  const size_t before = allocator_for(Device::cuda).stats().total_current;
  Fp8Tensor A = fp8_allocate(M, K, Fp8Scaling::per_tensor, Device::cuda);
  Fp8Tensor B = fp8_allocate(N, K, Fp8Scaling::per_tensor, Device::cuda, MemCategory::weights);
  // What the planner counts: the FP8 buffers themselves.
  EXPECT_EQ(allocator_for(Device::cuda).stats().total_current - before, A.nbytes() + B.nbytes());
  EXPECT_EQ(A.nbytes(), static_cast<size_t>(M * K) + 8);
  fp8_quantize(x, A);  // no kernel runs on the unbacked pages
  Tensor C = Tensor::empty({M, N}, DType::bf16, Device::cuda, MemCategory::activations);
  const size_t with_c = allocator_for(Device::cuda).stats().total_current;
  matmul_fp8(C, A, B);
  Tensor Cb = Tensor::empty({M, N}, DType::bf16, Device::cuda, MemCategory::activations);
  Tensor xa = Tensor::empty({M, K}, DType::bf16, Device::cuda, MemCategory::activations);
  Tensor w = Tensor::empty({N, K}, DType::bf16, Device::cuda, MemCategory::weights);
  const size_t with_bf16 = allocator_for(Device::cuda).stats().total_current;
  matmul(Cb, xa, false, w, true);  // the bf16 GEMM reuses the one workspace
  EXPECT_EQ(with_bf16 - with_c - Cb.nbytes() - xa.nbytes() - w.nbytes(), kCublasLtWorkspaceBytes);
  EXPECT_EQ(allocator_for(Device::cuda).stats().total_current - with_bf16, 0u);
  EXPECT_DOUBLE_EQ(dry_run_counters().flops, 2.0 * 2 * M * N * K);
  Tensor bad = Tensor::empty({M, N + 16}, DType::bf16, Device::cuda, MemCategory::activations);
  EXPECT_THROW(matmul_fp8(bad, A, B), Error);
  Tensor x_bad = Tensor::empty({M, K + 1}, DType::bf16, Device::cuda, MemCategory::activations);
  EXPECT_THROW(fp8_quantize(x_bad, A), Error);
  EXPECT_THROW(fp8_support(Device::cuda), Error);  // no GPU probe inside a dry run
  EXPECT_TRUE(fp8_support(Device::cpu).gemm);
}

TEST(Fp8Support, TheCpuIsTheReferenceAndARefusalSaysWhy) {
  const Fp8Support cpu = fp8_support(Device::cpu);
  EXPECT_TRUE(cpu.gemm && cpu.gemm_per_row);
  const Fp8Support cuda = fp8_support(Device::cuda);
  if (!cuda.gemm) {
    EXPECT_FALSE(cuda.reason.empty());
  }
#ifndef SHARDTUNE_CUDA
  EXPECT_FALSE(cuda.gemm);
  EXPECT_NE(cuda.reason.find("no CUDA"), std::string::npos);
#endif
}

}  // namespace
}  // namespace st
