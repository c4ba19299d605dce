// Every CUDA kernel against the CPU reference (f64 on the same bf16-representable inputs), on
// random shapes including awkward ones (odd sizes, T not a multiple of the 64-row tiles, head
// dims that need padding). Tolerance: kBf16Tol (gpu_util.hpp) unless the result is exact.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "ops/activation.hpp"
#include "ops/attention.hpp"
#include "ops/bias.hpp"
#include "ops/embedding.hpp"
#include "ops/init.hpp"
#include "ops/loss.hpp"
#include "ops/matmul.hpp"
#include "ops/norm.hpp"
#include "ops/optim.hpp"
#include "ops/relbias.hpp"
#include "ops/rope.hpp"
#include "parallel/tp_ops.hpp"
#include "tests/gpu/gpu_util.hpp"
#include "train/calibrate.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/timing.cuh"
#endif

namespace st {
namespace {

using test::kBf16Tol;
using test::random_bf16_values;
using test::rel_l2;
using test::to_device;

TEST(CudaOps, MatmulAllTransposesAndShapes) {
  ST_REQUIRE_GPU();
  Rng rng(1);
  struct Case { int64_t M, N, K; };
  for (const Case c : {Case{37, 53, 29}, Case{128, 64, 256}, Case{1000, 3, 17}, Case{8, 4096, 64}, Case{513, 257, 130}})
    for (int ta = 0; ta < 2; ++ta)
      for (int tb = 0; tb < 2; ++tb) {
        Tensor A = random_bf16_values(ta ? Shape{c.K, c.M} : Shape{c.M, c.K}, rng);
        Tensor B = random_bf16_values(tb ? Shape{c.N, c.K} : Shape{c.K, c.N}, rng);
        Tensor C0 = random_bf16_values({c.M, c.N}, rng);
        Tensor ref = C0.clone(MemCategory::other);
        matmul(ref, A, ta, B, tb, 0.5, 1.0);  // f64 reference, accumulating
        Tensor dA = to_device(A, DType::bf16), dB = to_device(B, DType::bf16);
        // bf16 output, accumulating into C (beta = 1)
        Tensor dC = to_device(C0, DType::bf16);
        matmul(dC, dA, ta, dB, tb, 0.5, 1.0);
        EXPECT_LT(rel_l2(dC, ref), kBf16Tol) << c.M << "x" << c.N << "x" << c.K << " ta=" << ta << " tb=" << tb;
        // f32 output from bf16 inputs (gradient accumulation): only f32 rounding of the sums
        Tensor dCf = to_device(C0, DType::f32);
        matmul(dCf, dA, ta, dB, tb, 0.5, 1.0);
        EXPECT_LT(rel_l2(dCf, ref), 1e-5) << "f32 output " << c.M << "x" << c.N << "x" << c.K;
      }
}

// Linear biases (Qwen2's q, k, v): the add rounds each bf16 output once; the gradient sums the
// rows of dy in f32 (exact products of bf16 values: only the f32 rounding of the sums).
TEST(CudaOps, BiasAddAndGradient) {
  ST_REQUIRE_GPU();
  Rng rng(12);
  for (auto [M, N] : {std::pair<int64_t, int64_t>{37, 53}, {4096, 896}, {3, 1}}) {
    Tensor y = random_bf16_values({M, N}, rng), b = random_bf16_values({N}, rng), dy = random_bf16_values({M, N}, rng);
    Tensor ref = y.clone(MemCategory::other), db = random_bf16_values({N}, rng);
    Tensor db_ref = db.clone(MemCategory::other);
    bias_add(ref, b);
    bias_backward(dy, db_ref);
    Tensor gy = to_device(y, DType::bf16), gb = to_device(b, DType::bf16), gdy = to_device(dy, DType::bf16);
    Tensor gdb = to_device(db, DType::f32);
    bias_add(gy, gb);
    bias_backward(gdy, gdb);
    EXPECT_LT(rel_l2(gy, ref), kBf16Tol) << M << "x" << N;
    EXPECT_LT(rel_l2(gdb, db_ref), 1e-5) << M << "x" << N;
    Tensor fy = to_device(y, DType::f32), fb = to_device(b, DType::f32);
    bias_add(fy, fb);
    EXPECT_LT(rel_l2(fy, ref), 1e-6) << "f32 " << M << "x" << N;
  }
}

TEST(CudaOps, RmsNormForwardBackward) {
  ST_REQUIRE_GPU();
  Rng rng(2);
  for (auto [N, C] : {std::pair<int64_t, int64_t>{37, 200}, {64, 4096}, {5, 7}}) {
    Tensor x = random_bf16_values({N, C}, rng, 2.0), w = random_bf16_values({C}, rng), dy = random_bf16_values({N, C}, rng);
    Tensor y = Tensor::empty({N, C}, DType::f64), rstd = Tensor::empty({N}, DType::f64);
    rmsnorm_forward(x, w, 1e-5, y, rstd);
    Tensor dx = Tensor::zeros({N, C}, DType::f64), dw = Tensor::zeros({C}, DType::f64);
    rmsnorm_backward(dy, x, w, rstd, dx, &dw);

    Tensor gx = to_device(x, DType::bf16), gw = to_device(w, DType::bf16), gdy = to_device(dy, DType::bf16);
    Tensor gy = Tensor::empty({N, C}, DType::bf16, Device::cuda), grstd = Tensor::empty({N}, DType::f32, Device::cuda);
    rmsnorm_forward(gx, gw, 1e-5, gy, grstd);
    Tensor gdx = Tensor::zeros({N, C}, DType::bf16, Device::cuda), gdw = Tensor::zeros({C}, DType::f32, Device::cuda);
    rmsnorm_backward(gdy, gx, gw, grstd, gdx, &gdw);
    EXPECT_LT(rel_l2(gy, y), kBf16Tol) << N << "x" << C;
    EXPECT_LT(rel_l2(grstd, rstd), 1e-5) << N << "x" << C;
    EXPECT_LT(rel_l2(gdx, dx), kBf16Tol) << N << "x" << C;
    EXPECT_LT(rel_l2(gdw, dw), 1e-4) << N << "x" << C;  // f32 accumulation of exact products
  }
}

// The backward's two-stage weight gradient (per-block partial sums, then a column sum in a fixed
// order) on shapes that take every path: one, two and four 8-column vectors per thread (C = 1024,
// 4096, 8192), the scalar bf16 kernel (C % 8 != 0), f32 rows, many blocks with a ragged last one,
// no weight gradient; dx accumulates into what it held. dw: f32 sums of exact bf16 products
// times the f32 rstd (1e-4 as above; a lost or doubled block would be ~1e-2); twice the same
// bits (no atomics).
TEST(CudaOps, RmsNormBackwardTwoStageWeightGradient) {
  ST_REQUIRE_GPU();
  Rng rng(21);
  struct Case { int64_t N, C; DType dt; bool with_dw; };
  for (const Case c : {Case{4133, 1024, DType::bf16, true}, Case{301, 4096, DType::bf16, true}, Case{67, 8192, DType::bf16, true},
                       Case{1029, 1001, DType::bf16, true}, Case{515, 768, DType::f32, true}, Case{999, 1024, DType::bf16, false},
                       Case{3, 8, DType::bf16, true}}) {
    const int64_t N = c.N, C = c.C;
    Tensor x = random_bf16_values({N, C}, rng, 2.0), w = random_bf16_values({C}, rng), dy = random_bf16_values({N, C}, rng);
    Tensor dx0 = random_bf16_values({N, C}, rng);
    Tensor y = Tensor::empty({N, C}, DType::f64), rstd = Tensor::empty({N}, DType::f64);
    rmsnorm_forward(x, w, 1e-5, y, rstd);
    Tensor dx = dx0.clone(MemCategory::other), dw = Tensor::zeros({C}, DType::f64);
    rmsnorm_backward(dy, x, w, rstd, dx, &dw);

    Tensor gx = to_device(x, c.dt), gw = to_device(w, c.dt), gdy = to_device(dy, c.dt);
    Tensor gy = Tensor::empty({N, C}, c.dt, Device::cuda), grstd = Tensor::empty({N}, DType::f32, Device::cuda);
    rmsnorm_forward(gx, gw, 1e-5, gy, grstd);
    Tensor gdx = to_device(dx0, c.dt), gdw = Tensor::zeros({C}, DType::f32, Device::cuda);
    Tensor none;
    rmsnorm_backward(gdy, gx, gw, grstd, gdx, c.with_dw ? &gdw : &none);
    const std::string what = std::to_string(N) + "x" + std::to_string(C) + (c.dt == DType::f32 ? " f32" : " bf16");
    EXPECT_LT(rel_l2(gdx, dx), c.dt == DType::f32 ? 1e-5 : kBf16Tol) << what;
    if (!c.with_dw) continue;
    EXPECT_LT(rel_l2(gdw, dw), 1e-4) << what;
    Tensor gdx2 = to_device(dx0, c.dt), gdw2 = Tensor::zeros({C}, DType::f32, Device::cuda);
    rmsnorm_backward(gdy, gx, gw, grstd, gdx2, &gdw2);
    const Tensor a = gdw.to_cpu(DType::f32), b = gdw2.to_cpu(DType::f32);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.nbytes()), 0) << what << ": dw not deterministic";
  }
}

