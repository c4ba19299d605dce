// A model's parameter table: every tensor of a model family once, with what each strategy needs
// to know of it (name, storage, gradient, unit, weight decay, TP split, initialisation, NF4 or
// FP8 storage of a frozen base).
// A family writes one function that lists its tensors (llama_param_table, t5_param_table); the
// weight slots, the trainable parameters, the parameters by unit (DDP buckets), the linear
// layers (adapters), base training, random initialisation, the allocation of this rank's
// shards and ZeRO-3's units (parallel/zero3.hpp) are all derived from it here.
//
// Order: the table is in the checkpoint's weight order (Hugging Face's), which is also each
// unit's forward order; ZeRO-3 packs a unit's tensors in this order.
#pragma once

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "core/tensor.hpp"
#include "model/hooks.hpp"
#include "model/linear.hpp"
#include "model/tp_plan.hpp"
#include "quant/nf4.hpp"

namespace st {

enum class ParamInit { normal, ones, zeros };  // random init: Normal(0, std) / 1 (norms) / 0 (biases)

struct ParamEntry {
  std::string name;               // Hugging Face name ("model.layers.0.self_attn.q_proj.weight")
  Tensor* tensor = nullptr;       // the dense value (undefined for a weight stored in NF4 or FP8)
  Tensor* grad = nullptr;         // its gradient slot (defined while the base trains)
  Linear* linear = nullptr;       // the linear layer this is the weight (or bias) of; null: a plain tensor
  bool bias = false;              // linear's bias rather than its weight
  std::vector<Tensor*> aliases;   // other handles of the same buffer (a tied head's weight)
  std::vector<Tensor*> grad_aliases;
  Shape full_shape;               // the unsharded tensor
  TpMode split = TpMode::none;    // the TP plan's split of it (none on one rank)
  int unit = 0;                   // ModelHooks unit whose forward reads it
  bool decay = true;              // AdamW weight decay (matrices, embeddings; not norms, biases, tables)
  ParamInit init = ParamInit::normal;
  bool quantizable = false;       // a linear weight QLoRA may store in NF4 (or base_precision = fp8 in FP8)

