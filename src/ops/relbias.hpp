// T5's bucketed relative position bias (Raffel et al. 2020; transformers' T5Attention): a
// learned table [num_buckets, H] looked up by the bucket of each (query, key) distance, giving
// the additive attention bias [H, Tq, Tk] that ops/attention.hpp takes.
#pragma once

#include <cstdint>

#include "core/tensor.hpp"

namespace st {

// transformers' _relative_position_bucket for relative_position = key - query: bidirectional
// (encoder) splits the buckets between the two signs; causal (decoder) uses only the past.
// Half of the (per-sign) buckets are exact distances, the rest log-spaced up to max_distance;
// computed in f32 like torch so the boundaries fall where transformers puts them.
int32_t t5_relative_bucket(int64_t relative_position, bool bidirectional, int64_t num_buckets, int64_t max_distance);
// The buckets of every (query, key) pair: i32 [Tq * Tk] on `device`.
Tensor t5_relative_buckets(int64_t Tq, int64_t Tk, bool bidirectional, int64_t num_buckets, int64_t max_distance,
                           Device device);

// bias [H, Tq, Tk] = table[buckets[q, k], h]   (table [num_buckets, H], buckets i32 [Tq * Tk]).
// H is the table's own width: under tensor parallelism a [num_buckets, H/p] slice of heads gives
// this rank's [H/p, Tq, Tk]. bias is in the master dtype: f32 on CUDA (table bf16 or f32), the
// table's dtype on the CPU.
void relative_bias_forward(const Tensor& table, const Tensor& buckets, int64_t Tq, int64_t Tk, Tensor& bias);
// dtable [num_buckets, H] += scatter of dbias [H, Tq, Tk] (dtable in the master dtype).
void relative_bias_backward(const Tensor& dbias, const Tensor& buckets, int64_t Tq, int64_t Tk, Tensor& dtable);

}  // namespace st
