// cuda/attention.cu's batched causal kernels (the forward, D = rowsum(dO O), the backward with its
// dQ f32 sums and the fold into dq) on the CPU emulator (tests/emu/cuda_emu.hpp), against the CPU
// op in f64 on the same bf16 inputs. The kernels run their sm_90 code (double-buffered query
// tiles, 16-byte dQ reductions, dQ passes of 64 columns). This is the H100-tested attention: the
// test checks the emulator on the largest kernels, and gives kernel work done without a GPU a
// test to run. Small shapes: B 2, T 80 (a tail tile), GQA at D = 64 and D = 128.
#define ST_CUDA_EMU 1
#include "tests/emu/cuda_emu.hpp"
// clang-format off
#include "cuda/attention.cu"
// clang-format on

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "ops/attention.hpp"
#include "ops/rope.hpp"

namespace st::cuda {
namespace {

using bf16 = __nv_bfloat16;

struct Buf {
  std::vector<bf16> b;
  Tensor f64;  // the same values, f64 CPU
  Buf(const Shape& s, std::mt19937& rng, double scale) : f64(Tensor::empty(s, DType::f64)) {
    std::uniform_real_distribution<float> u(-static_cast<float>(scale), static_cast<float>(scale));
    b.resize(static_cast<size_t>(f64.numel()));
    for (size_t i = 0; i < b.size(); ++i) {
      b[i] = __float2bfloat16(u(rng));
      f64.ptr<double>()[i] = static_cast<double>(__bfloat162float(b[i]));
    }
  }
};

double rel_err(const std::vector<bf16>& got, const Tensor& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = static_cast<double>(__bfloat162float(got[i])) - ref.ptr<double>()[i];
    num += d * d;
    den += ref.ptr<double>()[i] * ref.ptr<double>()[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

// rope: the backward's fused inverse rotary embedding (dK in the kernel's epilogue, dQ in
// fold_dq_rope) against the CPU op's rope_backward after the attention backward.
// KW: the backward's key warps (8: blocks of 128 keys, SHARDTUNE_ATTN_BWD_KEYS=128).
template <int DP, int KW = 4>
void run_case(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, uint32_t seed, bool rope = false) {
  SCOPED_TRACE(str("B=", B, " T=", T, " Hq=", Hq, " Hkv=", Hkv, " D=", D, rope ? " rope" : "", " keys a block ", KW * 16));
  std::mt19937 rng(seed);
  const Buf q({B, T, Hq, D}, rng, 1.0), k({B, T, Hkv, D}, rng, 1.0), v({B, T, Hkv, D}, rng, 1.0);
  const Buf dout({B, T, Hq, D}, rng, 1.0);
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
  // CPU reference (f64).
  AttentionShape s;
  s.B = B;
  s.T = T;
  s.Hq = Hq;
  s.Hkv = Hkv;
  s.D = D;
  s.causal = true;
  s.scale = scale;
  Tensor out_ref = Tensor::empty({B, T, Hq, D}, DType::f64), lse_ref = Tensor::empty({B, Hq, T}, DType::f64);
  st::attention_forward(s, q.f64, k.f64, v.f64, Tensor(), out_ref, lse_ref);
  Tensor dq_ref = Tensor::zeros({B, T, Hq, D}, DType::f64), dk_ref = Tensor::zeros({B, T, Hkv, D}, DType::f64);
  Tensor dv_ref = Tensor::zeros({B, T, Hkv, D}, DType::f64);
  const RopeTables tables = rope_tables(T, D, 10000.0, Device::cpu);
  const AttentionRope arope{&tables, Tensor()};
  st::attention_backward(s, q.f64, k.f64, v.f64, out_ref, lse_ref, dout.f64, Tensor(), dq_ref, dk_ref, dv_ref, false,
                         Tensor(), nullptr, rope ? &arope : nullptr);
  const float* rope_cos = rope ? tables.cos.ptr<float>() : nullptr;
  const float* rope_sin = rope ? tables.sin.ptr<float>() : nullptr;

  // Forward on the emulator.
  std::vector<bf16> out(q.b.size(), __float2bfloat16(NAN));
  std::vector<float> lse(static_cast<size_t>(B * Hq * T), NAN);
  emu::launch(dim3(static_cast<unsigned>(ceil_div(T, kTile)), static_cast<unsigned>(Hq), static_cast<unsigned>(B)),
              dim3(kThreads), [&] {
                attention_forward_kernel<DP, false, false, false>(q.b.data(), k.b.data(), v.b.data(), nullptr, nullptr,
                                                                  out.data(), lse.data(), nullptr, T, T, Hq, Hkv, D,
                                                                  scale, 0.0f, true);
              });
  EXPECT_LT(rel_err(out, out_ref), 6e-3) << "out";
  double lse_worst = 0;
  for (size_t i = 0; i < lse.size(); ++i) lse_worst = std::max(lse_worst, std::fabs(lse[i] - lse_ref.ptr<double>()[i]));
  EXPECT_LT(lse_worst, 1e-4) << "lse";

  // Backward: D and the zeroed dQ sums, the kernel, then the fold (as launch_backward).
  const int64_t rows = B * T * Hq;
  std::vector<float> delta(static_cast<size_t>(rows), NAN), dq_acc(static_cast<size_t>(rows * D), NAN);
  emu::launch(dim3(static_cast<unsigned>(ceil_div(rows * 32, 256))), dim3(256), [&] {
    attention_delta_kernel(dout.b.data(), out.data(), delta.data(), dq_acc.data(), B, T, Hq, D, D % 4 == 0);
  });
  std::vector<bf16> dq(q.b.size(), __float2bfloat16(NAN)), dk(k.b.size(), __float2bfloat16(NAN)), dv = dk;
  emu::launch(dim3(static_cast<unsigned>(ceil_div(T, KW * 16)), static_cast<unsigned>(Hkv), static_cast<unsigned>(B)),
              dim3(KW * 32), [&] {
                attention_backward_kernel<DP, false, false, false, KW>(
                    q.b.data(), k.b.data(), v.b.data(), dout.b.data(), lse.data(), delta.data(), nullptr, nullptr,
                    nullptr, dq_acc.data(), dk.data(), dv.data(), nullptr, T, T, Hq, Hkv, D, scale, 0.0f, true, false,
                    rope_cos, rope_sin, nullptr, rope ? T : 0);
              });
  const int64_t n = rows * D;
  if (rope)
    emu::launch(dim3(4), dim3(256), [&] {
      fold_dq_rope(dq_acc.data(), dq.data(), rows, Hq, T, static_cast<int>(D), scale, rope_cos, rope_sin, nullptr);
    });
  else
    emu::launch(dim3(4), dim3(256),
                [&] { accumulate_f32_into_bf16(dq_acc.data(), dq.data(), n, scale, false, n % 4 == 0); });
  // bf16 outputs and bf16 P and dS for the MMAs: about 2^-9 relative in the norm (2.5e-3 seen).
  EXPECT_LT(rel_err(dq, dq_ref), 6e-3) << "dq";
  EXPECT_LT(rel_err(dk, dk_ref), 6e-3) << "dk";
  EXPECT_LT(rel_err(dv, dv_ref), 6e-3) << "dv";
  std::printf("[attention emu] D=%ld: out %.2e, dq %.2e, dk %.2e, dv %.2e (relative to the f64 op)\n",
              static_cast<long>(D), rel_err(out, out_ref), rel_err(dq, dq_ref), rel_err(dk, dk_ref),
              rel_err(dv, dv_ref));
}

TEST(EmuAttention, BatchedCausalMatchesTheCpuOp) {
  run_case<64>(2, 80, 4, 2, 64, 11);
  run_case<128>(1, 80, 2, 2, 128, 12);
}

// The 128-key backward (opt-in, D 64 or 128): T = 200 gives a full and a partial block of 128 keys, and
// query tiles that see only part of a block (the causal diagonal over two 64-query tiles).
TEST(EmuAttention, Backward128KeysMatchesTheCpuOp) {
  run_case<128, 8>(1, 200, 4, 2, 128, 15);
  run_case<64, 8>(1, 136, 4, 1, 64, 17);  // GQA (a group of 4) at D 64, as the 1B
  run_case<128, 8>(2, 136, 2, 2, 128, 16, true);
}

TEST(EmuAttention, BackwardWithRopeMatchesTheCpuOp) {
  run_case<64>(1, 72, 2, 1, 64, 13, true);
  run_case<128>(1, 64, 2, 2, 128, 14, true);
}

}  // namespace
}  // namespace st::cuda
