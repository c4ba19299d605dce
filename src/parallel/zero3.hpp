// ZeRO-3 (Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion
// Parameter Models", stage 3): every parameter is sharded across the data-parallel group.
//
// The model is cut into units (Llama: the embedding, each block, the head; T5: see t5.hpp), given
// to the engine as a model-independent Zero3Units description (llama_zero3_units,
// t5_zero3_units). Each unit's
// tensors are packed into padded flat buffers, one per group:
//   - frozen: every tensor that does not train (bf16/f32 base weights, NF4 codes and absmax
//     bytes), packed as bytes;
//   - trainable, by (weight decay, TP-sharded): the working values in the compute dtype, with
//     f32 masters, f32 gradients and the AdamW moments for this rank's shard only.
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
#include "parallel/comm.hpp"

namespace st {

struct LlamaModel;
struct T5Model;

// One item of a unit, in layout order: a linear layer (its base, dense or NF4, and its adapter's
// parameters), or a plain named tensor (embedding, norm, relative-bias table).
struct Zero3Item {
  Linear* linear = nullptr;
  // Plain tensor (linear == null): every handle of it (a tied head's weight shares the
  // embedding's buffer) and of its gradient (used when the base trains).
  std::string name;
  std::vector<Tensor*> values, grads;
  bool decay = false;       // AdamW weight decay (matrices and embeddings, not norms)
  bool tp_sharded = false;  // each TP rank holds its own part
};

struct Zero3UnitSpec {
  std::string name;  // "embed", "layers.3", "head" ...: names the optimizer's groups
  std::vector<Zero3Item> items;
};

// What the engine needs to know of a model: its units in hook order and where to install itself.
struct Zero3Units {
  std::vector<Zero3UnitSpec> units;
  int embed_unit = 0;      // its backward needs no values (it only scatters gradients)
  int head_unit = 0;       // the last unit
  bool tied = false;       // the head reads the embedding unit's table (gathered with it)
  bool base_trainable = false;
  TpGroup tp;              // base linears are TP-sharded when tp.size > 1
  DType dtype = DType::f32;  // compute dtype
  Device device = Device::cpu;
  ModelHooks** hooks = nullptr;  // the model's hook slot
};

// Units as the models define them (Llama: llama.hpp; T5: t5.hpp).
Zero3Units llama_zero3_units(LlamaModel& m);
Zero3Units t5_zero3_units(T5Model& m);

class Zero3 final : public ModelHooks {
 public:
  // Takes over the parameters of the described model (already carrying its adapters and base
  // gradients as the method needs) and installs itself in *units.hooks. `dp` is the
  // data-parallel group. prefetch: start the next unit's all-gather (all_gather_async) before
  // the current one runs.
  Zero3(const Zero3Units& units, Comm& dp, bool prefetch = true);
  Zero3(LlamaModel& m, Comm& dp, bool prefetch = true);
  Zero3(T5Model& m, Comm& dp, bool prefetch = true);
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
  Tensor part_;  // one reduce-scatter result (the largest trainable shard), reused
  std::vector<std::unique_ptr<Unit>> units_;
  int embed_unit_ = 0, head_unit_ = 0;
  bool tied_ = false;
};

}  // namespace st
