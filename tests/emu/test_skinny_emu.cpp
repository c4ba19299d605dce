// cuda/skinny.cu's kernels run on the CPU emulator (tests/emu/cuda_emu.hpp): each against an f64
// reference with the bounds of tests/gpu/test_cuda_skinny.cpp. expand_kernel and reduce_kernel
// (measured and tested on the H100) check the emulator itself; the pair, swiglu and rope kernels
// (session 14, not yet run on a GPU) are checked by it, index arithmetic, masking, shared-memory
// layout, fragment layouts and pipelines included. Shapes are small (the emulator runs every
// CUDA thread of a block as a std::thread) but keep the tails of the GPU tests.
#define ST_CUDA_EMU 1
#include "tests/emu/cuda_emu.hpp"
// clang-format off
#include "cuda/skinny.cu"
// clang-format on

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <string>
#include <vector>

namespace st::cuda {
namespace {

using bf16 = __nv_bfloat16;

// bf16-representable values in [-scale, scale) (a fixed seed per call site).
struct Mat {
  int64_t rows = 0, cols = 0;
  std::vector<bf16> b;
  std::vector<double> d;
  Mat(int64_t r, int64_t c, std::mt19937& rng, double scale = 1.0) : rows(r), cols(c) {
    std::uniform_real_distribution<float> u(-static_cast<float>(scale), static_cast<float>(scale));
    b.resize(static_cast<size_t>(r * c));
    d.resize(b.size());
    for (size_t i = 0; i < b.size(); ++i) {
      b[i] = __float2bfloat16(u(rng));
      d[i] = static_cast<double>(__bfloat162float(b[i]));
    }
  }
  double at(int64_t i, int64_t j) const { return d[static_cast<size_t>(i * cols + j)]; }
};

double bf(bf16 x) { return static_cast<double>(__bfloat162float(x)); }

// |got - ref| <= u |ref| + (1 + u) (K + 64) 2^-23 mag (+ extra u |ref| for a second rounding).
int64_t outside(const std::vector<double>& got, const std::vector<double>& ref, const std::vector<double>& mag, double u,
                int64_t K, const char* what, int roundings = 1) {
  const double gamma = static_cast<double>(K + 64) * std::ldexp(1.0, -23);
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double bound = roundings * u * std::fabs(ref[i]) + (1 + u) * gamma * mag[i] + 1e-30;
    if (!(std::fabs(got[i] - ref[i]) <= bound) && ++bad <= 3)
      ADD_FAILURE() << what << "[" << i << "] got " << got[i] << " want " << ref[i] << " bound " << bound;
  }
  return bad;
}

// expand: C[M, N] = alpha P W + beta Cin with P = xa^T [r, M] (PR), W = B [N, r] (NR): the
// forward LoRA update, as the GPU runs it (the emulator's check).
TEST(EmuSkinny, ExpandMatchesTheReference) {
  std::mt19937 rng(1);
  const int64_t M = 136, N = 264, r = 16;
  const Mat P(r, M, rng), W(N, r, rng), C0(M, N, rng, 4.0);
  std::vector<bf16> C = C0.b;
  ExpandArgs a{P.b.data(), W.b.data(), C.data(), C.data(), M, N, ceil_div(N, kExpBN), static_cast<int>(r), 2.0f, 1.0f};
  emu::launch(dim3(static_cast<unsigned>(ceil_div(M, kExpBM) * a.tiles_n)), dim3(kThreads),
              [&] { expand_kernel<16, true, true, bf16>(a); });
  std::vector<double> got(C.size()), ref(C.size()), mag(C.size());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      double s = 0, sa = 0;
      for (int64_t k = 0; k < r; ++k) {
        s += P.at(k, m) * W.at(n, k);
        sa += std::fabs(P.at(k, m) * W.at(n, k));
      }
      const size_t i = static_cast<size_t>(m * N + n);
      ref[i] = 2 * s + C0.d[i];
      mag[i] = 2 * sa + std::fabs(C0.d[i]);
      got[i] = bf(C[i]);
    }
  EXPECT_EQ(outside(got, ref, mag, std::ldexp(1.0, -8), r, "expand"), 0);
}

