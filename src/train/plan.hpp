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
#include "train/step_time.hpp"

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
  // The training split's row lengths in tokens (from the shards; empty without them): the
  // epoch's steps and the lengths its batches are trimmed to (train/loader.cpp).
  std::vector<int32_t> train_lengths = {};
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

// The step-time model (train/step_time.hpp): every op of a step's dry run at its device-profile
// time, every collective by the communication model, overlapped as the code overlaps them.
struct SpeedModel {
  DeviceProfile device;
  CommModel comm;
};
// Built in: cuda -> H100 SXM with NVLink4, 8 GPUs per node; cpu -> builtin_cpu_profile.
SpeedModel default_speed_model(const std::string& device);

// The epoch of a layout: optimizer steps, and the token length its micro-batches are trimmed to
// on average (the longest row of each micro-batch, the step's largest over the data-parallel
// ranks), from the shards' row lengths. Packed: every row is pack_length. Without lengths
// (no shards, or seq2seq): the full length and steps = 0 (unknown).
struct EpochShape {
  int64_t steps = 0;
  int64_t typical_len = 0;
};
EpochShape epoch_shape(const RunConfig& c, const PlanData& data, int dp);

struct LayoutEstimate {
  PlanLayout layout;
  bool applies = true;
  std::string reason;           // why it does not apply
  RankPlan memory;              // with layout.checkpointing
  size_t activations_ckpt = 0;  // activations at the peak with every block checkpointed
  size_t activations_full = 0;  // and with none
  size_t reserve = 0;           // what was added for memory outside the allocator
  bool fits = false;            // max_peak + reserve <= device memory (always true without a limit)
  StepTime step;                // of one optimizer step at the epoch's typical length
  EpochShape epoch;
  double step_seconds = 0;      // step.total
  double rows_per_second = 0;   // global batch rows / step_seconds: what the ranking compares
  double tokens_per_second_per_gpu = 0;  // tokens of the step (typical length) / step / world
  double epoch_seconds = 0;     // epoch.steps x step_seconds (0: unknown)
  double compute_seconds = 0, comm_seconds = 0;  // step.compute, step.exposed_comm
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

// Rank 0's op trace of one training step of `layout` at the epoch's typical length (what the
// step-time model replays; `shardtune calibrate --deck` times its GEMM shapes).
std::vector<TraceEvent> plan_step_trace(const RunConfig& c, const PlanData& data, const PlanLayout& layout, int rank = 0);
// The micro-batch the dry run takes: B rows at the data's full lengths (packed: B rows of
// pack_length filled with full-length documents).
Batch plan_full_batch(int64_t B, const PlanData& data);

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
// What a run's automatic choices (parallel = auto, activation_checkpointing = auto) keep free
// under the cap they plan against: nothing under memory_limit, which caps shardtune's allocator
// itself (what the run enforces, and what a peer's peak allocation compares with); under the
// GPU's memory, default_runtime_reserve (what lives outside the allocator).
size_t run_cap_reserve(const RunConfig& c, bool communicators);

}  // namespace st
