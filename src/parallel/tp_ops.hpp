// Megatron-style tensor-parallel building blocks (Shoeybi et al. 2019) over a TP group given as
// a Comm (size p, this rank i). CPU tensors, f32 or f64; the local GEMMs are the ordinary ops
// (linear_forward / linear_backward), so these functions only add the sharding conventions and
// the collectives.
//
// Every function that takes a Comm is collective: all ranks of the group call it in the same
// order, with the same shapes and the same choices of optional outputs (dx null or not,
// grad on or off). Replicated inputs (x of a column-parallel layer, dy of a row-parallel layer,
// targets and weights of the cross-entropy) must hold the same values on every rank; argument
// checks depend only on those shapes and values, so a bad call throws on every rank before any
// rank communicates.
//
// Shapes: leading dimensions are flattened as in ops/matmul.hpp (x [B, T, C] is [B*T, C]).
// Weights use the Hugging Face layout W [out, in], so for a column-parallel layer rank i holds
// W_i = shard_rows(W, p, i) [out/p, in], and for a row-parallel layer W_i = shard_cols(W, p, i)
// [out, in/p] (contiguous).
#pragma once

#include <initializer_list>

#include "core/tensor.hpp"
#include "model/linear.hpp"
#include "parallel/comm.hpp"

namespace st {

// ---------------------------------------------------------------- shards of full tensors
// Rows [i*n/p, (i+1)*n/p) of the leading dimension n = W.dim(0), as a new contiguous tensor
// [n/p, ...]. Throws InputError when n is not divisible by p (or p < 1, i outside [0, p)).
Tensor shard_rows(const Tensor& W, int p, int i);
// Columns [i*n/p, (i+1)*n/p) of the last dimension n = W.dim(-1), as a new contiguous tensor
// [..., n/p]. Throws InputError when n is not divisible by p (or p < 1, i outside [0, p)).
Tensor shard_cols(const Tensor& W, int p, int i);

// A model tensor split over a TP group by `split` (model/linear.hpp's TpMode): column = rows of
// the leading dimension, row = columns of the last dimension, none = replicated.
// Up-front check of a model's dimensions for tensor parallelism over p ranks: InputError naming
// the first dimension (and its config key) that p does not divide.
struct TpDimension {
  int64_t size;
  const char* what;  // "the number of attention heads"
  const char* key;   // "num_attention_heads"
};
void check_tp_divisible(int p, std::initializer_list<TpDimension> dims);

// This rank's part of `full` (any device, a copy on it; the whole tensor when split is none or
// the group has one rank).
Tensor tp_shard_of(const Tensor& full, TpMode split, const TpGroup& tp);
// The full tensor from every rank's `local` part, as a CPU tensor of `dtype` (f32 or f64):
// collective over tp.comm when the tensor is split and the group has more than one rank.
Tensor tp_gather_full(const Tensor& local, TpMode split, const TpGroup& tp, DType dtype = DType::f32);

// ---------------------------------------------------------------- column-parallel linear
// Megatron's "f" operator: identity in forward, all-reduce in backward.
// y_i [M, out/p] (+)= x [M, in] W_i^T, W_i [out/p, in]: this rank's columns of y = x W^T.
// x is replicated; no communication. `accumulate` as in linear_forward.
void column_parallel_forward(const Tensor& x, const Tensor& W_i, Tensor& y_i, bool accumulate = false);
// dy_i [M, out/p] is this rank's columns of dy.
//   dW_i [out/p, in] += dy_i^T x   (accumulates, as linear_backward; null/undefined: frozen, skipped)
//   dx [M, in] (+)= sum over ranks of dy_i W_i   (one all-reduce of dx over `comm`)
// dx follows linear_backward's dx_accumulate: true adds to dx's content, false overwrites it.
// With dx_accumulate, dx's prior content must be the same on every rank (as every activation
// gradient outside a TP region is): rank 0 adds its partial product onto it, the other ranks
// overwrite dx with theirs, and the all-reduce leaves prior + sum on every rank (no temporary).
// dx null or undefined: no input gradient and no communication (must agree across ranks).
void column_parallel_backward(const Tensor& x, const Tensor& W_i, const Tensor& dy_i, Tensor* dx, Tensor* dW_i,
                              Comm& comm, bool dx_accumulate = true);

// ---------------------------------------------------------------- row-parallel linear
// Megatron's "g" operator: all-reduce in forward, identity in backward.
// y [M, out] = all_reduce_sum(x_i [M, in/p] W_i^T) (+ residual), W_i [out, in/p] and x_i this
// rank's columns of x (e.g. the y_i of a preceding column-parallel layer). y is overwritten and
// ends up identical on every rank.
// residual [M, out] (optional) is added exactly once: rank 0 adds it before the all-reduce
// (fused into its GEMM), the other ranks never read it (it may be null there). It may alias y
// (y = y + x W^T: on rank 0 only y's prior content counts, the other ranks overwrite theirs).
void row_parallel_forward(const Tensor& x_i, const Tensor& W_i, Tensor& y, Comm& comm,
                          const Tensor* residual = nullptr);
// dy [M, out] is replicated; no communication (the residual's gradient is dy itself, the
// caller's to route).
//   dx_i [M, in/p] (+)= dy W_i   (dx_accumulate as linear_backward; null: not wanted)
//   dW_i [out, in/p] += dy^T x_i (accumulates; null/undefined: frozen)
void row_parallel_backward(const Tensor& x_i, const Tensor& W_i, const Tensor& dy, Tensor* dx_i, Tensor* dW_i,
                           bool dx_accumulate = true);

// ---------------------------------------------------------------- vocab-parallel cross-entropy
// The cross_entropy op (ops/loss.hpp) over logits whose vocabulary is split across the group
// (CPU f32/f64 in double; CUDA f32/bf16 logits with f32 statistics and f32 losses):
// logits_shard [N, V/p] holds vocabulary columns [i*V/p, (i+1)*V/p) with V = p * V/p; targets
// i32 [N] are global ids (-1 = ignore; ids >= V throw); weight f32 [N]. No rank holds [N, V].
// Same definitions as cross_entropy: a row is active when target >= 0 and weight != 0;
// loss_n = logsumexp over all V logits - logit[target] (computed in double, stored as the
// logits' dtype), 0 for inactive rows. Collectives: one all-reduce MAX of the row maxima [N],
// one all-reduce SUM of [2, N] (row sums of exp(logit - global max), and the target logit,
// contributed only by the rank owning the target's column).
// losses (optional, [N], logits' dtype): each row's unweighted loss, same on every rank.
// With grad, logits_shard is overwritten in place by d(objective)/d(logits_shard) =
// weight_n * (softmax - onehot(target)) restricted to this rank's columns (zero rows when
// inactive), where objective = sum_n weight_n * loss_n.
// Returns the objective sum_n weight_n * loss_n (in double, from the rounded per-row losses,
// as llama_forward reduces it), the same value on every rank.
double vocab_parallel_cross_entropy(Tensor& logits_shard, const Tensor& targets, const Tensor& weight,
                                    Tensor* losses, bool grad, Comm& comm);

}  // namespace st
