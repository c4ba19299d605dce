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

#include <algorithm>
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
// The errors of one case against the f64 op: the worst relative norm over out, dq, dk and dv,
// and the largest lse difference.
struct Errors {
  double worst = 0, lse = 0;
  std::string what;  // the case and each tensor's error
};

// The split backward's f32 dK and dV sums (zeroed, as launch_backward's memset) and their fold
// into the bf16 outputs (accumulate_f32_into_bf16, scale 1: the kernel scaled them); hsplit 1: none.
struct SplitSums {
  int hsplit;
  std::vector<float> k, v;
  SplitSums(int split, size_t n) : hsplit(split), k(split > 1 ? n : 0, 0.0f), v(split > 1 ? n : 0, 0.0f) {}
  float* dk() { return hsplit > 1 ? k.data() : nullptr; }
  float* dv() { return hsplit > 1 ? v.data() : nullptr; }
  void fold(std::vector<bf16>& dk_out, std::vector<bf16>& dv_out) {
    if (hsplit <= 1) return;
    const int64_t n = static_cast<int64_t>(k.size());
    emu::launch(dim3(4), dim3(256), [&] { accumulate_f32_into_bf16(k.data(), dk_out.data(), n, 1.0f, false, n % 4 == 0); });
    emu::launch(dim3(4), dim3(256), [&] { accumulate_f32_into_bf16(v.data(), dv_out.data(), n, 1.0f, false, n % 4 == 0); });
  }
};

// KW: the backward's key warps (8: blocks of 128 keys, SHARDTUNE_ATTN_BWD_KEYS=128); MT: the
// forward's m16 tiles a warp (2: blocks of 128 queries, SHARDTUNE_ATTN_FWD_ROWS=128).
template <int DP, int KW = 4, int MT = 1>
Errors run_case(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, uint32_t seed, bool rope = false) {
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
  emu::launch(dim3(static_cast<unsigned>(ceil_div(T, kTile * MT)), static_cast<unsigned>(Hq), static_cast<unsigned>(B)),
              dim3(kThreads), [&] {
                attention_forward_kernel<DP, false, false, false, MT>(q.b.data(), k.b.data(), v.b.data(), nullptr,
                                                                      nullptr, out.data(), lse.data(), nullptr, T, T,
                                                                      Hq, Hkv, D, scale, 0.0f, true);
              });
  Errors e;
  for (size_t i = 0; i < lse.size(); ++i) e.lse = std::max(e.lse, std::fabs(lse[i] - lse_ref.ptr<double>()[i]));

  // Backward: D and the zeroed dQ sums, the kernel, then the fold (as launch_backward).
  const int64_t rows = B * T * Hq;
  std::vector<float> delta(static_cast<size_t>(rows), NAN), dq_acc(static_cast<size_t>(rows * D), NAN);
  emu::launch(dim3(static_cast<unsigned>(ceil_div(rows * 32, 256))), dim3(256), [&] {
    attention_delta_kernel(dout.b.data(), out.data(), delta.data(), dq_acc.data(), B, T, Hq, D, D % 4 == 0);
  });
  std::vector<bf16> dq(q.b.size(), __float2bfloat16(NAN)), dk(k.b.size(), __float2bfloat16(NAN)), dv = dk;
  // GQA with an even group: two blocks a KV head, each over half its query heads (as launch_backward).
  const int hsplit = attention_head_split_shape(s, false);
  SplitSums sums(hsplit, k.b.size());
  emu::launch(dim3(static_cast<unsigned>(ceil_div(T, KW * 16)), static_cast<unsigned>(Hkv * hsplit),
                   static_cast<unsigned>(B)),
              dim3(KW * 32), [&] {
                attention_backward_kernel<DP, false, false, false, KW>(
                    q.b.data(), k.b.data(), v.b.data(), dout.b.data(), lse.data(), delta.data(), nullptr, nullptr,
                    nullptr, dq_acc.data(), dk.data(), dv.data(), nullptr, T, T, Hq, Hkv, D, scale, 0.0f, true, false,
                    rope_cos, rope_sin, nullptr, rope ? T : 0, sums.dk(), sums.dv(), hsplit);
              });
  sums.fold(dk, dv);
  const int64_t n = rows * D;
  if (rope)
    emu::launch(dim3(4), dim3(256), [&] {
      fold_dq_rope(dq_acc.data(), dq.data(), rows, Hq, T, static_cast<int>(D), scale, rope_cos, rope_sin, nullptr);
    });
  else
    emu::launch(dim3(4), dim3(256),
                [&] { accumulate_f32_into_bf16(dq_acc.data(), dq.data(), n, scale, false, n % 4 == 0); });
  // bf16 outputs and bf16 P and dS for the MMAs: about 2^-9 relative in the norm (2.5e-3 seen).
  const double eo = rel_err(out, out_ref), eq = rel_err(dq, dq_ref), ek = rel_err(dk, dk_ref), ev = rel_err(dv, dv_ref);
  e.worst = std::max({eo, eq, ek, ev});
  e.what = str("B=", B, " T=", T, " Hq=", Hq, " Hkv=", Hkv, " D=", D, rope ? " rope" : "", " queries a forward block ",
               kTile * MT, " keys a backward block ", KW * 16,
               ": out ", eo, ", dq ", eq, ", dk ", ek, ", dv ", ev, ", lse ", e.lse);
  std::printf("[attention emu] %s (relative to the f64 op)\n", e.what.c_str());
  return e;
}

