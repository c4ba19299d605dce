// NCCL communicators, and the MPI backend on device tensors, on the GPU.
//
// MPI is initialised by the first test that needs it (after the GPU check, so a host without a
// GPU never starts MPI here) and finalized after the last test. `make test-gpu` runs one process:
// a world of one rank, where the reductions are identities, so what these tests can check there
// is the data movement (gathers and scatters out of place into poisoned buffers: element counts
// of the 16-bit types, dtype mapping), the ordering of the asynchronous all-gather with the
// compute stream, the timing, the runtime's communicator selection, the argument checks and the
// abort hook. The same tests check real sums and maxima on a host with P GPUs:
//   mpirun -np P build/tests/gpu_tests --gtest_filter='Nccl*:MpiCommOnDevice*'
// (one GPU per rank, by local rank; data seeded by rank so every rank knows the expected result).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>

#include "core/error.hpp"
#include "ops/init.hpp"
#include "ops/loss.hpp"
#include "ops/matmul.hpp"
#include "parallel/tp_ops.hpp"
#include "parallel/runtime.hpp"
#include "tests/gpu/gpu_util.hpp"

namespace st {
namespace {

// Finalize MPI after the last test if a test started it.
class MpiFinalizer : public ::testing::Environment {
 public:
  void TearDown() override {
    if (runtime_active()) runtime_finalize();
  }
};
[[maybe_unused]] ::testing::Environment* const g_mpi_finalizer = ::testing::AddGlobalTestEnvironment(new MpiFinalizer);

Runtime& mpi_runtime() {
  if (!runtime_active()) {
    Runtime& rt = runtime_init(nullptr, nullptr);
    runtime_make_grid(rt, 1);
  }
  return runtime();
}

// Small integers: exact in bf16 and f32, and so are their sums over a few ranks.
double small_value(int r, int64_t i) { return static_cast<double>((r + 1) * (i % 11) - 17 + r); }

Tensor host_values(int64_t n, int r, int64_t offset = 0) {
  Tensor t = Tensor::empty({n}, DType::f64);
  for (int64_t i = 0; i < n; ++i) t.ptr<double>()[i] = small_value(r, i + offset);
  return t;
}
Tensor device_values(int64_t n, DType dt, int r, int64_t offset = 0) { return test::to_device(host_values(n, r, offset), dt); }
Tensor device_poison(int64_t n, DType dt) {
  Tensor t = Tensor::empty({n}, DType::f64);
  for (int64_t i = 0; i < n; ++i) t.ptr<double>()[i] = -999.0;
  return test::to_device(t, dt);
}

// Every collective of `c` on device tensors of dtype dt against the values each rank can compute.
void check_every_collective(Comm& c, DType dt) {
  const int P = c.size(), me = c.rank();
  const int64_t n = 100003;  // odd, several NCCL chunks
  const char* what = dtype_name(dt);

  Tensor sum = device_values(n, dt, me), mx = device_values(n, dt, me);
  c.all_reduce_sum(sum);
  c.all_reduce_max(mx);
  const Tensor hs = sum.to_cpu(DType::f64), hm = mx.to_cpu(DType::f64);
  for (int64_t i = 0; i < n; ++i) {
    double s = 0, m = -1e30;
    for (int r = 0; r < P; ++r) {
      s += small_value(r, i);
      m = std::max(m, small_value(r, i));
    }
    ASSERT_EQ(hs.ptr<double>()[i], s) << what << " all_reduce_sum element " << i;
    ASSERT_EQ(hm.ptr<double>()[i], m) << what << " all_reduce_max element " << i;
  }
  EXPECT_EQ(c.all_reduce_sum(static_cast<double>(me + 1)), P * (P + 1) / 2.0);
  EXPECT_EQ(c.all_reduce_max(static_cast<double>(me)), P - 1.0);

  Tensor b = me == P - 1 ? device_values(n, dt, 7) : device_poison(n, dt);
  c.broadcast(b, P - 1);
  const Tensor hb = b.to_cpu(DType::f64);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hb.ptr<double>()[i], small_value(7, i)) << what << " broadcast element " << i;

