// Every op's backward against central finite differences, in f64, on random shapes
// (odd sizes included). Objective: sum(out * W) for a random W, so dout = W.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/op_trace.hpp"
#include "ops/activation.hpp"
#include "ops/attention.hpp"
#include "ops/embedding.hpp"
#include "ops/init.hpp"
#include "ops/loss.hpp"
#include "ops/matmul.hpp"
#include "ops/norm.hpp"
#include "ops/optim.hpp"
#include "ops/rope.hpp"
#include "tests/common/gradcheck.hpp"
#include "train/optimizer.hpp"

namespace st {
namespace {

using test::check_gradient;
using test::random_f64;
using test::weighted_sum;

constexpr double kTol = 1e-6;  // f64 central differences, see gradcheck.hpp

#define EXPECT_GRAD_OK(res, what) \
  EXPECT_LT((res).max_rel_err, kTol) << what << ": worst " << (res).worst << " (" << (res).checked << " checked)"

TEST(OpsGrad, MatmulAllTransposes) {
  Rng rng(1);
  const int64_t M = 7, N = 5, K = 9;
  for (int ta = 0; ta < 2; ++ta)
    for (int tb = 0; tb < 2; ++tb) {
      Tensor A = random_f64(ta ? Shape{K, M} : Shape{M, K}, rng);
      Tensor B = random_f64(tb ? Shape{N, K} : Shape{K, N}, rng);
      Tensor W = random_f64({M, N}, rng);
      Tensor C = Tensor::empty({M, N}, DType::f64);
      auto f = [&] { matmul(C, A, ta, B, tb); return weighted_sum(C, W); };
      // dC = W; dA = W op(B)^T (mapped back through op), dB likewise.
      Tensor dA = Tensor::zeros(A.shape(), DType::f64), dB = Tensor::zeros(B.shape(), DType::f64);
      if (!ta) matmul(dA, W, false, B, !tb); else matmul(dA, B, tb, W, true);
      if (!tb) matmul(dB, A, !ta, W, false); else matmul(dB, W, true, A, ta);
      EXPECT_GRAD_OK(check_gradient(f, A, dA), "dA ta=" << ta << " tb=" << tb);
      EXPECT_GRAD_OK(check_gradient(f, B, dB), "dB ta=" << ta << " tb=" << tb);
    }
}

TEST(OpsGrad, MatmulLargeMatchesNaive) {
  // The packed, threaded path (sizes above the small-product cutoff, ragged edges).
  Rng rng(2);
  for (auto [M, N, K] : {std::tuple<int64_t, int64_t, int64_t>{67, 45, 131}, {130, 257, 33}, {1, 300, 70}}) {
    Tensor A = random_f64({M, K}, rng), B = random_f64({N, K}, rng), C = random_f64({M, N}, rng);
    Tensor ref = C.clone(MemCategory::other);
    for (int64_t i = 0; i < M; ++i)
      for (int64_t j = 0; j < N; ++j) {
        double s = 0;
        for (int64_t p = 0; p < K; ++p) s += A.ptr<double>()[i * K + p] * B.ptr<double>()[j * K + p];
        ref.ptr<double>()[i * N + j] = 0.5 * ref.ptr<double>()[i * N + j] + 2.0 * s;
      }
    matmul(C, A, false, B, true, 2.0, 0.5);
    EXPECT_LT(test::rel_error(C, ref), 1e-14) << M << "x" << N << "x" << K;
    // f32 path of the same product: rounding of K-term dot products, ~sqrt(K) * 6e-8.
    Tensor Af = A.to_cpu(DType::f32), Bf = B.to_cpu(DType::f32), Cf = Tensor::empty({M, N}, DType::f32);
    matmul(Cf, Af, false, Bf, true);
    Tensor ref2 = Tensor::zeros({M, N}, DType::f64);
    matmul(ref2, A, false, B, true);
    EXPECT_LT(test::rel_error(Cf, ref2), 1e-5);
  }
}

TEST(OpsGrad, RmsNorm) {
  Rng rng(3);
  const int64_t N = 6, C = 13;
  Tensor x = random_f64({N, C}, rng), w = random_f64({C}, rng), W = random_f64({N, C}, rng);
  Tensor y = Tensor::empty({N, C}, DType::f64), rstd = Tensor::empty({N}, DType::f64);
  auto f = [&] { rmsnorm_forward(x, w, 1e-5, y, rstd); return weighted_sum(y, W); };
  f();
  Tensor dx = Tensor::zeros(x.shape(), DType::f64), dw = Tensor::zeros(w.shape(), DType::f64);
  rmsnorm_backward(W, x, w, rstd, dx, &dw);
  EXPECT_GRAD_OK(check_gradient(f, x, dx), "dx");
  EXPECT_GRAD_OK(check_gradient(f, w, dw), "dw");
}

TEST(OpsGrad, RopeIsOrthogonalAndMatchesFormula) {
  Rng rng(4);
  const int64_t B = 2, T = 5, H = 3, D = 8;
  RopeTables tab = rope_tables(16, D, 10000.0, Device::cpu);
  Tensor x = random_f64({B * T, H * D}, rng), W = random_f64({B * T, H * D}, rng);
  Tensor y = Tensor::empty(x.shape(), DType::f64);
  auto f = [&] { y.copy_from(x); rope_forward(y, B, T, tab); return weighted_sum(y, W); };
  f();
  // Rotate-half formula at one element: position t=3, head 1, pair i=2.
  const int64_t t = 3, h = 1, i = 2;
  const double inv_freq = 1.0 / std::pow(10000.0, 2.0 * i / D);
  const double* xr = x.ptr<double>() + (0 * T + t) * H * D + h * D;
  const double* yr = y.ptr<double>() + (0 * T + t) * H * D + h * D;
  EXPECT_NEAR(yr[i], xr[i] * std::cos(t * inv_freq) - xr[i + D / 2] * std::sin(t * inv_freq), 1e-6);
  EXPECT_NEAR(yr[i + D / 2], xr[i + D / 2] * std::cos(t * inv_freq) + xr[i] * std::sin(t * inv_freq), 1e-6);
  Tensor dx = W.clone(MemCategory::other);
  rope_backward(dx, B, T, tab);
  EXPECT_GRAD_OK(check_gradient(f, x, dx), "dx");
}

struct AttentionGrads {
  test::GradCheckResult dq, dk, dv, dbias;  // dbias: only with a bias
};

// Tk = 0: self-attention (Tk = T). with_bias: a [Hq, T, Tk] additive score bias, whose gradient
// is accumulated into a dbias that starts non-zero (the check is on the increment).
AttentionGrads attention_case(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, bool causal, bool padded,
                              uint64_t seed, int64_t Tk = 0, bool with_bias = false) {
  Rng rng(seed);
  AttentionShape s{B, T, Hq, Hkv, D, causal, 1.0 / std::sqrt(static_cast<double>(D)), Tk};
  const int64_t Tkv = s.kv_len();
  Tensor q = random_f64({B * T, Hq * D}, rng), k = random_f64({B * Tkv, Hkv * D}, rng), v = random_f64({B * Tkv, Hkv * D}, rng);
  Tensor W = random_f64({B * T, Hq * D}, rng);
  Tensor lengths;
  if (padded) {
    lengths = Tensor::empty({B}, DType::i32);
    for (int64_t b = 0; b < B; ++b) lengths.ptr<int32_t>()[b] = static_cast<int32_t>(std::max<int64_t>(0, Tkv - (b % 3)));
  }
  Tensor bias, dbias0, dbias;
  if (with_bias) {
    bias = random_f64({Hq, T, Tkv}, rng, 2.0);
    dbias0 = random_f64({Hq, T, Tkv}, rng);
    dbias = dbias0.clone(MemCategory::other);
  }
  Tensor out = Tensor::empty({B * T, Hq * D}, DType::f64), lse = Tensor::empty({B * T, Hq}, DType::f64);
  auto f = [&] { attention_forward(s, q, k, v, lengths, out, lse, bias); return weighted_sum(out, W); };
  f();
  Tensor dq = Tensor::zeros(q.shape(), DType::f64), dk = Tensor::zeros(k.shape(), DType::f64), dv = Tensor::zeros(v.shape(), DType::f64);
  attention_backward(s, q, k, v, out, lse, W, lengths, dq, dk, dv, true, bias, with_bias ? &dbias : nullptr);
  AttentionGrads g{check_gradient(f, q, dq, 96), check_gradient(f, k, dk, 96), check_gradient(f, v, dv, 96), {}};
  if (with_bias) {
    Tensor inc = dbias.clone(MemCategory::other);
    for (int64_t i = 0; i < inc.numel(); ++i) inc.ptr<double>()[i] -= dbias0.ptr<double>()[i];
    g.dbias = check_gradient(f, bias, inc, 200);
    if (causal) {  // masked scores get no gradient: dbias untouched above the diagonal
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t i = 0; i < T; ++i)
          for (int64_t j = i + 1; j < Tkv; ++j) {
            EXPECT_EQ(inc.ptr<double>()[(h * T + i) * Tkv + j], 0.0) << "dbias at masked (" << h << ", " << i << ", " << j << ")";
          }
    }
  }
  return g;
}

TEST(OpsGrad, AttentionCausalGqaPadded) {
  const AttentionGrads g = attention_case(3, 7, 4, 2, 6, true, true, 5);
  EXPECT_GRAD_OK(g.dq, "dq");
  EXPECT_GRAD_OK(g.dk, "dk");
  EXPECT_GRAD_OK(g.dv, "dv");
}

TEST(OpsGrad, AttentionMultiHeadNoPadding) {
  const AttentionGrads g = attention_case(2, 5, 3, 3, 4, true, false, 6);
  EXPECT_GRAD_OK(g.dq, "dq");
  EXPECT_GRAD_OK(g.dk, "dk");
  EXPECT_GRAD_OK(g.dv, "dv");
}

TEST(OpsGrad, AttentionBidirectionalPadded) {
  const AttentionGrads g = attention_case(2, 6, 2, 1, 8, false, true, 7);
  EXPECT_GRAD_OK(g.dq, "dq");
  EXPECT_GRAD_OK(g.dk, "dk");
  EXPECT_GRAD_OK(g.dv, "dv");
}

TEST(OpsGrad, AttentionCrossGqaBias) {
  // Cross-attention (more keys than queries), no padding, GQA, additive bias.
  const AttentionGrads g = attention_case(2, 5, 4, 2, 6, false, false, 21, 7, true);
  EXPECT_GRAD_OK(g.dq, "dq");
  EXPECT_GRAD_OK(g.dk, "dk");
  EXPECT_GRAD_OK(g.dv, "dv");
  EXPECT_GRAD_OK(g.dbias, "dbias");
}

TEST(OpsGrad, AttentionCrossPaddedBias) {
  // Fewer keys than queries, key padding (lengths 4, 3, 2), bias.
  const AttentionGrads g = attention_case(3, 6, 2, 1, 5, false, true, 22, 4, true);
  EXPECT_GRAD_OK(g.dq, "dq");
  EXPECT_GRAD_OK(g.dk, "dk");
  EXPECT_GRAD_OK(g.dv, "dv");
  EXPECT_GRAD_OK(g.dbias, "dbias");
}

TEST(OpsGrad, AttentionCausalPaddedBias) {
  const AttentionGrads g = attention_case(3, 7, 4, 2, 6, true, true, 23, 0, true);
  EXPECT_GRAD_OK(g.dq, "dq");
  EXPECT_GRAD_OK(g.dk, "dk");
  EXPECT_GRAD_OK(g.dv, "dv");
  EXPECT_GRAD_OK(g.dbias, "dbias");
}

TEST(OpsGrad, AttentionCrossPaddedNoBias) {
  const AttentionGrads g = attention_case(2, 3, 2, 2, 4, false, true, 24, 8, false);
  EXPECT_GRAD_OK(g.dq, "dq");
  EXPECT_GRAD_OK(g.dk, "dk");
  EXPECT_GRAD_OK(g.dv, "dv");
}

// softmax(scale q k^T + bias + mask) v and its log-sum-exp written out for one (b, h, i).
void naive_attention_row(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                         const Tensor& bias, int64_t len, int64_t b, int64_t h, int64_t i, std::vector<double>& o,
                         double& lse) {
  const int64_t Tk = s.kv_len(), hk = h / (s.Hq / s.Hkv);
  std::vector<double> sc;
  for (int64_t j = 0; j < Tk; ++j) {
    if (j >= len || (s.causal && j > i)) continue;
    double dot = 0;
    for (int64_t d = 0; d < s.D; ++d)
      dot += q.ptr<double>()[((b * s.T + i) * s.Hq + h) * s.D + d] * k.ptr<double>()[((b * Tk + j) * s.Hkv + hk) * s.D + d];
    sc.push_back(s.scale * dot + (bias.defined() ? bias.ptr<double>()[(h * s.T + i) * Tk + j] : 0.0));
  }
  o.assign(static_cast<size_t>(s.D), 0.0);
  if (sc.empty()) {
    lse = -INFINITY;
    return;
  }
  double z = 0;
  for (double x : sc) z += std::exp(x);
  lse = std::log(z);
  size_t n = 0;
  for (int64_t j = 0; j < Tk; ++j) {
    if (j >= len || (s.causal && j > i)) continue;
    const double p = std::exp(sc[n++]) / z;
    for (int64_t d = 0; d < s.D; ++d) o[static_cast<size_t>(d)] += p * v.ptr<double>()[((b * Tk + j) * s.Hkv + hk) * s.D + d];
  }
}

TEST(OpsGrad, AttentionBiasForwardMatchesNaive) {
  Rng rng(25);
  struct Case { int64_t B, T, Tk, Hq, Hkv, D; bool causal; std::vector<int32_t> lens; };
  // Cross-attention with a fully padded row (lengths 0), and causal self-attention.
  for (const Case& c : {Case{3, 3, 5, 2, 1, 4, false, {5, 3, 0}}, Case{2, 4, 4, 2, 2, 3, true, {4, 2}}}) {
    AttentionShape s{c.B, c.T, c.Hq, c.Hkv, c.D, c.causal, 0.7, c.Tk};
    Tensor q = random_f64({c.B * c.T, c.Hq * c.D}, rng), k = random_f64({c.B * c.Tk, c.Hkv * c.D}, rng);
    Tensor v = random_f64({c.B * c.Tk, c.Hkv * c.D}, rng), bias = random_f64({c.Hq, c.T, c.Tk}, rng, 3.0);
    Tensor lengths = Tensor::empty({c.B}, DType::i32);
    for (int64_t b = 0; b < c.B; ++b) lengths.ptr<int32_t>()[b] = c.lens[static_cast<size_t>(b)];
    Tensor out = Tensor::empty({c.B * c.T, c.Hq * c.D}, DType::f64), lse = Tensor::empty({c.B * c.T, c.Hq}, DType::f64);
    attention_forward(s, q, k, v, lengths, out, lse, bias);
    std::vector<double> o;
    double l = 0;
    for (int64_t b = 0; b < c.B; ++b)
      for (int64_t h = 0; h < c.Hq; ++h)
        for (int64_t i = 0; i < c.T; ++i) {
          naive_attention_row(s, q, k, v, bias, lengths.ptr<int32_t>()[b], b, h, i, o, l);
          const double got_lse = lse.ptr<double>()[(b * c.Hq + h) * c.T + i];
          if (std::isinf(l)) EXPECT_TRUE(std::isinf(got_lse) && got_lse < 0) << "empty row b=" << b;
          else EXPECT_NEAR(got_lse, l, 1e-12) << "lse b=" << b << " h=" << h << " i=" << i;
          for (int64_t d = 0; d < c.D; ++d)
            EXPECT_NEAR(out.ptr<double>()[((b * c.T + i) * c.Hq + h) * c.D + d], o[static_cast<size_t>(d)], 1e-12)
                << "out b=" << b << " h=" << h << " i=" << i << " d=" << d;
        }
    // The bias matters (the same call without it differs).
    Tensor out2 = Tensor::empty(out.shape(), DType::f64);
    attention_forward(s, q, k, v, lengths, out2, lse);
    EXPECT_GT(test::rel_error(out2, out), 1e-2);
  }
}

TEST(OpsGrad, AttentionBiasGradientRules) {
  // dbias accumulates whatever `accumulate` says, is the batch sum of dS (so a key masked in
  // every row gets nothing), equals the gradient of a zero bias when no bias is given, and an
  // empty query row (lengths 0) gets no gradient at all.
  Rng rng(26);
  const int64_t B = 3, T = 4, Tk = 5, H = 2, D = 3;
  AttentionShape s{B, T, H, H, D, false, 0.5, Tk};
  Tensor q = random_f64({B * T, H * D}, rng), k = random_f64({B * Tk, H * D}, rng), v = random_f64({B * Tk, H * D}, rng);
  Tensor dout = random_f64({B * T, H * D}, rng);
  Tensor lengths = Tensor::empty({B}, DType::i32);
  const int32_t lens[] = {3, 2, 0};  // keys 3, 4 masked in every row; batch row 2 sees nothing
  for (int64_t b = 0; b < B; ++b) lengths.ptr<int32_t>()[b] = lens[b];
  Tensor zero_bias = Tensor::zeros({H, T, Tk}, DType::f64);
  Tensor out = Tensor::empty({B * T, H * D}, DType::f64), lse = Tensor::empty({B * T, H}, DType::f64);
  attention_forward(s, q, k, v, lengths, out, lse, zero_bias);
  Tensor dq = random_f64(q.shape(), rng), dk = random_f64(k.shape(), rng), dv = random_f64(v.shape(), rng);
  Tensor db1 = Tensor::zeros({H, T, Tk}, DType::f64), db2 = Tensor::zeros({H, T, Tk}, DType::f64);
  attention_backward(s, q, k, v, out, lse, dout, lengths, dq, dk, dv, false, zero_bias, &db1);
  attention_backward(s, q, k, v, out, lse, dout, lengths, dq, dk, dv, false, Tensor(), &db2);
  EXPECT_EQ(test::rel_error(db2, db1), 0.0) << "no bias = zero bias";
  double norm = 0;
  for (int64_t i = 0; i < db1.numel(); ++i) norm += std::fabs(db1.ptr<double>()[i]);
  EXPECT_GT(norm, 1e-3);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < T; ++i)
      for (int64_t j = 3; j < Tk; ++j) EXPECT_EQ(db1.ptr<double>()[(h * T + i) * Tk + j], 0.0) << "masked key " << j;
  for (int64_t i = 2 * T * H * D; i < 3 * T * H * D; ++i) {
    EXPECT_EQ(out.ptr<double>()[i], 0.0) << "empty row output";
    EXPECT_EQ(dq.ptr<double>()[i], 0.0) << "empty row dq";
  }
  for (int64_t i = 2 * Tk * H * D; i < 3 * Tk * H * D; ++i) EXPECT_EQ(dk.ptr<double>()[i], 0.0) << "dk of an empty row";
  // Accumulation: a second call adds the same again (dq, dk, dv overwritten: accumulate = false).
  Tensor dq1 = dq.clone(MemCategory::other);
  attention_backward(s, q, k, v, out, lse, dout, lengths, dq, dk, dv, false, zero_bias, &db1);
  EXPECT_EQ(test::rel_error(dq, dq1), 0.0);
  Tensor twice = db2.clone(MemCategory::other);
  for (int64_t i = 0; i < twice.numel(); ++i) twice.ptr<double>()[i] *= 2;
  EXPECT_LT(test::rel_error(db1, twice), 1e-15);
  // f32: the same gradient in the compute dtype.
  Tensor qf = q.to_cpu(DType::f32), kf = k.to_cpu(DType::f32), vf = v.to_cpu(DType::f32), doutf = dout.to_cpu(DType::f32);
  Tensor outf = Tensor::empty(out.shape(), DType::f32), lsef = Tensor::empty(lse.shape(), DType::f32);
  Tensor biasf = zero_bias.to_cpu(DType::f32), dbf = Tensor::zeros({H, T, Tk}, DType::f32);
  attention_forward(s, qf, kf, vf, lengths, outf, lsef, biasf);
  Tensor dqf = Tensor::empty(q.shape(), DType::f32), dkf = Tensor::empty(k.shape(), DType::f32), dvf = Tensor::empty(v.shape(), DType::f32);
  attention_backward(s, qf, kf, vf, outf, lsef, doutf, lengths, dqf, dkf, dvf, false, biasf, &dbf);
  EXPECT_LT(test::rel_error(dbf, db2), 1e-5);
}

