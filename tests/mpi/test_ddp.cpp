// DDP's bucketed gradient all-reduce, overlapped with the backward (run under mpirun -np 2 and 4):
// buckets start as the units they draw from finish, capture the gradients at that moment, and
// sync() leaves every gradient equal to the sum over ranks.
#include <gtest/gtest.h>

#include "parallel/ddp.hpp"
#include "parallel/runtime.hpp"

namespace st {
namespace {

double value(int rank, int unit, int param, int64_t i) { return 1000.0 * unit + 100.0 * param + i + 0.25 * rank; }

TEST(Ddp, BucketsStartAsTheirUnitsFinishAndSumOverRanks) {
  Runtime& rt = runtime();
  Comm& c = *rt.world;
  const int P = c.size(), me = c.rank();
  constexpr int kUnits = 4, kParams = 3;
  std::vector<std::vector<Tensor>> grads(kUnits);
  std::vector<std::vector<Tensor>> values(kUnits);
  std::vector<std::vector<ParamRef>> by_unit(kUnits);
  for (int u = 0; u < kUnits; ++u)
    for (int p = 0; p < kParams; ++p) {
      grads[u].push_back(Tensor::zeros({5 + u + p}, DType::f32));
      values[u].push_back(Tensor::zeros({1}, DType::f32));
    }
  for (int u = 0; u < kUnits; ++u)
    for (int p = 0; p < kParams; ++p)
      by_unit[u].push_back({"u" + std::to_string(u) + "p" + std::to_string(p), &values[u][p], &grads[u][p]});
  // 40-byte buckets: most hold one or two tensors, some span two units.
  GradAllReduce ddp(by_unit, c, 40);
  ASSERT_GT(ddp.num_buckets(), static_cast<size_t>(kUnits));
  auto fill = [&](int u, double extra) {
    for (int p = 0; p < kParams; ++p)
      for (int64_t i = 0; i < grads[u][p].numel(); ++i)
        grads[u][p].ptr<float>()[i] = static_cast<float>(value(me, u, p, i) + extra);
  };
  for (int u = 0; u < kUnits; ++u) fill(u, -5000.0);  // stale values: must never be reduced
  ddp.arm();
  for (int u = kUnits - 1; u >= 0; --u) {
    fill(u, 0.0);  // this unit's backward produces its final gradients...
    ddp.after_backward(u);  // ...and only then may its buckets start
  }
  EXPECT_EQ(ddp.overlapped_buckets(), ddp.num_buckets());  // every bucket started during the backward
  ddp.sync();
  for (int u = 0; u < kUnits; ++u)
    for (int p = 0; p < kParams; ++p)
      for (int64_t i = 0; i < grads[u][p].numel(); ++i) {
        double want = 0;
        for (int r = 0; r < P; ++r) want += static_cast<double>(static_cast<float>(value(r, u, p, i)));
        ASSERT_NEAR(grads[u][p].ptr<float>()[i], want, 1e-6 * std::abs(want)) << "unit " << u << " param " << p << " i " << i;
      }
  // Without arm() (an earlier micro-batch) nothing starts early; sync() reduces everything.
  for (int u = 0; u < kUnits; ++u) fill(u, 0.0);
  const size_t before = ddp.overlapped_buckets();
  for (int u = kUnits - 1; u >= 0; --u) ddp.after_backward(u);
  EXPECT_EQ(ddp.overlapped_buckets(), before);
  ddp.sync();
  double want = 0;
  for (int r = 0; r < P; ++r) want += static_cast<double>(static_cast<float>(value(r, 2, 1, 3)));
  EXPECT_NEAR(grads[2][1].ptr<float>()[3], want, 1e-6 * want);
}

// master_weights = none: bf16 gradients (here beside f32 ones: buckets hold one dtype) are summed
// in f32 and rounded to bf16 once (the MPI backend widens 16-bit floats; NCCL sums bf16 itself).
// Values: rank 0 holds 256 and the others 1 + a bf16 step, so that a chain of bf16 additions
// (256 + 1 rounds back to 256) would differ from the one rounding of the f32 sum at 4 ranks.
TEST(Ddp, Bf16GradientsSumInF32AndRoundOnce) {
  Runtime& rt = runtime();
  Comm& c = *rt.world;
  const int P = c.size(), me = c.rank();
  auto x = [](int rank, int64_t i) { return rank == 0 ? 256.0f + 2.0f * static_cast<float>(i) : 1.0f; };
  std::vector<Tensor> grads, values;
  std::vector<std::vector<ParamRef>> by_unit(2);
  for (int k = 0; k < 4; ++k) {
    const DType dt = k % 2 ? DType::f32 : DType::bf16;
    grads.push_back(Tensor::zeros({9}, dt));
    values.push_back(Tensor::zeros({1}, dt));
  }
  for (int k = 0; k < 4; ++k) by_unit[static_cast<size_t>(k / 2)].push_back({"g" + std::to_string(k), &values[k], &grads[k]});
  GradAllReduce ddp(by_unit, c, 1 << 20);
  EXPECT_EQ(ddp.num_buckets(), 4u);  // dtype changes at every tensor
  for (Tensor& g : grads)
    for (int64_t i = 0; i < 9; ++i) {
      if (g.dtype() == DType::bf16) static_cast<uint16_t*>(g.data())[i] = f32_to_bf16(x(me, i));
      else g.ptr<float>()[i] = x(me, i);
    }
  ddp.arm();
  for (int u = 1; u >= 0; --u) ddp.after_backward(u);
  ddp.sync();
  for (const Tensor& g : grads)
    for (int64_t i = 0; i < 9; ++i) {
      float sum = 0;
      for (int r = 0; r < P; ++r) sum += x(r, i);  // exact in f32
      if (g.dtype() == DType::bf16)
        EXPECT_EQ(static_cast<const uint16_t*>(g.data())[i], f32_to_bf16(sum)) << "bf16 [" << i << "] of " << sum;
      else
        EXPECT_EQ(g.ptr<float>()[i], sum) << "f32 [" << i << "]";
    }
}

}  // namespace
}  // namespace st
