// Benchmark of the flash-attention kernels (cuda/attention.cu) through ops/attention, disabled:
//   build/tests/gpu_tests --gtest_also_run_disabled_tests --gtest_filter='CudaAttentionBench.*'
// Causal bf16 self-attention at the training shapes of Llama 7B (Hq = Hkv = 32, D = 128) and 1B
// (Hq = 32, Hkv = 4, D = 64), batch 8 x 1024 tokens, batched and as 8 packed documents of 1024
// (varlen, the kernels of packed training). Each call is timed alone with cudaEvents
// (median of ATTN_BENCH_RUNS, default 20, after 3 untimed); the backward includes its D =
// rowsum(dO O) kernel, the dQ accumulator's zeroing and its fold into bf16. TFLOP/s count the
// causal half: forward 4 B T T / 2 Hq D, backward 2.5 times that (as ops/attention counts
// them). The numbers are printed; the test fails only on a CUDA error or a result
// that is not finite.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "ops/attention.hpp"
#include "ops/init.hpp"
#include "tests/gpu/event_timing.hpp"
#include "tests/gpu/gpu_util.hpp"
#ifdef SHARDTUNE_CUDA
#include <cuda_runtime.h>
#endif

namespace st {
namespace {

TEST(CudaAttentionBench, DISABLED_TrainingShapes) {
  ST_REQUIRE_GPU();
#ifdef SHARDTUNE_CUDA
  struct BenchCase {
    const char* name;
    int64_t B, T, Hq, Hkv, D;
  };
  const BenchCase cases[] = {{"7B", 8, 1024, 32, 32, 128}, {"1B", 8, 1024, 32, 4, 64}};
  const int runs = test::bench_runs("ATTN_BENCH_RUNS", 20);
  cudaDeviceProp prop{};
  int dev = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaGetDeviceProperties(&prop, dev), cudaSuccess);
  std::printf("[attn] %s, %d SMs; causal bf16, median of %d runs after 3 untimed\n", prop.name,
              prop.multiProcessorCount, runs);
  std::printf("[attn] %-4s %-32s %10s %8s %10s %8s\n", "case", "shape", "fwd ms", "TFLOP/s", "bwd ms", "TFLOP/s");
  uint64_t key = 1;
  for (const BenchCase& c : cases) {
    AttentionShape s{c.B, c.T, c.Hq, c.Hkv, c.D, true, 1.0 / std::sqrt(static_cast<double>(c.D))};
    const int64_t BT = c.B * c.T;
    Tensor q = Tensor::empty({BT, c.Hq * c.D}, DType::bf16, Device::cuda);
    Tensor k = Tensor::empty({BT, c.Hkv * c.D}, DType::bf16, Device::cuda);
    Tensor v = Tensor::empty({BT, c.Hkv * c.D}, DType::bf16, Device::cuda);
    Tensor dout = Tensor::empty({BT, c.Hq * c.D}, DType::bf16, Device::cuda);
    fill_uniform(q, key++, -2.0, 2.0);
    fill_uniform(k, key++, -2.0, 2.0);
    fill_uniform(v, key++, -1.0, 1.0);
    fill_uniform(dout, key++, -1.0, 1.0);
    Tensor out = Tensor::empty({BT, c.Hq * c.D}, DType::bf16, Device::cuda);
    Tensor lse = Tensor::empty({BT, c.Hq}, DType::f32, Device::cuda);
    Tensor dq = Tensor::empty(q.shape(), DType::bf16, Device::cuda), dk = Tensor::empty(k.shape(), DType::bf16, Device::cuda);
    Tensor dv = Tensor::empty(v.shape(), DType::bf16, Device::cuda);
    const Tensor no_lengths;
    auto fwd = [&] { attention_forward(s, q, k, v, no_lengths, out, lse); };
    auto bwd = [&] { attention_backward(s, q, k, v, out, lse, dout, no_lengths, dq, dk, dv, false); };
    auto time_ms = [&](auto&& call) {
      return test::median_event_ms(runs, [](int) {}, [&] { call(); return true; });
    };
    const double f_ms = time_ms(fwd);
    const double b_ms = time_ms(bwd);
    // The same tokens as B documents of T in one packed stream (the varlen kernels training runs
    // when the loader hands segments over).
    const int64_t N = BT;
    Tensor cu = Tensor::empty({c.B + 1}, DType::i32), keys = Tensor::empty({c.B}, DType::i32);
    for (int64_t b = 0; b <= c.B; ++b) cu.ptr<int32_t>()[b] = static_cast<int32_t>(b * c.T);
    for (int64_t b = 0; b < c.B; ++b) keys.ptr<int32_t>()[b] = static_cast<int32_t>(c.T);
    Tensor tiles_host = Tensor::empty({4 * attention_max_tiles(N, c.B)}, DType::i32);
    AttentionSegments seg;
    attention_segments_finish(seg, cu, keys, tiles_host);
    seg.tiles = Tensor::empty({4 * seg.n_tiles}, DType::i32, Device::cuda);
    seg.tiles.copy_from(tiles_host.slice(0, 4 * seg.n_tiles));
    AttentionShape vs{1, N, c.Hq, c.Hkv, c.D, true, s.scale};
    Tensor vlse = Tensor::empty({c.Hq, N}, DType::f32, Device::cuda);
    const double vf_ms = time_ms([&] { attention_varlen_forward(vs, q, k, v, seg, out, vlse); });
    const double vb_ms = time_ms([&] { attention_varlen_backward(vs, q, k, v, out, vlse, dout, seg, dq, dk, dv, false); });
    ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    const double flops = 4.0 * static_cast<double>(c.B) * static_cast<double>(c.T) * static_cast<double>(c.T) / 2.0 *
                         static_cast<double>(c.Hq) * static_cast<double>(c.D);  // causal: half of 4 B T T Hq D
    const std::string shape = str("B=", c.B, " T=", c.T, " Hq=", c.Hq, " Hkv=", c.Hkv, " D=", c.D);
    std::printf("[attn] %-4s %-32s %10.3f %8.1f %10.3f %8.1f\n", c.name, shape.c_str(), f_ms, flops / f_ms / 1e9, b_ms,
                2.5 * flops / b_ms / 1e9);
    std::printf("[attn] %-4s %-32s %10.3f %8.1f %10.3f %8.1f\n", c.name, "  varlen: the same as B documents", vf_ms,
                flops / vf_ms / 1e9, vb_ms, 2.5 * flops / vb_ms / 1e9);
    // Sanity: finite results (a crashed or mis-launched kernel would leave garbage or NaN).
    for (const Tensor* t : {&out, &dq, &dk, &dv}) {
      const Tensor h = t->to_cpu(DType::f32);
      bool finite = true;
      for (int64_t i = 0; i < h.numel() && finite; ++i) finite = std::isfinite(h.ptr<float>()[i]);
      EXPECT_TRUE(finite) << c.name;
    }
  }
#endif
}

}  // namespace
}  // namespace st
