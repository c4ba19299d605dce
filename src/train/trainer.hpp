// The training run: data, model, method, optimizer, the step loop, evaluation, metrics.
#pragma once

#include "config/run_config.hpp"
#include "parallel/layout.hpp"

namespace st {

// Runs `shardtune train` with a validated configuration and its parallel layout on the current
// runtime (whose rank grid is the layout's). Returns the process exit status: 0 ok, 3 out of
// memory (recorded as outcome "oom"). Other errors are recorded as outcome "error" in metrics.h5
// and rethrown.
int run_training(const RunConfig& cfg, const ParallelLayout& layout);

// Runs `shardtune eval`: validation loss and accuracy of the configured model (no training),
// printed and written to <run dir>/metrics.h5.
int run_evaluation(const RunConfig& cfg, const ParallelLayout& layout);

// The options of a model use with `adapter` set (eval, generate): an adapter a QLoRA run saved
// (its shardtune_adapter.json) runs on the NF4 base it was trained on unless the deck sets
// `method`; a dense use of it is warned about.
RunConfig with_adapter_method(const RunConfig& cfg);

}  // namespace st
