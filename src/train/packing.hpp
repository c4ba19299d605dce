// Which training rows one epoch feeds the model, in order. The trainer deals them out as global
// batches: step s, data-parallel rank r and micro-batch a take rows
// [s G + r micro accum + a micro, ... + micro) with G = micro_batch_size x grad_accum x dp, so
// micro_batch_size counts training rows (packed rows under packing) and every rank takes the
// same number of steps. The plan depends only on the shard lengths, the seed and the epoch: every
// rank computes the same one (no communication) and reads only its own rows, and a run equals
// its one-rank run under any layout.
//
//   plain            one training row per shard row, in the epoch's order (epoch_order).
//   group_by_length  the same rows, the epoch's order cut to whole global batches, sorted by
//                    length (ties keep the shuffled order), cut into global batches, and the
//                    batches shuffled (seed, epoch): batches of similar lengths, little padding.
//   packing          documents (shard rows) packed first-fit-decreasing, in the epoch's order for
//                    ties, into training rows of at most pack_length tokens, never split; the
//                    rows then shuffled (seed, epoch). First-fit-decreasing looks only at the
//                    lengths, so every epoch packs into the same number of rows.
// The last (rows mod G) training rows of an epoch are left out, as the plain path always has.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "config/run_config.hpp"

namespace st {

// The training rows' length under packing: pack_length, or the training shards' max_seq_len
// when it is 0; 0 without packing.
inline int64_t resolved_pack_length(const RunConfig& c, int64_t shard_seq_len) {
  return c.packing ? (c.pack_length > 0 ? c.pack_length : shard_seq_len) : 0;
}

struct EpochRows {
  std::vector<int64_t> docs;       // shard rows
  std::vector<int64_t> row_begin;  // training row p holds docs [row_begin[p], row_begin[p + 1])
  int64_t size() const { return static_cast<int64_t>(row_begin.size()) - 1; }
  int64_t docs_in(int64_t p) const {
    return row_begin[static_cast<size_t>(p) + 1] - row_begin[static_cast<size_t>(p)];
  }
};

struct BatchingOptions {
  uint64_t seed = 0;
  bool shuffle = true;
  bool group_by_length = false;
  int64_t pack_length = 0;    // > 0: packing into rows of this many tokens
  int64_t global_batch = 1;   // G (group_by_length cuts the order into these)
};

// The training rows of epoch `epoch` (1-based) over shard rows [0, lengths.size()).
// Packing refuses (InputError) a document longer than pack_length.
EpochRows epoch_rows(const std::vector<int32_t>& lengths, const BatchingOptions& o, int64_t epoch);

// First-fit decreasing: documents (indices into `lengths`) in decreasing length, ties in the
// given order, each into the first bin with room, bins of `capacity` tokens opened as needed.
// Returns the bins in the order they were opened, each with its documents in placement order.
// O(n log n) (a max tree over the bins' free space).
std::vector<std::vector<int64_t>> pack_first_fit_decreasing(const std::vector<int64_t>& docs,
                                                            const std::vector<int32_t>& lengths, int64_t capacity);

}  // namespace st
