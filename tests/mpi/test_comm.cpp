// The MPI backend of the communicator interface, on 2 and 4 ranks: each collective against the
// value every rank can compute by itself (data seeded by rank, as nccl-tests does).
#include <gtest/gtest.h>

#include "parallel/runtime.hpp"

namespace st {
namespace {

// Deterministic value of element i on rank r.
double value(int r, int64_t i) { return 0.5 * r + 0.001 * static_cast<double>(i) - 3.0; }

TEST(MpiComm, AllReduceSumAndMax) {
  Runtime& rt = runtime();
  const int P = rt.world_size, me = rt.world_rank;
  Tensor t = Tensor::empty({1001}, DType::f64);
  for (int64_t i = 0; i < t.numel(); ++i) t.ptr<double>()[i] = value(me, i);
  rt.world->all_reduce_sum(t);
  for (int64_t i = 0; i < t.numel(); ++i) {
    double expect = 0;
    for (int r = 0; r < P; ++r) expect += value(r, i);
    ASSERT_DOUBLE_EQ(t.ptr<double>()[i], expect) << "element " << i;
  }
  Tensor f = Tensor::empty({7}, DType::f32);
  for (int64_t i = 0; i < 7; ++i) f.ptr<float>()[i] = static_cast<float>(value(me, i * 100));
  rt.world->all_reduce_max(f);
  for (int64_t i = 0; i < 7; ++i) EXPECT_FLOAT_EQ(f.ptr<float>()[i], static_cast<float>(value(P - 1, i * 100)));
  EXPECT_DOUBLE_EQ(rt.world->all_reduce_sum(static_cast<double>(me + 1)), P * (P + 1) / 2.0);
  EXPECT_DOUBLE_EQ(rt.world->all_reduce_max(static_cast<double>(me)), P - 1.0);
}

TEST(MpiComm, BroadcastAllGatherReduceScatter) {
  Runtime& rt = runtime();
  const int P = rt.world_size, me = rt.world_rank;
  Tensor b = Tensor::empty({13}, DType::i32);
  for (int64_t i = 0; i < 13; ++i) b.ptr<int32_t>()[i] = me == P - 1 ? static_cast<int32_t>(7 * i) : -1;
  rt.world->broadcast(b, P - 1);
  for (int64_t i = 0; i < 13; ++i) EXPECT_EQ(b.ptr<int32_t>()[i], 7 * i);

  const int64_t n = 5;
  Tensor in = Tensor::empty({n}, DType::f64), out = Tensor::empty({n * P}, DType::f64);
  for (int64_t i = 0; i < n; ++i) in.ptr<double>()[i] = value(me, i);
  rt.world->all_gather(in, out);
  for (int r = 0; r < P; ++r)
    for (int64_t i = 0; i < n; ++i) EXPECT_DOUBLE_EQ(out.ptr<double>()[r * n + i], value(r, i));

  Tensor full = Tensor::empty({n * P}, DType::f64), part = Tensor::empty({n}, DType::f64);
  for (int64_t i = 0; i < n * P; ++i) full.ptr<double>()[i] = value(me, i);
  rt.world->reduce_scatter_sum(full, part);
  for (int64_t i = 0; i < n; ++i) {
    double expect = 0;
    for (int r = 0; r < P; ++r) expect += value(r, me * n + i);
    EXPECT_DOUBLE_EQ(part.ptr<double>()[i], expect);
  }
  Tensor wrong = Tensor::empty({n + 1}, DType::f64);
  EXPECT_THROW(rt.world->all_gather(in, wrong), Error);  // refused before any rank communicates
}

TEST(MpiComm, GridSplitsTpInnermost) {
  Runtime& rt = runtime();
  if (rt.world_size % 2 != 0) GTEST_SKIP() << "needs an even number of ranks";
  Runtime probe;  // grid arithmetic on a copy of the identity
  probe.world_rank = rt.world_rank;
  probe.world_size = rt.world_size;
  runtime_make_grid(probe, 2);
  EXPECT_EQ(probe.tp, 2);
  EXPECT_EQ(probe.dp, rt.world_size / 2);
  EXPECT_EQ(probe.tp_rank, rt.world_rank % 2);
  EXPECT_EQ(probe.dp_rank, rt.world_rank / 2);
  EXPECT_EQ(probe.tp_comm->size(), 2);
  EXPECT_EQ(probe.dp_comm->size(), rt.world_size / 2);
  // A TP group holds consecutive ranks: the sum of world ranks in my TP group.
  const double s = probe.tp_comm->all_reduce_sum(static_cast<double>(rt.world_rank));
  const int base = rt.world_rank / 2 * 2;
  EXPECT_DOUBLE_EQ(s, base + base + 1);
  EXPECT_THROW(runtime_make_grid(probe, 3 * rt.world_size + 1), InputError);
}

}  // namespace
}  // namespace st