// reduce: dB(n, j) = sum_t dy[t, n] xa(t, j) in two token slices, then sum_splits_kernel (the
// emulator's check of ldmatrix .trans, the cp.async ring and the split sums).
TEST(EmuSkinny, ReduceAndSplitSumsMatchTheReference) {
  std::mt19937 rng(2);
  const int64_t T = 200, W = 264, r = 16;
  const Mat X(T, W, rng), P(r, T, rng), C0(W, r, rng);
  const int splits = 2;
  const int64_t rows_per_split = 128;
  std::vector<float> part(static_cast<size_t>(splits * W * r), NAN), C(C0.d.begin(), C0.d.end());
  ReduceArgs a{X.b.data(), P.b.data(), part.data(), T, W, rows_per_split, r, 1, W * r, static_cast<int>(r)};
  emu::launch(dim3(static_cast<unsigned>(ceil_div(W, kRedBN)), splits), dim3(kThreads),
              [&] { reduce_kernel<16, true>(a); });
  emu::launch(dim3(4), dim3(256), [&] { sum_splits_kernel<float>(part.data(), splits, W * r, C.data(), C.data(), 0.5f, 1.0f); });
  std::vector<double> got(C.size()), ref(C.size()), mag(C.size());
  for (int64_t n = 0; n < W; ++n)
    for (int64_t j = 0; j < r; ++j) {
      double s = 0, sa = 0;
      for (int64_t t = 0; t < T; ++t) {
        s += X.at(t, n) * P.at(j, t);
        sa += std::fabs(X.at(t, n) * P.at(j, t));
      }
      const size_t i = static_cast<size_t>(n * r + j);
      ref[i] = 0.5 * s + C0.d[i];
      mag[i] = 0.5 * sa + std::fabs(C0.d[i]);
      got[i] = C[i];
    }
  EXPECT_EQ(outside(got, ref, mag, std::ldexp(1.0, -24), T, "reduce"), 0);
}

// pair: dB += alpha dy^T xa and dxa = alpha dy B through skinny_pair_tiling's split, both
// layouts of xa and dxa, r 8, 16 and 24 (in 32), tails of tokens and columns.
TEST(EmuSkinny, PairMatchesTheReference) {
  struct Case {
    int64_t T, W, r;
    bool xa_t, dxa_t;
  };
  std::mt19937 rng(3);
  for (const Case& c : {Case{136, 264, 16, true, true}, Case{200, 1032, 8, false, false}, Case{72, 520, 24, true, false},
                        Case{64, 128, 32, false, true}}) {
    SCOPED_TRACE(str("T=", c.T, " W=", c.W, " r=", c.r, c.xa_t ? " xa^T" : " xa", c.dxa_t ? " dxa^T" : " dxa"));
    const int64_t T = c.T, W = c.W, r = c.r;
    const Mat dy(T, W, rng), xa(c.xa_t ? r : T, c.xa_t ? T : r, rng), B(W, r, rng), dB0(W, r, rng);
    const SkinnyPairTiling tl = skinny_pair_tiling(T, W, r);
    std::vector<float> scratch(static_cast<size_t>(tl.scratch_bytes / 4), NAN);
    float* part_b = scratch.data();
    float* part_d = part_b + tl.splits_t * W * r;
    const PairArgs a{dy.b.data(), xa.b.data(), B.b.data(), part_d, part_b, T, W, tl.tokens_per_split,
                     c.dxa_t ? 1 : r, c.dxa_t ? T : 1, static_cast<int>(r)};
    const dim3 grid(static_cast<unsigned>(tl.splits_n), static_cast<unsigned>(tl.splits_t));
    const int ri = r <= 8 ? 8 : r <= 16 ? 16 : 32;  // skinny.cu inst_r
    ASSERT_EQ(tl.cols_per_split, (ri <= 16 ? pair_nc<16>() : pair_nc<32>()) * kPairBN);
    emu::launch(grid, dim3(kThreads), [&] {
      if (ri == 8) c.xa_t ? pair_kernel<8, true>(a) : pair_kernel<8, false>(a);
      else if (ri == 16) c.xa_t ? pair_kernel<16, true>(a) : pair_kernel<16, false>(a);
      else c.xa_t ? pair_kernel<32, true>(a) : pair_kernel<32, false>(a);
    });
    std::vector<float> dB(dB0.d.begin(), dB0.d.end());
    std::vector<bf16> dxa(static_cast<size_t>(T * r), __float2bfloat16(NAN));
    const float alpha = 2.0f;
    emu::launch(dim3(4), dim3(256),
                [&] { sum_splits_kernel<float>(part_b, static_cast<int>(tl.splits_t), W * r, dB.data(), dB.data(), alpha, 1.0f); });
    emu::launch(dim3(4), dim3(256),
                [&] { sum_splits_kernel<bf16>(part_d, static_cast<int>(tl.splits_n), T * r, dxa.data(), nullptr, alpha, 0.0f); });
    auto xa_at = [&](int64_t t, int64_t j) { return c.xa_t ? xa.at(j, t) : xa.at(t, j); };
    std::vector<double> gb(dB.size()), rb(dB.size()), mb(dB.size());
    for (int64_t n = 0; n < W; ++n)
      for (int64_t j = 0; j < r; ++j) {
        double s = 0, sa = 0;
        for (int64_t t = 0; t < T; ++t) {
          s += dy.at(t, n) * xa_at(t, j);
          sa += std::fabs(dy.at(t, n) * xa_at(t, j));
        }
        const size_t i = static_cast<size_t>(n * r + j);
        rb[i] = alpha * s + dB0.d[i];
        mb[i] = alpha * sa + std::fabs(dB0.d[i]);
        gb[i] = dB[i];
      }
    EXPECT_EQ(outside(gb, rb, mb, std::ldexp(1.0, -24), T, "dB"), 0);
    std::vector<double> gd(dxa.size()), rd(dxa.size()), md(dxa.size());
    for (int64_t t = 0; t < T; ++t)
      for (int64_t j = 0; j < r; ++j) {
        double s = 0, sa = 0;
        for (int64_t n = 0; n < W; ++n) {
          s += dy.at(t, n) * B.at(n, j);
          sa += std::fabs(dy.at(t, n) * B.at(n, j));
        }
        const size_t i = static_cast<size_t>(c.dxa_t ? j * T + t : t * r + j);
        rd[i] = alpha * s;
        md[i] = alpha * sa;
        gd[i] = bf(dxa[i]);
      }
    EXPECT_EQ(outside(gd, rd, md, std::ldexp(1.0, -8), W, "dxa"), 0);
  }
}