TEST(OpsGrad, AttentionInputErrors) {
  Rng rng(27);
  const int64_t B = 1, T = 3, Tk = 4, H = 1, D = 2;
  Tensor q = random_f64({B * T, H * D}, rng), k = random_f64({B * Tk, H * D}, rng), v = random_f64({B * Tk, H * D}, rng);
  Tensor out = Tensor::empty({B * T, H * D}, DType::f64), lse = Tensor::empty({B * T, H}, DType::f64);
  Tensor lengths = Tensor::empty({B}, DType::i32);
  lengths.ptr<int32_t>()[0] = 4;
  AttentionShape cross{B, T, H, H, D, false, 1.0, Tk};
  EXPECT_NO_THROW(attention_forward(cross, q, k, v, lengths, out, lse, Tensor::zeros({H, T, Tk}, DType::f64)));
  AttentionShape causal_cross = cross;
  causal_cross.causal = true;
  EXPECT_THROW(attention_forward(causal_cross, q, k, v, lengths, out, lse), Error);
  lengths.ptr<int32_t>()[0] = 5;  // more than Tk
  EXPECT_THROW(attention_forward(cross, q, k, v, lengths, out, lse), Error);
  lengths.ptr<int32_t>()[0] = 4;
  EXPECT_THROW(attention_forward(cross, q, k, v, lengths, out, lse, Tensor::zeros({H, T, Tk - 1}, DType::f64)), Error);
  EXPECT_THROW(attention_forward(cross, q, k, v, lengths, out, lse, Tensor::zeros({H, T, Tk}, DType::f32)), Error);
  AttentionShape too_long = cross;
  too_long.Tk = 5;  // k, v hold 4 positions
  EXPECT_THROW(attention_forward(too_long, q, k, v, lengths, out, lse), Error);
}

