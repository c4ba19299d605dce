// Validation: mean loss over every target token of the split, and for classification shards
// (SST-2) the accuracy of comparing the label words' scores at the answer position (causal
// shards: the position predicting the first answer token; seq2seq: the decoder's first position).
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "io/shards.hpp"
#include "model/linear.hpp"
#include "parallel/comm.hpp"

namespace st {

class ModelRunner;

struct EvalResult {
  double loss = 0;      // sum of token losses / tokens
  double accuracy = 0;  // NaN when the shards carry no labels
  int64_t tokens = 0, rows = 0;
  double seconds = 0;
};

// With a data-parallel group `dp`, rank r evaluates batches r, r + dp, ... and the sums are
// added over the group (every rank gets the same result). `progress(done, total, seconds)` is
// called after each round of batches (for progress lines of a long evaluation).
using EvalProgress = std::function<void(int64_t done, int64_t total, double seconds)>;
EvalResult evaluate(ModelRunner& model, const ShardDataset& data, int64_t max_rows, int64_t batch_size,
                    Comm* dp = nullptr, const EvalProgress& progress = {});

// The label tokens' logits [rows, labels] at row b's position pos[b] of logits [rows * T, V_local]
// (NaN where pos[b] is outside [0, T)). Under TP each rank holds the vocabulary rows
// [vocab_offset, vocab_offset + vocab_local): the owner of each label token contributes it and a
// sum over the group completes them.
std::vector<float> label_scores_at(const Tensor& logits, int64_t T, const std::vector<int64_t>& pos,
                                   const std::vector<int32_t>& label_ids, int64_t vocab_offset, int64_t vocab_local,
                                   const TpGroup& tp);

}  // namespace st
