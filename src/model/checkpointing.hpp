// Activation checkpointing of a subset of blocks. The first `blocks` blocks in forward order
// (T5: the encoder's, then the decoder's) keep only their input (the residual stream) and share
// one set of block internals; each is recomputed from its input before its backward, except the
// last of them, whose internals are still in the shared set when its backward runs. The other
// blocks keep their own internals. Memory: (L - n) + 1 sets for n >= 1 checkpointed blocks (so
// n = 1 costs what n = 0 does), L sets for n = 0; compute: n - 1 block forwards more per step.
// The first blocks are checkpointed (not the last) because the last blocks' backward runs first:
// their internals would be needed soonest.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

namespace st {

struct Checkpointed {
  static constexpr int64_t kAll = std::numeric_limits<int64_t>::max();
  int64_t blocks = 0;  // 0: none; kAll (or any count >= the model's blocks): every block
  static Checkpointed all() { return {kAll}; }
  static Checkpointed none() { return {0}; }
  int64_t of(int64_t num_blocks) const { return std::clamp<int64_t>(blocks, 0, num_blocks); }
};

// Which set of internals block l uses (of `sets` sets, the first `n` blocks checkpointed).
inline size_t checkpoint_set(int64_t l, int64_t n, size_t sets) {
  if (sets == 1) return 0;
  return static_cast<size_t>(l < n ? 0 : l - n + (n > 0 ? 1 : 0));
}
// Whether block l is recomputed before its backward: a later checkpointed block overwrote its set.
inline bool checkpoint_recomputes(int64_t l, int64_t n) { return l < n - 1; }
// Sets of internals for a stack of L blocks with n checkpointed (training).
inline int64_t checkpoint_sets(int64_t L, int64_t n) { return n > 0 ? L - n + 1 : L; }

}  // namespace st