TEST(OpsGrad, AttentionMasksAreExact) {
  // A padded key must have no influence: changing it leaves the output unchanged; and with a
  // causal mask, later keys do not affect earlier queries.
  Rng rng(8);
  const int64_t B = 1, T = 6, H = 2, D = 4;
  AttentionShape s{B, T, H, H, D, true, 0.5};
  Tensor q = random_f64({T, H * D}, rng), k = random_f64({T, H * D}, rng), v = random_f64({T, H * D}, rng);
  Tensor lengths = Tensor::empty({1}, DType::i32);
  lengths.ptr<int32_t>()[0] = 4;
  Tensor o1 = Tensor::empty({T, H * D}, DType::f64), o2 = o1.clone(MemCategory::other), lse = Tensor::empty({T, H}, DType::f64);
  attention_forward(s, q, k, v, lengths, o1, lse);
  for (int64_t j = 4 * H * D; j < T * H * D; ++j) { k.ptr<double>()[j] += 3; v.ptr<double>()[j] -= 2; }
  for (int64_t j = 3 * H * D; j < 4 * H * D; ++j) v.ptr<double>()[j] += 1;  // key 3 changes
  attention_forward(s, q, k, v, lengths, o2, lse);
  for (int64_t i = 0; i < 3 * H * D; ++i) EXPECT_EQ(o1.ptr<double>()[i], o2.ptr<double>()[i]) << "query row " << i / (H * D);
  bool changed = false;
  for (int64_t i = 3 * H * D; i < 4 * H * D; ++i) changed |= o1.ptr<double>()[i] != o2.ptr<double>()[i];
  EXPECT_TRUE(changed) << "query 3 must see key 3";
}

