#include "model/param_table.hpp"

#include <algorithm>

#include "core/rng.hpp"
#include "model/fp8_base.hpp"
#include "ops/init.hpp"

namespace st {

Shape ParamEntry::shape() const {
  if (linear && !bias) return Shape{linear->out, linear->in};
  return tensor->shape();
}

void materialize_params(ParamTable& t, const BaseQuant& q,
                        const std::function<std::string(const std::string&)>& short_name) {
  auto listed = [&](const std::vector<std::string>& modules, const Linear& l) {
    return !modules.empty() && std::find(modules.begin(), modules.end(), short_name(l.name)) != modules.end();
  };
  for (ParamEntry& e : t.params) {
    const Shape local = tp_local_shape(e.full_shape, e.split, t.tp.size);
    if (e.linear && !e.bias) {
      Linear& l = *e.linear;
      if (local.ndim != 2) ST_THROW(e.name, ": a linear weight must be 2-D, not ", local.str());
      l.out = local[0];
      l.in = local[1];
      l.tp_mode = e.split;
      l.tp = t.tp;
      const bool nf4 = e.quantizable && listed(q.modules, l), fp8 = e.quantizable && listed(q.fp8_modules, l);
      if (nf4 && fp8) ST_THROW(l.name, ": chosen for both NF4 and FP8 storage");
      if (nf4) {
        l.nf4 = std::make_shared<Nf4Tensor>(nf4_allocate(l.out, l.in, q.nf4, t.device));  // no dense weight
        continue;
      }
      if (fp8) {
        l.fp8 = fp8_allocate_base(l, t.dtype, t.device, q.fp8_keep_transpose, q.fp8_where);  // no dense weight
        continue;
      }
    }
    *e.tensor = Tensor::zeros(local, t.dtype, t.device, MemCategory::weights);
    for (Tensor* a : e.aliases) *a = *e.tensor;
  }
}

namespace {
WeightSlot slot_of(const ParamEntry& e) {
  const bool compact = e.stored_nf4() || e.stored_fp8();
  return {e.name, e.tensor, e.grad, compact ? e.linear : nullptr, e.shape(), e.full_shape, e.split};
}
}  // namespace

std::string WeightSlot::not_dense() const {
  if (nf4()) return str(name, " is stored in NF4: dequantize the model first");
  if (fp8()) return str(name, " is stored in FP8 (base_precision = fp8), which keeps no dense copy: use base_precision = bf16 "
                        "for what needs the dense weights (saving the model), or save the adapter and merge it into "
                        "the original model");
  return str(name, ": no dense tensor");
}

void init_params_random(ParamTable& t, uint64_t seed, double std) {
  for (const ParamEntry& entry : t.params) {
    const ParamEntry* e = &entry;
    const WeightSlot s = slot_of(entry);
    if (e->init != ParamInit::normal) {
      fill_constant(*s.tensor, e->init == ParamInit::ones ? 1.0 : 0.0);
      continue;
    }
    const uint64_t key = counter_key(seed, name_hash(s.name));
    if (s.split != TpMode::none || s.linear) {
      // Drawn whole (the full tensor, or an NF4 or FP8 layer's dense values in the compute
      // dtype), then cut or quantized.
      Tensor w = Tensor::empty(s.full_shape, t.dtype, t.device, MemCategory::workspace);
      fill_normal(w, key, 0.0, std);
      set_weight(s, s.split != TpMode::none ? slot_shard_of(t.tp, s, w) : w);
    } else {
      fill_normal(*s.tensor, key, 0.0, std);
    }
  }
}

void enable_base_training(ParamTable& t, MasterWeights mw) {
  if (t.base_trainable) return;
  for (const ParamEntry& e : t.params) {
    if (e.stored_nf4()) ST_THROW_INPUT(e.linear->name, " is stored in NF4 and cannot train (NF4 bases are frozen)");
    if (e.stored_fp8())
      ST_THROW_INPUT(e.linear->name, " is stored in FP8 and cannot train (base_precision = fp8 is for lora and qlora)");
  }
  // Gradients in the master precision (f32 when the weights are bf16), or in bf16 (pure bf16).
  for (ParamEntry& e : t.params) {
    *e.grad = Tensor::zeros(e.shape(), grad_dtype(t.dtype, mw), t.device, MemCategory::gradients);
    for (Tensor* a : e.grad_aliases) *a = *e.grad;  // a tied head adds into the same buffer
  }
  t.base_trainable = true;
}

std::vector<WeightSlot> weight_slots(const ParamTable& t) {
  std::vector<WeightSlot> out;
  out.reserve(t.params.size());
  for (const ParamEntry& e : t.params) out.push_back(slot_of(e));
  return out;
}

Tensor slot_shard_of(const TpGroup& tp, const WeightSlot& slot, const Tensor& full) {
  if (full.shape() != slot.full_shape)
    ST_THROW(slot.name, ": value ", full.str(), " does not match the full shape ", slot.full_shape.str());
  return tp_shard_of(full, slot.split, tp);
}

void set_weight(const WeightSlot& slot, const Tensor& value) {
  if (value.shape() != slot.shape) ST_THROW(slot.name, ": value ", value.str(), " does not match ", slot.shape.str());
  if (slot.nf4()) {
    nf4_quantize(value, *slot.linear->nf4);
  } else if (slot.fp8()) {
    // The codes of the weight as the dense model would hold it (rounded to the compute dtype
    // first), so that quantizing at the load gives what fp8_convert_base gives a dense model.
    Fp8Base& b = *slot.linear->fp8;
    if (value.dtype() == b.dtype) {
      fp8_set_base(b, value);
    } else {
      Tensor w = Tensor::empty(value.shape(), b.dtype, value.device(), MemCategory::workspace);
      convert_copy(w, value);
      fp8_set_base(b, w);
    }
  } else if (value.dtype() == slot.tensor->dtype()) {
    slot.tensor->copy_from(value);
  } else {
    convert_copy(*slot.tensor, value);
  }
}

Tensor gather_full(const TpGroup& tp, const WeightSlot& slot, DType dtype) {
  if (slot.linear) ST_THROW(slot.not_dense());
  if (!slot.tensor || !slot.tensor->defined()) ST_THROW(slot.name, ": no dense tensor to gather");
  return tp_gather_full(*slot.tensor, slot.split, tp, dtype);
}

std::vector<std::pair<std::string, Tensor*>> named_weights(const ParamTable& t) {
  std::vector<std::pair<std::string, Tensor*>> out;
  for (const WeightSlot& s : weight_slots(t)) {
    if (s.linear) ST_THROW(s.not_dense());
    out.emplace_back(s.name, s.tensor);
  }
  return out;
}

WeightBytes param_bytes(const ParamTable& t) {
  WeightBytes r;
  const size_t es = dtype_size(t.dtype);
  for (const ParamEntry& e : t.params) {
    const WeightSlot s = slot_of(e);
    const size_t dense = static_cast<size_t>(s.shape.numel()) * es;
    r.dense += dense;
    if (s.nf4()) {
      r.stored += nf4_stored_bytes(*s.linear);
      ++r.quantized_layers;
    } else if (s.fp8()) {
      r.stored += fp8_stored_bytes(*s.linear);  // W8, and W8^T where stored (model/fp8_base.hpp)
    } else {
      r.stored += dense;
    }
  }
  return r;
}

void dequantize_params(ParamTable& t) { dequantize_linears(t.linears, t.dtype); }

namespace {

ParamRef base_ref(const ParamEntry& e) {
  return {e.name, e.tensor, e.grad, e.decay, nullptr, e.split != TpMode::none};
}

}  // namespace

std::vector<ParamRef> trainable_params(const ParamTable& t) {
  std::vector<ParamRef> out;
  if (t.base_trainable)
    for (const ParamEntry& e : t.params) out.push_back(base_ref(e));
  for (Linear* lin : t.linears)
    if (lin->adapter) lin->adapter->collect_params(out);
  return out;
}

std::vector<std::vector<ParamRef>> params_by_unit(const ParamTable& t) {
  std::vector<std::vector<ParamRef>> out(static_cast<size_t>(t.num_units));
  auto unit = [&](int u) -> std::vector<ParamRef>& {
    if (u < 0 || u >= t.num_units) ST_THROW("params_by_unit: unit ", u, " outside [0, ", t.num_units, ")");
    return out[static_cast<size_t>(u)];
  };
  if (t.base_trainable)
    for (const ParamEntry& e : t.params) unit(e.unit).push_back(base_ref(e));
  for (size_t i = 0; i < t.linears.size(); ++i)
    if (t.linears[i]->adapter) t.linears[i]->adapter->collect_params(unit(t.linear_units[i]));
  return out;
}

int64_t num_trainable(const ParamTable& t) {
  int64_t n = 0;
  for (const ParamRef& p : trainable_params(t)) n += p.value->numel();
  return n;
}

}  // namespace st