TEST(CudaOps, RopeForwardAndInverse) {
  ST_REQUIRE_GPU();
  Rng rng(3);
  const int64_t B = 2, T = 37, H = 3, D = 64;
  RopeTables cpu_tab = rope_tables(128, D, 10000.0, Device::cpu);
  RopeTables gpu_tab = rope_tables(128, D, 10000.0, Device::cuda);
  Tensor x = random_bf16_values({B * T, H * D}, rng);
  Tensor ref = x.clone(MemCategory::other);
  rope_forward(ref, B, T, cpu_tab);
  Tensor g = to_device(x, DType::bf16);
  rope_forward(g, B, T, gpu_tab);
  EXPECT_LT(rel_l2(g, ref), kBf16Tol);
  rope_backward(g, B, T, gpu_tab);  // back to x, up to two bf16 roundings
  EXPECT_LT(rel_l2(g, x), kBf16Tol);
}

struct AttnCase {
  int64_t B, T, Hq, Hkv, D;
  bool causal, padded;
  int64_t Tk = 0;     // key/value positions (0: self-attention, Tk = T)
  bool bias = false;      // additive [Hq, T, Tk] score bias, and its gradient
  bool dbias_only = false;  // with bias: no bias tensor (a zero bias) but its gradient wanted
};

// Returns the worst error as a fraction of its tolerance (< 1 when every check passes).
double attention_case(const AttnCase& c, uint64_t seed) {
  Rng rng(seed);
  AttentionShape s{c.B, c.T, c.Hq, c.Hkv, c.D, c.causal, 1.0 / std::sqrt(static_cast<double>(c.D)), c.Tk};
  const int64_t Tk = s.kv_len();
  const int64_t BT = c.B * c.T, BTk = c.B * Tk;
  Tensor q = random_bf16_values({BT, c.Hq * c.D}, rng, 2.0), k = random_bf16_values({BTk, c.Hkv * c.D}, rng, 2.0);
  Tensor v = random_bf16_values({BTk, c.Hkv * c.D}, rng), dout = random_bf16_values({BT, c.Hq * c.D}, rng);
  Tensor lengths, glengths;
  if (c.padded) {
    lengths = Tensor::empty({c.B}, DType::i32);
    for (int64_t b = 0; b < c.B; ++b) lengths.ptr<int32_t>()[b] = static_cast<int32_t>(std::max<int64_t>(1, Tk - 13 * b));
    glengths = Tensor::empty({c.B}, DType::i32, Device::cuda);
    glengths.copy_from(lengths);
  }
  // The bias (f64 on the CPU, f32 on the GPU, same bf16-representable values); dbias starts at a
  // random value on both sides (it accumulates) and the increment is compared.
  Tensor bias, gbias, dbias0, dbias, gdbias;
  if (c.bias) {
    if (!c.dbias_only) {
      bias = random_bf16_values({c.Hq, c.T, Tk}, rng, 3.0);
      gbias = to_device(bias, DType::f32);
    }
    dbias0 = random_bf16_values({c.Hq, c.T, Tk}, rng);
    dbias = Tensor::zeros({c.Hq, c.T, Tk}, DType::f64);
    gdbias = to_device(dbias0, DType::f32);
  }
  Tensor out = Tensor::empty({BT, c.Hq * c.D}, DType::f64), lse = Tensor::empty({BT, c.Hq}, DType::f64);
  attention_forward(s, q, k, v, lengths, out, lse, bias);
  Tensor dq = Tensor::zeros(q.shape(), DType::f64), dk = Tensor::zeros(k.shape(), DType::f64), dv = Tensor::zeros(v.shape(), DType::f64);
  attention_backward(s, q, k, v, out, lse, dout, lengths, dq, dk, dv, true, bias, c.bias ? &dbias : nullptr);

  Tensor gq = to_device(q, DType::bf16), gk = to_device(k, DType::bf16), gv = to_device(v, DType::bf16);
  Tensor gdout = to_device(dout, DType::bf16);
  Tensor gout = Tensor::empty(out.shape(), DType::bf16, Device::cuda), glse = Tensor::empty(lse.shape(), DType::f32, Device::cuda);
  attention_forward(s, gq, gk, gv, glengths, gout, glse, gbias);
  Tensor gdq = Tensor::zeros(q.shape(), DType::bf16, Device::cuda), gdk = Tensor::zeros(k.shape(), DType::bf16, Device::cuda);
  Tensor gdv = Tensor::zeros(v.shape(), DType::bf16, Device::cuda);
  attention_backward(s, gq, gk, gv, gout, glse, gdout, glengths, gdq, gdk, gdv, true, gbias, c.bias ? &gdbias : nullptr);
  const std::string tag = str("B=", c.B, " T=", c.T, " Tk=", Tk, " Hq=", c.Hq, " Hkv=", c.Hkv, " D=", c.D,
                              c.causal ? " causal" : "", c.padded ? " padded" : "", c.bias ? (c.dbias_only ? " dbias-only" : " bias") : "");
  double worst = 0;
  auto check = [&](double err, double tol, const char* what) {
    EXPECT_LT(err, tol) << what << " " << tag;
    worst = std::max(worst, err / tol);
  };
  check(rel_l2(gout, out), kBf16Tol, "out");
  check(rel_l2(glse, lse), 1e-3, "lse");  // f32 from bf16-rounded inputs
  // The backward re-rounds P and dS to bf16 for the tensor cores: twice the forward's error.
  check(rel_l2(gdq, dq), 2 * kBf16Tol, "dq");
  check(rel_l2(gdk, dk), 2 * kBf16Tol, "dk");
  check(rel_l2(gdv, dv), 2 * kBf16Tol, "dv");
  if (c.bias) {
    // dS in f32 (from the bf16 O in D = rowsum(dO O)), summed over the batch with f32 atomics.
    Tensor inc = gdbias.to_cpu(DType::f64);
    for (int64_t i = 0; i < inc.numel(); ++i) inc.ptr<double>()[i] -= dbias0.ptr<double>()[i];
    check(rel_l2(inc, dbias), 2 * kBf16Tol, "dbias");
  }
  return worst;
}