TEST(OpsGrad, SwiGLU) {
  Rng rng(9);
  const int64_t N = 37;
  Tensor g = random_f64({N}, rng, 3.0), u = random_f64({N}, rng, 2.0), W = random_f64({N}, rng);
  Tensor h = Tensor::empty({N}, DType::f64);
  auto f = [&] { swiglu_forward(g, u, h); return weighted_sum(h, W); };
  f();
  EXPECT_NEAR(h.ptr<double>()[0], g.ptr<double>()[0] / (1 + std::exp(-g.ptr<double>()[0])) * u.ptr<double>()[0], 1e-14);
  Tensor dg = Tensor::zeros({N}, DType::f64), du = Tensor::zeros({N}, DType::f64);
  swiglu_backward(W, g, u, dg, du);
  EXPECT_GRAD_OK(check_gradient(f, g, dg), "dg");
  EXPECT_GRAD_OK(check_gradient(f, u, du), "du");
}

TEST(OpsGrad, EmbeddingScatter) {
  Rng rng(10);
  const int64_t V = 11, C = 5, N = 9;
  Tensor table = random_f64({V, C}, rng), W = random_f64({N, C}, rng);
  Tensor ids = Tensor::empty({N}, DType::i32);
  const int32_t idv[] = {3, 0, 10, 3, 3, 7, 1, 0, 10};  // repeats must add up
  for (int64_t i = 0; i < N; ++i) ids.ptr<int32_t>()[i] = idv[i];
  Tensor out = Tensor::empty({N, C}, DType::f64);
  auto f = [&] { embedding_forward(ids, table, out); return weighted_sum(out, W); };
  f();
  Tensor dt = Tensor::zeros(table.shape(), DType::f64);
  embedding_backward(ids, W, dt);
  EXPECT_GRAD_OK(check_gradient(f, table, dt, 100), "dtable");
  ids.ptr<int32_t>()[2] = 11;
  EXPECT_THROW(embedding_forward(ids, table, out), Error);
}

