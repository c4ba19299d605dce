// The skinny-GEMM kernels (cuda/skinny.cu: LoRA's rank-r products) against the CPU f64 reference
// on bf16-representable inputs, element by element, in every transposition of the three kinds,
// with tails (rows, columns and tokens that are not multiples of the tiles or token slices),
// beta = 0 (C filled with NaN: never read), beta = 1 and a residual C_in, bf16 and f32 outputs.
// Then the dispatch (SHARDTUNE_SKINNY=custom through ops/matmul) on LoRA's calls, and a
// benchmark against cuBLASLt (disabled: run with --gtest_also_run_disabled_tests).
//
// Bound per element (products of bf16 values are exact in f32; each f32 addition rounds once,
// the tensor cores' accumulation at most one f32 ulp per addition): with P = alpha sum_k a_k b_k,
// mag = |alpha| sum_k |a_k b_k| + |beta| |cin| and at most K + 64 additions (the products, the
// token slices, beta cin),
//   |gpu - ref| <= u |ref| + (1 + u) (K + 64) 2^-23 mag
// where u is the output's rounding (2^-8 for bf16: 8 significant bits, round to nearest; 2^-24
// for f32). The first term is the output rounding, the second the f32 accumulation.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <string>
#include <vector>

#include "ops/activation.hpp"
#include "ops/init.hpp"
#include "ops/matmul.hpp"
#include "tests/gpu/event_timing.hpp"
#include "tests/gpu/gpu_util.hpp"
#ifdef SHARDTUNE_CUDA
#include <cuda_runtime.h>

#include "cuda/matmul.cuh"
#endif