TEST(CudaOps, AttentionCausalGqaPaddedHead64) {
  ST_REQUIRE_GPU();
  EXPECT_LT(attention_case({2, 77, 4, 2, 64, true, true}, 4), 1.0);
}
TEST(CudaOps, AttentionHead128TwoTiles) {
  ST_REQUIRE_GPU();
  EXPECT_LT(attention_case({1, 130, 8, 8, 128, true, false}, 5), 1.0);
}
TEST(CudaOps, AttentionHead128ManyTiles) {
  ST_REQUIRE_GPU();
  // Several query tiles a key block loops over, GQA groups of 4 (the backward's double-buffered
  // tile sequence crosses heads), key padding; D = 96 pads the head dimension in shared memory.
  EXPECT_LT(attention_case({2, 300, 8, 2, 128, true, true}, 44), 1.0);
  EXPECT_LT(attention_case({1, 200, 4, 4, 128, false, true}, 45), 1.0);
  EXPECT_LT(attention_case({2, 150, 4, 1, 96, true, false}, 46), 1.0);
}
TEST(CudaOps, AttentionTinyHeadsNeedPadding) {
  ST_REQUIRE_GPU();
  EXPECT_LT(attention_case({3, 5, 2, 1, 8, true, true}, 6), 1.0);
  EXPECT_LT(attention_case({2, 70, 4, 4, 24, true, true}, 7), 1.0);
}
TEST(CudaOps, AttentionHeadDimsOffTheMmaTiles) {
  ST_REQUIRE_GPU();
  // D = 100: 16-byte dQ reductions on sm_90 with the last 8-column n-tile half inside D; D = 6
  // and 30 (D % 4 != 0): the one-by-one dQ atomics. Causal with GQA and padding, and cross-attention.
  EXPECT_LT(attention_case({2, 77, 4, 2, 100, true, true}, 40), 1.0);
  EXPECT_LT(attention_case({2, 70, 2, 1, 6, true, true}, 41), 1.0);
  EXPECT_LT(attention_case({2, 45, 4, 2, 100, false, true, 131, true}, 42), 1.0);
  EXPECT_LT(attention_case({3, 66, 2, 2, 30, false, false}, 43), 1.0);
}
TEST(CudaOps, AttentionBidirectionalPadded) {
  ST_REQUIRE_GPU();
  EXPECT_LT(attention_case({2, 100, 4, 1, 32, false, true}, 8), 1.0);
}
TEST(CudaOps, AttentionBiasCausalGqaPadded) {
  ST_REQUIRE_GPU();
  EXPECT_LT(attention_case({2, 77, 4, 2, 64, true, true, 0, true}, 13), 1.0);
  EXPECT_LT(attention_case({3, 5, 2, 1, 8, true, true, 0, true}, 14), 1.0);
}
TEST(CudaOps, AttentionBiasBidirectional) {
  ST_REQUIRE_GPU();
  EXPECT_LT(attention_case({1, 70, 3, 3, 32, false, false, 0, true}, 15), 1.0);
  EXPECT_LT(attention_case({2, 130, 4, 2, 128, false, true, 0, true}, 16), 1.0);
}
TEST(CudaOps, AttentionCrossMoreKeys) {
  ST_REQUIRE_GPU();
  // Tk over two key tiles, T under one; GQA; padding; with and without the bias.
  EXPECT_LT(attention_case({2, 45, 4, 2, 64, false, true, 131, true}, 17), 1.0);
  EXPECT_LT(attention_case({2, 33, 8, 8, 128, false, false, 97, false}, 18), 1.0);
}
TEST(CudaOps, AttentionCrossFewerKeys) {
  ST_REQUIRE_GPU();
  // Tk under one tile, T over two; head dims that need padding; padding down to one key; Tk = 3.
  EXPECT_LT(attention_case({3, 130, 2, 1, 24, false, true, 19, true}, 19), 1.0);
  EXPECT_LT(attention_case({3, 5, 2, 1, 8, false, true, 9, true}, 20), 1.0);
  EXPECT_LT(attention_case({2, 67, 6, 3, 16, false, false, 3, true}, 21), 1.0);
}
TEST(CudaOps, AttentionBiasGradientWithoutBias) {
  ST_REQUIRE_GPU();
  // dbias wanted, no bias given (the gradient of a zero bias), self- and cross-attention.
  EXPECT_LT(attention_case({2, 77, 4, 2, 64, true, true, 0, true, true}, 22), 1.0);
  EXPECT_LT(attention_case({2, 50, 2, 2, 32, false, true, 70, true, true}, 23), 1.0);
}

// ---- Variable-length (packed) attention: segments of the flattened stream, as
// ops/attention.hpp. (length, keys) per segment; keys 0 is padding.
using Segs = std::vector<std::pair<int32_t, int32_t>>;

// The segments on the CPU (host tables) and on the GPU (plus the tile table on the device).
struct SegPair {
  Tensor cu, keys, tiles_host;
  AttentionSegments cpu, gpu;
};
SegPair make_segments(const Segs& parts) {
  SegPair p;
  const int64_t S = static_cast<int64_t>(parts.size());
  p.cu = Tensor::empty({S + 1}, DType::i32);
  p.keys = Tensor::empty({S}, DType::i32);
  p.cu.ptr<int32_t>()[0] = 0;
  for (int64_t i = 0; i < S; ++i) {
    p.cu.ptr<int32_t>()[i + 1] = p.cu.ptr<int32_t>()[i] + parts[i].first;
    p.keys.ptr<int32_t>()[i] = parts[i].second;
  }
  p.tiles_host = Tensor::empty({4 * attention_max_tiles(p.cu.ptr<int32_t>()[S], S)}, DType::i32);
  attention_segments_finish(p.cpu, p.cu, p.keys);
  attention_segments_finish(p.gpu, p.cu, p.keys, p.tiles_host);
  p.gpu.tiles = Tensor::empty({std::max<int64_t>(4, 4 * p.gpu.n_tiles)}, DType::i32, Device::cuda);
  if (p.gpu.n_tiles > 0) p.gpu.tiles.slice(0, 4 * p.gpu.n_tiles).copy_from(p.tiles_host.slice(0, 4 * p.gpu.n_tiles));
  return p;
}

// The GPU kernels (bf16) against the CPU reference (f64) on the same bf16-representable inputs;
// returns the worst error as a fraction of its tolerance. The bounds are attention_case's.
double varlen_case(const Segs& parts, int64_t Hq, int64_t Hkv, int64_t D, uint64_t seed) {
  Rng rng(seed);
  const SegPair seg = make_segments(parts);
  const int64_t N = seg.cpu.tokens;
  AttentionShape s{1, N, Hq, Hkv, D, true, 1.0 / std::sqrt(static_cast<double>(D))};
  Tensor q = random_bf16_values({N, Hq * D}, rng, 2.0), k = random_bf16_values({N, Hkv * D}, rng, 2.0);
  Tensor v = random_bf16_values({N, Hkv * D}, rng), dout = random_bf16_values({N, Hq * D}, rng);
  Tensor out = Tensor::empty({N, Hq * D}, DType::f64), lse = Tensor::empty({Hq, N}, DType::f64);
  attention_varlen_forward(s, q, k, v, seg.cpu, out, lse);
  Tensor dq = Tensor::zeros(q.shape(), DType::f64), dk = Tensor::zeros(k.shape(), DType::f64);
  Tensor dv = Tensor::zeros(v.shape(), DType::f64);
  attention_varlen_backward(s, q, k, v, out, lse, dout, seg.cpu, dq, dk, dv, true);

  Tensor gq = to_device(q, DType::bf16), gk = to_device(k, DType::bf16), gv = to_device(v, DType::bf16);
  Tensor gdout = to_device(dout, DType::bf16);
  // Outputs and gradients start as garbage: the kernels must write every token (padding: 0).
  Tensor gout = to_device(random_bf16_values(out.shape(), rng), DType::bf16);
  Tensor glse = Tensor::empty(lse.shape(), DType::f32, Device::cuda);
  attention_varlen_forward(s, gq, gk, gv, seg.gpu, gout, glse);
  Tensor gdq = to_device(random_bf16_values(q.shape(), rng), DType::bf16);
  Tensor gdk = to_device(random_bf16_values(k.shape(), rng), DType::bf16);
  Tensor gdv = to_device(random_bf16_values(v.shape(), rng), DType::bf16);
  attention_varlen_backward(s, gq, gk, gv, gout, glse, gdout, seg.gpu, gdq, gdk, gdv, false);
  std::string tag = str("N=", N, " Hq=", Hq, " Hkv=", Hkv, " D=", D, " segments");
  for (const auto& [len, nk] : parts) tag += str(" ", len, "/", nk);
  double worst = 0;
  auto check = [&](double err, double tol, const char* what) {
    EXPECT_LT(err, tol) << what << " " << tag;
    worst = std::max(worst, err / tol);
  };
  check(rel_l2(gout, out), kBf16Tol, "out");
  // lse: finite where the row saw keys, -inf (padding) where it saw none.
  const Tensor hl = glse.to_cpu(DType::f64);
  Tensor finite_ref = lse.clone(MemCategory::other), finite_gpu = hl.clone(MemCategory::other);
  for (int64_t i = 0; i < lse.numel(); ++i) {
    const bool ref_inf = std::isinf(lse.ptr<double>()[i]);
    EXPECT_EQ(ref_inf, std::isinf(hl.ptr<double>()[i])) << "lse " << i << " " << tag;
    if (ref_inf) finite_ref.ptr<double>()[i] = finite_gpu.ptr<double>()[i] = 0;
  }
  check(rel_l2(finite_gpu, finite_ref), 1e-3, "lse");
  check(rel_l2(gdq, dq), 2 * kBf16Tol, "dq");
  check(rel_l2(gdk, dk), 2 * kBf16Tol, "dk");
  check(rel_l2(gdv, dv), 2 * kBf16Tol, "dv");
  return worst;
}