// swiglu: forward h and backward dg, du with all three terms (and with some absent), against f64.
TEST(EmuSkinny, SwigluLoraMatchesTheReference) {
  struct Case {
    int64_t M, N, rg, ru, rd;
  };
  std::mt19937 rng(4);
  for (const Case& c : {Case{72, 136, 16, 16, 16}, Case{64, 264, 8, 0, 24}, Case{136, 128, 0, 16, 0}}) {
    SCOPED_TRACE(str("M=", c.M, " N=", c.N, " rg=", c.rg, " ru=", c.ru, " rd=", c.rd));
    const int64_t M = c.M, N = c.N;
    const Mat g(M, N, rng, 2.0), u(M, N, rng, 2.0), dh(M, N, rng);
    const int64_t rgx = std::max<int64_t>(c.rg, 8), rux = std::max<int64_t>(c.ru, 8), rdx = std::max<int64_t>(c.rd, 8);
    const Mat xg(rgx, M, rng), bg(N, rgx, rng), xu(rux, M, rng), bu(N, rux, rng), xd(M, rdx, rng, 0.25), bd(rdx, N, rng);
    const float sg = 2.0f, su = 0.5f, sd = 1.0f;
    std::vector<bf16> h(static_cast<size_t>(M * N), __float2bfloat16(NAN)), dg = h, du = h;
    SwigluLoraArgs a{};
    a.g = g.b.data();
    a.u = u.b.data();
    a.dh = dh.b.data();
    a.xg = c.rg ? xg.b.data() : nullptr;
    a.xu = c.ru ? xu.b.data() : nullptr;
    a.bg = c.rg ? bg.b.data() : nullptr;
    a.bu = c.ru ? bu.b.data() : nullptr;
    a.xd = c.rd ? xd.b.data() : nullptr;
    a.bd = c.rd ? bd.b.data() : nullptr;
    a.M = M;
    a.N = N;
    a.tiles_n = ceil_div(N, kExpBN);
    a.rg = static_cast<int>(c.rg);
    a.ru = static_cast<int>(c.ru);
    a.rd = 0;
    a.sg = sg;
    a.su = su;
    a.sd = sd;
    const int64_t rmax = std::max({c.rg, c.ru, c.rd});
    const dim3 grid(static_cast<unsigned>(ceil_div(M, kExpBM) * a.tiles_n));
    a.out0 = h.data();
    emu::launch(grid, dim3(kThreads), [&] {
      if (rmax <= 16) swiglu_lora_kernel<16, false>(a);
      else swiglu_lora_kernel<32, false>(a);
    });
    a.rd = static_cast<int>(c.rd);
    // dgate written over dh, as the Llama backward does (one buffer).
    std::vector<bf16> dh_dg(dh.b.begin(), dh.b.end());
    a.dh = dh_dg.data();
    a.out0 = dh_dg.data();
    a.out1 = du.data();
    emu::launch(grid, dim3(kThreads), [&] {
      if (rmax <= 16) swiglu_lora_kernel<16, true>(a);
      else swiglu_lora_kernel<32, true>(a);
    });
    dg = dh_dg;
    std::vector<double> gh(h.size()), rh(h.size()), gdg(h.size()), rdg(h.size()), gdu(h.size()), rdu(h.size()),
        bound(h.size());
    for (int64_t m = 0; m < M; ++m)
      for (int64_t n = 0; n < N; ++n) {
        double tg = 0, tu = 0, td = 0, ag = 0, au = 0, ad = 0;
        for (int64_t k = 0; k < c.rg; ++k) tg += xg.at(k, m) * bg.at(n, k), ag += std::fabs(xg.at(k, m) * bg.at(n, k));
        for (int64_t k = 0; k < c.ru; ++k) tu += xu.at(k, m) * bu.at(n, k), au += std::fabs(xu.at(k, m) * bu.at(n, k));
        for (int64_t k = 0; k < c.rd; ++k) td += xd.at(m, k) * bd.at(k, n), ad += std::fabs(xd.at(m, k) * bd.at(k, n));
        const size_t i = static_cast<size_t>(m * N + n);
        const double gp = g.d[i] + sg * tg, up = u.d[i] + su * tu, dp = dh.d[i] + sd * td;
        const double s = 1.0 / (1.0 + std::exp(-gp));
        rh[i] = gp * s * up;
        rdg[i] = dp * up * (s + gp * s * (1 - s));
        rdu[i] = dp * gp * s;
        gh[i] = bf(h[i]);
        gdg[i] = bf(dg[i]);
        gdu[i] = bf(du[i]);
        // The f32 sums, __expf and one rounding of dh' (backward) beside the outputs' rounding.
        bound[i] = 1e-5 * (1 + std::fabs(dh.d[i]) + sd * ad) * (1 + std::fabs(g.d[i]) + sg * ag) *
                   (1 + std::fabs(u.d[i]) + su * au);
      }
    auto check = [&](const std::vector<double>& got, const std::vector<double>& ref, int roundings, const char* what) {
      int64_t bad = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        const double b = roundings * std::ldexp(1.0, -8) * std::fabs(ref[i]) + bound[i];
        if (!(std::fabs(got[i] - ref[i]) <= b) && ++bad <= 3)
          ADD_FAILURE() << what << "[" << i / N << "," << i % N << "] got " << got[i] << " want " << ref[i];
      }
      EXPECT_EQ(bad, 0) << what;
    };
    check(gh, rh, 1, "h");
    check(gdg, rdg, c.rd ? 2 : 1, "dgate");
    check(gdu, rdu, c.rd ? 2 : 1, "dup");
  }
}

