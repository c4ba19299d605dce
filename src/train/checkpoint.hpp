// Training checkpoints for exact resume (issue 8).
//
// Layout (checkpoint_dir, default <output_dir>/<run_id>/checkpoints; on a file system every
// rank sees):
//   step-<NNNNNNNN>/rank-<r>.safetensors   this rank's optimizer state: for every parameter the
//                                          optimizer updates (ZeRO-3: this rank's shards; DDP,
//                                          TP, none: the trainable tensors this rank holds) its
//                                          value, working copy (bf16 beside an f32 master),
//                                          master copy, AdamW m and v (AdamW::state_tensors)
//   step-<NNNNNNNN>/rank-<r>.json          step, optimizer step count, the data position (epoch
//                                          and steps done in it; the order is a pure function of
//                                          seed and epoch), the trainer's running figures,
//                                          layout (world_size, tp, dp, parallel, method) and the
//                                          options that must match (with their hash)
//   step-<NNNNNNNN>/COMPLETE               written by rank 0 last, after a barrier: only a
//                                          directory with it is a checkpoint
// Every file goes through atomic_write_file. Frozen base weights are not saved: they come from
// a deterministic source (random init from the seed, or the `model` directory, NF4-quantized
// deterministically), rebuilt identically on resume; everything that changes as training goes
// is saved. The learning-rate schedule and the dropout seeds are pure functions of the step.
//
// resume = auto picks the newest complete checkpoint (none: start afresh); resume = <dir> that
// one. A checkpoint of another layout or with other training options is refused (InputError
// naming both). Directories without COMPLETE are ignored and removed by rank 0, as are complete
// ones beyond keep_checkpoints and, after a resume, any of a later step (a killed run's future).
#pragma once

#include <cstdint>
#include <map>
#include <string>

#include <nlohmann/json.hpp>

#include "config/choices.hpp"
#include "config/run_config.hpp"
#include "parallel/layout.hpp"
#include "parallel/comm.hpp"
#include "train/optimizer.hpp"

namespace st {

// The run's layout as a checkpoint records it (rank-<r>.json and COMPLETE keep the fields
// world_size, tp, dp, parallel and method).
struct CheckpointLayout {
  ParallelLayout parallel;
  Method method = Method::full;
  int rank = 0;  // this process's world rank (not part of the layout)
  std::string str() const;
};

// checkpoint_dir, or <output_dir>/<run_id>/checkpoints.
std::string checkpoint_root(const RunConfig& c);
std::string checkpoint_step_dir(const std::string& root, int64_t step);
// Step of a "step-<N>" directory name, -1 if it is not one.
int64_t checkpoint_dir_step(const std::string& name);
bool checkpoint_complete(const std::string& step_dir);

// The checkpoint to resume from: "" to start afresh (resume = none, or auto with no complete
// checkpoint). InputError for a named directory that is not a complete checkpoint.
std::string find_resume_checkpoint(const RunConfig& c);

// Options (resolved key -> value) that must be the same to continue a run bit for bit: all but
// those that do not change the trajectory (logging, output, checkpointing, threads, limits).
std::map<std::string, std::string> checkpoint_options(const RunConfig& c);

// The differences between a checkpoint's options (`then`) and this run's (`now`), as
// "key = a in the checkpoint, b now, ..." ("" when they agree). A key the checkpoint lacks because
// it was added to shardtune after the checkpoint was written (master_weights) stands for the value
// the builds before it behaved as (a fixed table, not today's default); any other missing key differs.
std::string checkpoint_options_diff(const std::map<std::string, std::string>& then,
                                    const std::map<std::string, std::string>& now);

// Collective over `world`: every rank writes its files into step-<step>, then rank 0 writes
// COMPLETE and removes old checkpoints beyond `keep`. `trainer` is the trainer's own state.
void write_checkpoint(const RunConfig& c, const CheckpointLayout& layout, int64_t step, AdamW& opt,
                      const nlohmann::json& trainer, Comm& world);

// InputError unless `dir` is a checkpoint of this layout and these training options.
void check_checkpoint(const RunConfig& c, const CheckpointLayout& layout, const std::string& dir);

// Checks `dir` against this run (layout, options), restores this rank's optimizer state in
// place and returns the trainer's state (rank-<r>.json's "trainer").
nlohmann::json load_checkpoint(const RunConfig& c, const CheckpointLayout& layout, const std::string& dir,
                               AdamW& opt);

// The trainer's state in rank-<rank>.json of a checkpoint (read before loading it).
nlohmann::json checkpoint_trainer_state(const std::string& dir, int rank);

// Rank 0 (after every rank has loaded): remove checkpoints of steps after `step`, incomplete
// ones, and (step < 0: a fresh run) every old checkpoint of this checkpoint_dir.
void prune_checkpoints(const RunConfig& c, int64_t step);

}  // namespace st