TEST(CudaOps, AttentionVarlenPackedDocuments) {
  ST_REQUIRE_GPU();
  // Packed rows: odd lengths, 1-token documents, a document across tile boundaries, padding.
  EXPECT_LT(varlen_case({{37, 37}, {1, 1}, {70, 70}, {5, 5}, {1, 1}, {14, 0}}, 4, 2, 64, 31), 1.0);
  EXPECT_LT(varlen_case({{3, 3}, {129, 129}, {1, 1}, {1, 1}, {2, 2}}, 8, 8, 128, 32), 1.0);
  // Head dims that need padding in shared memory.
  EXPECT_LT(varlen_case({{9, 9}, {1, 1}, {60, 60}, {30, 0}, {77, 77}}, 2, 1, 24, 33), 1.0);
  EXPECT_LT(varlen_case({{5, 5}, {11, 11}, {4, 0}}, 2, 1, 8, 34), 1.0);
}
TEST(CudaOps, AttentionVarlenOneTokenDocumentsAndFullRows) {
  ST_REQUIRE_GPU();
  // A row of 128 one-token documents (each sees only itself), then rows of one full-length
  // document each (as an unpacked row without padding).
  Segs ones(128, {1, 1});
  EXPECT_LT(varlen_case(ones, 4, 2, 64, 35), 1.0);
  EXPECT_LT(varlen_case({{256, 256}, {256, 256}}, 4, 2, 64, 36), 1.0);
  EXPECT_LT(varlen_case({{1, 1}}, 2, 2, 32, 37), 1.0);
}
TEST(CudaOps, AttentionVarlenRowsAreTheBatchedKernelBitForBit) {
  ST_REQUIRE_GPU();
  // Segment b = row b with keys = lengths[b]: the batched kernel's causal + key-padding mask,
  // computed by the same instructions in the same order.
  const int64_t B = 3, T = 77, Hq = 4, Hkv = 2, D = 64;
  const int32_t lens[B] = {77, 40, 1};
  const SegPair seg = make_segments({{77, lens[0]}, {77, lens[1]}, {77, lens[2]}});
  Rng rng(38);
  Tensor q = to_device(random_bf16_values({B * T, Hq * D}, rng, 2.0), DType::bf16);
  Tensor k = to_device(random_bf16_values({B * T, Hkv * D}, rng, 2.0), DType::bf16);
  Tensor v = to_device(random_bf16_values({B * T, Hkv * D}, rng), DType::bf16);
  Tensor dout = to_device(random_bf16_values({B * T, Hq * D}, rng), DType::bf16);
  Tensor hlen = Tensor::empty({B}, DType::i32);
  std::copy(lens, lens + B, hlen.ptr<int32_t>());
  Tensor glen = Tensor::empty({B}, DType::i32, Device::cuda);
  glen.copy_from(hlen);
  AttentionShape s{B, T, Hq, Hkv, D, true, 0.125};
  auto run = [&](bool varlen) {
    Tensor out = Tensor::empty({B * T, Hq * D}, DType::bf16, Device::cuda), lse = Tensor::empty({B * T, Hq}, DType::f32, Device::cuda);
    Tensor dq = Tensor::zeros(q.shape(), DType::bf16, Device::cuda), dk = Tensor::zeros(k.shape(), DType::bf16, Device::cuda);
    Tensor dv = Tensor::zeros(v.shape(), DType::bf16, Device::cuda);
    if (varlen) {
      attention_varlen_forward(s, q, k, v, seg.gpu, out, lse);
      attention_varlen_backward(s, q, k, v, out, lse, dout, seg.gpu, dq, dk, dv, false);
    } else {
      attention_forward(s, q, k, v, glen, out, lse);
      attention_backward(s, q, k, v, out, lse, dout, glen, dq, dk, dv, false);
    }
    return std::vector<Tensor>{out.to_cpu(DType::f64), dk.to_cpu(DType::f64), dv.to_cpu(DType::f64), dq.to_cpu(DType::f64)};
  };
  const auto a = run(false), b = run(true);
  const char* names[] = {"out", "dk", "dv", "dq"};
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(rel_l2(b[i], a[i]), 0.0) << names[i];
  // dq sums key tiles with f32 atomics in a launch-dependent order: equal to rounding.
  EXPECT_LT(rel_l2(b[3], a[3]), 1e-5) << names[3];
}

TEST(CudaOps, RopeAtPositions) {
  ST_REQUIRE_GPU();
  Rng rng(39);
  const int64_t N = 45, H = 3;
  Tensor pos = Tensor::empty({N}, DType::i32);
  for (int64_t n = 0; n < N; ++n) pos.ptr<int32_t>()[n] = static_cast<int32_t>((n * 7) % 23);  // restarts, repeats
  Tensor gpos = Tensor::empty({N}, DType::i32, Device::cuda);
  gpos.copy_from(pos);
  for (const int64_t d : {int64_t{64}, int64_t{24}}) {  // the 16-byte vector kernel and the scalar one
    Tensor x = random_bf16_values({N, H * d}, rng);
    RopeTables ct = rope_tables(128, d, 10000.0, Device::cpu), gt = rope_tables(128, d, 10000.0, Device::cuda);
    Tensor ref = x.clone(MemCategory::other);
    rope_forward(ref, 1, N, ct, pos);
    Tensor g = to_device(x, DType::bf16);
    rope_forward(g, 1, N, gt, gpos);
    EXPECT_LT(rel_l2(g, ref), kBf16Tol) << "D=" << d;
    rope_backward(g, 1, N, gt, gpos);
    EXPECT_LT(rel_l2(g, x), kBf16Tol) << "D=" << d;
  }
}

