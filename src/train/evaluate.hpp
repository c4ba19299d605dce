// Validation: mean loss over every target token of the split, and for classification shards
// (SST-2) the accuracy of comparing the label words' scores at the answer position.
#pragma once

#include <cstdint>

#include "io/shards.hpp"
#include "model/llama.hpp"
#include "parallel/comm.hpp"
#include "train/loader.hpp"

namespace st {

struct EvalResult {
  double loss = 0;      // sum of token losses / tokens
  double accuracy = 0;  // NaN when the shards carry no labels
  int64_t tokens = 0, rows = 0;
  double seconds = 0;
};

// With a data-parallel group `dp`, rank r evaluates batches r, r + dp, ... and the sums are
// added over the group (every rank gets the same result).
EvalResult evaluate(LlamaModel& m, LlamaActivations& acts, BatchBuffers& buffers, const ShardDataset& data,
                    int64_t max_rows, int64_t batch_size, Comm* dp = nullptr);

}  // namespace st
