// The memory planner: per-rank bytes of a run before it is launched, and the strategy that fits.
//
// A prediction is a dry run (core/dryrun.hpp) of the run's own code on one rank of the given
// layout: the model is built (or its checkpoint's config read) with its method, ZeRO-3 / DDP /
// TP set up, buffers allocated, and two optimizer steps over full-length micro-batches and one
// evaluation batch taken, with every kernel, copy and collective skipped. The allocator's
// figures are the prediction: the same bytes a real run asks for, category by category.
// What a run uses outside our allocator (the CUDA context, cuBLAS and NCCL internals) is not in
// the prediction; the planner adds a measured reserve for it when it decides what fits.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "config/run_config.hpp"
#include "config/choices.hpp"
#include "core/allocator.hpp"
#include "parallel/layout.hpp"
#include "train/model_runner.hpp"

namespace st {

// One rank's predicted memory (bytes on the run's device).
struct RankPlan {
  int rank = 0;
  size_t peak = 0;        // training peak: what metrics.h5 records as peak_memory
  std::array<size_t, kNumMemCategories> at_peak{};  // its breakdown by category
  size_t setup_peak = 0;  // while loading and setting up (before training)
  int64_t blocks = 0;     // the model's blocks (what activation checkpointing counts)
  size_t persistent = 0;  // held after set-up
  size_t load_peak() const { return setup_peak; }
  size_t max_peak() const { return peak > setup_peak ? peak : setup_peak; }
};

// A layout of a run: the parallel layout (world, tp, dp, strategy), the method and activation
// checkpointing (how many of the first blocks).
struct PlanLayout {
  ParallelLayout parallel;
  Method method = Method::full;
  Checkpointed checkpointing;
};

// The shapes the buffers are sized for: from the shards when they exist, else given.
struct PlanData {
  ShardInfo info;
  DataShape shape;
};
// Read the shards' metadata (InputError when absent, naming the path).
PlanData plan_data_from_shards(const RunConfig& c);
// Without shards: a synthetic description (vocabulary from vocab_size, causal or seq2seq).
PlanData plan_data_synthetic(const RunConfig& c, int64_t seq_len, int64_t target_len);

// The dry run of rank `rank` of `layout` (the deck `c` supplies model, data, batch and method
// options; layout replaces parallel, tp_size, method, activation_checkpointing). InputError
// when the layout does not apply (e.g. heads not divisible by tp), with the reason.
RankPlan predict_rank_memory(const RunConfig& c, const PlanData& data, const PlanLayout& layout, int rank);
// The largest over the ranks that differ (rank 0 and the last rank).
RankPlan predict_memory(const RunConfig& c, const PlanData& data, const PlanLayout& layout);

// An estimate of one optimizer step's time, for ranking layouts (not a promise): compute at a
// fraction of the device's peak plus the collectives' bytes over the link bandwidth.
struct SpeedModel {
  double device_flops = 0;       // FLOP/s at the precision used (peak)
  double efficiency = 0.4;       // fraction of peak a step achieves
  double link_bytes_per_s = 0;   // per-GPU collective bandwidth (bus bandwidth)
  double memory_bytes_per_s = 0; // device memory bandwidth (optimizer, NF4 dequantization)
};
SpeedModel default_speed_model(const std::string& device);

struct LayoutEstimate {
  PlanLayout layout;
  bool applies = true;
  std::string reason;           // why it does not apply
  RankPlan memory;              // with layout.checkpointing
  size_t activations_ckpt = 0;  // activations at the peak with every block checkpointed
  size_t activations_full = 0;  // and with none
  size_t reserve = 0;           // what was added for memory outside the allocator
  bool fits = false;            // max_peak + reserve <= device memory (always true without a limit)
  double step_seconds = 0;      // SpeedModel estimate of one optimizer step
  double rows_per_second = 0;   // global batch rows / step_seconds: what the ranking compares
  double compute_seconds = 0, comm_seconds = 0;
};

struct PlanRequest {
  int ranks = 1;
  size_t device_memory = 0;  // per GPU; 0 = no limit
  // Bytes outside our allocator (CUDA context, cuBLAS, NCCL); negative: default_runtime_reserve
  // of each layout.
  int64_t reserve = -1;
  std::vector<Method> methods;        // empty: full, lora, qlora
  std::vector<Strategy> strategies;   // empty: every strategy that applies to `ranks`
  SpeedModel speed;
};

// Every (strategy, tp, method) for the request, each with both checkpointing settings'
// activations and the deck's checkpointing setting for its totals (auto: every block, the
// setting most likely to fit; the run then resolves auto with choose_checkpointing).
std::vector<LayoutEstimate> plan_layouts(const RunConfig& c, const PlanData& data, const PlanRequest& req);
// The estimate with the most rows per second that fits for `method`, or nullptr.
const LayoutEstimate* recommend(const std::vector<LayoutEstimate>& all, Method method);

// activation_checkpointing = auto: the fewest checkpointed blocks (the first n) whose predicted
// peak (the larger of the set-up and training peaks, on the largest rank) plus `reserve` fits
// `device_memory` (0: no limit, so none). The peak does not grow with n, so a binary search over
// 0..blocks. InputError naming `where` when even every block checkpointed does not fit.
struct CheckpointChoice {
  int64_t blocks = 0;   // checkpointed
  int64_t total = 0;    // the model's blocks
  RankPlan memory;      // the prediction at the choice
  int dry_runs = 0;
};
CheckpointChoice choose_checkpointing(const RunConfig& c, const PlanData& data, const ParallelLayout& parallel,
                                      Method method, size_t device_memory, size_t reserve, const std::string& where);

// CUDA context + cuBLAS (+ NCCL when the layout has communicators) outside our allocator,
// from the H100 measurements in docs/bench/h100-2026-11-24-planner.md: 0.52-1.19 GiB without
// NCCL, 1.85-2.47 GiB with it (one rank); rounded up to 1 and 3 GiB. 0 on CPU.
size_t default_runtime_reserve(const std::string& device, bool communicators);

}  // namespace st
