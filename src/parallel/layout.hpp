// The parallel layout of a run: how its world of ranks is cut and which strategies apply, as one
// value (in the spirit of torchtitan's ParallelDims), validated once from the options and the
// world size. The runtime's rank grid, the trainer's set-up (parallel/parallelize.hpp), the
// memory planner and the resume checkpoints all read this value.
//
// world = tp x dp, TP innermost (ranks r and r+1 share a TP group). Room for more dimensions:
// pipeline stages and sequence parallelism would be further factors of world (pp) and a flag on
// the TP groups (sp), checked here like tp.
#pragma once

#include <string>

#include "config/choices.hpp"

namespace st {

struct ParallelLayout {
  Strategy strategy = Strategy::none;
  int world = 1;  // ranks
  int tp = 1;     // tensor-parallel group size (1 unless strategy is tp or tp+zero3)
  int dp = 1;     // data-parallel groups: world / tp

  // Validated once: InputError naming `where` (a deck, "command line", "planner") when the world
  // cannot be cut so (tp_size must divide the world; parallel = none runs on one rank; tp_size
  // other than 1 needs a TP strategy). Strategy::automatic is refused: resolve it first.
  static ParallelLayout make(Strategy strategy, int64_t tp_size, int world_size, const std::string& where = "options");

  bool tensor_parallel() const { return tp > 1; }
  // ZeRO-3 shards every parameter over the data-parallel group (also a group of one).
  bool zero3() const { return strategy == Strategy::zero3 || strategy == Strategy::tp_zero3; }
  // DDP sums gradients over the data-parallel group (ddp, and tp across its groups).
  bool ddp() const { return (strategy == Strategy::ddp || strategy == Strategy::tp) && dp > 1; }
  // Anything but one plain rank: collectives exist (NCCL communicators on GPUs).
  bool has_communicators() const { return strategy != Strategy::none || world > 1; }
  const char* name() const { return strategy_name(strategy); }  // the deck's spelling
  // "single" for one plain rank, else the strategy's name (metrics.h5 /summary strategy).
  std::string summary_name() const;
  std::string str() const;  // "parallel tp, world 4 = tp 2 x dp 2"
  bool operator==(const ParallelLayout& o) const = default;
};

}  // namespace st
