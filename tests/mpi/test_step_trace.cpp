// The planner's step schedule is the real step's: for every strategy on the ranks of this job,
// the op trace (core/op_trace.hpp) of a dry-run training step (train/plan.hpp) has the same ops
// per family, the same collectives per kind, the same asynchronous collectives and the same waits
// as a real training step of the same layout over MPI, on every rank.
//
// Checks are non-fatal (EXPECT_*) so that every rank makes the same collective calls whatever
// fails; mpi_main.cpp fails the job when any rank had a failure.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>

#include "core/op_trace.hpp"
#include "parallel/parallelize.hpp"
#include "parallel/runtime.hpp"
#include "train/plan.hpp"
#include "train/setup.hpp"

namespace st {
namespace {

RunConfig tiny_config(Method method) {
  RunConfig c;
  c.vocab_size = 64;
  c.hidden_size = 32;
  c.intermediate_size = 48;
  c.num_layers = 2;
  c.num_heads = 4;
  c.num_kv_heads = 4;
  c.lora_r = 4;
  c.micro_batch_size = 2;
  c.grad_accum = 2;
  c.val_split = "";
  c.method = method_name(method);
  c.origin["dtype"] = "test";
  return c;
}

// The counts of one real training step (the second: the first creates what is made lazily).
OpTraceCounts real_step_counts(const RunConfig& c0, const PlanData& data, const ParallelLayout& P, Method method) {
  Runtime& rt = runtime();
  RunConfig c = c0;
  c.parallel = P.name();
  c.tp_size = P.tp;
  RankComms comms;
  // One rank (strategy none): groups of one, whose collectives move nothing.
  const std::unique_ptr<Comm> alone = make_dry_comm(1, 0, Device::cpu, "world");
  if (P.world == 1) {
    comms.tp = tp_group_for(P, alone.get());
    comms.dp = comms.dp_host = comms.tp_host = comms.world = alone.get();
  } else {
    runtime_make_grid(rt, P.tp);
    comms.tp = tp_group_for(P, rt.tp_comm.get());
    comms.dp = rt.dp_comm.get();
    comms.dp_host = rt.dp_comm.get();
    comms.tp_host = rt.tp_comm.get();
    comms.world = rt.world.get();
  }
  TrainingState s = build_training_state(c, P, method, data.info, data.shape, DType::f32, Device::cpu, comms, true);
  const Batch batch = plan_full_batch(c.micro_batch_size, data);
  const auto read = [&](int64_t, Batch& host, LayerContext&) { host = batch; };
  training_step(s, c, comms, c.grad_accum, 1.0, c.lr, read);
  OpTraceRecorder rec;
  training_step(s, c, comms, c.grad_accum, 1.0, c.lr, read);
  return rec.counts();
}

void expect_dry_equals_real(Strategy strategy, int tp, Method method, bool one_rank = false) {
  Runtime& rt = runtime();
  const int world = one_rank ? 1 : rt.world_size, rank = one_rank ? 0 : rt.world_rank;
  const RunConfig c = tiny_config(method);
  const PlanData data = plan_data_synthetic(c, 12, 0);
  PlanLayout l;
  l.parallel = ParallelLayout::make(strategy, tp, world, "test");
  l.method = method;
  const OpTraceCounts dry = count_events(plan_step_trace(c, data, l, rank));
  const OpTraceCounts real = real_step_counts(c, data, l.parallel, method);
  if (std::getenv("ST_TRACE_PRINT")) std::printf("%s %s: %s\n", l.parallel.name(), method_name(method), real.str().c_str());
  EXPECT_EQ(dry, real) << l.parallel.name() << " tp " << tp << " " << method_name(method) << " rank " << rt.world_rank
                       << "\n dry:  " << dry.str() << "\n real: " << real.str();
  const int64_t collectives = real.collectives[0] + real.collectives[1] + real.collectives[2] + real.collectives[3];
  if (world > 1) {
    EXPECT_GT(collectives, 0) << l.parallel.name();
  }
  EXPECT_GT(real.ops[static_cast<size_t>(OpFamily::gemm)], 0);
}

TEST(StepTrace, OneRankDryScheduleEqualsRealStep) {
  expect_dry_equals_real(Strategy::none, 1, Method::full, true);
  expect_dry_equals_real(Strategy::none, 1, Method::qlora, true);
}

TEST(StepTrace, DdpDryScheduleEqualsRealStep) {
  expect_dry_equals_real(Strategy::ddp, 1, Method::full);
  expect_dry_equals_real(Strategy::ddp, 1, Method::lora);
}

TEST(StepTrace, Zero3DryScheduleEqualsRealStep) {
  expect_dry_equals_real(Strategy::zero3, 1, Method::full);
  expect_dry_equals_real(Strategy::zero3, 1, Method::qlora);
}

TEST(StepTrace, TensorParallelDryScheduleEqualsRealStep) {
  expect_dry_equals_real(Strategy::tp, runtime().world_size, Method::full);
  expect_dry_equals_real(Strategy::tp, runtime().world_size, Method::lora);
}

TEST(StepTrace, TensorParallelTimesDataParallelDryScheduleEqualsRealStep) {
  if (runtime().world_size < 4) GTEST_SKIP() << "needs 4 ranks (tp 2 x dp 2)";
  expect_dry_equals_real(Strategy::tp_zero3, 2, Method::full);
  expect_dry_equals_real(Strategy::tp, 2, Method::lora);  // tp 2 x DDP 2
}

}  // namespace
}  // namespace st