  const Tensor in = device_values(n, dt, me);
  Tensor gathered = device_poison(n * P, dt);
  c.all_gather(in, gathered);
  const Tensor hg = gathered.to_cpu(DType::f64);
  for (int r = 0; r < P; ++r)
    for (int64_t i = 0; i < n; ++i)
      ASSERT_EQ(hg.ptr<double>()[r * n + i], small_value(r, i)) << what << " all_gather rank " << r << " element " << i;

  const Tensor full = device_values(n * P, dt, me);
  Tensor part = device_poison(n, dt);
  c.reduce_scatter_sum(full, part);
  const Tensor hp = part.to_cpu(DType::f64);
  for (int64_t i = 0; i < n; ++i) {
    double s = 0;
    for (int r = 0; r < P; ++r) s += small_value(r, me * n + i);
    ASSERT_EQ(hp.ptr<double>()[i], s) << what << " reduce_scatter_sum element " << i;
  }

  // The asynchronous pair, waited for in reverse order; results read after the waits.
  Tensor g1 = device_poison(n * P, dt), p1 = device_poison(n, dt);
  auto r1 = c.all_gather_async(in, g1);
  auto r2 = c.reduce_scatter_sum_async(full, p1);
  r2->wait();
  r1->wait();
  EXPECT_EQ(test::rel_l2(g1, gathered), 0.0) << what << " all_gather_async differs from all_gather";
  EXPECT_EQ(test::rel_l2(p1, part), 0.0) << what << " reduce_scatter_sum_async differs from reduce_scatter_sum";
  Tensor s1 = device_values(n, dt, me);
  auto r3 = c.all_reduce_sum_async(s1);
  r3->wait();
  EXPECT_EQ(test::rel_l2(s1, sum), 0.0) << what << " all_reduce_sum_async differs from all_reduce_sum";

  c.barrier();
}


#ifdef SHARDTUNE_CUDA

bool launched_by_mpirun() { return std::getenv("OMPI_COMM_WORLD_SIZE") || std::getenv("PMIX_RANK") || std::getenv("PMI_RANK"); }

TEST(Nccl, EveryCollectiveOnDeviceTensorsF32AndBf16) {
  ST_REQUIRE_GPU();
  Runtime& rt = mpi_runtime();
  std::unique_ptr<Comm> c = make_nccl_comm(MPI_COMM_WORLD, "world");
  EXPECT_STREQ(c->backend(), "nccl");
  EXPECT_EQ(c->native_device(), Device::cuda);
  EXPECT_EQ(c->size(), rt.world_size);
  EXPECT_EQ(c->rank(), rt.world_rank);
  for (DType dt : {DType::f32, DType::bf16}) {
    check_every_collective(*c, dt);
    if (HasFatalFailure()) return;
  }
  // 64-bit integers: the element count, not the byte count, reaches NCCL.
  const int P = c->size();
  const int64_t n = 1001;
  Tensor hin = Tensor::empty({n}, DType::i64), hpoison = Tensor::empty({n * P}, DType::i64);
  for (int64_t i = 0; i < n; ++i) hin.ptr<int64_t>()[i] = (int64_t{1} << 40) * c->rank() + i;
  for (int64_t i = 0; i < n * P; ++i) hpoison.ptr<int64_t>()[i] = -1;
  Tensor din = Tensor::empty({n}, DType::i64, Device::cuda), dout = Tensor::empty({n * P}, DType::i64, Device::cuda);
  din.copy_from(hin);
  dout.copy_from(hpoison);
  c->all_gather(din, dout);
  Tensor hout = Tensor::empty({n * P}, DType::i64);
  hout.copy_from(dout);
  for (int r = 0; r < P; ++r)
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hout.ptr<int64_t>()[r * n + i], (int64_t{1} << 40) * r + i);
  // Time is accumulated from the events around the collectives (an out-of-place gather of
  // 400 KB and more takes microseconds even on one rank).
  EXPECT_GT(c->comm_time(), 0.0);
  // CPU tensors belong to the MPI communicator; refused before anything is enqueued.
  Tensor cpu = Tensor::zeros({4}, DType::f32);
  EXPECT_THROW(c->all_reduce_sum(cpu), Error);
  Tensor dev = Tensor::zeros({4}, DType::f32, Device::cuda), wrong = Tensor::zeros({4 * P + 1}, DType::f32, Device::cuda);
  EXPECT_THROW(c->all_gather(dev, wrong), Error);
}

