// One LoRA-adapted bf16 linear on the GPU against the same layer on the CPU in f64 (the same bf16
// values of W, A, B and the inputs), in every output mode the models use (issue 20: the rank-r
// update runs first and the base GEMM adds into it with beta = 1): y written (over NaN, so a
// read of y's old content would show), accumulated, or residual + product (the rank-r GEMM reads
// the residual, a C distinct from its output); dx written (over NaN) and accumulated; dA and dB;
// without and with LoRA dropout (the same counter-based mask on both devices). And a group of
// adapters that read the same input, run together.
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

// Three adapted bf16 linears that read the same input (q, k, v of a block: outputs 160, 64, 64;
// ranks 16, 8, 16) joined into one LoRA group (one x A^T = A_cat x^T, one dx = dxa_cat^T A_cat,
// one dA_cat += dxa_cat x; the per-member products in their transposed layouts), on the GPU
// against the same group on the CPU in f64: outputs written over NaN, dx written then
// accumulated, dA and dB; with the members' factors adjacent (as joined) and apart (the stage
// copy and the per-member dA additions, as under ZeRO-3).
TEST(CudaLora, GroupedAdaptersMatchTheCpu) {
  ST_REQUIRE_GPU();
  const int64_t M = 72, in = 64;  // M: a multiple of 8 (a grouped call)
  const int64_t outs[3] = {160, 64, 64}, ranks[3] = {16, 8, 16};
  const char* names[3] = {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                          "model.layers.0.self_attn.v_proj"};
  for (bool apart : {false, true}) {
    SCOPED_TRACE(apart ? "factors apart" : "factors adjacent");
    Rng rng(72);
    Linear gl[3], cl[3];
    for (int i = 0; i < 3; ++i) {
      test::make_linear_pair(random_bf16_values({outs[i], in}, rng, 0.2), gl[i], cl[i]);
      gl[i].name = cl[i].name = names[i];
      LoraConfig lc;
      lc.r = ranks[i];
      lc.alpha = 32;
      auto ga = std::make_unique<LoraAdapter>(gl[i], lc, M, 5);
      auto ca = std::make_unique<LoraAdapter>(cl[i], lc, M, 5);
      fill_normal(ga->B, 6 + static_cast<uint64_t>(i), 0.0, 0.2);
      ga->sync_working();
      ca->A.copy_from(ga->A_work.to_cpu(DType::f64));
      ca->B.copy_from(ga->B_work.to_cpu(DType::f64));
      gl[i].adapter = std::move(ga);
      cl[i].adapter = std::move(ca);
    }
    ASSERT_EQ(lora_join_groups({{&gl[0], &gl[1], &gl[2]}}), 1);
    ASSERT_EQ(lora_join_groups({{&cl[0], &cl[1], &cl[2]}}), 1);
    auto* g0 = static_cast<LoraAdapter*>(gl[0].adapter.get());
    ASSERT_TRUE(g0->group);
    if (apart)
      for (Linear& l : gl) {
        auto* a = static_cast<LoraAdapter*>(l.adapter.get());
        a->A_work = a->A_work.clone(MemCategory::weights);
        a->dA = a->dA.clone(MemCategory::gradients);
      }
    const Tensor x = random_bf16_values({M, in}, rng), dx_prior = random_bf16_values({M, in}, rng);
    const Tensor gx = to_device(x, DType::bf16);
    Tensor dys[3], gdys[3], gys[3], cys[3];
    for (int i = 0; i < 3; ++i) {
      dys[i] = random_bf16_values({M, outs[i]}, rng, 0.1);
      gdys[i] = to_device(dys[i], DType::bf16);
      gys[i] = nan_device({M, outs[i]});
      cys[i] = Tensor::empty({M, outs[i]}, DType::f64);
    }
    LayerContext ctx;
    ctx.training = true;
    linear_group_forward({&gl[0], &gl[1], &gl[2]}, gx, {&gys[0], &gys[1], &gys[2]}, ctx);
    linear_group_forward({&cl[0], &cl[1], &cl[2]}, x, {&cys[0], &cys[1], &cys[2]}, ctx);
    for (int i = 0; i < 3; ++i) EXPECT_LT(rel_l2(gys[i], cys[i]), kBf16Tol) << "y of " << names[i];
    Tensor gdx = nan_device({M, in}), cdx = Tensor::empty({M, in}, DType::f64);
    linear_group_backward({&gl[0], &gl[1], &gl[2]}, gx, {&gdys[0], &gdys[1], &gdys[2]}, &gdx, ctx, false);
    linear_group_backward({&cl[0], &cl[1], &cl[2]}, x, {&dys[0], &dys[1], &dys[2]}, &cdx, ctx, false);
    EXPECT_LT(rel_l2(gdx, cdx), kBf16Tol) << "dx = sum of dy W + lora";
    gdx = to_device(dx_prior, DType::bf16);
    cdx = dx_prior.clone(MemCategory::other);
    linear_group_backward({&gl[0], &gl[1], &gl[2]}, gx, {&gdys[0], &gdys[1], &gdys[2]}, &gdx, ctx, true);
    linear_group_backward({&cl[0], &cl[1], &cl[2]}, x, {&dys[0], &dys[1], &dys[2]}, &cdx, ctx, true);
    EXPECT_LT(rel_l2(gdx, cdx), kBf16Tol) << "dx += sum of dy W + lora";
    for (int i = 0; i < 3; ++i) {
      const auto* g = static_cast<LoraAdapter*>(gl[i].adapter.get());
      const auto* c = static_cast<LoraAdapter*>(cl[i].adapter.get());
      EXPECT_LT(rel_l2(g->dA, c->dA), kBf16Tol) << "dA of " << names[i];
      EXPECT_LT(rel_l2(g->dB, c->dB), kBf16Tol) << "dB of " << names[i];
    }
  }
}

}  // namespace
}  // namespace st
