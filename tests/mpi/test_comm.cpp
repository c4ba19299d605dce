// The MPI backend of the communicator interface, on 2 and 4 ranks: each collective against the
// value every rank can compute by itself (data seeded by rank, as nccl-tests does); the
// asynchronous all-gather / reduce-scatter against the synchronous ones; bf16 reduced in f32.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>

#include "parallel/runtime.hpp"
#include "parallel/watchdog.hpp"

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

// Small integers (exact in every dtype, sums too), negative ones included (a max computed on
// the bits of a 16-bit float, or a sum of its bits, would be wrong).
double small_value(int r, int64_t i) { return static_cast<double>((r + 1) * (i % 11) - 17 + r); }

void set_value(Tensor& t, int64_t i, double v) {
  switch (t.dtype()) {
    case DType::f32: t.ptr<float>()[i] = static_cast<float>(v); break;
    case DType::f64: t.ptr<double>()[i] = v; break;
    case DType::i32: t.ptr<int32_t>()[i] = static_cast<int32_t>(v); break;
    case DType::i64: t.ptr<int64_t>()[i] = static_cast<int64_t>(v); break;
    case DType::bf16: static_cast<uint16_t*>(t.data())[i] = f32_to_bf16(static_cast<float>(v)); break;
    default: FAIL() << "set_value: " << t.str();
  }
}

double get_value(const Tensor& t, int64_t i) {
  switch (t.dtype()) {
    case DType::f32: return t.ptr<float>()[i];
    case DType::f64: return t.ptr<double>()[i];
    case DType::i32: return t.ptr<int32_t>()[i];
    case DType::i64: return static_cast<double>(t.ptr<int64_t>()[i]);
    case DType::bf16: return bf16_to_f32(static_cast<const uint16_t*>(t.data())[i]);
    default: ADD_FAILURE() << "get_value: " << t.str(); return 0;
  }
}

// A tensor of n elements holding small_value(r, i + offset); poisoned outputs start at -999.
Tensor filled(int64_t n, DType dt, int r, int64_t offset = 0) {
  Tensor t = Tensor::empty({n}, dt);
  for (int64_t i = 0; i < n; ++i) set_value(t, i, small_value(r, i + offset));
  return t;
}
Tensor poisoned(int64_t n, DType dt) {
  Tensor t = Tensor::empty({n}, dt);
  for (int64_t i = 0; i < n; ++i) set_value(t, i, -999);
  return t;
}

TEST(MpiComm, SixteenBitFloatsAndIntegersReduceExactly) {
  Runtime& rt = runtime();
  const int P = rt.world_size, me = rt.world_rank;
  const int64_t n = 53;
  for (DType dt : {DType::bf16, DType::i64, DType::i32}) {
    Tensor sum = filled(n, dt, me), mx = filled(n, dt, me);
    rt.world->all_reduce_sum(sum);
    rt.world->all_reduce_max(mx);
    for (int64_t i = 0; i < n; ++i) {
      double s = 0, m = -1e30;
      for (int r = 0; r < P; ++r) {
        s += small_value(r, i);
        m = std::max(m, small_value(r, i));
      }
      ASSERT_EQ(get_value(sum, i), s) << dtype_name(dt) << " sum, element " << i;
      ASSERT_EQ(get_value(mx, i), m) << dtype_name(dt) << " max, element " << i;
    }
  }
  // bf16 broadcast moves the 16-bit words unchanged.
  Tensor b = Tensor::empty({3}, DType::bf16);
  for (int64_t i = 0; i < 3; ++i) set_value(b, i, me == 0 ? 1.0 + 0.0078125 * static_cast<double>(i + 1) : 0.0);
  rt.world->broadcast(b, 0);
  for (int64_t i = 0; i < 3; ++i) EXPECT_EQ(get_value(b, i), 1.0 + 0.0078125 * static_cast<double>(i + 1));
}

