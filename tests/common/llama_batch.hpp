// A random next-token batch for the small Llama models of the unit tests.
#pragma once

#include <cstdint>

#include "core/rng.hpp"
#include "model/llama.hpp"

namespace st::test {

// B rows of T tokens drawn below `vocab` from Rng(seed); row `padded_row` (if in [0, B)) holds
// T - 2 tokens and zeros after them. Each position with a next token in its row is a target of
// weight `weight`; the others are -1 with weight 0.
inline LlamaBatch random_llama_batch(int64_t B, int64_t T, uint64_t seed, uint64_t vocab, float weight,
                                     int64_t padded_row = 1) {
  Rng rng(seed);
  LlamaBatch b;
  b.B = B;
  b.T = T;
  b.ids = Tensor::empty({B * T}, DType::i32);
  b.targets = Tensor::empty({B * T}, DType::i32);
  b.weight = Tensor::empty({B * T}, DType::f32);
  b.lengths = Tensor::empty({B}, DType::i32);
  for (int64_t r = 0; r < B; ++r) {
    const int64_t len = r == padded_row ? T - 2 : T;
    b.lengths.ptr<int32_t>()[r] = static_cast<int32_t>(len);
    for (int64_t t = 0; t < T; ++t) b.ids.ptr<int32_t>()[r * T + t] = static_cast<int32_t>(t < len ? rng.below(vocab) : 0);
    for (int64_t t = 0; t < T; ++t) {
      const bool target = t + 1 < len;
      b.targets.ptr<int32_t>()[r * T + t] = target ? b.ids.ptr<int32_t>()[r * T + t + 1] : -1;
      b.weight.ptr<float>()[r * T + t] = target ? weight : 0.0f;
    }
  }
  return b;
}

}  // namespace st::test
