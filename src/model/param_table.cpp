#include "model/param_table.hpp"

#include "core/rng.hpp"
#include "model/fp8_base.hpp"
#include "ops/init.hpp"

namespace st {

Shape ParamEntry::shape() const {
  if (linear && !bias) return Shape{linear->out, linear->in};
  return tensor->shape();
}

void materialize_params(ParamTable& t, const std::function<bool(const Linear&)>& nf4, const Nf4Config& cfg) {
  for (ParamEntry& e : t.params) {
    const Shape local = tp_local_shape(e.full_shape, e.split, t.tp.size);
    if (e.linear && !e.bias) {
      Linear& l = *e.linear;
      if (local.ndim != 2) ST_THROW(e.name, ": a linear weight must be 2-D, not ", local.str());
      l.out = local[0];
      l.in = local[1];
      l.tp_mode = e.split;
      l.tp = t.tp;
      if (e.quantizable && nf4 && nf4(l)) {
        l.nf4 = std::make_shared<Nf4Tensor>(nf4_allocate(l.out, l.in, cfg, t.device));  // no dense weight
        continue;
      }
    }
    *e.tensor = Tensor::zeros(local, t.dtype, t.device, MemCategory::weights);
    for (Tensor* a : e.aliases) *a = *e.tensor;
  }
}

namespace {
WeightSlot slot_of(const ParamEntry& e) {
  return {e.name, e.tensor, e.grad, e.stored_nf4() ? e.linear : nullptr, e.shape(), e.full_shape, e.split};
}
}  // namespace

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
      // Drawn whole (the full tensor, or an NF4 layer's dense values), then cut or quantized.
      Tensor w = Tensor::empty(s.full_shape, t.dtype, t.device, MemCategory::workspace);
      fill_normal(w, key, 0.0, std);
      set_weight(s, s.split != TpMode::none ? slot_shard_of(t.tp, s, w) : w);
    } else {
      fill_normal(*s.tensor, key, 0.0, std);
    }
  }
}

void enable_base_training(ParamTable& t) {
  if (t.base_trainable) return;
  for (const ParamEntry& e : t.params)
    if (e.stored_nf4()) ST_THROW_INPUT(e.linear->name, " is stored in NF4 and cannot train (NF4 bases are frozen)");
  // Gradients in the master precision (f32 when the weights are bf16).
  for (ParamEntry& e : t.params) {
    *e.grad = Tensor::zeros(e.shape(), master_dtype(t.dtype), t.device, MemCategory::gradients);
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
  if (slot.linear) nf4_quantize(value, *slot.linear->nf4);
  else if (value.dtype() == slot.tensor->dtype()) slot.tensor->copy_from(value);
  else convert_copy(*slot.tensor, value);
}

Tensor gather_full(const TpGroup& tp, const WeightSlot& slot, DType dtype) {
  if (!slot.tensor || !slot.tensor->defined()) ST_THROW(slot.name, ": no dense tensor to gather");
  return tp_gather_full(*slot.tensor, slot.split, tp, dtype);
}

std::vector<std::pair<std::string, Tensor*>> named_weights(const ParamTable& t) {
  std::vector<std::pair<std::string, Tensor*>> out;
  for (const WeightSlot& s : weight_slots(t)) {
    if (s.linear) ST_THROW(s.name, " is stored in NF4: dequantize the model first");
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
    if (s.linear) {
      r.stored += nf4_stored_bytes(*s.linear);
      ++r.quantized_layers;
    } else if (e.linear && !e.bias && e.linear->fp8) {
      r.stored += fp8_stored_bytes(*e.linear);  // W8 and W8^T (model/fp8_base.hpp)
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
