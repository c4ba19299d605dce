// From shard rows to model batches: the epoch order (a seeded shuffle that depends only on the
// seed and the epoch, so every layout sees the same samples in the same order), the global
// batches of each step, and the device tensors of one micro-batch with its loss weights.
#pragma once

#include <cstdint>
#include <vector>

#include "io/shards.hpp"
#include "model/llama.hpp"

namespace st {

// Row order of one epoch over the first n rows: identity, or a Fisher-Yates shuffle seeded by
// (seed, epoch).
std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle);

// Host values (i32 ids, or f32 numbers) as a new tensor of `dtype` on `device`.
Tensor tensor_on(const std::vector<int32_t>& values, DType dtype, Device device);

// The padded length of a micro-batch whose longest training row has `longest` tokens (at least
// 2, at most the buffers' `T_max`).
int64_t batch_length(int64_t longest, int64_t T_max);

// Device buffers for micro-batches of up to B_max training rows of up to T_max tokens.
class BatchBuffers {
 public:
  BatchBuffers(int64_t B_max, int64_t T_max, Device device);
  // Fill from host rows: each row is a training row, or, with host.pack_rows (sequence packing),
  // training row p is the next pack_rows[p] rows (documents) end to end. T is the longest
  // training row (batch_length). Every target token gets weight `token_weight` (e.g. 1 / number
  // of targets in the global batch); a document's tokens predict only its own next tokens.
  // Every batch gets positions (restarting at 0 in each document) and attention segments: each
  // document, and the padding after each row's last document (ops/attention.hpp).
  LlamaBatch make(const Batch& host, double token_weight);

 private:
  int64_t B_max_, T_max_, S_max_;
  Device device_;
  Tensor ids_, targets_, weight_, lengths_, positions_, tiles_;             // device
  Tensor h_ids_, h_targets_, h_weight_, h_lengths_, h_positions_, h_tiles_;  // host staging
  Tensor cu_, keys_;  // the segments (host: the CPU kernels and the tile table read them)
};

}  // namespace st
