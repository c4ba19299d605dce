// Attention of a few new query tokens over a key/value cache (incremental decoding,
// `shardtune generate`). Grouped-query: Hq query heads share Hkv cached key/value heads.
// The n queries sit at positions past .. past+n-1 of one sequence; query i sees the cached keys
// 0 .. past+i (causal), so one call serves the prefill (past = 0, n = the prompt) and each
// decoding step (n = 1):
//   s_ij = scale * q_i . k_j  (j <= past + i),  out_i = softmax_j(s_ij) v_j.
#pragma once

#include <cstdint>

#include "core/tensor.hpp"

namespace st {

// The largest head dimension the CUDA kernel holds in registers (every published model's is
// at most 256).
constexpr int64_t kDecodeMaxHeadDim = 256;

struct DecodeAttentionShape {
  int64_t Hq = 0, Hkv = 0, D = 0;
  int64_t past = 0;  // cached positions before the first query
  double scale = 0;  // usually 1/sqrt(D)
};

// q: [n, Hq*D]; k_cache, v_cache: [capacity, Hkv*D] with rows 0 .. past+n-1 written (capacity
// >= past + n); out: [n, Hq*D]. One dtype and device for all (CPU f32/f64; CUDA bf16 or f32,
// scores and sums in f32).
void decode_attention(const DecodeAttentionShape& s, const Tensor& q, const Tensor& k_cache, const Tensor& v_cache,
                      Tensor& out);

}  // namespace st