TEST(MpiComm, AsyncAllGatherAndReduceScatterEqualTheSyncOnes) {
  Runtime& rt = runtime();
  const int P = rt.world_size, me = rt.world_rank;
  const int64_t n = 37;
  for (DType dt : {DType::f64, DType::f32, DType::bf16, DType::i32}) {
    // all-gather: two requests in flight at once, waited for in the reverse order
    const Tensor in1 = filled(n, dt, me), in2 = filled(n, dt, me, 1000);
    Tensor sync1 = poisoned(n * P, dt), async1 = poisoned(n * P, dt), async2 = poisoned(n * P, dt);
    rt.world->all_gather(in1, sync1);
    std::unique_ptr<CommRequest> r1 = rt.world->all_gather_async(in1, async1);
    std::unique_ptr<CommRequest> r2 = rt.world->all_gather_async(in2, async2);
    r2->wait();
    r1->wait();
    r1->wait();  // a second wait is a no-op
    EXPECT_TRUE(r1->done() && r2->done());
    ASSERT_EQ(std::memcmp(sync1.data(), async1.data(), sync1.nbytes()), 0) << dtype_name(dt);
    for (int r = 0; r < P; ++r)
      for (int64_t i = 0; i < n; ++i) {
        ASSERT_EQ(get_value(async1, r * n + i), small_value(r, i)) << dtype_name(dt) << " rank " << r << " element " << i;
        ASSERT_EQ(get_value(async2, r * n + i), small_value(r, i + 1000)) << dtype_name(dt);
      }

    // reduce-scatter
    const Tensor full = filled(n * P, dt, me);
    Tensor part_sync = poisoned(n, dt), part_async = poisoned(n, dt);
    rt.world->reduce_scatter_sum(full, part_sync);
    std::unique_ptr<CommRequest> rs = rt.world->reduce_scatter_sum_async(full, part_async);
    rs->wait();
    ASSERT_EQ(std::memcmp(part_sync.data(), part_async.data(), part_sync.nbytes()), 0) << dtype_name(dt);
    for (int64_t i = 0; i < n; ++i) {
      double expect = 0;
      for (int r = 0; r < P; ++r) expect += small_value(r, me * n + i);
      ASSERT_EQ(get_value(part_async, i), expect) << dtype_name(dt) << " element " << i;
    }
  }
  // A request dropped without wait() is completed by its destructor (the peers are not left waiting).
  {
    const Tensor in = filled(n, DType::f64, me);
    Tensor out = poisoned(n * P, DType::f64);
    { auto dropped = rt.world->all_gather_async(in, out); }
    for (int r = 0; r < P; ++r) ASSERT_EQ(get_value(out, r * n + 5), small_value(r, 5));
  }
  // Shapes are checked before any rank communicates.
  Tensor in = filled(n, DType::f32, me), wrong = poisoned(n * P + 1, DType::f32), wrong_dt = poisoned(n * P, DType::f64);
  EXPECT_THROW(rt.world->all_gather_async(in, wrong), Error);
  EXPECT_THROW(rt.world->all_gather_async(in, wrong_dt), Error);
  EXPECT_THROW(rt.world->reduce_scatter_sum_async(wrong, in), Error);
  EXPECT_GT(rt.world->comm_time(), 0.0);
}

TEST(MpiComm, CollectivesLabelTheWatchdogAndRestoreIt) {
  Runtime& rt = runtime();
  watchdog_beat("test body");
  rt.world->barrier();
  EXPECT_EQ(watchdog_label(), "test body");
  Tensor in = filled(4, DType::f64, rt.world_rank), out = poisoned(4 * rt.world_size, DType::f64);
  auto req = rt.world->all_gather_async(in, out);
  EXPECT_EQ(watchdog_label(), "test body");
  req->wait();
  EXPECT_EQ(watchdog_label(), "test body");
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

TEST(MpiComm, GridRefusesATpThatDoesNotDivideTheWorld) {
  Runtime& rt = runtime();
  Runtime probe;
  probe.world_rank = rt.world_rank;
  probe.world_size = rt.world_size;
  try {
    runtime_make_grid(probe, rt.world_size + 1);
    ADD_FAILURE() << "tp_size " << rt.world_size + 1 << " accepted on " << rt.world_size << " ranks";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find("world = tp x dp"), std::string::npos) << e.what();
  }
  EXPECT_THROW(runtime_make_grid(probe, 0), InputError);
  runtime_make_grid(probe, 1);
  EXPECT_EQ(probe.tp * probe.dp, rt.world_size);
}

TEST(MpiComm, RuntimeCommFallsBackToMpiWithoutDeviceCommunicators) {
  Runtime& rt = runtime();
  Runtime probe;
  probe.world_rank = rt.world_rank;
  probe.world_size = rt.world_size;
  probe.world = make_mpi_comm(MPI_COMM_WORLD, "world");
  runtime_make_grid(probe, 1);
  for (CommGroup g : {CommGroup::world, CommGroup::tp, CommGroup::dp})
    for (Device d : {Device::cpu, Device::cuda}) {
      Comm& c = runtime_comm(probe, g, d);
      EXPECT_STREQ(c.backend(), "mpi");
      EXPECT_EQ(c.size(), g == CommGroup::tp ? 1 : rt.world_size);
    }
  EXPECT_EQ(&runtime_comm(probe, CommGroup::dp, Device::cuda), probe.dp_comm.get());
#ifndef SHARDTUNE_CUDA
  EXPECT_THROW(runtime_enable_device_comms(probe), Error);
#endif
  EXPECT_GE(runtime_comm_time(probe), 0.0);
}

}  // namespace
}  // namespace st