namespace st {
namespace {

#ifdef SHARDTUNE_CUDA
using test::random_bf16_values;
using test::to_device;

struct Case {
  int64_t M, N, K;
  bool ta, tb;
};

std::string case_name(const Case& c) {
  return str(c.M, "x", c.N, "x", c.K, c.ta ? " A^T" : "", c.tb ? " B^T" : "");
}

Tensor abs_of(const Tensor& t) {
  Tensor a = t.clone(MemCategory::other);
  for (int64_t i = 0; i < a.numel(); ++i) a.ptr<double>()[i] = std::fabs(a.ptr<double>()[i]);
  return a;
}

Tensor nan_like(const Shape& s, DType dt) {
  Tensor t = Tensor::empty(s, DType::f64);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<double>()[i] = std::numeric_limits<double>::quiet_NaN();
  return to_device(t, dt);
}

// One shape's operands, its exact product P = op(A) op(B) and magnitude |op(A)| |op(B)| (f64).
struct Operands {
  Case c;
  Tensor A, B, C0, R0, prod, absprod;
  Operands(const Case& cs, Rng& rng) : c(cs) {
    A = random_bf16_values(c.ta ? Shape{c.K, c.M} : Shape{c.M, c.K}, rng);
    B = random_bf16_values(c.tb ? Shape{c.N, c.K} : Shape{c.K, c.N}, rng);
    C0 = random_bf16_values({c.M, c.N}, rng);
    R0 = random_bf16_values({c.M, c.N}, rng);
    prod = Tensor::empty({c.M, c.N}, DType::f64);
    absprod = Tensor::empty({c.M, c.N}, DType::f64);
    matmul(prod, A, c.ta, B, c.tb, 1.0, 0.0);
    matmul(absprod, abs_of(A), c.ta, abs_of(B), c.tb, 1.0, 0.0);
  }
};

// Elements of the GPU result `got` outside the bound; the first few are described in `why`.
// product_rounding: the result may also carry a rounding of alpha op(A) op(B) to C's type before
// beta C is added (cuBLASLt does so with a bf16 C: measured on the H100, 296x72x264 B^T beta = 1 came
// out 1.02x over the one-rounding bound), so the bound gains u |alpha P|.
int64_t count_outside(const Operands& o, const Tensor& got, double alpha, double beta, bool residual, DType cdt,
                      std::string* why, double* worst, bool product_rounding = false) {
  const Tensor g = got.to_cpu(DType::f64);
  const Tensor& cin = residual ? o.R0 : o.C0;
  const double u = cdt == DType::bf16 ? std::ldexp(1.0, -8) : std::ldexp(1.0, -24);
  const double gamma = static_cast<double>(o.c.K + 64) * std::ldexp(1.0, -23);
  int64_t bad = 0;
  *worst = 0;
  for (int64_t i = 0; i < g.numel(); ++i) {
    const double c = beta != 0.0 ? cin.ptr<double>()[i] : 0.0;
    const double ref = alpha * o.prod.ptr<double>()[i] + beta * c;
    const double mag = std::fabs(alpha) * o.absprod.ptr<double>()[i] + std::fabs(beta) * std::fabs(c);
    const double bound = u * std::fabs(ref) + (1 + u) * gamma * mag +
                         (product_rounding ? u * std::fabs(alpha * o.prod.ptr<double>()[i]) : 0.0) + 1e-300;
    const double err = std::fabs(g.ptr<double>()[i] - ref);
    if (!(err <= bound)) {
      if (++bad <= 3)
        *why += str(" [", i / o.c.N, ",", i % o.c.N, "] got ", g.ptr<double>()[i], " want ", ref, " bound ", bound, ";");
      *worst = INFINITY;
    } else {
      *worst = std::max(*worst, err / bound);
    }
  }
  return bad;
}

// Every output mode of one shape: bf16 and f32 C; beta 0 (C NaN), 1 (C read), 1 with a residual
// C_in (C NaN). via_matmul: through ops/matmul with SHARDTUNE_SKINNY=custom forced; else the kernels'
// entry point, which must take the call. by_cublaslt: a declined call (cuBLASLt's rounding bound).
void check_all_modes(const Operands& o, double alpha, bool via_matmul, bool by_cublaslt = false) {
  const Case& c = o.c;
  const Tensor dA = to_device(o.A, DType::bf16), dB = to_device(o.B, DType::bf16);
  for (DType cdt : {DType::bf16, DType::f32})
    for (int mode = 0; mode < 3; ++mode) {
      const double beta = mode == 0 ? 0.0 : 1.0;
      const bool residual = mode == 2;
      Tensor dC = mode == 1 ? to_device(o.C0, cdt) : nan_like({c.M, c.N}, cdt);
      Tensor dR = residual ? to_device(o.R0, cdt) : Tensor();
      const std::string name =
          str(case_name(c), " ", dtype_name(cdt), mode == 0 ? " beta=0" : mode == 1 ? " beta=1" : " residual");
      if (via_matmul) {
        matmul(dC, dA, c.ta, dB, c.tb, alpha, beta, residual ? &dR : nullptr);
      } else {
        ASSERT_TRUE(cuda::skinny_matmul(dC, dA, c.ta, dB, c.tb, alpha, beta, c.M, c.N, c.K, residual ? &dR : nullptr))
            << name << ": the skinny kernels did not take the call";
      }
      std::string why;
      double worst = 0;
      EXPECT_EQ(count_outside(o, dC, alpha, beta, residual, cdt, &why, &worst, by_cublaslt), 0) << name << ":" << why;
      if (worst > 0.25) std::printf("[skinny] %s: worst error %.2f of the bound\n", name.c_str(), worst);
    }
}

void check_cases(const std::vector<Case>& cases, uint64_t seed) {
  Rng rng(seed);
  for (const Case& c : cases) {
    const Operands o(c, rng);
    check_all_modes(o, 2.0, false);
  }
}

// Forces the custom kinds for a scope.
struct KindsGuard {
  explicit KindsGuard(unsigned kinds) { cuda::set_skinny_kinds(kinds); }
  ~KindsGuard() { cuda::clear_skinny_kinds(); }
};
#endif

// expand: K = r (y = s xa B^T, dx = dxa A). Tails: M not a multiple of 64, N not of 128; r = 8, 24,
// 40 padded with zeros to 16, 32, 64; ta needs M % 8 == 0 (A is [r, M]).
TEST(CudaOps, SkinnyExpandEveryTransposeAndTail) {
  ST_REQUIRE_GPU();
#ifdef SHARDTUNE_CUDA
  check_cases({{1000, 1000, 16, false, false}, {77, 136, 8, false, true}, {1000, 264, 24, true, false},
               {200, 4104, 64, true, true}, {9, 8, 8, false, false}, {136, 392, 40, true, true},
               {64, 128, 48, false, false}, {1, 72, 32, false, true}},
              101);
#endif
}

// thin: C[rows, r] with rows along the streamed operand's rows. N = r with A not transposed
// (xa = x A^T, dxa = dy B), M = r with B transposed (xa^T = A x^T, dxa^T = B^T dy^T). Tails: rows
// not a multiple of 32 / 64, K not a multiple of the 128-column stage (K = 8: one vector).
TEST(CudaOps, SkinnyThinEveryTransposeAndTail) {
  ST_REQUIRE_GPU();
#ifdef SHARDTUNE_CUDA
  check_cases({{1000, 16, 1000, false, true}, {77, 8, 4104, false, false}, {1000, 24, 264, false, true},
               {130, 64, 2056, false, false}, {1, 16, 72, false, true}, {33, 40, 136, false, false},
               {16, 1000, 1000, false, true}, {8, 77, 4104, true, true}, {40, 1000, 264, false, true},
               {64, 130, 2056, true, true}, {32, 65, 72, true, true}},
              102);
#endif
}

// reduce: a sum over K (tokens) into C[r, wide] (dA = dxa^T x; dA = dxa^T-layout x) or C[wide, r]
// (dB = dy^T xa). Tails: wide not a multiple of 128, tokens not a multiple of the 64-token stage
// or of the slices (K = 8200 over few column tiles: many slices, the last one short).
TEST(CudaOps, SkinnyReduceEveryTransposeAndTail) {
  ST_REQUIRE_GPU();
#ifdef SHARDTUNE_CUDA
  check_cases({{1000, 16, 1000, true, false}, {136, 8, 77, true, false}, {4104, 24, 264, true, true},
               {1000, 64, 2056, true, false}, {264, 40, 8200, true, true}, {8, 16, 3, true, false},
               {16, 1000, 1000, true, false}, {8, 136, 77, true, false}, {24, 4104, 264, false, false},
               {64, 1000, 2056, false, false}, {40, 264, 8200, true, false}, {32, 8, 1, true, false}},
              103);
#endif
}

// The split sums run in a fixed order: two runs give the same bits.
TEST(CudaOps, SkinnyReduceIsDeterministic) {
  ST_REQUIRE_GPU();
#ifdef SHARDTUNE_CUDA
  Rng rng(104);
  const int64_t T = 4000, D = 1000, r = 16;
  const Tensor x = to_device(random_bf16_values({T, D}, rng), DType::bf16);
  const Tensor p = to_device(random_bf16_values({T, r}, rng), DType::bf16);
  Tensor c1 = Tensor::zeros({r, D}, DType::f32, Device::cuda), c2 = Tensor::zeros({r, D}, DType::f32, Device::cuda);
  ASSERT_TRUE(cuda::skinny_matmul(c1, p, true, x, false, 1.0, 1.0, r, D, T));
  ASSERT_TRUE(cuda::skinny_matmul(c2, p, true, x, false, 1.0, 1.0, r, D, T));
  const Tensor h1 = c1.to_cpu(DType::f32), h2 = c2.to_cpu(DType::f32);
  for (int64_t i = 0; i < h1.numel(); ++i) ASSERT_EQ(h1.ptr<float>()[i], h2.ptr<float>()[i]) << i;
#endif
}

// ops/matmul with SHARDTUNE_SKINNY=custom on LoRA's calls (src/adapters/lora.cpp), in the [M, r]
// xa layout and the transposed [r, M] one, plus calls the kernels decline (K or a row length not
// a multiple of 8, r > 64): those go to cuBLASLt and must still be right.
TEST(CudaOps, SkinnyDispatchLoraCallsAndFallbacks) {
  ST_REQUIRE_GPU();
#ifdef SHARDTUNE_CUDA
  KindsGuard guard(cuda::kSkinnyAll);
  const int64_t T = 296, in = 264, out = 392, r = 16;
  const std::vector<Case> lora = {
      {T, r, in, false, true},    // xa = x A^T
      {T, out, r, false, true},   // y (+)= s xa B^T
      {out, r, T, true, false},   // dB += s dy^T xa
      {T, r, out, false, false},  // dxa = s dy B
      {T, in, r, false, false},   // dx (+)= dxa A
      {r, in, T, true, false},    // dA += dxa^T x
      {out, in, r, false, false}, // merge: W += s B A
      {r, T, in, false, true},    // xa^T = A x^T
      {T, out, r, true, true},    // y += s (xa^T)^T B^T
      {out, r, T, true, true},    // dB += s dy^T (xa^T)^T
      {r, T, out, true, true},    // dxa^T = s B^T dy^T
      {T, in, r, true, false},    // dx += (dxa^T)^T A
      {r, in, T, false, false},   // dA += dxa^T x
  };
  Rng rng(105);
  for (const Case& c : lora) {
    const Operands o(c, rng);
    check_all_modes(o, 2.0, true);
  }
  // Declined by the kernels (cuBLASLt runs them): K % 8 != 0 for thin, r = 12, r = 72, N % 8 != 0 for expand.
  const std::vector<Case> declined = {{T, 16, 261, false, true}, {T, 12, in, false, true}, {T, 72, in, false, true},
                                      {T, 261, 16, false, false}};
  for (const Case& c : declined) {
    const Operands o(c, rng);
    Tensor dC = Tensor::empty({c.M, c.N}, DType::bf16, Device::cuda);
    const Tensor dA = to_device(o.A, DType::bf16), dB = to_device(o.B, DType::bf16);
    EXPECT_FALSE(cuda::skinny_matmul(dC, dA, c.ta, dB, c.tb, 1.0, 0.0, c.M, c.N, c.K)) << case_name(c);
    check_all_modes(o, 0.5, true, true);
  }
  // A kind left out of the mask (SHARDTUNE_SKINNY=thin,reduce) is declined: expand here.
  {
    const Case c{T, out, r, false, true};
    const Operands o(c, rng);
    Tensor dC = Tensor::empty({c.M, c.N}, DType::bf16, Device::cuda);
    const Tensor dA = to_device(o.A, DType::bf16), dB = to_device(o.B, DType::bf16);
    EXPECT_FALSE(cuda::skinny_matmul(dC, dA, c.ta, dB, c.tb, 1.0, 0.0, c.M, c.N, c.K, nullptr,
                                     cuda::kSkinnyThin | cuda::kSkinnyReduce));
    EXPECT_TRUE(cuda::skinny_matmul(dC, dA, c.ta, dB, c.tb, 1.0, 0.0, c.M, c.N, c.K, nullptr, cuda::kSkinnyExpand));
  }
#endif
}

// ---------------------------------------------------------------- benchmark
// build/tests/gpu_tests --gtest_also_run_disabled_tests --gtest_filter='CudaSkinnyBench.*'
// LoRA's 7B calls (8192 tokens, hidden 4096, MLP 11008) at r = 16, 8, 64, in both xa layouts at
// r = 16: cuBLASLt and the custom kernels, each call timed alone with cudaEvents after an L2
// flush (median of SKINNY_BENCH_RUNS, default 20, after 3 untimed), effective TB/s over the
// operands read and C written (C read too when beta != 0), and the two results' relative L2
// difference (same inputs, same initial C). ratio = cuBLASLt time / custom time (> 1: custom faster).
// matmul_add_rope: C = rope(C + s xa B^T) with the expand kernel's RoPE epilogue (q and k of a
// LoRA group, after the base GEMM wrote C) against the CPU f64 reference of matmul then
// rope_forward. One bf16 rounding of the rotated sum: the bound is u |ref| + the f32 sums'
// gamma |terms| (as count_outside) with the rotation's two products counted in the magnitude.
// Head dims 128 and 64 (two heads a 128-column tile), M not a multiple of 64, positions given
// or not, r = 16 and 8 (padded), xa as [r, M] (the group's layout) and [M, r]; and the same
// through the fallback (the expand kind off): matmul then rope_forward on the GPU.
TEST(CudaOps, SkinnyExpandWithRope) {
  ST_REQUIRE_GPU();
#ifdef SHARDTUNE_CUDA
  struct RopeCase {
    int64_t M, heads, D, r;
    bool ta, positions;
  };
  Rng rng(71);
  for (const RopeCase& rc : {RopeCase{200, 3, 128, 16, true, false}, RopeCase{136, 5, 64, 16, true, true},
                             RopeCase{72, 4, 32, 8, false, false}, RopeCase{64, 8, 16, 16, true, true}}) {
    // Rows [B, T] of T = 40 tokens (RoPE's positions t of each row, or the given ones).
    const int64_t N = rc.heads * rc.D, K = rc.r, T = 40, B = (rc.M + T - 1) / T, Mr = B * T;
    const RopeTables ct = rope_tables(128, rc.D, 10000.0, Device::cpu), gt = rope_tables(128, rc.D, 10000.0, Device::cuda);
    Tensor A = random_bf16_values(rc.ta ? Shape{K, Mr} : Shape{Mr, K}, rng);
    Tensor Bw = random_bf16_values({N, K}, rng);
    Tensor C0 = random_bf16_values({Mr, N}, rng, 4.0);
    Tensor pos, gpos;
    if (rc.positions) {
      pos = Tensor::empty({Mr}, DType::i32);
      for (int64_t m = 0; m < Mr; ++m) pos.ptr<int32_t>()[m] = static_cast<int32_t>((m * 5) % 97);
      gpos = Tensor::empty({Mr}, DType::i32, Device::cuda);
      gpos.copy_from(pos);
    }
    const double s = 2.0;
    // Reference in f64, and the magnitude bound's terms.
    Tensor ref = C0.clone(MemCategory::other), mag = Tensor::empty({Mr, N}, DType::f64);
    matmul(ref, A, rc.ta, Bw, true, s, 1.0);
    Tensor absA = A.clone(MemCategory::other), absB = Bw.clone(MemCategory::other);
    for (int64_t i = 0; i < absA.numel(); ++i) absA.ptr<double>()[i] = std::fabs(absA.ptr<double>()[i]);
    for (int64_t i = 0; i < absB.numel(); ++i) absB.ptr<double>()[i] = std::fabs(absB.ptr<double>()[i]);
    matmul(mag, absA, rc.ta, absB, true, s, 0.0);
    for (int64_t i = 0; i < mag.numel(); ++i) mag.ptr<double>()[i] += std::fabs(C0.ptr<double>()[i]);
    rope_forward(ref, B, T, ct, pos);
    // |rope(v)| terms: |a c| + |b s| <= |a| + |b|: each output's magnitude is its pair's sum.
    Tensor pmag = mag.clone(MemCategory::other);
    const int64_t half = rc.D / 2;
    for (int64_t m = 0; m < Mr; ++m)
      for (int64_t h = 0; h < rc.heads; ++h)
        for (int64_t c = 0; c < half; ++c) {
          double* row = mag.ptr<double>() + m * N + h * rc.D;
          double* out = pmag.ptr<double>() + m * N + h * rc.D;
          out[c] = out[c + half] = row[c] + row[c + half];
        }
    for (bool fused : {true, false}) {
      SCOPED_TRACE(str("M=", Mr, " heads=", rc.heads, " D=", rc.D, " r=", K, rc.ta ? " xa^T" : " xa",
                       rc.positions ? " positions" : "", fused ? " fused" : " fallback"));
      KindsGuard kinds(fused ? static_cast<unsigned>(cuda::kSkinnyExpand | cuda::kSkinnyRope) : 0u);
      Tensor dA = to_device(A, DType::bf16), dB = to_device(Bw, DType::bf16), dC = to_device(C0, DType::bf16);
      matmul_add_rope(dC, dA, rc.ta, dB, true, s, B, T, gt, gpos);
      const Tensor g = dC.to_cpu(DType::f64);
      const double u = std::ldexp(1.0, -8), gamma = static_cast<double>(K + 64) * std::ldexp(1.0, -23);
      int64_t bad = 0;
      for (int64_t i = 0; i < g.numel(); ++i) {
        const double r = ref.ptr<double>()[i];
        // fallback: the sum is rounded to bf16 before the rotation too (two roundings).
        const double bound = (fused ? 1 : 2) * u * pmag.ptr<double>()[i] + u * std::fabs(r) +
                             (1 + u) * gamma * pmag.ptr<double>()[i] + 1e-30;
        if (!(std::fabs(g.ptr<double>()[i] - r) <= bound) && ++bad <= 3)
          ADD_FAILURE() << "[" << i / N << "," << i % N << "] got " << g.ptr<double>()[i] << " want " << r;
      }
      EXPECT_EQ(bad, 0);
    }
  }
#endif
}

// pair: dB (+)= alpha dy^T xa and dxa = alpha dy B from one pass over dy (skinny_lora_dy_pair),
// against f64 references with the bound above (K = tokens for dB, wide for dxa). Tails: tokens
// not a multiple of the 64-token stage or of the token split, columns not a multiple of the 128
// chunk or the block's 512 (256 at r > 16); r = 24 in the r = 32 instantiation; both layouts of
// xa and dxa; dB f32 with beta 1 and bf16 with beta 0 (NaN-filled: never read); dxa NaN-filled.
TEST(CudaOps, SkinnyLoraDyPair) {
  ST_REQUIRE_GPU();
#ifdef SHARDTUNE_CUDA
  struct PairCase {
    int64_t T, W, r;
    bool xa_t, dxa_t;
  };
  Rng rng(515);
  const double alpha = 2.0;
  for (const PairCase& pc : {PairCase{1000, 1032, 16, true, true}, PairCase{520, 4096, 8, false, false},
                             PairCase{1536, 640, 24, true, false}, PairCase{64, 128, 32, true, true},
                             PairCase{1096, 2056, 32, false, true}, PairCase{2048, 1152, 16, false, false}}) {
    const int64_t T = pc.T, W = pc.W, r = pc.r;
    const Shape xs = pc.xa_t ? Shape{r, T} : Shape{T, r}, ds = pc.dxa_t ? Shape{r, T} : Shape{T, r};
    const Tensor dy = random_bf16_values({T, W}, rng), xa = random_bf16_values(xs, rng);
    const Tensor Bw = random_bf16_values({W, r}, rng), dB0 = random_bf16_values({W, r}, rng);
    // f64 references (the CPU op is the two matmuls) and the magnitudes of their terms.
    Tensor refB = dB0.clone(MemCategory::other), refD = Tensor::empty(ds, DType::f64);
    matmul_dy_pair(refB, 1.0, refD, pc.dxa_t, dy, xa, pc.xa_t, Bw, alpha);
    Tensor refB0 = Tensor::empty({W, r}, DType::f64), magB = Tensor::empty({W, r}, DType::f64);
    Tensor magD = Tensor::empty(ds, DType::f64);
    matmul(refB0, dy, true, xa, pc.xa_t, alpha, 0.0);
    matmul_dy_pair(magB, 0.0, magD, pc.dxa_t, abs_of(dy), abs_of(xa), pc.xa_t, abs_of(Bw), alpha);
    for (bool f32_db : {true, false}) {
      SCOPED_TRACE(str("T=", T, " W=", W, " r=", r, pc.xa_t ? " xa^T" : " xa", pc.dxa_t ? " dxa^T" : " dxa",
                       f32_db ? " dB f32 +=" : " dB bf16 ="));
      KindsGuard kinds(cuda::kSkinnyPair);
      const DType bdt = f32_db ? DType::f32 : DType::bf16;
      const double beta = f32_db ? 1.0 : 0.0;
      Tensor gB = f32_db ? to_device(dB0, bdt) : nan_like({W, r}, bdt);
      Tensor gD = nan_like(ds, DType::bf16);
      const Tensor gdy = to_device(dy, DType::bf16), gxa = to_device(xa, DType::bf16), gBw = to_device(Bw, DType::bf16);
      ASSERT_TRUE(cuda::skinny_lora_dy_pair(gB, beta, gD, pc.dxa_t, gdy, gxa, pc.xa_t, gBw, alpha, T, W, r))
          << "the pair kernel did not take the call";
      const Tensor hB = gB.to_cpu(DType::f64), hD = gD.to_cpu(DType::f64);
      auto check = [&](const Tensor& got, const Tensor& ref, const Tensor& mag, const Tensor* cin, int64_t K, double u,
                       const char* what) {
        const double gamma = static_cast<double>(K + 64) * std::ldexp(1.0, -23);
        int64_t bad = 0;
        for (int64_t i = 0; i < got.numel(); ++i) {
          const double c = cin ? std::fabs(cin->ptr<double>()[i]) : 0.0;
          const double bound = u * std::fabs(ref.ptr<double>()[i]) + (1 + u) * gamma * (mag.ptr<double>()[i] + c) + 1e-300;
          if (!(std::fabs(got.ptr<double>()[i] - ref.ptr<double>()[i]) <= bound) && ++bad <= 3)
            ADD_FAILURE() << what << "[" << i << "] got " << got.ptr<double>()[i] << " want " << ref.ptr<double>()[i];
        }
        EXPECT_EQ(bad, 0) << what;
      };
      check(hB, f32_db ? refB : refB0, magB, f32_db ? &dB0 : nullptr, T,
            f32_db ? std::ldexp(1.0, -24) : std::ldexp(1.0, -8), "dB");
      check(hD, refD, magD, nullptr, W, std::ldexp(1.0, -8), "dxa");
    }
  }
  // The op layer takes the kernel with the pair kind on, and the two matmuls without it.
  {
    const int64_t T = 512, W = 384, r = 16;
    const Tensor dy = random_bf16_values({T, W}, rng), xa = random_bf16_values({r, T}, rng);
    const Tensor Bw = random_bf16_values({W, r}, rng);
    Tensor ref_b = Tensor::zeros({W, r}, DType::f64), ref_d = Tensor::empty({r, T}, DType::f64);
    matmul_dy_pair(ref_b, 1.0, ref_d, true, dy, xa, true, Bw, 0.5);
    for (unsigned kinds : {static_cast<unsigned>(cuda::kSkinnyPair), 0u}) {
      KindsGuard guard(kinds);
      Tensor gB = Tensor::zeros({W, r}, DType::f32, Device::cuda), gD = nan_like({r, T}, DType::bf16);
      matmul_dy_pair(gB, 1.0, gD, true, to_device(dy, DType::bf16), to_device(xa, DType::bf16), true,
                     to_device(Bw, DType::bf16), 0.5);
      const Tensor hB = gB.to_cpu(DType::f64), hD = gD.to_cpu(DType::f64);
      double worst_b = 0, worst_d = 0, scale_b = 0, scale_d = 0;
      for (int64_t i = 0; i < hB.numel(); ++i) {
        worst_b = std::max(worst_b, std::fabs(hB.ptr<double>()[i] - ref_b.ptr<double>()[i]));
        scale_b = std::max(scale_b, std::fabs(ref_b.ptr<double>()[i]));
      }
      for (int64_t i = 0; i < hD.numel(); ++i) {
        worst_d = std::max(worst_d, std::fabs(hD.ptr<double>()[i] - ref_d.ptr<double>()[i]));
        scale_d = std::max(scale_d, std::fabs(ref_d.ptr<double>()[i]));
      }
      // f32 dB: sums of 512 products (< 1e-5 of the largest); bf16 dxa: one rounding of each sum.
      EXPECT_LE(worst_b, 1e-5 * scale_b) << "kinds " << kinds;
      EXPECT_LE(worst_d, (std::ldexp(1.0, -8) + 1e-5) * scale_d) << "kinds " << kinds;
    }
  }
#endif
}

// swiglu kind: SwiGLU with the gate and up LoRA terms made in the tile (skinny_swiglu_lora, through
// swiglu_lora_forward / backward) against f64: g' = g + sg xg^T bg^T, u' likewise, h = silu(g') u',
// dg = dh u' silu'(g'), du = dh silu(g'). Bound per element: the bf16 output rounding plus f32 sums
// and __expf (relative 1e-5 of the terms' magnitudes). Tails: M not a multiple of 64, N not of
// 128; ranks 8 (in the 16 instantiation), 16, 24 with 32, 64; one term absent.
TEST(CudaOps, SkinnySwigluLora) {
  ST_REQUIRE_GPU();
#ifdef SHARDTUNE_CUDA
  struct SwCase {
    int64_t M, N, rg, ru, rd;
  };
  Rng rng(616);
  for (const SwCase& sc : {SwCase{200, 392, 16, 16, 16}, SwCase{64, 128, 8, 8, 0}, SwCase{136, 264, 24, 32, 8},
                           SwCase{72, 136, 64, 64, 64}, SwCase{128, 256, 16, 0, 16}, SwCase{96, 520, 0, 8, 0}}) {
    const int64_t M = sc.M, N = sc.N;
    SCOPED_TRACE(str("M=", M, " N=", N, " rg=", sc.rg, " ru=", sc.ru, " rd=", sc.rd));
    const Tensor g = random_bf16_values({M, N}, rng, 2.0), u = random_bf16_values({M, N}, rng, 2.0);
    const Tensor dh = random_bf16_values({M, N}, rng);
    auto term = [&](int64_t r, double scale) {
      LowRankTerm t;
      if (r == 0) return t;
      t.xa = random_bf16_values({r, M}, rng);
      t.xa_t = true;
      t.B = random_bf16_values({N, r}, rng);
      t.scale = scale;
      return t;
    };
    const LowRankTerm tg = term(sc.rg, 2.0), tu = term(sc.ru, 0.5);
    LowRankTerm td;  // dh's term dxa A: xa [M, r], B [r, N]
    if (sc.rd > 0) {
      td.xa = random_bf16_values({M, sc.rd}, rng, 0.25);
      td.B = random_bf16_values({sc.rd, N}, rng);
      td.scale = 1.0;
      td.b_t = true;
    }
    // f64 references through the CPU op (g' and u' formed in f64), and |term| magnitudes.
    Tensor h_ref = Tensor::empty({M, N}, DType::f64), dg_ref = Tensor::empty({M, N}, DType::f64);
    Tensor du_ref = Tensor::empty({M, N}, DType::f64);
    swiglu_lora_forward(g, u, tg, tu, h_ref);
    swiglu_lora_backward(dh, g, u, tg, tu, dg_ref, du_ref, &td);
    auto mag_of = [&](const LowRankTerm& t) {
      Tensor m = Tensor::zeros({M, N}, DType::f64);
      if (t.defined()) matmul(m, abs_of(t.xa), t.xa_t, abs_of(t.B), !t.b_t, std::fabs(t.scale), 0.0);
      return m;
    };
    const Tensor mg = mag_of(tg), mu = mag_of(tu), md = mag_of(td);
    auto dev_term = [&](const LowRankTerm& t) {
      LowRankTerm d = t;
      if (t.defined()) {
        d.xa = to_device(t.xa, DType::bf16);
        d.B = to_device(t.B, DType::bf16);
      }
      return d;
    };
    const LowRankTerm gtg = dev_term(tg), gtu = dev_term(tu), gtd = dev_term(td);
    KindsGuard kinds(cuda::kSkinnySwiglu);
    const Tensor gg = to_device(g, DType::bf16), gu = to_device(u, DType::bf16), gdh = to_device(dh, DType::bf16);
    Tensor gh = nan_like({M, N}, DType::bf16), gdg = nan_like({M, N}, DType::bf16), gdu = nan_like({M, N}, DType::bf16);
    ASSERT_TRUE(cuda::skinny_swiglu_lora(false, nullptr, gg, gu, gtg.xa, gtg.B, tg.scale, gtu.xa, gtu.B, tu.scale,
                                         nullptr, nullptr, 0.0, gh, nullptr, M, N, sc.rg, sc.ru, 0))
        << "the kernel did not take the forward";
    ASSERT_TRUE(cuda::skinny_swiglu_lora(true, &gdh, gg, gu, gtg.xa, gtg.B, tg.scale, gtu.xa, gtu.B, tu.scale,
                                         sc.rd ? &gtd.xa : nullptr, sc.rd ? &gtd.B : nullptr, 1.0, gdg, &gdu, M, N, sc.rg,
                                         sc.ru, sc.rd))
        << "the kernel did not take the backward";
    const Tensor hh = gh.to_cpu(DType::f64), hdg = gdg.to_cpu(DType::f64), hdu = gdu.to_cpu(DType::f64);
    auto check = [&](const Tensor& got, const Tensor& ref, const char* what) {
      int64_t bad = 0;
      for (int64_t i = 0; i < got.numel(); ++i) {
        const double gp = std::fabs(g.ptr<double>()[i]) + mg.ptr<double>()[i];
        const double up = std::fabs(u.ptr<double>()[i]) + mu.ptr<double>()[i];
        const double d = std::fabs(dh.ptr<double>()[i]) + md.ptr<double>()[i];
        // With dh's term, dh' is rounded to bf16 in the tile before the outputs are (two roundings).
        const double bound = (sc.rd ? 2 : 1) * std::ldexp(1.0, -8) * std::fabs(ref.ptr<double>()[i]) +
                             1e-5 * (1 + d) * (1 + gp) * (1 + up);
        if (!(std::fabs(got.ptr<double>()[i] - ref.ptr<double>()[i]) <= bound) && ++bad <= 3)
          ADD_FAILURE() << what << "[" << i / N << "," << i % N << "] got " << got.ptr<double>()[i] << " want "
                        << ref.ptr<double>()[i];
      }
      EXPECT_EQ(bad, 0) << what;
    };
    check(hh, h_ref, "h");
    check(hdg, dg_ref, "dgate");
    check(hdu, du_ref, "dup");
    // The op layer takes the same kernel (the same bits).
    Tensor gh2 = nan_like({M, N}, DType::bf16);
    swiglu_lora_forward(gg, gu, gtg, gtu, gh2);
    const Tensor hh2 = gh2.to_cpu(DType::f64);
    int64_t differ = 0;
    for (int64_t i = 0; i < hh.numel(); ++i) differ += hh.ptr<double>()[i] != hh2.ptr<double>()[i];
    EXPECT_EQ(differ, 0);
  }
#endif
}

TEST(CudaSkinnyBench, DISABLED_LoraShapes) {
  ST_REQUIRE_GPU();
#ifdef SHARDTUNE_CUDA
  struct BenchCase {
    const char* role;
    int64_t M, N, K;
    bool ta, tb;
    DType c;
    double alpha, beta;
  };
  const int64_t T = 8192;
  std::vector<BenchCase> cases;
  auto lora_calls = [&](int64_t r, int64_t D, int64_t O, bool transposed_xa) {
    const DType b = DType::bf16, f = DType::f32;
    if (!transposed_xa) {
      cases.push_back({"xa = x A^T", T, r, D, false, true, b, 1.0, 0.0});
      cases.push_back({"y += s xa B^T", T, O, r, false, true, b, 2.0, 1.0});
      cases.push_back({"y = s xa B^T", T, O, r, false, true, b, 2.0, 0.0});
      cases.push_back({"dB += s dy^T xa", O, r, T, true, false, f, 2.0, 1.0});
      cases.push_back({"dxa = s dy B", T, r, O, false, false, b, 2.0, 0.0});
      cases.push_back({"dx += dxa A", T, D, r, false, false, b, 1.0, 1.0});
      cases.push_back({"dA += dxa^T x", r, D, T, true, false, f, 1.0, 1.0});
    } else {
      cases.push_back({"xaT = A x^T", r, T, D, false, true, b, 1.0, 0.0});
      cases.push_back({"y += s xaT^T B^T", T, O, r, true, true, b, 2.0, 1.0});
      cases.push_back({"dB += s dy^T xaT^T", O, r, T, true, true, f, 2.0, 1.0});
      cases.push_back({"dxaT = s B^T dy^T", r, T, O, true, true, b, 2.0, 0.0});
      cases.push_back({"dx += dxaT^T A", T, D, r, true, false, b, 1.0, 1.0});
      cases.push_back({"dA += dxaT x", r, D, T, false, false, f, 1.0, 1.0});
    }
  };
  lora_calls(16, 4096, 4096, false);   // q, k, v, o
  lora_calls(16, 4096, 11008, false);  // gate, up (in 4096, out 11008)
  lora_calls(16, 11008, 4096, false);  // down
  lora_calls(16, 4096, 4096, true);
  lora_calls(8, 4096, 4096, false);
  lora_calls(64, 4096, 4096, false);
  lora_calls(64, 4096, 11008, false);

  const int runs = test::bench_runs("SKINNY_BENCH_RUNS", 20);
  cudaDeviceProp prop{};
  int dev = 0;
  ASSERT_EQ(cudaGetDevice(&dev), cudaSuccess);
  ASSERT_EQ(cudaGetDeviceProperties(&prop, dev), cudaSuccess);
  Tensor flush = Tensor::empty({2 * static_cast<int64_t>(prop.l2CacheSize)}, DType::u8, Device::cuda);
  std::printf("[skinny] %s, %d SMs, L2 %d MiB; median of %d runs after an L2 flush each\n", prop.name,
              prop.multiProcessorCount, prop.l2CacheSize >> 20, runs);
  std::printf("[skinny] %-20s %-34s %8s %10s %7s %10s %7s %7s %9s\n", "call", "shape (profile label)", "MB",
              "cublaslt", "TB/s", "custom", "TB/s", "ratio", "rel diff");
  double total_lt = 0, total_custom = 0;
  uint64_t key = 1;
  for (const BenchCase& b : cases) {
    Tensor A = Tensor::empty(b.ta ? Shape{b.K, b.M} : Shape{b.M, b.K}, DType::bf16, Device::cuda);
    Tensor B = Tensor::empty(b.tb ? Shape{b.N, b.K} : Shape{b.K, b.N}, DType::bf16, Device::cuda);
    Tensor C0 = Tensor::empty({b.M, b.N}, b.c, Device::cuda);
    fill_uniform(A, key++, -1.0, 1.0);
    fill_uniform(B, key++, -1.0, 1.0);
    fill_uniform(C0, key++, -1.0, 1.0);
    Tensor C = C0.clone(MemCategory::other);
    const double bytes = static_cast<double>(A.nbytes() + B.nbytes()) +
                         static_cast<double>(C.nbytes()) * (b.beta != 0.0 ? 2.0 : 1.0);
    auto call = [&](bool custom, Tensor& out) {
      if (custom) {
        if (!cuda::skinny_matmul(out, A, b.ta, B, b.tb, b.alpha, b.beta, b.M, b.N, b.K)) return false;
      } else {
        cuda::matmul_cublaslt(out, A, b.ta, B, b.tb, b.alpha, b.beta, b.M, b.N, b.K);
      }
      return true;
    };
    auto time_us = [&](bool custom) {
      const double ms = test::median_event_ms(
          runs, [&](int i) { EXPECT_EQ(cudaMemsetAsync(flush.data(), i & 0xff, flush.nbytes(), 0), cudaSuccess); },
          [&] { return call(custom, C); });
      return ms < 0 ? -1.0 : 1e3 * ms;
    };
    // The two results from the same C0.
    Tensor c_lt = C0.clone(MemCategory::other), c_cu = C0.clone(MemCategory::other);
    call(false, c_lt);
    const bool took = call(true, c_cu);
    double diff = NAN;
    if (took) {
      const Tensor x = c_cu.to_cpu(DType::f32), y = c_lt.to_cpu(DType::f32);
      double num = 0, den = 0;
      for (int64_t i = 0; i < x.numel(); ++i) {
        const double d = static_cast<double>(x.ptr<float>()[i]) - y.ptr<float>()[i];
        num += d * d;
        den += static_cast<double>(y.ptr<float>()[i]) * y.ptr<float>()[i];
      }
      diff = std::sqrt(num / std::max(den, 1e-300));
    }
    const double lt = time_us(false), cu = took ? time_us(true) : -1.0;
    const std::string shape = str(b.M, "x", b.N, "x", b.K, b.ta ? " A^T" : "", b.tb ? " B^T" : "",
                                  b.beta != 0.0 ? " +=" : "", " bf16->", dtype_name(b.c));
    const int64_t r = std::min({b.M, b.N, b.K});
    const std::string role = str(b.role, " r=", r);
    if (cu > 0) {
      std::printf("[skinny] %-20s %-34s %8.1f %8.1fus %7.2f %8.1fus %7.2f %7.2f %9.2e\n", role.c_str(), shape.c_str(),
                  bytes / 1e6, lt, bytes / lt / 1e6, cu, bytes / cu / 1e6, lt / cu, diff);
      total_lt += lt;
      total_custom += cu;
    } else {
      std::printf("[skinny] %-20s %-34s %8.1f %8.1fus %7.2f   (custom kernels decline)\n", role.c_str(), shape.c_str(),
                  bytes / 1e6, lt, bytes / lt / 1e6);
    }
    if (took) {
      EXPECT_LT(diff, b.c == DType::f32 ? 1e-5 : 1e-2) << role << " " << shape;
    }
  }
  std::printf("[skinny] sum over the calls above: cublaslt %.1f us, custom %.1f us (ratio %.2f)\n", total_lt,
              total_custom, total_lt / std::max(total_custom, 1e-9));
  // The pair kind against the two calls it replaces (dB += s dy^T xa, dxa = s dy B), each by
  // cuBLASLt and by the custom thin and reduce kernels; the ratio is the faster of those over pair.
  std::printf("[skinny] pair: dB += s dy^T xa and dxa = s dy B from one pass over dy\n");
  std::printf("[skinny] %-30s %8s %12s %12s %12s %9s %7s\n", "tokens x wide x r", "dy MB", "2x cublaslt",
              "thin+reduce", "pair", "dy TB/s", "ratio");
  for (const auto& pc : {std::array<int64_t, 2>{4096, 16}, std::array<int64_t, 2>{11008, 16},
                         std::array<int64_t, 2>{4096, 8}, std::array<int64_t, 2>{4096, 32}}) {
    const int64_t W = pc[0], r = pc[1];
    for (bool transposed : {true, false}) {
      const Shape rs = transposed ? Shape{r, T} : Shape{T, r};
      Tensor dy = Tensor::empty({T, W}, DType::bf16, Device::cuda), Bw = Tensor::empty({W, r}, DType::bf16, Device::cuda);
      Tensor xa = Tensor::empty(rs, DType::bf16, Device::cuda), dxa = Tensor::empty(rs, DType::bf16, Device::cuda);
      Tensor dB = Tensor::zeros({W, r}, DType::f32, Device::cuda);
      fill_uniform(dy, key++, -1.0, 1.0);
      fill_uniform(Bw, key++, -1.0, 1.0);
      fill_uniform(xa, key++, -1.0, 1.0);
      auto median_us = [&](unsigned kinds) {
        KindsGuard guard(kinds);
        const double ms = test::median_event_ms(
            runs, [&](int i) { EXPECT_EQ(cudaMemsetAsync(flush.data(), i & 0xff, flush.nbytes(), 0), cudaSuccess); },
            [&] {
              matmul_dy_pair(dB, 1.0, dxa, transposed, dy, xa, transposed, Bw, 2.0);
              return true;
            });
        return 1e3 * ms;
      };
      const double lt = median_us(0u), cu = median_us(cuda::kSkinnyThin | cuda::kSkinnyReduce);
      const double pr = median_us(cuda::kSkinnyPair);
      const double mb = static_cast<double>(dy.nbytes()) / 1e6;
      const std::string shape = str(T, "x", W, "x", r, transposed ? " xa^T dxa^T" : " xa dxa");
      std::printf("[skinny] %-30s %8.1f %10.1fus %10.1fus %10.1fus %9.2f %7.2f\n", shape.c_str(), mb, lt, cu, pr,
                  mb / pr, std::min(lt, cu) / pr);
    }
  }
  // The swiglu kind against what it replaces, 8192 x 11008, r 16: forward, the two updates of
  // gate and up (y += s xa B^T, expand kind) then swiglu_forward, against swiglu_lora_forward;
  // backward, dh += dxa A then swiglu_backward, against swiglu_lora_backward with the dh term.
  {
    const int64_t N = 11008, r = 16;
    Tensor g = Tensor::empty({T, N}, DType::bf16, Device::cuda), u = Tensor::empty({T, N}, DType::bf16, Device::cuda);
    Tensor dh = Tensor::empty({T, N}, DType::bf16, Device::cuda), h = Tensor::empty({T, N}, DType::bf16, Device::cuda);
    Tensor dg = Tensor::empty({T, N}, DType::bf16, Device::cuda), du = Tensor::empty({T, N}, DType::bf16, Device::cuda);
    LowRankTerm tg, tu, td;
    for (LowRankTerm* t : {&tg, &tu}) {
      t->xa = Tensor::empty({r, T}, DType::bf16, Device::cuda);
      t->xa_t = true;
      t->B = Tensor::empty({N, r}, DType::bf16, Device::cuda);
      t->scale = 2.0;
    }
    td.xa = Tensor::empty({T, r}, DType::bf16, Device::cuda);
    td.B = Tensor::empty({r, N}, DType::bf16, Device::cuda);
    td.scale = 1.0;
    td.b_t = true;
    for (Tensor* t : {&g, &u, &dh, &tg.xa, &tg.B, &tu.xa, &tu.B, &td.xa, &td.B}) fill_uniform(*t, key++, -0.5, 0.5);
    auto median_us = [&](auto&& fn) {
      const double ms = test::median_event_ms(
          runs, [&](int i) { EXPECT_EQ(cudaMemsetAsync(flush.data(), i & 0xff, flush.nbytes(), 0), cudaSuccess); },
          [&] {
            fn();
            return true;
          });
      return 1e3 * ms;
    };
    const double fwd_unfused = median_us([&] {
      KindsGuard guard(cuda::kSkinnyExpand);
      matmul(g, tg.xa, true, tg.B, true, 2.0, 1.0);
      matmul(u, tu.xa, true, tu.B, true, 2.0, 1.0);
      swiglu_forward(g, u, h);
    });
    const double fwd_fused = median_us([&] {
      KindsGuard guard(cuda::kSkinnySwiglu);
      swiglu_lora_forward(g, u, tg, tu, h);
    });
    const double bwd_unfused = median_us([&] {
      KindsGuard guard(cuda::kSkinnyExpand);
      matmul(dh, td.xa, false, td.B, false, 1.0, 1.0);
      swiglu_backward(dh, g, u, dg, du, false);
    });
    const double bwd_fused = median_us([&] {
      KindsGuard guard(cuda::kSkinnySwiglu);
      swiglu_lora_backward(dh, g, u, tg, tu, dg, du, &td);
    });
    const double mb = static_cast<double>(g.nbytes()) / 1e6;
    std::printf("[skinny] swiglu %ldx%ld r=%ld: forward %.1f us (unfused) vs %.1f us (fused, %.2f TB/s over g, u, h), "
                "ratio %.2f; backward %.1f vs %.1f us (%.2f TB/s over dh, g, u, dg, du), ratio %.2f\n",
                static_cast<long>(T), static_cast<long>(N), static_cast<long>(r), fwd_unfused, fwd_fused,
                3 * mb / fwd_fused, fwd_unfused / fwd_fused, bwd_unfused, bwd_fused, 5 * mb / bwd_fused,
                bwd_unfused / bwd_fused);
  }
#endif
}

}  // namespace
}  // namespace st