TEST(OpsGrad, CrossEntropyFused) {
  Rng rng(11);
  const int64_t N = 6, V = 17;
  Tensor logits = random_f64({N, V}, rng, 4.0);
  Tensor targets = Tensor::empty({N}, DType::i32), weight = Tensor::empty({N}, DType::f32);
  for (int64_t n = 0; n < N; ++n) {
    targets.ptr<int32_t>()[n] = static_cast<int32_t>((n * 5) % V);
    weight.ptr<float>()[n] = n == 2 ? 0.0f : 0.25f * static_cast<float>(n + 1);
  }
  targets.ptr<int32_t>()[4] = -1;  // ignored row
  Tensor work = Tensor::empty({N, V}, DType::f64), losses = Tensor::empty({N}, DType::f64);
  auto f = [&] {
    work.copy_from(logits);
    cross_entropy(work, targets, weight, losses, false);
    double s = 0;
    for (int64_t n = 0; n < N; ++n) s += weight.ptr<float>()[n] * losses.ptr<double>()[n];
    return s;
  };
  f();
  // Loss of row 0 by the definition.
  double mx = -1e300, sum = 0;
  for (int64_t j = 0; j < V; ++j) mx = std::max(mx, logits.ptr<double>()[j]);
  for (int64_t j = 0; j < V; ++j) sum += std::exp(logits.ptr<double>()[j] - mx);
  EXPECT_NEAR(losses.ptr<double>()[0], mx + std::log(sum) - logits.ptr<double>()[0], 1e-12);
  EXPECT_EQ(losses.ptr<double>()[4], 0.0);
  Tensor g = logits.clone(MemCategory::other);
  cross_entropy(g, targets, weight, losses, true);
  EXPECT_GRAD_OK(check_gradient(f, logits, g, 102), "dlogits");
}