  bool stored_nf4() const { return linear && !bias && linear->quantized(); }
  // base_precision = fp8: the weight is the linear's FP8 base (W8, and W8^T where stored).
  bool stored_fp8() const { return linear && !bias && linear->fp8_stored(); }
  Shape shape() const;            // this rank's shape
};

struct ParamTable {
  std::vector<ParamEntry> params;
  std::vector<Linear*> linears;    // every linear layer (adapters hang here; a tied head too)
  std::vector<int> linear_units;   // the unit of each
  int num_units = 0;
  std::vector<std::string> unit_names;  // "embed", "layers.3", "head": name ZeRO-3's optimizer groups
  int embed_unit = 0;              // its backward needs no values (it only scatters gradients)
  int head_unit = 0;               // the last unit
  bool tied = false;               // the head reads the embedding unit's table
  bool base_trainable = false;
  ModelHooks** hooks = nullptr;    // the model's hook slot
  DType dtype = DType::f32;        // compute dtype
  Device device = Device::cpu;
  TpGroup tp;
};

// ---------------------------------------------------------------- building a model
// Which linears hold their frozen base in a compact form from the build on, instead of a dense
// weight in the compute dtype, by the family's short module names (llama: q, k, v, o, gate, up,
// down; t5: q, k, v, o, wi_0, wi_1, wi, wo; lm_head and embeddings never):
//   * NF4 (QLoRA): `modules`, in blocks of `nf4`; every GEMM dequantizes (model/linear.hpp).
//   * FP8 E4M3 (base_precision = fp8 with method = lora): `fp8_modules`, W8 [out, in] and, with
//     fp8_transpose = stored, W8^T (model/fp8_base.hpp); fp8_convert_base then only adds the
//     buffers the GEMMs share. Chosen at the build, as NF4 is, so that the dense base never
//     exists as a whole: loading (or random init) quantizes one tensor at a time.
// Both are filled by set_weight (a load) or init_params_random.
struct BaseQuant {
  std::vector<std::string> modules;      // NF4
  Nf4Config nf4;
  std::vector<std::string> fp8_modules;  // FP8
  bool fp8_keep_transpose = true;        // fp8_transpose = stored: W8^T beside W8
  std::string fp8_where = "base_precision";  // names the deck key in refusals (a layer not a multiple of 16)
  bool nf4_any() const { return !modules.empty(); }
};
// Allocate this rank's part of every tensor (zero-filled, in the table's dtype and device) by its
// full shape and split; linears take their local in/out and TP group from their weight's entry,
// and a quantizable linear whose short name (`short_name` of its module name) `q` lists gets NF4
// or FP8 storage instead of a dense weight. Aliases share their entry's buffer. InputError
// (naming q.fp8_where) for an FP8 layer whose in or out on this rank is not a multiple of 16.
void materialize_params(ParamTable& t, const BaseQuant& q,
                        const std::function<std::string(const std::string&)>& short_name);
// Normal(0, std), ones or zeros per entry; each tensor seeded from (seed, its name), so the
// result does not depend on the order of initialisation. Counter-based: the same values on any
// device. Under TP each rank draws the full tensor and keeps its part, so every layout starts
// from the same model; an NF4 or FP8 linear is drawn densely (a temporary in the compute dtype)
// and quantized.
void init_params_random(ParamTable& t, uint64_t seed, double std);
// Gradients (zero; in grad_dtype(t.dtype, mw): f32 beside bf16 values, or bf16 with
// master_weights = none) for every base tensor: full fine-tuning. InputError naming an NF4 or
// FP8 layer (those bases are frozen).
void enable_base_training(ParamTable& t, MasterWeights mw = MasterWeights::f32);

// ---------------------------------------------------------------- weights
// A weight as the loaders and savers see it; `linear` is set (and `tensor` undefined) for a
// weight stored in NF4 or in FP8.
struct WeightSlot {
  std::string name;
  Tensor* tensor = nullptr;
  Tensor* grad = nullptr;
  Linear* linear = nullptr;
  Shape shape;       // this rank's part
  Shape full_shape;  // the unsharded tensor
  TpMode split = TpMode::none;
  bool nf4() const { return linear && linear->quantized(); }
  bool fp8() const { return linear && linear->fp8_stored(); }
  // What a saver that needs the dense weight says of a quantized slot: "<name> is stored in NF4:
  // dequantize the model first", or why an FP8 base cannot be saved.
  std::string not_dense() const;
};
std::vector<WeightSlot> weight_slots(const ParamTable& t);
// This rank's part of a full tensor of `slot` (any device; a copy).
Tensor slot_shard_of(const TpGroup& tp, const WeightSlot& slot, const Tensor& full);
// Store `value` (this rank's shape; any float dtype on the model's device) into the slot: a
// converted copy, NF4 quantization for an NF4 linear, or for an FP8 one a conversion to the
// compute dtype (so the codes are those of the dense weight the model would have held), then
// W8 = its quantization and W8^T where stored.
void set_weight(const WeightSlot& slot, const Tensor& value);
// The full tensor of a slot as a CPU tensor of `dtype` (f32 or f64), gathered over the TP group
// when the slot is split (collective then). Dense slots only.
Tensor gather_full(const TpGroup& tp, const WeightSlot& slot, DType dtype = DType::f32);
// The dense slots as (name, tensor); refused when a layer is stored in NF4 or FP8.
std::vector<std::pair<std::string, Tensor*>> named_weights(const ParamTable& t);
// Bytes of the base weights as stored (NF4 layers packed, FP8 ones as W8 and W8^T) and as they
// would be dense.
WeightBytes param_bytes(const ParamTable& t);
// Replace every NF4 base by its dequantized dense weight (before merging or saving).
void dequantize_params(ParamTable& t);

// ---------------------------------------------------------------- what trains
// The optimizer's parameters: the base (when it trains, in table order; split tensors flagged
// tp_sharded under TP), then every adapter of t.linears in order.
std::vector<ParamRef> trainable_params(const ParamTable& t);
// The same grouped by unit (an adapter belongs to its linear's unit), in the order above.
std::vector<std::vector<ParamRef>> params_by_unit(const ParamTable& t);
int64_t num_trainable(const ParamTable& t);

}  // namespace st