// expand + RoPE: C = rope(C + alpha xa^T^T B^T) per head of D columns, positions m % T or given.
TEST(EmuSkinny, ExpandRopeMatchesTheReference) {
  struct Case {
    int64_t M, heads, D, r;
    bool positions;
  };
  std::mt19937 rng(5);
  for (const Case& c : {Case{80, 2, 64, 16, false}, Case{72, 4, 32, 8, true}, Case{64, 1, 128, 16, false}}) {
    SCOPED_TRACE(str("M=", c.M, " heads=", c.heads, " D=", c.D, " r=", c.r, c.positions ? " positions" : ""));
    const int64_t M = c.M, N = c.heads * c.D, r = c.r, T = 40, half = c.D / 2;
    const Mat P(r, M, rng), W(N, r, rng), C0(M, N, rng, 4.0);
    std::vector<int32_t> pos(static_cast<size_t>(M));
    for (int64_t m = 0; m < M; ++m) pos[static_cast<size_t>(m)] = static_cast<int32_t>((m * 5) % 97);
    const int64_t npos = 128;
    std::vector<float> cs(static_cast<size_t>(npos * half)), sn(cs.size());
    for (int64_t p = 0; p < npos; ++p)
      for (int64_t k = 0; k < half; ++k) {
        const double inv = std::pow(10000.0, -2.0 * static_cast<double>(k) / static_cast<double>(c.D));
        cs[static_cast<size_t>(p * half + k)] = static_cast<float>(std::cos(static_cast<double>(p) * inv));
        sn[static_cast<size_t>(p * half + k)] = static_cast<float>(std::sin(static_cast<double>(p) * inv));
      }
    std::vector<bf16> C = C0.b;
    ExpandArgs a{P.b.data(), W.b.data(), C.data(), C.data(), M, N, ceil_div(N, kExpBN), static_cast<int>(r), 2.0f, 1.0f};
    a.rope_cos = cs.data();
    a.rope_sin = sn.data();
    a.rope_pos = c.positions ? pos.data() : nullptr;
    a.rope_T = T;
    a.rope_D = static_cast<int>(c.D);
    emu::launch(dim3(static_cast<unsigned>(ceil_div(M, kExpBM) * a.tiles_n)), dim3(kThreads),
                [&] { expand_kernel<16, true, true, bf16, true>(a); });
    std::vector<double> got(C.size()), ref(C.size()), mag(C.size());
    for (int64_t m = 0; m < M; ++m) {
      const int64_t p = c.positions ? pos[static_cast<size_t>(m)] : m % T;
      std::vector<double> y(static_cast<size_t>(N)), ym(static_cast<size_t>(N));
      for (int64_t n = 0; n < N; ++n) {
        double s = 0, sa = 0;
        for (int64_t k = 0; k < r; ++k) s += P.at(k, m) * W.at(n, k), sa += std::fabs(P.at(k, m) * W.at(n, k));
        y[static_cast<size_t>(n)] = C0.at(m, n) + 2 * s;
        ym[static_cast<size_t>(n)] = std::fabs(C0.at(m, n)) + 2 * sa;
      }
      for (int64_t h0 = 0; h0 < N; h0 += c.D)
        for (int64_t k = 0; k < half; ++k) {
          const double co = cs[static_cast<size_t>(p * half + k)], si = sn[static_cast<size_t>(p * half + k)];
          const double x1 = y[static_cast<size_t>(h0 + k)], x2 = y[static_cast<size_t>(h0 + k + half)];
          const size_t i1 = static_cast<size_t>(m * N + h0 + k), i2 = i1 + static_cast<size_t>(half);
          ref[i1] = x1 * co - x2 * si;
          ref[i2] = x2 * co + x1 * si;
          mag[i1] = mag[i2] = ym[static_cast<size_t>(h0 + k)] + ym[static_cast<size_t>(h0 + k + half)];
          got[i1] = bf(C[i1]);
          got[i2] = bf(C[i2]);
        }
    }
    // Two roundings: the sum into the bf16 tile (u of each of the pair's values, carried through
    // the rotation: u mag), then the rotation's (u |ref|); the f32 sums (gamma mag).
    const double u = std::ldexp(1.0, -8), gamma = static_cast<double>(r + 64) * std::ldexp(1.0, -23);
    int64_t bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const double bound = u * mag[i] + u * std::fabs(ref[i]) + (1 + u) * gamma * mag[i];
      if (!(std::fabs(got[i] - ref[i]) <= bound) && ++bad <= 3)
        ADD_FAILURE() << "rope[" << i << "] got " << got[i] << " want " << ref[i] << " bound " << bound;
    }
    EXPECT_EQ(bad, 0);
  }
}

}  // namespace
}  // namespace st::cuda
