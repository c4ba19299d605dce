// Megatron-style tensor parallelism (Shoeybi et al. 2019): what a TP group computes beyond the
// model's ordinary ops. The model code sees it through TpCollectives (model/tp_plan.hpp), which
// every Comm implements with the functions here; the sharding of tensors (column = rows of the
// leading dimension, row = columns of the last) is model/tp_plan.hpp's and ops/shard.hpp's.
//
// Every function that takes a Comm is collective: all ranks of the group call it in the same
// order, with the same shapes and the same choices of optional outputs. Replicated inputs
// (targets and weights of the cross-entropy) must hold the same values on every rank; argument
// checks depend only on those shapes and values, so a bad call throws on every rank before any
// rank communicates.
#pragma once

#include "core/tensor.hpp"
#include "model/tp_plan.hpp"
#include "ops/shard.hpp"
#include "parallel/comm.hpp"

namespace st {

// The full tensor from every rank's `local` part (split as `split` says), as a CPU tensor of
// `dtype` (f32 or f64), on every rank: one all-gather over `comm` (Comm::gather_full).
Tensor gather_split_tensor(const Tensor& local, TpMode split, Comm& comm, DType dtype);

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
