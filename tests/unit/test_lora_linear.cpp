// One LoRA-adapted linear in every output mode the models use (issue 20: the adapter runs before
// the base GEMM, which adds into what the adapter wrote): y written, accumulated, or a residual
// plus the product; dx written or accumulated; without and with LoRA dropout; on a dense and on
// an FP8 base. Each result is checked against its terms computed one by one in f64: the base
// alone (the same layer with its adapter detached, so an FP8 base quantizes exactly as in the
// adapted call) plus the LoRA product, plus y's or dx's prior content or the residual.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <utility>
#include <vector>

#include "adapters/lora.hpp"
#include "model/fp8_base.hpp"
#include "model/linear.hpp"
#include "ops/activation.hpp"
#include "ops/init.hpp"
#include "ops/matmul.hpp"

namespace st {
namespace {

Tensor normal(const Shape& s, uint64_t key, double std) {
  Tensor t = Tensor::empty(s, DType::f64);
  fill_normal(t, key, 0.0, std);
  return t;
}

// a + b (+ c): a new tensor.
Tensor sum(const Tensor& a, const Tensor& b, const Tensor* c = nullptr) {
  Tensor out = a.clone(MemCategory::other);
  for (int64_t i = 0; i < out.numel(); ++i)
    out.ptr<double>()[i] += b.ptr<double>()[i] + (c ? c->ptr<double>()[i] : 0.0);
  return out;
}

// f64 sums of a few terms in another order: relative rounding ~1e-16 of the largest term.
void expect_close(const Tensor& got, const Tensor& want, const char* what) {
  ASSERT_EQ(got.numel(), want.numel()) << what;
  for (int64_t i = 0; i < got.numel(); ++i) {
    const double g = got.ptr<double>()[i], w = want.ptr<double>()[i];
    ASSERT_NEAR(g, w, 1e-12 * (1.0 + std::fabs(w))) << what << " at " << i;
  }
}

TEST(LoraLinear, EveryOutputModeEqualsTheSumOfItsTerms) {
  const int64_t M = 5, in = 16, out = 32;  // FP8 GEMMs need multiples of 16
  for (bool fp8 : {false, true})
    for (double p : {0.0, 0.3}) {
      SCOPED_TRACE(std::string(fp8 ? "fp8 base" : "dense base") + (p > 0 ? ", dropout" : ""));
      Linear l;
      l.name = "model.layers.0.mlp.up_proj";
      l.in = in;
      l.out = out;
      l.weight = normal({out, in}, 1, 0.5);
      LoraConfig lc;
      lc.r = 3;
      lc.alpha = 6;
      lc.dropout = p;
      auto owned = std::make_unique<LoraAdapter>(l, lc, M, 7);
      LoraAdapter& ad = *owned;
      fill_uniform(ad.B, 11, -0.3, 0.3);  // B starts at zero: make the adapter count (f64: no working copy)
      l.adapter = std::move(owned);
      if (fp8) {
        ASSERT_EQ(fp8_convert_base({&l}, M, "test"), 1);
      }
      Tensor scratch = Tensor::empty({M * std::max(in, out)}, DType::f64);
      LayerContext ctx;
      ctx.training = true;
      ctx.dropout_seed = 42;
      ctx.scratch = &scratch;

      const Tensor x = normal({M, in}, 2, 1.0), prior = normal({M, out}, 3, 1.0), res = normal({M, out}, 4, 1.0);
      const Tensor dy = normal({M, out}, 5, 0.5), dx_prior = normal({M, in}, 6, 1.0);
      // The terms: the base alone (adapter detached), and scale * dropout(x) A^T B^T.
      std::unique_ptr<LinearAdapter> detached = std::move(l.adapter);
      Tensor base = Tensor::empty({M, out}, DType::f64), dx_base = Tensor::empty({M, in}, DType::f64);
      linear_layer_forward(l, x, base, false, ctx);
      linear_layer_backward(l, x, dy, &dx_base, ctx, false);
      l.adapter = std::move(detached);
      Tensor xd = x.clone(MemCategory::other);
      if (p > 0) dropout_apply(x, xd, p, ctx.dropout_seed, ad.stream, false);
      Tensor xa = Tensor::empty({M, lc.r}, DType::f64), lora = Tensor::empty({M, out}, DType::f64);
      matmul(xa, xd, false, ad.A, true);
      matmul(lora, xa, false, ad.B, true, ad.scale);
      // Its input gradient dropout'(scale (dy B) A) and its parameter gradients.
      Tensor dxa = Tensor::empty({M, lc.r}, DType::f64), dx_lora = Tensor::empty({M, in}, DType::f64);
      matmul(dxa, dy, false, ad.B, false, ad.scale);
      matmul(dx_lora, dxa, false, ad.A, false);
      if (p > 0) dropout_apply(dx_lora.clone(MemCategory::other), dx_lora, p, ctx.dropout_seed, ad.stream, false);
      Tensor dA = Tensor::zeros(ad.A.shape(), DType::f64), dB = Tensor::zeros(ad.B.shape(), DType::f64);
      matmul(dA, dxa, true, xd, false);
      matmul(dB, dy, true, xa, false, ad.scale);

      Tensor y = prior.clone(MemCategory::other);
      linear_layer_forward(l, x, y, false, ctx);
      expect_close(y, sum(base, lora), "y = x W^T + lora");
      y = prior.clone(MemCategory::other);
      linear_layer_forward(l, x, y, true, ctx);
      expect_close(y, sum(prior, base, &lora), "y += x W^T + lora");
      y = prior.clone(MemCategory::other);
      linear_layer_forward(l, x, y, true, ctx, &res);  // a residual replaces y's prior content
      expect_close(y, sum(res, base, &lora), "y = residual + x W^T + lora");

      Tensor dx = dx_prior.clone(MemCategory::other);
      ad.dA.zero_();
      ad.dB.zero_();
      linear_layer_backward(l, x, dy, &dx, ctx, false);
      expect_close(dx, sum(dx_base, dx_lora), "dx = dy W + lora");
      expect_close(ad.dA, dA, "dA");
      expect_close(ad.dB, dB, "dB");
      dx = dx_prior.clone(MemCategory::other);
      linear_layer_backward(l, x, dy, &dx, ctx, true);
      expect_close(dx, sum(dx_prior, dx_base, &dx_lora), "dx += dy W + lora");
      linear_layer_backward(l, x, dy, nullptr, ctx, true);  // no input gradient: parameters only
      expect_close(ad.dB, sum(dB, dB, &dB), "dB after three backward calls");
    }
}

}  // namespace
}  // namespace st