TEST(OpsGrad, DropoutMaskIsReproducibleAndScaled) {
  Rng rng(12);
  Tensor x = random_f64({1000}, rng), a = Tensor::empty({1000}, DType::f64), b = Tensor::empty({1000}, DType::f64);
  dropout_apply(x, a, 0.25, 77, 5, false);
  dropout_apply(x, b, 0.25, 77, 5, false);
  int zeros = 0;
  for (int64_t i = 0; i < 1000; ++i) {
    EXPECT_EQ(a.ptr<double>()[i], b.ptr<double>()[i]);
    if (a.ptr<double>()[i] == 0) ++zeros;
    else EXPECT_NEAR(a.ptr<double>()[i], x.ptr<double>()[i] / 0.75, 1e-15);
  }
  // 1000 Bernoulli(0.25) draws: mean 250, std 13.7; six sigma either side.
  EXPECT_GT(zeros, 168);
  EXPECT_LT(zeros, 332);
}

TEST(OpsGrad, AdamWMatchesPyTorchFormula) {
  Tensor p = Tensor::empty({3}, DType::f64), g = Tensor::empty({3}, DType::f64);
  Tensor m = Tensor::zeros({3}, DType::f64), v = Tensor::zeros({3}, DType::f64);
  const double p0[] = {0.5, -1.0, 2.0}, g0[] = {0.1, -0.2, 0.0};
  for (int i = 0; i < 3; ++i) { p.ptr<double>()[i] = p0[i]; g.ptr<double>()[i] = g0[i]; }
  AdamWHyper h{1e-2, 0.9, 0.999, 1e-8, 0.1, 1};
  adamw_update(p, g, m, v, h);
  h.step = 2;
  adamw_update(p, g, m, v, h);
  // Reference: the torch.optim.AdamW update written out for two steps.
  for (int i = 0; i < 3; ++i) {
    double pp = p0[i], mm = 0, vv = 0;
    for (int s = 1; s <= 2; ++s) {
      pp *= 1 - 1e-2 * 0.1;
      mm = 0.9 * mm + 0.1 * g0[i];
      vv = 0.999 * vv + 0.001 * g0[i] * g0[i];
      const double denom = std::sqrt(vv) / std::sqrt(1 - std::pow(0.999, s)) + 1e-8;
      pp -= 1e-2 / (1 - std::pow(0.9, s)) * mm / denom;
    }
    EXPECT_NEAR(p.ptr<double>()[i], pp, 1e-15);
  }
}