// The all-gather on the communication stream must start after the compute stream's pending
// kernels that produce its input, and wait() must order the compute stream after it. The input
// is written by a queue of GEMMs (in = A x I, about a millisecond of work) right before the
// gather is issued; without the event the gather would copy the poison the input held before.
TEST(Nccl, AsyncAllGatherIsOrderedWithTheComputeStream) {
  ST_REQUIRE_GPU();
  Runtime& rt = mpi_runtime();
  std::unique_ptr<Comm> c = make_nccl_comm(MPI_COMM_WORLD, "world");
  const int P = c->size(), me = c->rank();
  const int64_t M = 4096, K = 4096;
  for (DType dt : {DType::bf16, DType::f32}) {
    // Operands in the tensors' dtype (the GEMM takes one dtype); small integers are exact in both.
    Tensor A = device_values(M * K, dt, me).view({M, K});
    Tensor eye_h = Tensor::zeros({K, K}, DType::f64);
    for (int64_t k = 0; k < K; ++k) eye_h.ptr<double>()[k * K + k] = 1.0;
    const Tensor eye = test::to_device(eye_h, dt);
    Tensor in = device_poison(M * K, dt).view({M, K});
    Tensor out = device_poison(P * M * K, dt).view({P * M, K});
    for (int rep = 0; rep < 20; ++rep) matmul(in, A, false, eye, false);  // in = A, exactly
    std::unique_ptr<CommRequest> req = c->all_gather_async(in, out);
    req->wait();
    // A kernel on the compute stream reads the gathered tensor (res = out x I).
    Tensor res = device_poison(P * M * K, dt).view({P * M, K});
    matmul(res, out, false, eye, false);
    const Tensor h = res.to_cpu(DType::f64);
    for (int r = 0; r < P; ++r)
      for (int64_t i = 0; i < M * K; i += 997)  // a sample of every rank's block
        ASSERT_EQ(h.ptr<double>()[r * M * K + i], small_value(r, i)) << dtype_name(dt) << " rank " << r << " element " << i;
    EXPECT_TRUE(req->done());
  }
  (void)rt;
}

// The CUDA vocabulary-parallel cross-entropy against the fused one on the full logits: every
// rank draws the same [N, V] logits, keeps its V/P columns, and must get the full rows' losses
// and its columns of the gradient (f32; with one rank the all-reduces are identities but the
// three kernels and the objective are still checked).
TEST(Nccl, VocabParallelCrossEntropyEqualsTheFusedOne) {
  ST_REQUIRE_GPU();
  mpi_runtime();
  std::unique_ptr<Comm> c = make_nccl_comm(MPI_COMM_WORLD, "world");
  const int P = c->size(), me = c->rank();
  const int64_t N = 37, Vl = 300, V = Vl * P;
  Tensor full = Tensor::empty({N, V}, DType::f32, Device::cuda);
  fill_normal(full, 99, 0.0, 3.0);
  Tensor th = Tensor::empty({N}, DType::i32), wh = Tensor::empty({N}, DType::f32);
  for (int64_t n = 0; n < N; ++n) {
    th.ptr<int32_t>()[n] = n % 7 == 3 ? -1 : static_cast<int32_t>((n * 7919) % V);  // some ignored rows
    wh.ptr<float>()[n] = n % 11 == 5 ? 0.0f : 0.5f + 0.01f * static_cast<float>(n);
  }
  Tensor targets = Tensor::empty({N}, DType::i32, Device::cuda), weight = Tensor::empty({N}, DType::f32, Device::cuda);
  targets.copy_from(th);
  weight.copy_from(wh);
  // This rank's columns, then the fused op on the full matrix (which overwrites it).
  const Tensor fh = full.to_cpu(DType::f32);
  Tensor shard_h = Tensor::empty({N, Vl}, DType::f32);
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < Vl; ++j) shard_h.ptr<float>()[n * Vl + j] = fh.ptr<float>()[n * V + me * Vl + j];
  Tensor shard = Tensor::empty({N, Vl}, DType::f32, Device::cuda);
  shard.copy_from(shard_h);
  Tensor ref_losses = Tensor::zeros({N}, DType::f32, Device::cuda), losses = Tensor::zeros({N}, DType::f32, Device::cuda);
  cross_entropy(full, targets, weight, ref_losses, true);
  const double obj = vocab_parallel_cross_entropy(shard, targets, weight, &losses, true, *c);
  const Tensor rl = ref_losses.to_cpu(DType::f64), l = losses.to_cpu(DType::f64);
  double ref_obj = 0;
  for (int64_t n = 0; n < N; ++n) {
    EXPECT_NEAR(l.ptr<double>()[n], rl.ptr<double>()[n], 1e-5 * std::max(1.0, std::abs(rl.ptr<double>()[n]))) << "row " << n;
    ref_obj += static_cast<double>(wh.ptr<float>()[n]) * rl.ptr<double>()[n];
  }
  EXPECT_NEAR(obj, ref_obj, 1e-5 * std::abs(ref_obj));
  const Tensor g = full.to_cpu(DType::f64), gs = shard.to_cpu(DType::f64);
  double worst = 0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < Vl; ++j)
      worst = std::max(worst, std::abs(gs.ptr<double>()[n * Vl + j] - g.ptr<double>()[n * V + me * Vl + j]));
  EXPECT_LT(worst, 1e-6) << "gradient columns differ from the fused op's";
}

