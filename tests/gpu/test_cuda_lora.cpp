// One LoRA-adapted bf16 linear on the GPU against the same layer on the CPU in f64 (the same bf16
// values of W, A, B and the inputs), in every output mode the models use (issue 20: the rank-r
// update runs first and the base GEMM adds into it with beta = 1): y written (over NaN, so a
// read of y's old content would show), accumulated, or residual + product (the rank-r GEMM reads
// the residual, a C distinct from its output); dx written (over NaN) and accumulated; dA and dB;
// without and with LoRA dropout (the same counter-based mask on both devices).
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>
#include <memory>
#include <utility>

#include "adapters/lora.hpp"
#include "model/linear.hpp"
#include "ops/init.hpp"
#include "tests/gpu/gpu_util.hpp"

namespace st {
namespace {

using test::kBf16Tol;
using test::random_bf16_values;
using test::rel_l2;
using test::to_device;

Tensor nan_device(const Shape& s) {
  Tensor t = Tensor::empty(s, DType::f64);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<double>()[i] = std::numeric_limits<double>::quiet_NaN();
  return to_device(t, DType::bf16);
}

TEST(CudaLora, AdaptedLinearInEveryOutputModeMatchesTheCpu) {
  ST_REQUIRE_GPU();
  const int64_t M = 70, in = 64, out = 160;
  for (double p : {0.0, 0.25}) {
    SCOPED_TRACE(p > 0 ? "dropout" : "no dropout");
    Rng rng(71);
    const Tensor w = random_bf16_values({out, in}, rng, 0.2);
    const Tensor x = random_bf16_values({M, in}, rng), prior = random_bf16_values({M, out}, rng);
    const Tensor res = random_bf16_values({M, out}, rng), dy = random_bf16_values({M, out}, rng, 0.1);
    const Tensor dx_prior = random_bf16_values({M, in}, rng);
    Linear gl, cl;
    test::make_linear_pair(w, gl, cl);
    LoraConfig lc;
    lc.r = 16;
    lc.alpha = 32;
    lc.dropout = p;
    auto ga = std::make_unique<LoraAdapter>(gl, lc, M, 5);
    auto ca = std::make_unique<LoraAdapter>(cl, lc, M, 5);
    fill_normal(ga->B, 6, 0.0, 0.2);  // B starts at zero: make the adapter's term as large as the base's
    ga->sync_working();
    ca->A.copy_from(ga->A_work.to_cpu(DType::f64));  // the CPU runs on the GPU's bf16 working copies
    ca->B.copy_from(ga->B_work.to_cpu(DType::f64));
    LoraAdapter &g = *ga, &c = *ca;
    gl.adapter = std::move(ga);
    cl.adapter = std::move(ca);
    Tensor gscratch = Tensor::empty({M * std::max(in, out)}, DType::bf16, Device::cuda);
    Tensor cscratch = Tensor::empty({M * std::max(in, out)}, DType::f64);
    LayerContext gctx, cctx;
    for (auto [ctx, s] : {std::pair{&gctx, &gscratch}, std::pair{&cctx, &cscratch}}) {
      ctx->training = true;
      ctx->dropout_seed = 4321;
      ctx->scratch = s;
    }
    const Tensor gx = to_device(x, DType::bf16), gres = to_device(res, DType::bf16), gdy = to_device(dy, DType::bf16);

    // Forward: written, accumulated, residual.
    Tensor gy = nan_device({M, out}), cy = prior.clone(MemCategory::other);
    linear_layer_forward(gl, gx, gy, false, gctx);
    linear_layer_forward(cl, x, cy, false, cctx);
    EXPECT_LT(rel_l2(gy, cy), kBf16Tol) << "y = x W^T + lora";
    gy = to_device(prior, DType::bf16);
    cy = prior.clone(MemCategory::other);
    linear_layer_forward(gl, gx, gy, true, gctx);
    linear_layer_forward(cl, x, cy, true, cctx);
    EXPECT_LT(rel_l2(gy, cy), kBf16Tol) << "y += x W^T + lora";
    gy = nan_device({M, out});
    linear_layer_forward(gl, gx, gy, false, gctx, &gres);
    linear_layer_forward(cl, x, cy, false, cctx, &res);
    EXPECT_LT(rel_l2(gy, cy), kBf16Tol) << "y = residual + x W^T + lora";

    // Backward: dx written then accumulated; dA and dB (f32 on the GPU) over both calls.
    Tensor gdx = nan_device({M, in}), cdx = Tensor::empty({M, in}, DType::f64);
    linear_layer_backward(gl, gx, gdy, &gdx, gctx, false);
    linear_layer_backward(cl, x, dy, &cdx, cctx, false);
    EXPECT_LT(rel_l2(gdx, cdx), kBf16Tol) << "dx = dy W + lora";
    gdx = to_device(dx_prior, DType::bf16);
    cdx = dx_prior.clone(MemCategory::other);
    linear_layer_backward(gl, gx, gdy, &gdx, gctx, true);
    linear_layer_backward(cl, x, dy, &cdx, cctx, true);
    EXPECT_LT(rel_l2(gdx, cdx), kBf16Tol) << "dx += dy W + lora";
    EXPECT_LT(rel_l2(g.dA, c.dA), kBf16Tol) << "dA";
    EXPECT_LT(rel_l2(g.dB, c.dB), kBf16Tol) << "dB";
  }
}

}  // namespace
}  // namespace st