// adamw_update_multi is adamw_update on each entry, bit for bit (weight decay per entry, the
// working copy written), and one traced optimizer op whose bytes are the entries' sum.
TEST(OpsGrad, AdamWMultiEqualsPerTensorAndIsOneTracedOp) {
  Rng rng(41);
  const std::vector<int64_t> sizes = {1, 3, 4097, 64};
  struct Set { std::vector<Tensor> p, g, m, v, w; };
  Set a, b;
  for (const int64_t n : sizes) {
    const Tensor p = random_f64({n}, rng).to_cpu(DType::f32), g = random_f64({n}, rng, 0.1).to_cpu(DType::f32);
    for (Set* s : {&a, &b}) {
      s->p.push_back(p.clone(MemCategory::other));
      s->g.push_back(g.clone(MemCategory::other));
      s->m.push_back(Tensor::zeros({n}, DType::f32));
      s->v.push_back(Tensor::zeros({n}, DType::f32));
      s->w.push_back(Tensor::zeros({n}, DType::bf16));
    }
  }
  const auto working = [](Set& s, size_t i) { return i % 2 ? &s.w[i] : nullptr; };
  double bytes = 0;
  for (int64_t step = 1; step <= 2; ++step) {
    AdamWHyper h{1e-2, 0.9, 0.999, 1e-8, 0.1, step};
    h.grad_scale = step == 2 ? 0.25 : 1.0;
    std::vector<AdamWTensors> list;
    bytes = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      const bool decay = i != 2;
      AdamWHyper hi = h;
      if (!decay) hi.weight_decay = 0;
      adamw_update(a.p[i], a.g[i], a.m[i], a.v[i], hi, working(a, i));
      list.push_back(AdamWTensors{&b.p[i], &b.g[i], &b.m[i], &b.v[i], working(b, i), decay});
      bytes += 7.0 * 4 * static_cast<double>(sizes[i]) + (i % 2 ? 2.0 * static_cast<double>(sizes[i]) : 0.0);
    }
    OpTraceRecorder rec;
    adamw_update_multi(list, h);
    ASSERT_EQ(rec.events().size(), 1u);
    EXPECT_EQ(rec.events()[0].family, OpFamily::optimizer);
    EXPECT_EQ(rec.events()[0].bytes, bytes);
  }
  for (size_t i = 0; i < sizes.size(); ++i) {
    const std::pair<const Tensor*, const Tensor*> pairs[] = {{&a.p[i], &b.p[i]}, {&a.m[i], &b.m[i]}, {&a.v[i], &b.v[i]},
                                                             {&a.w[i], &b.w[i]}};
    for (const auto& [x, y] : pairs) EXPECT_EQ(std::memcmp(x->data(), y->data(), x->nbytes()), 0) << "tensor " << i;
  }
  EXPECT_NE(static_cast<const uint16_t*>(a.w[1].data())[0], 0);  // the working copies were written
}