// attention_backward with AttentionRope (RoPE's backward on dq and dk inside the kernels that
// store them, for head dims 16-128; the separate pass for others) against the CPU reference
// (f64) of the attention backward followed by rope_backward; batched (padded rows, positions
// 0..T-1 or given) and varlen (packed documents, positions restarting at 0, or the stream's). Tolerances as
// attention_case: the fused path rounds once, the separate one twice.
double rope_backward_case(int64_t B, int64_t T, int64_t Hq, int64_t Hkv, int64_t D, bool varlen, bool given_positions,
                          uint64_t seed) {
  Rng rng(seed);
  const int64_t N = B * T;
  AttentionShape s{B, T, Hq, Hkv, D, true, 1.0 / std::sqrt(static_cast<double>(D))};
  Tensor q = random_bf16_values({N, Hq * D}, rng, 2.0), k = random_bf16_values({N, Hkv * D}, rng, 2.0);
  Tensor v = random_bf16_values({N, Hkv * D}, rng), dout = random_bf16_values({N, Hq * D}, rng);
  Tensor lengths, glengths, pos, gpos;
  SegPair seg;
  if (varlen) {  // documents of 37, 1, 70 and T - 108 tokens per row (B rows), positions restarting
    Segs parts;
    for (int64_t b = 0; b < B; ++b)
      for (const int64_t len : {int64_t{37}, int64_t{1}, int64_t{70}, T - 108})
        parts.push_back({static_cast<int32_t>(len), static_cast<int32_t>(len)});
    seg = make_segments(parts);
  } else {
    lengths = Tensor::empty({B}, DType::i32);
    for (int64_t b = 0; b < B; ++b) lengths.ptr<int32_t>()[b] = static_cast<int32_t>(std::max<int64_t>(1, T - 13 * b));
    glengths = Tensor::empty({B}, DType::i32, Device::cuda);
    glengths.copy_from(lengths);
  }
  if (given_positions) {
    pos = Tensor::empty({N}, DType::i32);
    int64_t n = 0;
    if (varlen) {
      for (int64_t i = 0; i < seg.cpu.count; ++i)
        for (int32_t p = 0; p < seg.cu.ptr<int32_t>()[i + 1] - seg.cu.ptr<int32_t>()[i]; ++p) pos.ptr<int32_t>()[n++] = p;
    } else {
      for (; n < N; ++n) pos.ptr<int32_t>()[n] = static_cast<int32_t>((n * 7) % 301);
    }
    gpos = Tensor::empty({N}, DType::i32, Device::cuda);
    gpos.copy_from(pos);
  }
  const RopeTables ct = rope_tables(512, D, 10000.0, Device::cpu), gt = rope_tables(512, D, 10000.0, Device::cuda);
  Tensor out = Tensor::empty({N, Hq * D}, DType::f64), lse = Tensor::empty(varlen ? Shape{Hq, N} : Shape{N, Hq}, DType::f64);
  Tensor dq = Tensor::zeros(q.shape(), DType::f64), dk = Tensor::zeros(k.shape(), DType::f64), dv = Tensor::zeros(v.shape(), DType::f64);
  if (varlen) {
    attention_varlen_forward(s, q, k, v, seg.cpu, out, lse);
    attention_varlen_backward(s, q, k, v, out, lse, dout, seg.cpu, dq, dk, dv, false);
  } else {
    attention_forward(s, q, k, v, lengths, out, lse);
    attention_backward(s, q, k, v, out, lse, dout, lengths, dq, dk, dv, false);
  }
  rope_backward(dq, B, T, ct, pos);
  rope_backward(dk, B, T, ct, pos);

  Tensor gq = to_device(q, DType::bf16), gk = to_device(k, DType::bf16), gv = to_device(v, DType::bf16);
  Tensor gdout = to_device(dout, DType::bf16);
  Tensor gout = Tensor::empty(out.shape(), DType::bf16, Device::cuda), glse = Tensor::empty(lse.shape(), DType::f32, Device::cuda);
  // Gradients start as garbage: the fused path writes every element.
  Tensor gdq = to_device(random_bf16_values(q.shape(), rng), DType::bf16);
  Tensor gdk = to_device(random_bf16_values(k.shape(), rng), DType::bf16);
  Tensor gdv = to_device(random_bf16_values(v.shape(), rng), DType::bf16);
  const AttentionRope rope{&gt, gpos};
  if (varlen) {
    attention_varlen_forward(s, gq, gk, gv, seg.gpu, gout, glse);
    attention_varlen_backward(s, gq, gk, gv, gout, glse, gdout, seg.gpu, gdq, gdk, gdv, false, &rope);
  } else {
    attention_forward(s, gq, gk, gv, glengths, gout, glse);
    attention_backward(s, gq, gk, gv, gout, glse, gdout, glengths, gdq, gdk, gdv, false, Tensor(), nullptr, &rope);
  }
  const std::string tag = str("B=", B, " T=", T, " Hq=", Hq, " Hkv=", Hkv, " D=", D, varlen ? " varlen" : " batched",
                              given_positions ? " positions" : "");
  double worst = 0;
  auto check = [&](double err, double tol, const char* what) {
    EXPECT_LT(err, tol) << what << " " << tag;
    worst = std::max(worst, err / tol);
  };
  check(rel_l2(gdq, dq), 2 * kBf16Tol, "dq");
  check(rel_l2(gdk, dk), 2 * kBf16Tol, "dk");
  check(rel_l2(gdv, dv), 2 * kBf16Tol, "dv");
  // The same call without rope, then rope_backward on the GPU: within one more bf16 rounding.
  Tensor sdq = Tensor::zeros(q.shape(), DType::bf16, Device::cuda), sdk = Tensor::zeros(k.shape(), DType::bf16, Device::cuda);
  Tensor sdv = Tensor::zeros(v.shape(), DType::bf16, Device::cuda);
  if (varlen) attention_varlen_backward(s, gq, gk, gv, gout, glse, gdout, seg.gpu, sdq, sdk, sdv, false);
  else attention_backward(s, gq, gk, gv, gout, glse, gdout, glengths, sdq, sdk, sdv, false);
  rope_backward(sdq, B, T, gt, gpos);
  rope_backward(sdk, B, T, gt, gpos);
  check(rel_l2(gdq, sdq.to_cpu(DType::f64)), kBf16Tol, "dq vs separate rope");
  check(rel_l2(gdk, sdk.to_cpu(DType::f64)), kBf16Tol, "dk vs separate rope");
  EXPECT_EQ(rel_l2(gdv, sdv.to_cpu(DType::f64)), 0.0) << "dv " << tag;
  return worst;
}

TEST(CudaOps, AttentionBackwardWithRope) {
  ST_REQUIRE_GPU();
  EXPECT_LT(rope_backward_case(2, 150, 8, 2, 128, false, false, 41), 1.0);  // the 7B path (GQA here), padded rows
  EXPECT_LT(rope_backward_case(2, 150, 4, 4, 64, false, true, 42), 1.0);    // given positions
  EXPECT_LT(rope_backward_case(1, 130, 4, 2, 32, false, false, 43), 1.0);
  EXPECT_LT(rope_backward_case(1, 70, 2, 1, 16, false, false, 44), 1.0);
  EXPECT_LT(rope_backward_case(1, 90, 2, 1, 24, false, true, 45), 1.0);     // not fused: rope_backward after
  EXPECT_LT(rope_backward_case(2, 200, 4, 2, 128, true, true, 46), 1.0);    // packed documents
  EXPECT_LT(rope_backward_case(1, 180, 4, 2, 64, true, true, 47), 1.0);
  EXPECT_LT(rope_backward_case(2, 150, 4, 2, 64, true, false, 48), 1.0);  // varlen, stream positions 0..N-1
}

TEST(CudaOps, SwiGLUAndDropout) {
  ST_REQUIRE_GPU();
  Rng rng(9);
  const int64_t n = 10007;
  Tensor g = random_bf16_values({n}, rng, 4.0), u = random_bf16_values({n}, rng, 2.0), dh = random_bf16_values({n}, rng);
  Tensor h = Tensor::empty({n}, DType::f64), dg = Tensor::zeros({n}, DType::f64), du = Tensor::zeros({n}, DType::f64);
  swiglu_forward(g, u, h);
  swiglu_backward(dh, g, u, dg, du);
  Tensor gg = to_device(g, DType::bf16), gu = to_device(u, DType::bf16), gdh = to_device(dh, DType::bf16);
  Tensor gh = Tensor::empty({n}, DType::bf16, Device::cuda);
  Tensor gdg = Tensor::zeros({n}, DType::bf16, Device::cuda), gdu = Tensor::zeros({n}, DType::bf16, Device::cuda);
  swiglu_forward(gg, gu, gh);
  swiglu_backward(gdh, gg, gu, gdg, gdu);
  EXPECT_LT(rel_l2(gh, h), kBf16Tol);
  EXPECT_LT(rel_l2(gdg, dg), kBf16Tol);
  EXPECT_LT(rel_l2(gdu, du), kBf16Tol);
  // Dropout: the mask is the same counter-based function on both devices.
  Tensor x = random_bf16_values({n}, rng), ref = Tensor::empty({n}, DType::f64);
  dropout_apply(x, ref, 0.25, 1234, 77, false);
  Tensor gx = to_device(x, DType::f32), gout = Tensor::empty({n}, DType::f32, Device::cuda);
  dropout_apply(gx, gout, 0.25, 1234, 77, false);
  const Tensor back = gout.to_cpu(DType::f64);
  int64_t same_zero = 0;
  for (int64_t i = 0; i < n; ++i) same_zero += (back.ptr<double>()[i] == 0) == (ref.ptr<double>()[i] == 0);
  EXPECT_EQ(same_zero, n) << "dropout masks differ between CPU and GPU";
  EXPECT_LT(rel_l2(gout, ref), 1e-6);
}

