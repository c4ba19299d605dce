// Checks of a run against its model before anything is allocated: the products of options and
// shapes that size buffers (no int64 overflow, no buffer beyond any device), and the shards'
// token ids against the model's vocabulary.
#pragma once

#include <cstdint>
#include <string>

#include "config/run_config.hpp"
#include "io/shards.hpp"
#include "train/model_runner.hpp"

namespace st {

// The model's sizes as a run will build it: from `model`'s config.json (read by its family's
// reader, train/families.hpp) or the random-init options (vocab_size 0: the shards' tokenizer
// size). `source` names where they come from in messages.
struct ModelDims {
  bool seq2seq = false;  // an encoder-decoder (T5): decoder positions beside the encoder's
  std::string source;
  int64_t vocab = 0, hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
};
ModelDims model_dims(const RunConfig& c, const ShardInfo& info);

// Largest element count of one buffer a run may ask for: 2^48 (1 PiB of f32, beyond every
// device), so every size computed from these products, in bytes and with the small factors the
// code multiplies them by, stays far inside int64.
constexpr int64_t kMaxBufferElements = int64_t{1} << 48;

// Every product that sizes a buffer (embedding and head, logits, activations, attention scores,
// MLP and adapter tensors; per micro-batch of micro_batch_size rows) computed without overflow
// and at most kMaxBufferElements; else InputError naming the options and values that make it.
void check_buffer_sizes(const RunConfig& c, const ShardInfo& info, const DataShape& shape);

// Token ids (ids, seq2seq targets, label_token_ids, special ids) of the splits within the
// model's vocabulary: InputError naming the file, dataset and first row (ShardDataset::check_token_ids).
void check_data_against_model(const RunConfig& c, const ShardDataset* train, const ShardDataset* val);

}  // namespace st
