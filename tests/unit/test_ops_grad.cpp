// Every op's backward against central finite differences, in f64, on random shapes
// (odd sizes included). Objective: sum(out * W) for a random W, so dout = W.
#include <gtest/gtest.h>

#include <cmath>

#include "ops/activation.hpp"
#include "ops/attention.hpp"
#include "ops/embedding.hpp"
#include "ops/loss.hpp"
#include "ops/matmul.hpp"
#include "ops/norm.hpp"
#include "ops/optim.hpp"
#include "ops/rope.hpp"
#include "tests/common/gradcheck.hpp"

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
  test::GradCheckResult dq, dk, dv;
};

AttentionGrads attention_case(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, bool causal, bool padded,
                              uint64_t seed) {
  Rng rng(seed);
  AttentionShape s{B, T, Hq, Hkv, D, causal, 1.0 / std::sqrt(static_cast<double>(D))};
  Tensor q = random_f64({B * T, Hq * D}, rng), k = random_f64({B * T, Hkv * D}, rng), v = random_f64({B * T, Hkv * D}, rng);
  Tensor W = random_f64({B * T, Hq * D}, rng);
  Tensor lengths;
  if (padded) {
    lengths = Tensor::empty({B}, DType::i32);
    for (int64_t b = 0; b < B; ++b) lengths.ptr<int32_t>()[b] = static_cast<int32_t>(T - (b % 3));
  }
  Tensor out = Tensor::empty({B * T, Hq * D}, DType::f64), lse = Tensor::empty({B * T, Hq}, DType::f64);
  auto f = [&] { attention_forward(s, q, k, v, lengths, out, lse); return weighted_sum(out, W); };
  f();
  Tensor dq = Tensor::zeros(q.shape(), DType::f64), dk = Tensor::zeros(k.shape(), DType::f64), dv = Tensor::zeros(v.shape(), DType::f64);
  attention_backward(s, q, k, v, out, lse, W, lengths, dq, dk, dv);
  return {check_gradient(f, q, dq, 96), check_gradient(f, k, dk, 96), check_gradient(f, v, dv, 96)};
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

}  // namespace
}  // namespace st
