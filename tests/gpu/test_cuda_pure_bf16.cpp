// master_weights = none on the GPU: the pure-bf16 AdamW kernel against the CPU op (the same bits:
// the f32 arithmetic and the stochastic rounding are spelled out alike), and every op that adds
// a parameter gradient writing into a bf16 gradient: the f32 sum it computes for an f32
// gradient, added to the bf16 value and rounded once.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "ops/bias.hpp"
#include "ops/embedding.hpp"
#include "ops/init.hpp"
#include "ops/matmul.hpp"
#include "ops/norm.hpp"
#include "ops/optim.hpp"
#include "ops/relbias.hpp"
#include "tests/gpu/gpu_util.hpp"

namespace st {
namespace {

using test::random_bf16_values;
using test::to_device;

bool same_bits(const Tensor& a, const Tensor& b) {
  const Tensor ha = a.to_cpu(a.dtype()), hb = b.to_cpu(b.dtype());
  return ha.nbytes() == hb.nbytes() && std::memcmp(ha.data(), hb.data(), ha.nbytes()) == 0;
}

// The multi-tensor kernel on views at 8-byte aligned and 2-byte offsets (4-wide and element by
// element), sizes around its 8192-element chunks and 4-element groups, with and without weight
// decay, some with a first element further along the rounding's stream (ZeRO-3 shards), beside
// an f32-master entry (its own launch), list order reversed at step 2 (each entry keeps its
// index): value, m and v are the CPU op's bits, and the guards around each view keep theirs.
TEST(CudaPureBf16, AdamWMatchesTheCpuBitwise) {
  ST_REQUIRE_GPU();
  Rng rng(51);
  struct Case { int64_t n, offset; bool decay; };
  const std::vector<Case> cases = {{1, 0, true},    {3, 1, false},    {4, 0, true},     {4097, 0, true},
                                   {4097, 1, false}, {8192, 0, true}, {8193, 4, true},  {65539, 2, false},
                                   {70000, 0, true}, {16, 3, true}};
  struct Side { std::vector<Tensor> p, g, m, v; };  // whole buffers: [offset guard] view [guard]
  Side host, dev;
  for (const Case& c : cases) {
    const int64_t len = c.offset + c.n + 1;
    Tensor v = random_bf16_values({len}, rng, 0.1);
    for (int64_t i = 0; i < len; ++i) v.ptr<double>()[i] *= v.ptr<double>()[i];
    const Tensor parts[] = {random_bf16_values({len}, rng), random_bf16_values({len}, rng, 0.1),
                            random_bf16_values({len}, rng, 0.01), v};
    std::vector<Tensor>* hs[] = {&host.p, &host.g, &host.m, &host.v};
    std::vector<Tensor>* ds[] = {&dev.p, &dev.g, &dev.m, &dev.v};
    for (int k = 0; k < 4; ++k) {
      hs[k]->push_back(parts[k].to_cpu(DType::bf16));
      ds[k]->push_back(to_device(parts[k], DType::bf16));
    }
  }
  // The f32-master entry in the same lists.
  Tensor hp = random_bf16_values({1000}, rng).to_cpu(DType::f32), hg = random_bf16_values({1000}, rng, 0.1).to_cpu(DType::f32);
  Tensor hm = Tensor::zeros({1000}, DType::f32), hv = Tensor::zeros({1000}, DType::f32);
  Tensor dp = to_device(hp, DType::f32), dg = to_device(hg, DType::f32), dm = to_device(hm, DType::f32),
         dv = to_device(hv, DType::f32);
  auto view = [&](const Tensor& t, size_t i) { return t.slice(cases[i].offset, cases[i].offset + cases[i].n); };
  std::vector<Tensor> keep;  // the views the lists point at
  for (int64_t step = 1; step <= 3; ++step) {
    AdamWHyper h{1e-3, 0.9, 0.999, 1e-8, 0.01, step};
    h.grad_scale = step == 2 ? 0.5 : 1.0;
    h.seed = 99;
    std::vector<AdamWTensors> lists[2];
    keep.clear();
    keep.reserve(8 * cases.size());
    for (size_t i = 0; i < cases.size(); ++i) {
      Side* sides[] = {&host, &dev};
      for (int s = 0; s < 2; ++s) {
        for (const std::vector<Tensor>* part : {&sides[s]->p, &sides[s]->g, &sides[s]->m, &sides[s]->v})
          keep.push_back(view((*part)[i], i));
        Tensor* t = &keep[keep.size() - 4];
        // Odd entries as ZeRO-3 shards: element 0 at a place further along the stream.
        lists[s].push_back(AdamWTensors{t, t + 1, t + 2, t + 3, nullptr, cases[i].decay, 10 + i, (i % 2) * 12345 * i});
      }
    }
    lists[0].push_back(AdamWTensors{&hp, &hg, &hm, &hv, nullptr, true, 0});
    lists[1].push_back(AdamWTensors{&dp, &dg, &dm, &dv, nullptr, true, 0});
    if (step == 2) std::reverse(lists[1].begin(), lists[1].end());
    adamw_update_multi(lists[0], h);
    adamw_update_multi(lists[1], h);
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("n = " + std::to_string(cases[i].n) + ", offset " + std::to_string(cases[i].offset));
    EXPECT_TRUE(same_bits(dev.p[i], host.p[i]));
    EXPECT_TRUE(same_bits(dev.m[i], host.m[i]));
    EXPECT_TRUE(same_bits(dev.v[i], host.v[i]));
  }
  EXPECT_LT(test::rel_l2(dp, hp), 1e-6);  // the f32-master entry (its own kernel)
}

// |x| of a CPU f64 tensor.
Tensor abs_of(const Tensor& t) {
  Tensor a = t.clone(MemCategory::other);
  for (int64_t i = 0; i < a.numel(); ++i) a.ptr<double>()[i] = std::fabs(a.ptr<double>()[i]);
  return a;
}

// got within one bf16 rounding of ref (2^-8 relative: bf16 keeps 8 significant bits, and
// rounding to nearest errs by at most half an ulp of 2^-7) plus the f32 sum's own error: at most
// (terms + 1) 2^-24 of mag, the sum of the absolute values of the terms and of the old value
// (the same CPU op on absolute values).
void expect_one_rounding(const Tensor& got, const Tensor& ref, const Tensor& mag, int64_t terms, const std::string& what) {
  const Tensor g = got.to_cpu(DType::f64);
  int64_t bad = 0;
  for (int64_t i = 0; i < ref.numel(); ++i) {
    const double r = ref.ptr<double>()[i], x = g.ptr<double>()[i];
    const double bound = std::ldexp(std::fabs(r), -8) + std::ldexp(static_cast<double>(terms + 1) * mag.ptr<double>()[i], -24);
    if (!(std::fabs(x - r) <= bound) && ++bad <= 3) ADD_FAILURE() << what << "[" << i << "] got " << x << " want " << r;
  }
  EXPECT_EQ(bad, 0) << what;
}

// The parameter-gradient ops with a bf16 gradient holding earlier values (they add): the weight
// GEMM (dW += dy^T x: cuBLASLt reads and writes bf16 C), the embedding scatter (f32 atomics into
// the process's f32 accumulator, then one fold), the bias and T5 relative-bias sums (each added
// once into the bf16 gradient), the RMSNorm weight gradient
// (4-wide and scalar kernels). Every reference is the CPU op in f64 on the same bf16 values.
TEST(CudaPureBf16, GradientOpsAddIntoBf16Gradients) {
  ST_REQUIRE_GPU();
  Rng rng(52);
  {  // dW [N, K] += dy^T [M, N] x [M, K]
    const int64_t M = 300, N = 96, K = 200;
    Tensor dy = random_bf16_values({M, N}, rng), x = random_bf16_values({M, K}, rng), w0 = random_bf16_values({N, K}, rng, 10.0);
    Tensor ref = w0.clone(MemCategory::other), mag = abs_of(w0), gw = to_device(w0, DType::bf16);
    matmul(ref, dy, true, x, false, 1.0, 1.0);
    matmul(mag, abs_of(dy), true, abs_of(x), false, 1.0, 1.0);
    matmul(gw, to_device(dy, DType::bf16), true, to_device(x, DType::bf16), false, 1.0, 1.0);
    ASSERT_EQ(gw.dtype(), DType::bf16);  // the destination this test is about
    expect_one_rounding(gw, ref, mag, M, "dW");
  }
  {  // embedding: many repeated ids
    const int64_t V = 301, C = 77, N = 513;
    Tensor dout = random_bf16_values({N, C}, rng), t0 = random_bf16_values({V, C}, rng, 4.0);
    Tensor ids = Tensor::empty({N}, DType::i32);
    for (int64_t i = 0; i < N; ++i) ids.ptr<int32_t>()[i] = static_cast<int32_t>(rng.below(50));
    Tensor ref = t0.clone(MemCategory::other), mag = abs_of(t0), gt = to_device(t0, DType::bf16);
    Tensor gids = Tensor::empty({N}, DType::i32, Device::cuda);
    gids.copy_from(ids);
    embedding_backward(ids, dout, ref);
    embedding_backward(ids, abs_of(dout), mag);
    embedding_backward(gids, to_device(dout, DType::bf16), gt);
    expect_one_rounding(gt, ref, mag, N, "embedding");
  }
  {  // bias
    const int64_t M = 4096, N = 896;
    Tensor dy = random_bf16_values({M, N}, rng), b0 = random_bf16_values({N}, rng, 30.0);
    Tensor ref = b0.clone(MemCategory::other), mag = abs_of(b0), gb = to_device(b0, DType::bf16);
    bias_backward(dy, ref);
    bias_backward(abs_of(dy), mag);
    bias_backward(to_device(dy, DType::bf16), gb);
    expect_one_rounding(gb, ref, mag, M, "bias");
  }
  // T5 relative-bias table: 32 buckets (the shared-memory histograms), 512 (too tall for them:
  // f32 atomics into a zeroed scratch, then one fold)
  for (const int64_t NB : {int64_t{32}, int64_t{512}}) {
    const int64_t H = 6, Tq = 45, Tk = 131;
    const Tensor cb = t5_relative_buckets(Tq, Tk, true, NB, 4 * NB, Device::cpu);
    const Tensor gbk = t5_relative_buckets(Tq, Tk, true, NB, 4 * NB, Device::cuda);
    Tensor dbias = random_bf16_values({H, Tq, Tk}, rng), t0 = random_bf16_values({NB, H}, rng, 10.0);
    Tensor ref = t0.clone(MemCategory::other), mag = abs_of(t0), gt = to_device(t0, DType::bf16);
    relative_bias_backward(dbias, cb, Tq, Tk, ref);
    relative_bias_backward(abs_of(dbias), cb, Tq, Tk, mag);
    relative_bias_backward(to_device(dbias, DType::f32), gbk, Tq, Tk, gt);
    expect_one_rounding(gt, ref, mag, Tq * Tk, "relative bias, " + std::to_string(NB) + " buckets");
  }
  for (const int64_t C : {int64_t{1024}, int64_t{4096}, int64_t{1001}}) {  // RMSNorm dw: vec8 x1, x4, scalar
    const int64_t N = 777;
    Tensor x = random_bf16_values({N, C}, rng, 2.0), w = random_bf16_values({C}, rng), dy = random_bf16_values({N, C}, rng);
    Tensor y = Tensor::empty({N, C}, DType::f64), rstd = Tensor::empty({N}, DType::f64);
    rmsnorm_forward(x, w, 1e-5, y, rstd);
    Tensor dx = Tensor::zeros({N, C}, DType::f64), dw0 = random_bf16_values({C}, rng, 10.0);
    Tensor dw = dw0.clone(MemCategory::other), mag = abs_of(dw0);
    rmsnorm_backward(dy, x, w, rstd, dx, &dw);
    rmsnorm_backward(abs_of(dy), abs_of(x), w, rstd, dx, &mag);  // the same rstd: |x| has x's norm
    Tensor gx = to_device(x, DType::bf16), gw = to_device(w, DType::bf16), gdy = to_device(dy, DType::bf16);
    Tensor gy = Tensor::empty({N, C}, DType::bf16, Device::cuda), grstd = Tensor::empty({N}, DType::f32, Device::cuda);
    rmsnorm_forward(gx, gw, 1e-5, gy, grstd);
    Tensor gdx = Tensor::zeros({N, C}, DType::bf16, Device::cuda), gdw = to_device(dw0, DType::bf16);
    rmsnorm_backward(gdy, gx, gw, grstd, gdx, &gdw);
    // One more term's worth of slack: rstd is itself an f32 value on the GPU (2^-24 relative).
    expect_one_rounding(gdw, dw, mag, N + 1, "rmsnorm dw, C = " + std::to_string(C));
  }
}

// The gradient norm and the zeroing of bf16 gradients (sum_squares_total, zero_tensors take any
// float dtype): the norm of bf16 values equals the CPU's f64 sum to the f32 chain's 1e-5, over
// whole aligned chunks (16-byte loads), a tail, and a view one element in (2-byte loads).
TEST(CudaPureBf16, NormAndZeroingOfBf16Gradients) {
  ST_REQUIRE_GPU();
  Rng rng(53);
  Tensor a = random_bf16_values({100001}, rng), b = random_bf16_values({7}, rng);
  Tensor ga = to_device(a, DType::bf16), gb = to_device(b, DType::bf16);
  const double ref = sum_squares(a.to_cpu(DType::bf16)) + sum_squares(b.to_cpu(DType::bf16));
  EXPECT_NEAR(sum_squares_total({&ga, &gb}), ref, 1e-5 * ref);
  const Tensor shifted = ga.slice(1, 100001);
  const double ref_shifted = sum_squares(a.slice(1, 100001).to_cpu(DType::bf16));
  EXPECT_NEAR(sum_squares_total({&shifted}), ref_shifted, 1e-5 * ref_shifted);
  zero_tensors({&ga, &gb});
  EXPECT_EQ(sum_squares_total({&ga, &gb}), 0.0);
}

}  // namespace
}  // namespace st