TEST(Nccl, RuntimeDeviceCommunicatorsAndSelection) {
  ST_REQUIRE_GPU();
  Runtime& rt = mpi_runtime();
  ASSERT_TRUE(runtime_enable_device_comms(rt)) << "one GPU per rank, yet no NCCL communicators";
  Comm* world = rt.world_device.get();
  ASSERT_TRUE(runtime_enable_device_comms(rt));  // idempotent
  EXPECT_EQ(rt.world_device.get(), world);
  for (CommGroup g : {CommGroup::world, CommGroup::tp, CommGroup::dp}) {
    EXPECT_STREQ(runtime_comm(rt, g, Device::cuda).backend(), "nccl");
    EXPECT_STREQ(runtime_comm(rt, g, Device::cpu).backend(), "mpi");
    EXPECT_EQ(runtime_comm(rt, g, Device::cuda).size(), runtime_comm(rt, g, Device::cpu).size());
  }
  check_every_collective(runtime_comm(rt, CommGroup::dp, Device::cuda), DType::bf16);
  EXPECT_GT(runtime_comm_time(rt), 0.0);
}

// fatal() with NCCL communicators: the hook aborts them (ncclCommAbort) before MPI's hook, and
// the process ends with the fatal status instead of hanging. Runs in a re-executed child.
TEST(NcclDeathTest, FatalAbortsTheDeviceCommunicatorsAndExits) {
  ST_REQUIRE_GPU();
  if (launched_by_mpirun()) GTEST_SKIP() << "the death test re-executes this binary: run it without mpirun";
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_EXIT(
      {
        Runtime& rt = mpi_runtime();
        if (!runtime_enable_device_comms(rt)) std::_Exit(7);
        Tensor t = Tensor::zeros({1024}, DType::f32, Device::cuda);
        runtime_comm(rt, CommGroup::world, Device::cuda).all_reduce_sum(t);
        fatal(__FILE__, __LINE__, "deliberate fatal with NCCL communicators");
      },
      ::testing::ExitedWithCode(kExitError), "fatal on rank 0 .*deliberate fatal with NCCL communicators");
}

#endif  // SHARDTUNE_CUDA

// The MPI backend on device tensors: staged through host memory, bf16 reduced in f32.
TEST(MpiCommOnDevice, EveryCollectiveF32AndBf16) {
  ST_REQUIRE_GPU();
  mpi_runtime();
  std::unique_ptr<Comm> c = make_mpi_comm(MPI_COMM_WORLD, "world");
  EXPECT_EQ(c->native_device(), Device::cpu);
  for (DType dt : {DType::f32, DType::bf16}) {
    check_every_collective(*c, dt);
    if (HasFatalFailure()) return;
  }
  EXPECT_GT(c->comm_time(), 0.0);
}

}  // namespace
}  // namespace st