// zero_tensors clears exactly the listed views (any dtype, empty ones too) as one traced copy op
// of the bytes written.
TEST(OpsGrad, ZeroTensorsClearsTheListedViewsAsOneOp) {
  Tensor buf = Tensor::empty({1000}, DType::u8);
  for (int64_t i = 0; i < 1000; ++i) buf.ptr<uint8_t>()[i] = static_cast<uint8_t>(1 + i % 200);
  const Tensor before = buf.clone(MemCategory::other);
  Tensor v1 = buf.view_as(DType::u8, 3, Shape{5}), v2 = buf.view_as(DType::bf16, 20, Shape{7});
  Tensor v3 = buf.view_as(DType::f32, 100, Shape{50}), v4 = buf.view_as(DType::u8, 500, Shape{0});
  OpTraceRecorder rec;
  zero_tensors({&v1, &v2, &v3, &v4});
  ASSERT_EQ(rec.events().size(), 1u);
  EXPECT_EQ(rec.events()[0].family, OpFamily::copy);
  EXPECT_EQ(rec.events()[0].bytes, 5.0 + 14 + 200);
  for (int64_t i = 0; i < 1000; ++i) {
    const bool listed = (i >= 3 && i < 8) || (i >= 20 && i < 34) || (i >= 100 && i < 300);
    EXPECT_EQ(buf.ptr<uint8_t>()[i], listed ? 0 : before.ptr<uint8_t>()[i]) << i;
  }
  zero_tensors({&v4});  // nothing to write: no op
  zero_tensors({});
  EXPECT_EQ(rec.events().size(), 1u);
}

// AdamW issues one zero op and one update op per step whatever its parameter count, and the
// update is adamw_update per parameter: a bf16 value through its f32 master (the value rewritten
// from it), an f32 value with its own bf16 working copy, weight decay per parameter.
TEST(OpsGrad, AdamWStepIsOneOpAndUpdatesMastersAndWorkingCopies) {
  Rng rng(43);
  Tensor w16 = random_f64({5, 3}, rng).to_cpu(DType::bf16), g16 = random_f64({5, 3}, rng, 0.1).to_cpu(DType::f32);
  Tensor w32 = random_f64({7}, rng).to_cpu(DType::f32), g32 = random_f64({7}, rng, 0.1).to_cpu(DType::f32);
  Tensor work = Tensor::zeros({7}, DType::bf16);
  ParamRef p16{"w16", &w16, &g16, true};
  ParamRef p32{"w32", &w32, &g32, false};
  p32.working = &work;
  // The expected result, op by op.
  Tensor m16 = Tensor::zeros({5, 3}, DType::f32), v16 = m16.clone(MemCategory::other), master = w16.to_cpu(DType::f32);
  Tensor m32 = Tensor::zeros({7}, DType::f32), v32 = m32.clone(MemCategory::other), e32 = w32.clone(MemCategory::other);
  Tensor e16 = Tensor::zeros({5, 3}, DType::bf16), ework = Tensor::zeros({7}, DType::bf16);
  const Tensor gg16 = g16.clone(MemCategory::other), gg32 = g32.clone(MemCategory::other);
  AdamWHyper h{1e-2, 0.9, 0.95, 1e-8, 0.1, 1};
  adamw_update(master, gg16, m16, v16, h, &e16);
  h.weight_decay = 0;
  adamw_update(e32, gg32, m32, v32, h, &ework);

  AdamW opt({p16, p32}, 0.9, 0.95, 1e-8, 0.1);
  OpTraceRecorder rec;
  opt.zero_grad();
  ASSERT_EQ(rec.events().size(), 1u);
  EXPECT_EQ(rec.events()[0].family, OpFamily::copy);
  EXPECT_EQ(g16.ptr<float>()[4], 0.0f);
  g16.copy_from(gg16);
  g32.copy_from(gg32);
  rec.clear();
  opt.step(1e-2);
  ASSERT_EQ(rec.events().size(), 1u);
  EXPECT_EQ(rec.events()[0].family, OpFamily::optimizer);
  EXPECT_EQ(std::memcmp(w16.data(), e16.data(), w16.nbytes()), 0);
  EXPECT_EQ(std::memcmp(w32.data(), e32.data(), w32.nbytes()), 0);
  EXPECT_EQ(std::memcmp(work.data(), ework.data(), work.nbytes()), 0);
}

}  // namespace
}  // namespace st