// T5: gated GELU and ReLU (bf16 against the f64 CPU reference), and the relative-position
// bias lookup (exact) and its atomic scatter (f32).
TEST(CudaOps, T5GatedGeluReluAndRelativeBias) {
  ST_REQUIRE_GPU();
  Rng rng(31);
  const int64_t n = 10007;
  Tensor g = random_bf16_values({n}, rng, 4.0), u = random_bf16_values({n}, rng, 2.0), dh = random_bf16_values({n}, rng);
  Tensor h = Tensor::empty({n}, DType::f64), dg = Tensor::zeros({n}, DType::f64), du = Tensor::zeros({n}, DType::f64);
  geglu_forward(g, u, h);
  geglu_backward(dh, g, u, dg, du);
  Tensor gg = to_device(g, DType::bf16), gu = to_device(u, DType::bf16), gdh = to_device(dh, DType::bf16);
  Tensor gh = Tensor::empty({n}, DType::bf16, Device::cuda);
  Tensor gdg = Tensor::zeros({n}, DType::bf16, Device::cuda), gdu = Tensor::zeros({n}, DType::bf16, Device::cuda);
  geglu_forward(gg, gu, gh);
  geglu_backward(gdh, gg, gu, gdg, gdu);
  EXPECT_LT(rel_l2(gh, h), kBf16Tol);
  EXPECT_LT(rel_l2(gdg, dg), kBf16Tol);
  EXPECT_LT(rel_l2(gdu, du), kBf16Tol);
  Tensor r = Tensor::empty({n}, DType::f64), dr = Tensor::zeros({n}, DType::f64);
  relu_forward(g, r);
  relu_backward(dh, g, dr, false);
  Tensor gr = Tensor::empty({n}, DType::bf16, Device::cuda), gdr = Tensor::zeros({n}, DType::bf16, Device::cuda);
  relu_forward(gg, gr);
  relu_backward(gdh, gg, gdr, false);
  EXPECT_EQ(rel_l2(gr, r), 0.0);
  EXPECT_EQ(rel_l2(gdr, dr), 0.0);

  const int64_t NB = 32, H = 6, Tq = 45, Tk = 131;
  for (bool bidirectional : {true, false}) {
    Tensor table = random_bf16_values({NB, H}, rng), dbias = random_bf16_values({H, Tq, Tk}, rng);
    const Tensor cb = t5_relative_buckets(Tq, Tk, bidirectional, NB, 128, Device::cpu);
    const Tensor gb = t5_relative_buckets(Tq, Tk, bidirectional, NB, 128, Device::cuda);
    Tensor bias = Tensor::empty({H, Tq, Tk}, DType::f64), dt = Tensor::zeros({NB, H}, DType::f64);
    relative_bias_forward(table, cb, Tq, Tk, bias);
    relative_bias_backward(dbias, cb, Tq, Tk, dt);
    // bf16 table, f32 bias (the attention's bias dtype on CUDA).
    Tensor gt = to_device(table, DType::bf16), gbias = Tensor::empty({H, Tq, Tk}, DType::f32, Device::cuda);
    Tensor gdt = Tensor::zeros({NB, H}, DType::f32, Device::cuda);
    relative_bias_forward(gt, gb, Tq, Tk, gbias);
    relative_bias_backward(to_device(dbias, DType::bf16), gb, Tq, Tk, gdt);
    EXPECT_EQ(rel_l2(gbias, bias), 0.0) << "bidirectional " << bidirectional;
    EXPECT_LT(rel_l2(gdt, dt), 1e-6) << "bidirectional " << bidirectional;
    // Tensor parallelism: a [NB, H/2] slice of heads gives those heads' rows of the bias.
    const Tensor half = shard_cols(table, 2, 1);
    Tensor ghalf = to_device(half, DType::bf16), gbh = Tensor::empty({H / 2, Tq, Tk}, DType::f32, Device::cuda);
    relative_bias_forward(ghalf, gb, Tq, Tk, gbh);
    EXPECT_EQ(rel_l2(gbh, bias.slice(H / 2, H).clone(MemCategory::other)), 0.0) << "bidirectional " << bidirectional;
  }
}

// The relative-bias gradient as a per-block bucket histogram + ordered sum of the chunks: T5's
// encoder (bidirectional) and decoder (causal) buckets at the FlanT5 shape (16 heads, 512 and
// 128 positions: many chunks per head, long runs of one bucket), rectangular and odd shapes, a
// taller table (fewer threads per block) and one too tall for the shared histogram (the atomic
// fallback); f32 and bf16 gradients; accumulating into a non-zero table. Tolerance: the f32 sums
// run in chains of at most a few thousand additions, so the relative L2 error is about
// 2^-24 * sqrt(4096) = 4e-6 (a lost element would be ~1e-4 at the largest shape); the two-stage
// path gives the same bits twice.
TEST(CudaOps, RelativeBiasGradientTwoStage) {
  ST_REQUIRE_GPU();
  Rng rng(22);
  struct Case { int64_t NB, H, Tq, Tk; bool bidirectional; DType dt; };
  for (const Case c : {Case{32, 16, 512, 512, true, DType::f32}, Case{32, 16, 128, 128, false, DType::f32},
                       Case{32, 6, 45, 131, true, DType::bf16}, Case{32, 5, 131, 45, false, DType::f32},
                       Case{100, 3, 77, 200, true, DType::f32}, Case{500, 2, 33, 65, true, DType::bf16},
                       Case{32, 1, 1, 1, false, DType::f32}}) {
    const Tensor cb = t5_relative_buckets(c.Tq, c.Tk, c.bidirectional, c.NB, 128, Device::cpu);
    const Tensor gb = t5_relative_buckets(c.Tq, c.Tk, c.bidirectional, c.NB, 128, Device::cuda);
    Tensor dbias = random_bf16_values({c.H, c.Tq, c.Tk}, rng), dt0 = random_bf16_values({c.NB, c.H}, rng);
    Tensor dt = dt0.clone(MemCategory::other);
    relative_bias_backward(dbias, cb, c.Tq, c.Tk, dt);
    Tensor gdbias = to_device(dbias, c.dt), gdt = to_device(dt0, DType::f32);
    relative_bias_backward(gdbias, gb, c.Tq, c.Tk, gdt);
    const std::string what = std::to_string(c.NB) + " buckets, " + std::to_string(c.H) + "x" + std::to_string(c.Tq) + "x" +
                             std::to_string(c.Tk) + (c.bidirectional ? " bidirectional" : " causal");
    EXPECT_LT(rel_l2(gdt, dt), 4e-6) << what;
    if (c.NB > 384) continue;  // the atomic fallback: order not fixed
    Tensor gdt2 = to_device(dt0, DType::f32);
    relative_bias_backward(gdbias, gb, c.Tq, c.Tk, gdt2);
    const Tensor a = gdt.to_cpu(DType::f32), b = gdt2.to_cpu(DType::f32);
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.nbytes()), 0) << what << ": not deterministic";
  }
}

TEST(CudaOps, EmbeddingGatherAndScatter) {
  ST_REQUIRE_GPU();
  Rng rng(10);
  const int64_t V = 301, C = 77, N = 513;
  Tensor table = random_bf16_values({V, C}, rng), dout = random_bf16_values({N, C}, rng);
  Tensor ids = Tensor::empty({N}, DType::i32);
  for (int64_t i = 0; i < N; ++i) ids.ptr<int32_t>()[i] = static_cast<int32_t>(rng.below(50));  // many repeats
  Tensor out = Tensor::empty({N, C}, DType::f64), dt = Tensor::zeros({V, C}, DType::f64);
  embedding_forward(ids, table, out);
  embedding_backward(ids, dout, dt);
  Tensor gids = Tensor::empty({N}, DType::i32, Device::cuda);
  gids.copy_from(ids);
  Tensor gtable = to_device(table, DType::bf16), gdout = to_device(dout, DType::bf16);
  Tensor gout = Tensor::empty({N, C}, DType::bf16, Device::cuda), gdt = Tensor::zeros({V, C}, DType::f32, Device::cuda);
  embedding_forward(gids, gtable, gout);
  embedding_backward(gids, gdout, gdt);
  EXPECT_EQ(rel_l2(gout, out), 0.0);  // a gather is exact
  EXPECT_LT(rel_l2(gdt, dt), 1e-6);   // f32 sums of bf16 values
}

TEST(CudaOps, CrossEntropyFused) {
  ST_REQUIRE_GPU();
  Rng rng(11);
  for (int64_t V : {17, 32000}) {
    const int64_t N = 67;
    Tensor logits = random_bf16_values({N, V}, rng, 6.0);
    Tensor targets = Tensor::empty({N}, DType::i32), weight = Tensor::empty({N}, DType::f32);
    for (int64_t n = 0; n < N; ++n) {
      targets.ptr<int32_t>()[n] = n % 9 == 4 ? -1 : static_cast<int32_t>(rng.below(static_cast<uint64_t>(V)));
      weight.ptr<float>()[n] = n % 7 == 3 ? 0.0f : 1.0f / 50;
    }
    Tensor losses = Tensor::empty({N}, DType::f64), grad = logits.clone(MemCategory::other);
    cross_entropy(grad, targets, weight, losses, true);
    Tensor gl = to_device(logits, DType::bf16), gt = Tensor::empty({N}, DType::i32, Device::cuda);
    Tensor gw = Tensor::empty({N}, DType::f32, Device::cuda), glosses = Tensor::empty({N}, DType::f32, Device::cuda);
    gt.copy_from(targets);
    gw.copy_from(weight);
    cross_entropy(gl, gt, gw, glosses, true);
    EXPECT_LT(rel_l2(glosses, losses), 1e-5) << "V=" << V;  // f32 from exact bf16 logits
    EXPECT_LT(rel_l2(gl, grad), kBf16Tol) << "V=" << V;
  }
}

