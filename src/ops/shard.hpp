// Blocks of a tensor for sharding: rows of the leading dimension or columns of the last one,
// as new contiguous tensors (CPU). Used to cut this rank's part of a full tensor.
#pragma once

#include <vector>

#include "core/tensor.hpp"

namespace st {

// Rows [i*n/p, (i+1)*n/p) of the leading dimension n = W.dim(0), as a new contiguous tensor
// [n/p, ...]. Throws InputError when n is not divisible by p (or p < 1, i outside [0, p)).
Tensor shard_rows(const Tensor& W, int p, int i);
// Columns [i*n/p, (i+1)*n/p) of the last dimension n = W.dim(-1), as a new contiguous tensor
// [..., n/p]. Throws InputError when n is not divisible by p (or p < 1, i outside [0, p)).
Tensor shard_cols(const Tensor& W, int p, int i);
// The inverse of shard_cols over every rank's part: parts (CPU, one dtype) concatenated along
// the last dimension in order.
Tensor concat_cols(const std::vector<Tensor>& parts);

}  // namespace st
