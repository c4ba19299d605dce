// Incremental decoding of a Llama-family decoder with a key/value cache (`shardtune generate`).
//
// The cache holds, per layer, the keys (after RoPE) and values of every position of one
// sequence so far: [capacity, Hkv*D] in the model's dtype on its device. llama_decode runs n new
// tokens at positions length .. length+n-1 through the blocks (the same ops as llama_forward:
// norms, projections with their adapters, RoPE at those positions, SwiGLU), writes their keys and
// values into the cache rows, attends over the cache (ops/decode_attention.hpp) and returns the
// logits of the last of them. One call with the whole prompt is the prefill; each later call
// with one token is a decoding step, costing one token's FLOPs instead of the whole sequence's.
//
// One rank (no tensor parallelism, no ZeRO-3 hooks): refused otherwise.
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.hpp"
#include "model/llama.hpp"

namespace st {

struct LlamaKvCache {
  int64_t capacity = 0;  // positions the cache holds
  int64_t max_step = 0;  // the most tokens one llama_decode call takes
  int64_t length = 0;    // positions written so far
  std::vector<Tensor> k, v;  // per layer [capacity, Hkv*D]
  // Scratch of one step (rows: max_step).
  Tensor x, x_mid, xn, rstd, q, att, gate, up, h, scratch;
  Tensor logits;  // [1, V]: the last token's

  void reset() { length = 0; }
};

// A cache for sequences of up to `capacity` positions, fed at most `max_step` tokens per call.
// Throws InputError when capacity exceeds the model's max_position_embeddings or its sliding
// window (sliding-window attention is not implemented), or when the model is sharded.
LlamaKvCache llama_kv_cache(const LlamaModel& m, int64_t capacity, int64_t max_step);

// Runs ids (host, 1 <= n <= max_step, length + n <= capacity) at positions length .. length+n-1,
// appends them to the cache and returns the logits [1, V] of the last one (a view of
// cache.logits, on the model's device, in its dtype).
Tensor llama_decode(LlamaModel& m, LlamaKvCache& cache, const std::vector<int32_t>& ids);

}  // namespace st