TEST(CudaOps, AdamWWithWorkingCopyAndNorms) {
  ST_REQUIRE_GPU();
  Rng rng(12);
  for (const int64_t n : {int64_t{4099}, int64_t{4096}}) {  // the scalar kernel and the 4-wide one
  SCOPED_TRACE("n = " + std::to_string(n));
  Tensor p = random_bf16_values({n}, rng), g = random_bf16_values({n}, rng, 0.1);
  Tensor m = Tensor::zeros({n}, DType::f64), v = Tensor::zeros({n}, DType::f64);
  Tensor gp = to_device(p, DType::f32), gg = to_device(g, DType::f32);
  Tensor gm = Tensor::zeros({n}, DType::f32, Device::cuda), gv = Tensor::zeros({n}, DType::f32, Device::cuda);
  Tensor work = Tensor::empty({n}, DType::bf16, Device::cuda);
  for (int64_t step = 1; step <= 3; ++step) {
    AdamWHyper h{1e-3, 0.9, 0.999, 1e-8, 0.01, step};
    adamw_update(p, g, m, v, h);
    adamw_update(gp, gg, gm, gv, h, &work);
  }
  EXPECT_LT(rel_l2(gp, p), 1e-6);
  EXPECT_LT(rel_l2(work, p), 4e-3);  // the bf16 copy is the f32 master rounded
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += g.ptr<double>()[i] * g.ptr<double>()[i];
  EXPECT_NEAR(sum_squares(gg), ss, 1e-5 * ss);
  scale_inplace(gg, 0.5);
  EXPECT_NEAR(sum_squares(gg), 0.25 * ss, 1e-5 * ss);
  }
}

// The gradient norm's one-launch sum over many tensors: f32 and bf16, empty, one-element, exactly
// one chunk (32768), one more, unaligned views (the scalar loop), a tensor dominating the sum (a
// skipped chunk or tensor would show); the cached tensor table must follow a changed list.
// Every term is positive, so the relative error is at most the f32 chain length (64 per thread
// + 5 + 5 additions) * 2^-24 = 4.4e-6 per chunk: 1e-5.
TEST(CudaOps, SumSquaresTotalManyTensors) {
  ST_REQUIRE_GPU();
  Rng rng(23);
  std::vector<Tensor> host, dev;
  for (const int64_t n : {int64_t{0}, int64_t{1}, int64_t{3}, int64_t{4095}, int64_t{32768}, int64_t{32769},
                          int64_t{100001}, int64_t{65536 * 3 + 5}, int64_t{7}})
    for (const DType dt : {DType::f32, DType::bf16}) {
      host.push_back(random_bf16_values({n}, rng));
      dev.push_back(to_device(host.back(), dt));
    }
  Tensor big = Tensor::empty({1}, DType::f64);
  big.ptr<double>()[0] = 512.0;
  host.push_back(big);
  dev.push_back(to_device(big, DType::f32));
  Tensor wide = random_bf16_values({70001}, rng);
  Tensor gwide = to_device(wide, DType::f32);
  host.push_back(wide.slice(1, 70001).clone(MemCategory::other));
  dev.push_back(gwide.slice(1, 70001));  // 4-byte offset: not 16-byte aligned
  const auto cpu_sum = [](const std::vector<Tensor>& ts) {
    double s = 0;
    for (const Tensor& t : ts)
      for (int64_t i = 0; i < t.numel(); ++i) s += t.ptr<double>()[i] * t.ptr<double>()[i];
    return s;
  };
  const auto gpu_sum = [](const std::vector<Tensor>& ts) {
    std::vector<const Tensor*> ps;
    for (const Tensor& t : ts) ps.push_back(&t);
    return sum_squares_total(ps);
  };
  const double ref = cpu_sum(host), got = gpu_sum(dev);
  EXPECT_NEAR(got, ref, 1e-5 * ref);
  EXPECT_EQ(gpu_sum(dev), got);  // the same bits again (cached table, fixed order)
  // A shorter list (the big element dropped) and then the full one again.
  std::vector<Tensor> host2(host.begin(), host.end() - 2), dev2(dev.begin(), dev.end() - 2);
  const double ref2 = cpu_sum(host2);
  EXPECT_NEAR(gpu_sum(dev2), ref2, 1e-5 * ref2);
  EXPECT_EQ(gpu_sum(dev), got);
  EXPECT_EQ(gpu_sum({}), 0.0);
}

// The multi-tensor AdamW (one launch over a table of tensors) against the per-tensor kernels,
// bit for bit: sizes around the 4-wide path and the 8192-element chunk, views at a 4-byte offset
// (the scalar path), bf16 working copies aligned, at a 2-byte offset (the scalar path) and
// absent, with and without weight decay; three steps, one with a clip factor, the list reversed
// in the middle one (a second table, then the first again). The multi kernel runs the 4-wide
// path with a scalar tail where the per-tensor one runs the scalar kernel throughout (n % 4 != 0),
// so equal bits also show that the two paths do the same arithmetic. Guard elements on either
// side of each view must keep their values; the masters must match the f64 CPU update.
TEST(CudaOps, AdamWMultiEqualsPerTensorKernelBitwise) {
  ST_REQUIRE_GPU();
  Rng rng(31);
  struct Case { int64_t n, offset; int work; bool decay; };  // work: 0 none, 1 bf16, 2 bf16 at a 2-byte offset
  const std::vector<Case> cases = {{1, 0, 0, true},     {3, 0, 1, false},    {4, 0, 1, true},     {4097, 0, 1, true},
                                   {4097, 0, 0, false}, {8192, 0, 1, true},  {8193, 0, 2, true},  {65539, 0, 1, false},
                                   {4096, 1, 1, true},  {4099, 1, 0, true},  {1, 1, 2, false},    {70000, 0, 2, true},
                                   {16, 0, 0, true}};
  struct Arrays { Tensor p, g, m, v, w; };  // whole buffers: [offset guard] view [guard]
  struct Views { Tensor p, g, m, v, w; };
  std::vector<Tensor> host_p, host_g, host_m, host_v;
  std::vector<Arrays> bufs[2];
  std::vector<Views> views[2];
  for (const Case& c : cases) {
    const int64_t len = c.offset + c.n + 1;
    host_p.push_back(random_bf16_values({len}, rng));
    host_g.push_back(random_bf16_values({len}, rng, 0.1));
    host_m.push_back(random_bf16_values({len}, rng, 0.01));
    Tensor v = random_bf16_values({len}, rng, 0.01);
    for (int64_t i = 0; i < len; ++i) v.ptr<double>()[i] *= v.ptr<double>()[i];
    host_v.push_back(v);
    for (int side = 0; side < 2; ++side) {
      Arrays a{to_device(host_p.back(), DType::f32), to_device(host_g.back(), DType::f32),
               to_device(host_m.back(), DType::f32), to_device(host_v.back(), DType::f32), Tensor()};
      const int64_t wo = c.work == 2 ? 1 : 0;
      if (c.work) a.w = to_device(random_bf16_values({wo + c.n + 1}, rng), DType::bf16);
      const auto view = [&](const Tensor& t) { return t.slice(c.offset, c.offset + c.n); };
      views[side].push_back(Views{view(a.p), view(a.g), view(a.m), view(a.v), c.work ? a.w.slice(wo, wo + c.n) : Tensor()});
      bufs[side].push_back(std::move(a));
    }
    // Both sides' working copies start equal.
    if (c.work) bufs[1].back().w.copy_from(bufs[0].back().w);
  }
  std::vector<Tensor> cpu_p, cpu_m, cpu_v;  // the f64 reference on the views' elements
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto view = [&](const Tensor& t) { return t.slice(cases[i].offset, cases[i].offset + cases[i].n).clone(MemCategory::other); };
    cpu_p.push_back(view(host_p[i]));
    cpu_m.push_back(view(host_m[i]));
    cpu_v.push_back(view(host_v[i]));
  }
  for (int64_t step = 1; step <= 3; ++step) {
    AdamWHyper h{1e-3, 0.9, 0.999, 1e-8, 0.01, step};
    h.grad_scale = step == 2 ? 0.5 : 1.0;
    std::vector<AdamWTensors> list;
    for (size_t i = 0; i < cases.size(); ++i) {
      AdamWHyper hi = h;
      if (!cases[i].decay) hi.weight_decay = 0;
      Views& r = views[0][i];
      adamw_update(r.p, r.g, r.m, r.v, hi, cases[i].work ? &r.w : nullptr);
      Views& g = views[1][i];
      list.push_back(AdamWTensors{&g.p, &g.g, &g.m, &g.v, cases[i].work ? &g.w : nullptr, cases[i].decay});
      const Tensor cg = host_g[i].slice(cases[i].offset, cases[i].offset + cases[i].n).clone(MemCategory::other);
      adamw_update(cpu_p[i], cg, cpu_m[i], cpu_v[i], hi);
    }
    if (step == 2) std::reverse(list.begin(), list.end());
    adamw_update_multi(list, h);
  }
  const auto same_bits = [](const Tensor& a, const Tensor& b) {
    const Tensor ha = a.to_cpu(a.dtype()), hb = b.to_cpu(b.dtype());
    return ha.nbytes() == hb.nbytes() && std::memcmp(ha.data(), hb.data(), ha.nbytes()) == 0;
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    const Case& c = cases[i];
    SCOPED_TRACE("n = " + std::to_string(c.n) + ", offset " + std::to_string(c.offset) + ", work " +
                 std::to_string(c.work) + ", decay " + std::to_string(c.decay));
    const Arrays& r = bufs[0][i];
    const Arrays& g = bufs[1][i];
    // Whole buffers: the views' bits and the untouched guards.
    EXPECT_TRUE(same_bits(r.p, g.p));
    EXPECT_TRUE(same_bits(r.m, g.m));
    EXPECT_TRUE(same_bits(r.v, g.v));
    if (c.work) {
      EXPECT_TRUE(same_bits(r.w, g.w));
      // The working copy is the master rounded to bf16.
      const Tensor wb = views[1][i].w.to_cpu(DType::bf16), pb = views[1][i].p.to_cpu(DType::bf16);
      EXPECT_EQ(std::memcmp(wb.data(), pb.data(), wb.nbytes()), 0);
    }
    const Tensor gp = g.p.to_cpu(DType::f64);
    for (int64_t k = 0; k < c.offset; ++k) EXPECT_EQ(gp.ptr<double>()[k], host_p[i].ptr<double>()[k]) << "guard " << k;
    EXPECT_EQ(gp.ptr<double>()[c.offset + c.n], host_p[i].ptr<double>()[c.offset + c.n]) << "guard after";
    EXPECT_LT(rel_l2(views[1][i].p, cpu_p[i]), 1e-6);
  }
}

