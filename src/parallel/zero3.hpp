// ZeRO-3 (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
// Parameter Models", stage 3): every parameter is sharded across the data-parallel group.
//
// The model is cut into units (Llama: the embedding, each block, the head; T5: see t5.hpp), and
// the engine reads them from the model's parameter table (model/param_table.hpp): it knows no
// model family. Each unit's tensors are packed, in table order, into padded flat buffers, one
// per group:
//   - frozen: every tensor that does not train (bf16/f32 base weights, NF4 codes and absmax
//     bytes), packed as bytes;
//   - trainable, by (weight decay, TP-sharded, pure bf16): the working values in the compute
//     dtype, with f32 masters, f32 gradients and the AdamW moments for this rank's shard only;
//     pure bf16 (master_weights = none) keeps no master, and its gradients and moments are bf16
//     (reduce-scattered in bf16 as DDP's bf16 buckets are; the stochastic rounding keyed by the
//     element's place in its group's buffer, so a run's bits do not depend on the rank count).
// A buffer of n elements is padded to dp * s and rank r owns elements [r s, (r+1) s).
//
// Before a unit runs (forward, or backward with its recompute) the engine all-gathers its groups
// into full buffers and points the model's tensors at views of them; after, it drops them. In
// backward it also points the gradients at a zeroed full gradient buffer and, after the unit's
// backward, reduce-scatters (sums) it into the owned shard. The optimizer then updates the shards
// (params()). The loss weights are 1 / targets of the global batch, so the sum is the gradient.
//
// The next unit's gather is started before the current unit computes (all_gather_async: a
// communication stream on NCCL, MPI_Iallgather on MPI), so with prefetch on at most two units are
// gathered at a time.
//
// The model is built whole on each rank and sharded here (the full model exists per rank only
// during set-up, before any training buffer is allocated).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "model/hooks.hpp"
#include "model/linear.hpp"
#include "model/param_table.hpp"
#include "parallel/comm.hpp"

namespace st {

class Zero3 final : public ModelHooks {
 public:
  // Takes over the parameters of the model whose table this is (already carrying its adapters
  // and base gradients as the method needs) and installs itself in *table.hooks. `dp` is the
  // data-parallel group. prefetch: start the next unit's all-gather (all_gather_async) before
  // the current one runs. An adapter on a linear whose weight belongs to another entry (a tied
  // head) is refused.
  Zero3(const ParamTable& table, Comm& dp, bool prefetch = true);
  ~Zero3() override;

  // The optimizer's view: one entry per trainable group per unit (this rank's shard).
  std::vector<ParamRef> params();

  void before_forward(int unit) override;
  void after_forward(int unit) override;
  void before_backward(int unit) override;
  void after_backward(int unit) override;

  // Gather every unit's values (and the f32 masters of trainable tensors) and leave them bound:
  // for saving the model at the end of a run. Collective; afterwards the hooks are removed.
  void gather_all_for_save();

  // Bytes this rank keeps persistently (shards), by kind, and the largest gathered unit.
  struct Bytes {
    size_t frozen = 0, working = 0, master = 0, grads = 0, padding = 0, largest_unit_gathered = 0;
  };
  Bytes bytes() const;
  int num_units() const { return static_cast<int>(units_.size()); }

 private:
  struct Entry;
  struct Group;
  struct Unit;
  // Take the unit's full buffers (from the pool, or allocated when own_buffer) and start the
  // all-gathers into them; gather completes them (issuing first if no prefetch did) and binds
  // the model's tensors to views.
  void issue(Unit& u, bool own_buffer = false);
  void gather(Unit& u, bool own_buffer = false);
  void release(Unit& u);
  void start_prefetch(int unit);
  Unit& unit(int u);

  // Gathered buffers come from small pools allocated once (no device allocation, and so no
  // cudaFree synchronisation, per unit): values for up to 3 units at a time (the current one,
  // the prefetched next one, and the tied embedding at the head), gradients for 2.
  Tensor take(std::vector<Tensor>& pool, std::vector<int>& owner, int unit, size_t bytes, int& slot);
  size_t unit_value_bytes(const Unit& u) const;
  size_t unit_grad_bytes(const Unit& u) const;

  ModelHooks** hooks_;
  Device device_;
  Comm& dp_;
  bool prefetch_;
  std::vector<Tensor> value_pool_, grad_pool_;
  std::vector<int> value_owner_, grad_owner_;
  Tensor part_;  // one reduce-scatter result (bytes of the largest trainable shard), reused
  std::vector<std::unique_ptr<Unit>> units_;
  int embed_unit_ = 0, head_unit_ = 0;
  bool tied_ = false;
};

}  // namespace st
