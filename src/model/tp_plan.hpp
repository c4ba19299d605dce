// Tensor parallelism (Megatron) as the model code sees it, with no communicator in sight:
//   - the TP plan, data: which linear layers are column- or row-parallel and which tables are
//     split by vocabulary (rows) or by heads (columns); each family declares its own (TpPlan)
//     and its parameter table records each tensor's split (model/param_table.hpp);
//   - TpGroup: this rank's place in its group, with the group's collectives behind
//     TpCollectives, a small interface that parallel/ implements (parallel/comm.hpp: every
//     communicator is one);
//   - helpers to cut this rank's part of a full tensor and to gather the full one back.
// On one rank (size 1) every split is `none` and no collective is ever called.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.hpp"

namespace st {

// How a tensor is split over the TP group:
//   column: by rows of the leading dimension (a linear's output features: rank i holds W_i
//           [out/p, in]; a vocabulary-parallel embedding's rows; a column-parallel bias);
//   row:    by columns of the last dimension (a linear's input features: W_i [out, in/p]; a
//           relative-bias table's heads);
//   none:   replicated.
enum class TpMode { none, column, row };

// The collectives a tensor-parallel model needs: Megatron's conjugate operators f and g are both
// "sum the partial results over the group" (g after a row-parallel region in forward, f before a
// column-parallel region's input gradient in backward), the vocabulary-parallel cross-entropy,
// and the gather of a split tensor for saving. Collective: every rank of the group calls them in
// the same order with the same shapes.
class TpCollectives {
 public:
  virtual ~TpCollectives() = default;
  virtual int size() const = 0;
  virtual int rank() const = 0;
  // In place: t <- sum over the group of t.
  virtual void sum_partials(Tensor& t) = 0;
  // The cross_entropy op (ops/loss.hpp) over logits split by vocabulary columns (this rank holds
  // columns [rank V/p, (rank+1) V/p)); returns sum_n weight_n loss_n, the same on every rank;
  // with grad the shard becomes d(objective)/d(logits). See parallel/tp_ops.hpp.
  virtual double vocab_cross_entropy(Tensor& logits_shard, const Tensor& targets, const Tensor& weight, Tensor* losses,
                                     bool grad) = 0;
  // The full tensor from every rank's part, on the CPU in `dtype` (f32 or f64), on every rank.
  virtual Tensor gather_full(const Tensor& local, TpMode split, DType dtype) = 0;
};

// This rank's tensor-parallel group (size 1: no sharding, comm unused).
struct TpGroup {
  TpCollectives* comm = nullptr;  // not owned
  int size = 1, rank = 0;
  bool active() const { return comm != nullptr && size > 1; }
};

// A family's TP plan: the style of each of its linear layers by short name (q, k, v, o, ...;
// "lm_head"); tables (embeddings, relative-bias tables) are listed by their own keys.
struct TpPlan {
  std::vector<std::pair<std::string, TpMode>> styles;
  // The style of `key` (InputError when the plan does not list it: a family's table and its plan
  // must agree).
  TpMode style_of(const std::string& key) const;
};

// Sum of partial results over the group; a no-op without tensor parallelism.
inline void tp_sum_partials(const TpGroup& tp, Tensor& t) {
  if (tp.active()) tp.comm->sum_partials(t);
}

// Up-front check of a model's dimensions for tensor parallelism over p ranks: InputError naming
// the first dimension (and its config key) that p does not divide.
struct TpDimension {
  int64_t size;
  const char* what;  // "the number of attention heads"
  const char* key;   // "num_attention_heads"
};
void check_tp_divisible(int p, std::initializer_list<TpDimension> dims);

// The split a tensor has on this group: the plan's style, none on one rank.
inline TpMode tp_effective(TpMode planned, const TpGroup& tp) { return tp.size > 1 ? planned : TpMode::none; }
// This rank's shape of a full shape split by `split` over p ranks.
Shape tp_local_shape(const Shape& full, TpMode split, int p);
// This rank's part of `full` (any device, a copy on it; the whole tensor when split is none or
// the group has one rank).
Tensor tp_shard_of(const Tensor& full, TpMode split, const TpGroup& tp);
// The full tensor from every rank's `local` part, as a CPU tensor of `dtype` (f32 or f64):
// collective over tp.comm when the tensor is split and the group has more than one rank.
Tensor tp_gather_full(const Tensor& local, TpMode split, const TpGroup& tp, DType dtype = DType::f32);

}  // namespace st