TEST(EmuAttention, BatchedCausalMatchesTheCpuOp) {
  for (const Errors& e : {run_case<64>(2, 80, 4, 2, 64, 11), run_case<128>(1, 80, 2, 2, 128, 12)}) {
    EXPECT_LT(e.worst, 6e-3) << e.what;
    EXPECT_LT(e.lse, 1e-4) << e.what;
  }
}

// The 128-key backward (opt-in, D 64 or 128): T = 200 gives a full and a partial block of 128 keys, and
// query tiles that see only part of a block (the causal diagonal over two 64-query tiles).
TEST(EmuAttention, Backward128KeysMatchesTheCpuOp) {
  for (const Errors& e : {run_case<128, 8>(1, 200, 4, 2, 128, 15),
                          run_case<64, 8>(1, 136, 4, 1, 64, 17),  // GQA (a group of 4) at D 64, as the 1B
                          run_case<128, 8>(2, 136, 2, 2, 128, 16, true),
                          run_case<64, 8>(2, 136, 4, 2, 64, 19, true)}) {  // split with RoPE, batch 2
    EXPECT_LT(e.worst, 6e-3) << e.what;
    EXPECT_LT(e.lse, 1e-4) << e.what;
  }
}

// The forward in blocks of 128 queries (opt-in, D 64 or 128), its out and lse then through the
// backward: T = 80 (one block, rows past T), T = 200 (a second block whose upper half of rows is
// past T, and whose warps' first m-tiles see none of the last key tile), GQA at D 64 as the 1B.
TEST(EmuAttention, Forward128RowsMatchesTheCpuOp) {
  for (const Errors& e : {run_case<64, 4, 2>(2, 80, 4, 2, 64, 31), run_case<128, 4, 2>(1, 200, 2, 2, 128, 32),
                          run_case<64, 4, 2>(1, 200, 8, 2, 64, 33)}) {
    EXPECT_LT(e.worst, 6e-3) << e.what;
    EXPECT_LT(e.lse, 1e-4) << e.what;
  }
}

TEST(EmuAttention, BackwardWithRopeMatchesTheCpuOp) {
  for (const Errors& e : {run_case<64>(1, 72, 2, 1, 64, 13, true), run_case<128>(1, 64, 2, 2, 128, 14, true),
                          run_case<128>(2, 72, 8, 2, 128, 18, true)}) {  // a group of 4 (split) with RoPE
    EXPECT_LT(e.worst, 6e-3) << e.what;
    EXPECT_LT(e.lse, 1e-4) << e.what;
  }
}


