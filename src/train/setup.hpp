// The pieces of a run on one rank (model with its method, ZeRO-3, DDP, optimizer, buffers) and
// one optimizer step, built and taken the same way by the trainer and by the memory planner's
// dry run (train/plan.hpp), so the planner counts exactly what a run allocates.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "config/choices.hpp"
#include "config/run_config.hpp"
#include "parallel/layout.hpp"
#include "parallel/ddp.hpp"
#include "parallel/zero3.hpp"
#include "train/families.hpp"
#include "train/model_runner.hpp"
#include "train/optimizer.hpp"

namespace st {

// The device and compute precision of a run (dtype auto: bf16 on CUDA, f32 on CPU).
Device run_device(const RunConfig& c);
DType run_dtype(const RunConfig& c, Device d);

// The communicators of one rank. The device ones carry tensors (NCCL on GPUs); the host ones
// reduce scalars (the loss, the gradient norm), as the trainer always has.
struct RankComms {
  TpGroup tp;                // the model's TP group (size 1 unless the layout is tensor-parallel)
  Comm* dp = nullptr;        // data-parallel group, device: ZeRO-3 and DDP
  Comm* dp_host = nullptr;   // data-parallel group, host scalars
  Comm* tp_host = nullptr;   // TP group, host scalars
  Comm* world = nullptr;     // every rank, host scalars
  int dp_size() const { return dp ? dp->size() : 1; }
};

struct TrainingState {
  const ModelFamily* family = nullptr;
  std::unique_ptr<ModelRunner> model;
  std::unique_ptr<Zero3> zero;                // ZeRO-3: parameters sharded over the data-parallel group
  std::unique_ptr<AdamW> opt;                 // training only
  std::unique_ptr<GradAllReduce> grad_sync;   // DDP: gradients summed over the data-parallel group
  // Figures of the whole (local TP part of the) model, before ZeRO-3 takes the tensors over.
  int64_t num_parameters = 0, num_trainable = 0, lora_adapters = 0;
  WeightBytes weight_bytes;
};

// Build everything a run holds in memory, in the trainer's order: model (loaded or random, this
// rank's TP shard), the method (full or adapters), ZeRO-3 or DDP (parallel/parallelize.hpp), the
// optimizer, activations and batch buffers.
TrainingState build_training_state(const RunConfig& c, const ParallelLayout& layout, Method method,
                                   const ShardInfo& info, const DataShape& shape, DType dtype, Device device,
                                   const RankComms& comms, bool training);

struct StepOutcome {
  double loss = 0;       // the data-parallel group's summed objective
  double grad_norm = 0;  // before clipping
  int64_t computed_tokens = 0;  // positions the data-parallel group computed, padding included
};

// One optimizer step over `accum` micro-batches: read(a, host, ctx) fills micro-batch a and its
// context; before_sync runs after the last backward (the trainer's fault injection).
StepOutcome training_step(TrainingState& s, const RunConfig& c, const RankComms& comms, int64_t accum,
                          double token_weight, double lr,
                          const std::function<void(int64_t, Batch&, LayerContext&)>& read,
                          const std::function<void()>& before_sync = {});

}  // namespace st
