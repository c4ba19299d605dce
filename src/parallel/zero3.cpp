#include "parallel/zero3.hpp"

#include <algorithm>

#include "core/dryrun.hpp"
#include "core/profile.hpp"
#include "ops/init.hpp"
#include "ops/optim.hpp"
#include "quant/nf4.hpp"

namespace st {

namespace {
constexpr size_t kFrozenAlign = 256;  // bytes: every tensor in a frozen buffer starts aligned
constexpr int64_t kElemAlign = 64;    // elements: the same for trainable buffers (128 B in bf16)

int64_t round_up(int64_t n, int64_t a) { return (n + a - 1) / a * a; }
}  // namespace

struct Zero3::Entry {
  std::string name;
  Shape shape;
  DType dtype = DType::f32;          // of the working tensor
  std::vector<Tensor*> slots;        // the model's handles, pointed at the gathered view
  std::vector<Tensor*> grad_slots;   // trainable: pointed at the gathered gradient
  Tensor* master = nullptr;          // trainable with a separate master copy (LoRA over bf16)
  int64_t offset = 0;                // bytes (frozen group) or elements (trainable groups)
};

struct Zero3::Group {
  bool trainable = false, decay = false, tp_sharded = false;
  bool pure = false;         // pure bf16 (master_weights = none): bf16 gradient shard, no master
  DType dtype = DType::u8;   // u8 (frozen bytes) or the compute dtype
  DType master_dtype = DType::f32;  // of the master and gradient shards (pure: the compute dtype)
  std::vector<Entry> entries;
  int64_t numel = 0, shard = 0;  // used elements; this rank's share (padded total = shard * dp)
  Tensor work_shard, master_shard, grad_shard;  // persistent, this rank's share
  Tensor work_full, grad_full;                  // while gathered
  bool separate_master() const { return trainable && master_dtype != dtype; }
};

struct Zero3::Unit {
  std::string name;
  std::vector<Group> groups;
  bool gathered = false, grads_bound = false;
  std::vector<std::unique_ptr<CommRequest>> pending;  // a prefetch in flight (all-gathers)
  int value_slot = -1, grad_slot = -1;                 // pool buffers held while gathered
  size_t full_bytes() const {
    size_t b = 0;
    for (const Group& g : groups) b += static_cast<size_t>(g.shard) * dtype_size(g.dtype);
    return b;
  }
};

Zero3::Zero3(const ParamTable& spec, Comm& dp, bool prefetch)
    : hooks_(spec.hooks), device_(spec.device), dp_(dp), prefetch_(prefetch) {
  if (!hooks_) ST_THROW("Zero3: no hook slot to install into");
  if (*hooks_) ST_THROW("Zero3: the model already has hooks");
  if (spec.num_units < 2 || spec.head_unit != spec.num_units - 1 || spec.embed_unit < 0 ||
      spec.embed_unit >= spec.head_unit || spec.unit_names.size() != static_cast<size_t>(spec.num_units))
    ST_THROW("Zero3: bad unit description (", spec.num_units, " units, embed ", spec.embed_unit, ", head ",
             spec.head_unit, ")");
  const int P = dp.size(), R = dp.rank();
  const DType compute = spec.dtype, master = master_dtype(spec.dtype);
  embed_unit_ = spec.embed_unit;
  head_unit_ = spec.head_unit;
  tied_ = spec.tied;

  // ---- collect each unit's tensors
  for (int u = 0; u < spec.num_units; ++u) {
    units_.push_back(std::make_unique<Unit>());
    units_.back()->name = spec.unit_names[static_cast<size_t>(u)];
  }
  auto group_for = [&](Unit& unit, bool trainable, bool decay, bool tp_sharded, bool pure) -> Group& {
    for (Group& g : unit.groups)
      if (g.trainable == trainable &&
          (!trainable || (g.decay == decay && g.tp_sharded == tp_sharded && g.pure == pure)))
        return g;
    Group g;
    g.trainable = trainable;
    g.decay = trainable && decay;
    g.tp_sharded = trainable && tp_sharded;
    g.pure = trainable && pure;
    g.dtype = trainable ? compute : DType::u8;
    g.master_dtype = g.pure ? compute : master;
    unit.groups.push_back(std::move(g));
    return unit.groups.back();
  };
  auto add_frozen = [&](Unit& unit, const std::string& name, std::vector<Tensor*> slots) {
    if (!slots.front()->defined()) return;  // absent (e.g. absmax with double quantization)
    Entry e;
    e.name = name;
    e.shape = slots.front()->shape();
    e.dtype = slots.front()->dtype();
    e.slots = std::move(slots);
    group_for(unit, false, false, false, false).entries.push_back(std::move(e));
  };
  // A trainable tensor: `value` is what the kernels read; `grad` its gradient; `master` a
  // separate master copy when there is one. A bf16 value with a bf16 gradient and no master
  // copy trains in pure bf16 (master_weights = none: enable_base_training made the gradient so),
  // in groups of its own.
  auto add_trainable = [&](Unit& unit, const std::string& name, std::vector<Tensor*> slots,
                           std::vector<Tensor*> grads, Tensor* master_copy, bool decay, bool tp_sharded) {
    Entry e;
    e.name = name;
    e.shape = slots.front()->shape();
    e.dtype = slots.front()->dtype();
    if (e.dtype != compute) ST_THROW("Zero3: ", name, " is ", dtype_name(e.dtype), ", the model computes in ", dtype_name(compute));
    const Tensor* g = grads.empty() ? nullptr : grads.front();
    const bool pure = e.dtype == DType::bf16 && !master_copy && g && g->defined() && g->dtype() == DType::bf16;
    e.slots = std::move(slots);
    e.grad_slots = std::move(grads);
    e.master = master_copy;
    group_for(unit, true, decay, tp_sharded, pure).entries.push_back(std::move(e));
  };
  const bool base = spec.base_trainable;
  // A linear's weight, its adapter's parameters after it.
  auto add_linear = [&](Unit& unit, const ParamEntry& e) {
    Linear& lin = *e.linear;
    if (lin.fp8_stored())  // setup refuses the layout first (train/setup.cpp); this keeps it so
      ST_THROW("Zero3: ", lin.name, " holds its base in FP8 (base_precision = fp8), which ZeRO-3 does not shard");
    if (lin.quantized()) {
      Nf4Tensor& q = *lin.nf4;
      add_frozen(unit, lin.name + ".nf4.codes", {&q.codes});
      add_frozen(unit, lin.name + ".nf4.absmax", {&q.absmax});
      add_frozen(unit, lin.name + ".nf4.qabsmax", {&q.qabsmax});
      add_frozen(unit, lin.name + ".nf4.absmax2", {&q.absmax2});
    } else if (base) {
      add_trainable(unit, e.name, {e.tensor}, {e.grad}, nullptr, e.decay, e.split != TpMode::none);
    } else {
      add_frozen(unit, e.name, {e.tensor});
    }
    if (lin.adapter) {
      std::vector<ParamRef> ps;
      lin.adapter->collect_params(ps);
      for (ParamRef& p : ps) {
        if (p.working) add_trainable(unit, p.name, {p.working}, {p.grad}, p.value, p.weight_decay, p.tp_sharded);
        else if (p.alias) add_trainable(unit, p.name, {p.value, p.alias}, {p.grad}, nullptr, p.weight_decay, p.tp_sharded);
        else add_trainable(unit, p.name, {p.value}, {p.grad}, nullptr, p.weight_decay, p.tp_sharded);
      }
    }
  };
  // Every entry in table order into its unit: a linear's weight with its adapter, and plain
  // tensors (embeddings, norms, tables, biases) with every handle of their buffers.
  std::vector<const Linear*> with_weight;
  for (const ParamEntry& e : spec.params) {
    if (e.unit < 0 || e.unit >= spec.num_units) ST_THROW("Zero3: ", e.name, " in unit ", e.unit, " of ", spec.num_units);
    Unit& unit = *units_[static_cast<size_t>(e.unit)];
    if (e.linear && !e.bias) {
      add_linear(unit, e);
      with_weight.push_back(e.linear);
      continue;
    }
    std::vector<Tensor*> values{e.tensor}, grads{e.grad};
    values.insert(values.end(), e.aliases.begin(), e.aliases.end());
    grads.insert(grads.end(), e.grad_aliases.begin(), e.grad_aliases.end());
    if (base) add_trainable(unit, e.name, values, grads, nullptr, e.decay, e.split != TpMode::none);
    else add_frozen(unit, e.name, values);
  }
  for (const Linear* lin : spec.linears)
    if (lin->adapter && std::find(with_weight.begin(), with_weight.end(), lin) == with_weight.end())
      ST_THROW("Zero3: an adapter on ", lin->name, ", whose weight is tied to another tensor, is not supported");

  // ---- lay out, shard, and drop the full tensors
  for (auto& up : units_) {
    for (Group& g : up->groups) {
      int64_t off = 0;
      for (Entry& e : g.entries) {
        if (g.trainable) {
          e.offset = round_up(off, kElemAlign);
          off = e.offset + e.shape.numel();
        } else {
          e.offset = round_up(off, static_cast<int64_t>(kFrozenAlign));
          off = e.offset + static_cast<int64_t>(static_cast<size_t>(e.shape.numel()) * dtype_size(e.dtype));
        }
      }
      g.numel = off;
      g.shard = round_up((off + P - 1) / P, g.trainable ? kElemAlign : static_cast<int64_t>(kFrozenAlign));
      const Device dev = device_;
      // The full flat buffer, filled from the model's tensors, then this rank's slice kept.
      Tensor full = Tensor::zeros({g.shard * P}, g.dtype, dev, MemCategory::workspace);
      const size_t es = dtype_size(g.dtype);
      for (Entry& e : g.entries) {
        const Tensor& src = *e.slots.front();
        if (dry_run_active()) break;  // the planner: sizes only
        device_memcpy(static_cast<char*>(full.data()) + static_cast<size_t>(e.offset) * (g.trainable ? es : 1), dev,
                      src.data(), src.device(), src.nbytes());
      }
      g.work_shard = Tensor::empty({g.shard}, g.dtype, dev, MemCategory::weights);
      g.work_shard.copy_from(full.slice(g.shard * R, g.shard * (R + 1)));
      if (g.trainable) {
        if (g.separate_master()) {
          Tensor mfull = Tensor::zeros({g.shard * P}, g.master_dtype, dev, MemCategory::workspace);
          for (Entry& e : g.entries) {
            Tensor dst = mfull.slice(e.offset, e.offset + e.shape.numel()).view(e.shape);
            if (e.master) dst.copy_from(*e.master);  // the adapter's own f32 master
            else convert_copy(dst, *e.slots.front());
          }
          g.master_shard = Tensor::empty({g.shard}, g.master_dtype, dev, MemCategory::optimizer);
          g.master_shard.copy_from(mfull.slice(g.shard * R, g.shard * (R + 1)));
        } else {
          g.master_shard = g.work_shard;
        }
        g.grad_shard = Tensor::zeros({g.shard}, g.master_dtype, dev, MemCategory::gradients);
      }
      for (Entry& e : g.entries) {
        for (Tensor* t : e.slots) *t = Tensor();
        for (Tensor* t : e.grad_slots) *t = Tensor();
        if (e.master) *e.master = Tensor();
      }
    }
  }
  // The pools: sized for the largest unit.
  size_t vmax = 0, gmax = 0, part_bytes = 0;
  for (auto& up : units_) {
    vmax = std::max(vmax, unit_value_bytes(*up));
    gmax = std::max(gmax, unit_grad_bytes(*up));
    for (Group& g : up->groups)
      if (g.trainable) part_bytes = std::max(part_bytes, static_cast<size_t>(g.shard) * dtype_size(g.master_dtype));
  }
  for (int k = 0; k < 3; ++k) value_pool_.push_back(Tensor::empty({static_cast<int64_t>(vmax)}, DType::u8, device_, MemCategory::communication));
  value_owner_.assign(value_pool_.size(), -1);
  if (gmax > 0) {
    for (int k = 0; k < 2; ++k) grad_pool_.push_back(Tensor::empty({static_cast<int64_t>(gmax)}, DType::u8, device_, MemCategory::communication));
    part_ = Tensor::empty({static_cast<int64_t>(part_bytes)}, DType::u8, device_, MemCategory::communication);
  }
  grad_owner_.assign(grad_pool_.size(), -1);
  *hooks_ = this;
}

Zero3::~Zero3() {
  if (*hooks_ == this) *hooks_ = nullptr;
}

Zero3::Unit& Zero3::unit(int u) {
  if (u < 0 || u >= static_cast<int>(units_.size())) ST_THROW("Zero3: unit ", u, " out of range");
  return *units_[static_cast<size_t>(u)];
}

size_t Zero3::unit_value_bytes(const Unit& u) const {
  size_t b = 0;
  for (const Group& g : u.groups)
    b += static_cast<size_t>(round_up(static_cast<int64_t>(static_cast<size_t>(g.shard * dp_.size()) * dtype_size(g.dtype)),
                                      static_cast<int64_t>(kFrozenAlign)));
  return b;
}

size_t Zero3::unit_grad_bytes(const Unit& u) const {
  size_t b = 0;
  for (const Group& g : u.groups)
    if (g.trainable)
      b += static_cast<size_t>(round_up(static_cast<int64_t>(static_cast<size_t>(g.shard * dp_.size()) * dtype_size(g.master_dtype)),
                                        static_cast<int64_t>(kFrozenAlign)));
  return b;
}

Tensor Zero3::take(std::vector<Tensor>& pool, std::vector<int>& owner, int unit, size_t bytes, int& slot) {
  for (size_t k = 0; k < pool.size(); ++k)
    if (owner[k] < 0) {
      if (pool[k].nbytes() < bytes) ST_THROW("Zero3: pool buffer of ", pool[k].nbytes(), " bytes for ", bytes);
      owner[k] = unit;
      slot = static_cast<int>(k);
      return pool[k];
    }
  ST_THROW("Zero3: every pool buffer is in use (unit ", unit, ")");
}

void Zero3::issue(Unit& u, bool own_buffer) {
  if (u.gathered || !u.pending.empty()) ST_THROW("Zero3: unit ", u.name, " gathered twice");
  const size_t need = unit_value_bytes(u);
  Tensor buf = own_buffer ? Tensor::empty({static_cast<int64_t>(need)}, DType::u8, device_, MemCategory::communication)
                          : take(value_pool_, value_owner_, 0, need, u.value_slot);
  size_t off = 0;
  for (Group& g : u.groups) {
    const size_t bytes = static_cast<size_t>(g.shard * dp_.size()) * dtype_size(g.dtype);
    g.work_full = buf.view_as(g.dtype, off, {g.shard * dp_.size()});
    off += static_cast<size_t>(round_up(static_cast<int64_t>(bytes), static_cast<int64_t>(kFrozenAlign)));
    u.pending.push_back(dp_.all_gather_async(g.work_shard, g.work_full));
  }
}

void Zero3::start_prefetch(int next) {
  if (!prefetch_ || next < 0 || next >= static_cast<int>(units_.size())) return;
  Unit& u = unit(next);
  if (u.gathered || !u.pending.empty()) return;
  issue(u);
}

void Zero3::gather(Unit& u, bool own_buffer) {
  ProfileScope prof("zero3 all-gather (wait)", device_);
  if (u.pending.empty()) issue(u, own_buffer);  // not prefetched
  for (auto& r : u.pending) r->wait();
  u.pending.clear();
  for (Group& g : u.groups) {
    for (Entry& e : g.entries) {
      const Tensor view = g.trainable ? g.work_full.slice(e.offset, e.offset + e.shape.numel()).view(e.shape)
                                      : g.work_full.view_as(e.dtype, static_cast<size_t>(e.offset), e.shape);
      for (Tensor* t : e.slots) *t = view;
    }
  }
  u.gathered = true;
}

void Zero3::release(Unit& u) {
  for (Group& g : u.groups) {
    for (Entry& e : g.entries)
      for (Tensor* t : e.slots) *t = Tensor();
    g.work_full = Tensor();
  }
  if (u.value_slot >= 0) value_owner_[static_cast<size_t>(u.value_slot)] = -1;
  u.value_slot = -1;
  u.gathered = false;
}

void Zero3::before_forward(int u) {
  gather(unit(u));
  if (u == head_unit_ && tied_) gather(unit(embed_unit_));
  // The next unit's parameters travel while this one computes.
  if (u + 1 <= head_unit_) start_prefetch(u + 1);
}

void Zero3::after_forward(int u) {
  release(unit(u));
  if (u == head_unit_ && tied_) release(unit(embed_unit_));
}

void Zero3::before_backward(int u) {
  std::vector<Unit*> us{&unit(u)};
  if (u == head_unit_ && tied_) us.push_back(&unit(embed_unit_));
  for (Unit* x : us) {
    // The embedding's backward only scatters gradients: its table is not needed.
    if (!(u == embed_unit_ && x == &unit(embed_unit_))) gather(*x);
    const size_t gbytes = unit_grad_bytes(*x);
    if (gbytes == 0) {
      x->grads_bound = true;
      continue;
    }
    Tensor buf = take(grad_pool_, grad_owner_, u, gbytes, x->grad_slot);
    buf.slice(0, static_cast<int64_t>(gbytes)).zero_();
    size_t off = 0;
    for (Group& g : x->groups) {
      if (!g.trainable) continue;
      const size_t bytes = static_cast<size_t>(g.shard * dp_.size()) * dtype_size(g.master_dtype);
      g.grad_full = buf.view_as(g.master_dtype, off, {g.shard * dp_.size()});
      off += static_cast<size_t>(round_up(static_cast<int64_t>(bytes), static_cast<int64_t>(kFrozenAlign)));
      for (Entry& e : g.entries)
        for (Tensor* t : e.grad_slots) *t = g.grad_full.slice(e.offset, e.offset + e.shape.numel()).view(e.shape);
    }
    x->grads_bound = true;
  }
  // The next unit of the backward (the embedding's backward needs no parameters).
  if (u - 1 > embed_unit_) start_prefetch(u - 1);
}

void Zero3::after_backward(int u) {
  std::vector<Unit*> us{&unit(u)};
  if (u == head_unit_ && tied_) us.push_back(&unit(embed_unit_));
  for (Unit* x : us) {
    {
      ProfileScope prof("zero3 reduce-scatter", device_);
      for (Group& g : x->groups) {
        if (!g.trainable) continue;
        // Sum over the data-parallel ranks of this micro-batch's gradient, into the owned shard
        // (pure bf16: summed by the backend as DDP's bf16 buckets are, then added with one rounding).
        Tensor part = part_.view_as(g.master_dtype, 0, {g.shard});
        dp_.reduce_scatter_sum(g.grad_full, part);
        axpy(1.0, part, g.grad_shard);
        for (Entry& e : g.entries)
          for (Tensor* t : e.grad_slots) *t = Tensor();
        g.grad_full = Tensor();
      }
    }
    if (x->grad_slot >= 0) grad_owner_[static_cast<size_t>(x->grad_slot)] = -1;
    x->grad_slot = -1;
    x->grads_bound = false;
    if (x->gathered) release(*x);
  }
}

std::vector<ParamRef> Zero3::params() {
  std::vector<ParamRef> out;
  for (auto& up : units_)
    for (Group& g : up->groups) {
      if (!g.trainable) continue;
      ParamRef p;
      p.name = str(up->name, ".zero3", g.decay ? ".decay" : ".no_decay", g.tp_sharded ? ".tp_sharded" : "");
      p.value = &g.master_shard;
      p.grad = &g.grad_shard;
      p.weight_decay = g.decay;
      p.working = g.separate_master() ? &g.work_shard : nullptr;
      p.tp_sharded = g.tp_sharded;
      // This shard is elements [rank x shard, ...) of the group's buffer, whose layout does not
      // depend on the number of ranks: the rounding's bits follow the element.
      p.first_element = static_cast<uint64_t>(g.shard) * static_cast<uint64_t>(dp_.rank());
      out.push_back(p);
    }
  return out;
}

void Zero3::gather_all_for_save() {
  *hooks_ = nullptr;
  for (auto& up : units_) {
    if (!up->gathered) gather(*up, true);  // buffers of its own: every unit stays gathered
    for (Group& g : up->groups) {
      if (!g.separate_master()) continue;
      Tensor mfull = Tensor::empty({g.shard * dp_.size()}, g.master_dtype, device_, MemCategory::workspace);
      dp_.all_gather(g.master_shard, mfull);
      for (Entry& e : g.entries)
        if (e.master) *e.master = mfull.slice(e.offset, e.offset + e.shape.numel()).view(e.shape);
    }
  }
}

Zero3::Bytes Zero3::bytes() const {
  Bytes b;
  for (const auto& up : units_) {
    b.largest_unit_gathered = std::max(b.largest_unit_gathered, up->full_bytes() * static_cast<size_t>(dp_.size()));
    for (const Group& g : up->groups) {
      const size_t es = dtype_size(g.dtype), shard_bytes = static_cast<size_t>(g.shard) * es;
      if (!g.trainable) {
        b.frozen += shard_bytes;
        b.padding += static_cast<size_t>(g.shard * dp_.size() - g.numel);
        continue;
      }
      b.working += shard_bytes;
      if (g.separate_master()) b.master += static_cast<size_t>(g.shard) * dtype_size(g.master_dtype);
      b.grads += static_cast<size_t>(g.shard) * dtype_size(g.master_dtype);
      b.padding += static_cast<size_t>(g.shard * dp_.size() - g.numel) * es;
    }
  }
  return b;
}

}  // namespace st
