// Token embedding lookup and its gradient scatter.
#pragma once

#include "core/tensor.hpp"

namespace st {

// out [N, C] = table [V, C] rows at ids (i32 [N]); ids outside [0, V) throw (CPU).
void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out);
// dtable [V, C] += scatter of dout [N, C].
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable);

// Vocabulary-parallel forms: the table [V_shard, C] holds rows [offset, offset + V_shard) of the
// vocabulary; positions whose id lies outside get a zero row (forward) and are skipped
// (backward), so summing `out` over the shards' ranks gives the full lookup.
void embedding_forward_shard(const Tensor& ids, const Tensor& table, int64_t offset, Tensor& out);
void embedding_backward_shard(const Tensor& ids, const Tensor& dout, int64_t offset, Tensor& dtable);

}  // namespace st