// Varlen (sequence packing): one stream of N tokens cut into segments (one of them with fewer
// keys than queries), the tile table as attention_segments_finish writes it, against the CPU op.
TEST(EmuAttention, VarlenMatchesTheCpuOp) {
  const int64_t Hq = 4, Hkv = 2, D = 64;
  const std::vector<int32_t> cu = {0, 70, 75, 200}, nk = {70, 3, 125};
  const int64_t N = cu.back(), S = static_cast<int64_t>(nk.size());
  std::mt19937 rng(21);
  const Buf q({N, Hq * D}, rng, 1.0), k({N, Hkv * D}, rng, 1.0), v({N, Hkv * D}, rng, 1.0), dout({N, Hq * D}, rng, 1.0);
  Tensor cu_t = Tensor::empty({S + 1}, DType::i32), nk_t = Tensor::empty({S}, DType::i32);
  for (int64_t i = 0; i <= S; ++i) cu_t.ptr<int32_t>()[i] = cu[static_cast<size_t>(i)];
  for (int64_t i = 0; i < S; ++i) nk_t.ptr<int32_t>()[i] = nk[static_cast<size_t>(i)];
  Tensor tiles = Tensor::empty({4 * attention_max_tiles(N, S)}, DType::i32);
  AttentionSegments seg;
  attention_segments_finish(seg, cu_t, nk_t, tiles);
  AttentionShape s;
  s.B = 1;
  s.T = N;
  s.Hq = Hq;
  s.Hkv = Hkv;
  s.D = D;
  s.causal = true;
  const float scale = 0.125f;
  s.scale = scale;
  Tensor out_ref = Tensor::empty({N, Hq * D}, DType::f64), lse_ref = Tensor::empty({Hq, N}, DType::f64);
  st::attention_varlen_forward(s, q.f64, k.f64, v.f64, seg, out_ref, lse_ref);
  Tensor dq_ref = Tensor::zeros({N, Hq * D}, DType::f64), dk_ref = Tensor::zeros({N, Hkv * D}, DType::f64);
  Tensor dv_ref = Tensor::zeros({N, Hkv * D}, DType::f64);
  st::attention_varlen_backward(s, q.f64, k.f64, v.f64, out_ref, lse_ref, dout.f64, seg, dq_ref, dk_ref, dv_ref, false);

  const int32_t* tt = tiles.ptr<int32_t>();
  std::vector<bf16> out(q.b.size(), __float2bfloat16(NAN));
  std::vector<float> lse(static_cast<size_t>(Hq * N), NAN);
  emu::launch(dim3(static_cast<unsigned>(seg.n_tiles), static_cast<unsigned>(Hq)), dim3(kThreads), [&] {
    attention_forward_kernel<64, false, false, true>(q.b.data(), k.b.data(), v.b.data(), nullptr, nullptr, out.data(),
                                                     lse.data(), tt, N, N, Hq, Hkv, D, scale, 0.0f, true);
  });
  EXPECT_LT(rel_err(out, out_ref), 6e-3) << "out";
  const int64_t rows = N * Hq;
  std::vector<float> delta(static_cast<size_t>(rows), NAN), dq_acc(static_cast<size_t>(rows * D), NAN);
  emu::launch(dim3(static_cast<unsigned>(ceil_div(rows * 32, 256))), dim3(256), [&] {
    attention_delta_kernel(dout.b.data(), out.data(), delta.data(), dq_acc.data(), 1, N, Hq, D, true);
  });
  std::vector<bf16> dq(q.b.size(), __float2bfloat16(NAN)), dk(k.b.size(), __float2bfloat16(NAN)), dv = dk;
  const int hsplit = attention_head_split_shape(s, false);
  EXPECT_EQ(hsplit, 2);  // a group of 2: the split path
  SplitSums sums(hsplit, k.b.size());
  emu::launch(dim3(static_cast<unsigned>(seg.n_tiles), static_cast<unsigned>(Hkv * hsplit)), dim3(kThreads), [&] {
    attention_backward_kernel<64, false, false, true>(q.b.data(), k.b.data(), v.b.data(), dout.b.data(), lse.data(),
                                                      delta.data(), nullptr, nullptr, nullptr, dq_acc.data(), dk.data(),
                                                      dv.data(), tt, N, N, Hq, Hkv, D, scale, 0.0f, true, false, nullptr,
                                                      nullptr, nullptr, 0, sums.dk(), sums.dv(), hsplit);
  });
  sums.fold(dk, dv);
  emu::launch(dim3(4), dim3(256), [&] { accumulate_f32_into_bf16(dq_acc.data(), dq.data(), rows * D, scale, false, true); });
  EXPECT_LT(rel_err(dq, dq_ref), 6e-3) << "dq";
  EXPECT_LT(rel_err(dk, dk_ref), 6e-3) << "dk";
  EXPECT_LT(rel_err(dv, dv_ref), 6e-3) << "dv";
}