// zero_tensors over views of one byte buffer: u8, bf16 and f32 ranges at odd, even, 4-byte and
// 16-byte aligned offsets, of 1 to ~200000 bytes (inside one 64 KiB chunk, across chunks, with
// head and tail bytes around the 16-byte aligned middle), an empty view: every listed byte
// becomes 0 and every other byte keeps its value. Then another list (a second table) and the
// first again.
TEST(CudaOps, ZeroTensorsZeroesExactlyTheListedRanges) {
  ST_REQUIRE_GPU();
  const int64_t total = 700000;
  Tensor host = Tensor::empty({total}, DType::u8);
  for (int64_t i = 0; i < total; ++i) host.ptr<uint8_t>()[i] = static_cast<uint8_t>(1 + (i * 7919) % 255);  // never 0
  Tensor buf = Tensor::empty({total}, DType::u8, Device::cuda);
  struct Range { int64_t offset, bytes; DType dt; };
  const std::vector<Range> first = {{1, 1, DType::u8},          {5, 15, DType::u8},           {33, 17, DType::u8},
                                    {64, 16, DType::u8},        {99, 31, DType::u8},          {200, 6, DType::bf16},
                                    {1024, 65536, DType::u8},   {70001, 65539, DType::u8},    {140002, 100002, DType::bf16},
                                    {260000, 120004, DType::f32}, {400004, 200000, DType::f32}, {650000, 0, DType::u8},
                                    {650001, 2, DType::u8}};
  const std::vector<Range> second = {{0, 3, DType::u8}, {5, 15, DType::u8}, {300, 4096, DType::f32}, {610003, 70001, DType::u8}};
  const auto check = [&](const std::vector<Range>& ranges) {
    buf.copy_from(host);
    std::vector<Tensor> views;
    for (const Range& r : ranges)
      views.push_back(buf.view_as(r.dt, static_cast<size_t>(r.offset), Shape{r.bytes / static_cast<int64_t>(dtype_size(r.dt))}));
    std::vector<Tensor*> list;
    for (Tensor& v : views) list.push_back(&v);
    zero_tensors(list);
    Tensor want = host.clone(MemCategory::other), back = Tensor::empty({total}, DType::u8);
    for (const Range& r : ranges) std::memset(want.ptr<uint8_t>() + r.offset, 0, static_cast<size_t>(r.bytes));
    back.copy_from(buf);
    int64_t wrong = 0, first_wrong = -1;
    for (int64_t i = 0; i < total; ++i)
      if (back.ptr<uint8_t>()[i] != want.ptr<uint8_t>()[i] && wrong++ == 0) first_wrong = i;
    EXPECT_EQ(wrong, 0) << "first wrong byte " << first_wrong;
  };
  check(first);
  check(second);
  check(first);
  zero_tensors({});  // nothing, no launch
}

TEST(CudaOps, CounterBasedInitMatchesCpu) {
  ST_REQUIRE_GPU();
  Tensor c = Tensor::empty({3, 1001}, DType::f32), u = Tensor::empty({777}, DType::f32);
  fill_normal(c, 42, 0.0, 0.02);
  fill_uniform(u, 43, -0.5, 0.5);
  Tensor gc = Tensor::empty({3, 1001}, DType::f32, Device::cuda), gu = Tensor::empty({777}, DType::f32, Device::cuda);
  fill_normal(gc, 42, 0.0, 0.02);
  fill_uniform(gu, 43, -0.5, 0.5);
  EXPECT_LT(rel_l2(gc, c), 1e-6);
  EXPECT_LT(rel_l2(gu, u), 1e-6);
  // f32 -> bf16 conversion rounds to nearest even exactly as the CPU does.
  Tensor gb = Tensor::empty({3, 1001}, DType::bf16, Device::cuda);
  convert_copy(gb, gc);
  const Tensor back = gb.to_cpu(DType::bf16), cpu_b = gc.to_cpu(DType::bf16);
  EXPECT_EQ(std::memcmp(back.data(), cpu_b.data(), back.nbytes()), 0);
}

TEST(CudaCalibrate, GpuTimeIsMeasuredBehindASpinAndTheHostsLaunchApart) {
  ST_REQUIRE_GPU();
#ifdef SHARDTUNE_CUDA
  // 200 small GEMMs enqueued behind the spin: the host finishes before the GPU starts them, and
  // both parts are measured (structure only: no speed is asserted).
  Tensor A = Tensor::zeros({64, 64}, DType::bf16, Device::cuda), B = A.clone(MemCategory::other), C = A.clone(MemCategory::other);
  matmul(C, A, false, B, true, 1.0, 0.0);
  const cuda::BlockedTiming t = cuda::time_blocked([&] { matmul(C, A, false, B, true, 1.0, 0.0); }, 200);
  EXPECT_TRUE(t.hidden);
  EXPECT_GT(t.gpu_seconds, 0);
  EXPECT_GT(t.host_seconds, 0);
  EXPECT_TRUE(std::isfinite(t.gpu_seconds) && std::isfinite(t.host_seconds));
  // calibrate on the GPU writes each family's host time.
  CalibrateOptions o;
  o.device = Device::cuda;
  o.seconds = 0.5;
  o.small = true;
  o.sustain_seconds = 0;
  const DeviceProfile p = calibrate_device(o);
  for (int i = 0; i < kNumOpFamilies; ++i) {
    const FamilyProfile& f = p.families[static_cast<size_t>(i)];
    EXPECT_GT(f.host_s, 0) << op_family_name(static_cast<OpFamily>(i));
    EXPECT_LT(f.host_s, 1e-3) << op_family_name(static_cast<OpFamily>(i));
  }
#endif
}

}  // namespace
}  // namespace st