// T5's kinds: an additive bias (f32 [Hq, T, Tk]) with its gradient (f32 atomics), not causal, in
// self-attention (key padding by lengths) and in cross-attention (Tk != T).
TEST(EmuAttention, BiasAndCrossMatchTheCpuOp) {
  for (const bool cross : {false, true}) {
    const int64_t B = 2, T = 72, Tk = cross ? 40 : T, H = 2, D = 64;
    SCOPED_TRACE(cross ? "cross" : "self");
    std::mt19937 rng(cross ? 31 : 32);
    const Buf q({B, T, H, D}, rng, 1.0), k({B, Tk, H, D}, rng, 1.0), v({B, Tk, H, D}, rng, 1.0), dout({B, T, H, D}, rng, 1.0);
    Tensor bias = Tensor::empty({H, T, Tk}, DType::f64);
    std::vector<float> bias_f(static_cast<size_t>(H * T * Tk));
    std::uniform_real_distribution<float> ub(-1.0f, 1.0f);
    for (size_t i = 0; i < bias_f.size(); ++i) bias.ptr<double>()[i] = bias_f[i] = ub(rng);
    std::vector<int32_t> lengths = {static_cast<int32_t>(Tk), static_cast<int32_t>(Tk - 9)};
    Tensor len_t = Tensor::empty({B}, DType::i32);
    for (int64_t b = 0; b < B; ++b) len_t.ptr<int32_t>()[b] = lengths[static_cast<size_t>(b)];
    AttentionShape s;
    s.B = B;
    s.T = T;
    s.Hq = H;
    s.Hkv = H;
    s.D = D;
    s.causal = false;
    s.scale = 1.0;
    s.Tk = cross ? Tk : 0;
    Tensor out_ref = Tensor::empty({B, T, H, D}, DType::f64), lse_ref = Tensor::empty({B, H, T}, DType::f64);
    st::attention_forward(s, q.f64, k.f64, v.f64, len_t, out_ref, lse_ref, bias);
    Tensor dq_ref = Tensor::zeros({B, T, H, D}, DType::f64), dk_ref = Tensor::zeros({B, Tk, H, D}, DType::f64);
    Tensor dv_ref = Tensor::zeros({B, Tk, H, D}, DType::f64), db_ref = Tensor::zeros({H, T, Tk}, DType::f64);
    st::attention_backward(s, q.f64, k.f64, v.f64, out_ref, lse_ref, dout.f64, len_t, dq_ref, dk_ref, dv_ref, false, bias,
                           &db_ref);
    std::vector<bf16> out(q.b.size(), __float2bfloat16(NAN));
    std::vector<float> lse(static_cast<size_t>(B * H * T), NAN);
    auto fwd = [&] {
      if (cross)
        attention_forward_kernel<64, true, true, false>(q.b.data(), k.b.data(), v.b.data(), lengths.data(), bias_f.data(),
                                                        out.data(), lse.data(), nullptr, T, Tk, H, H, D, 1.0f, 1.0f, false);
      else
        attention_forward_kernel<64, true, false, false>(q.b.data(), k.b.data(), v.b.data(), lengths.data(), bias_f.data(),
                                                         out.data(), lse.data(), nullptr, T, Tk, H, H, D, 1.0f, 1.0f, false);
    };
    emu::launch(dim3(static_cast<unsigned>(ceil_div(T, kTile)), static_cast<unsigned>(H), static_cast<unsigned>(B)),
                dim3(kThreads), fwd);
    EXPECT_LT(rel_err(out, out_ref), 6e-3) << "out";
    const int64_t rows = B * T * H;
    std::vector<float> delta(static_cast<size_t>(rows), NAN), dq_acc(static_cast<size_t>(rows * D), NAN);
    std::vector<float> dbias(bias_f.size(), 0.0f);
    emu::launch(dim3(static_cast<unsigned>(ceil_div(rows * 32, 256))), dim3(256), [&] {
      attention_delta_kernel(dout.b.data(), out.data(), delta.data(), dq_acc.data(), B, T, H, D, true);
    });
    std::vector<bf16> dq(q.b.size(), __float2bfloat16(NAN)), dk(k.b.size(), __float2bfloat16(NAN)), dv = dk;
    auto bwd = [&] {
      if (cross)
        attention_backward_kernel<64, true, true, false>(q.b.data(), k.b.data(), v.b.data(), dout.b.data(), lse.data(),
                                                         delta.data(), lengths.data(), bias_f.data(), dbias.data(),
                                                         dq_acc.data(), dk.data(), dv.data(), nullptr, T, Tk, H, H, D, 1.0f,
                                                         1.0f, false, false, nullptr, nullptr, nullptr, 0, nullptr, nullptr, 1);
      else
        attention_backward_kernel<64, true, false, false>(q.b.data(), k.b.data(), v.b.data(), dout.b.data(), lse.data(),
                                                          delta.data(), lengths.data(), bias_f.data(), dbias.data(),
                                                          dq_acc.data(), dk.data(), dv.data(), nullptr, T, Tk, H, H, D, 1.0f,
                                                          1.0f, false, false, nullptr, nullptr, nullptr, 0, nullptr, nullptr, 1);
    };
    emu::launch(dim3(static_cast<unsigned>(ceil_div(Tk, kTile)), static_cast<unsigned>(H), static_cast<unsigned>(B)),
                dim3(kThreads), bwd);
    emu::launch(dim3(4), dim3(256), [&] { accumulate_f32_into_bf16(dq_acc.data(), dq.data(), rows * D, 1.0f, false, true); });
    EXPECT_LT(rel_err(dq, dq_ref), 6e-3) << "dq";
    EXPECT_LT(rel_err(dk, dk_ref), 6e-3) << "dk";
    EXPECT_LT(rel_err(dv, dv_ref), 6e-3) << "dv";
    double num = 0, den = 0;
    for (size_t i = 0; i < dbias.size(); ++i) {
      const double d = dbias[i] - db_ref.ptr<double>()[i];
      num += d * d;
      den += db_ref.ptr<double>()[i] * db_ref.ptr<double>()[i];
    }
    EXPECT_LT(std::sqrt(num / std::max(den, 1e-300)), 6e-3) << "dbias";
  }
}

}  // namespace
}  // namespace st::cuda
