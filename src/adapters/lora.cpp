#include "adapters/lora.hpp"

#include <algorithm>
#include <cmath>

#include "core/profile.hpp"
#include "core/rng.hpp"
#include "ops/activation.hpp"
#include "ops/init.hpp"
#include "ops/matmul.hpp"
#include "ops/optim.hpp"
#include "ops/shard.hpp"

namespace st {

LoraAdapter::LoraAdapter(const Linear& base, const LoraConfig& cfg, int64_t max_rows, uint64_t seed)
    : name(base.name), r(cfg.r), scale(cfg.scale()), dropout(cfg.dropout), stream(name_hash(base.name)),
      tp_mode(base.tp.active() ? base.tp_mode : TpMode::none), tp(base.tp), max_rows(max_rows) {
  if (cfg.r <= 0) ST_THROW_INPUT("lora_r must be positive (got ", cfg.r, ")");
  const DType compute = base.dtype(), dt = master_dtype(compute);
  const Device dev = base.device();
  A = Tensor::empty({r, base.in}, dt, dev, MemCategory::weights);
  B = Tensor::zeros({base.out, r}, dt, dev, MemCategory::weights);
  dA = Tensor::zeros(A.shape(), dt, dev, MemCategory::gradients);
  dB = Tensor::zeros(B.shape(), dt, dev, MemCategory::gradients);
  xa = Tensor::zeros({max_rows * r}, compute, dev, MemCategory::activations);
  dxa = Tensor::zeros({max_rows * r}, compute, dev, MemCategory::workspace);
  // Kaiming-uniform with a = sqrt(5): bound = sqrt(6 / ((1 + a^2) fan_in)) = 1 / sqrt(fan_in).
  // Under TP the full A of the unsharded layer is drawn, and a row-parallel layer keeps its
  // columns, so every layout starts from the same adapter.
  const double bound = 1.0 / std::sqrt(static_cast<double>(base.full_in()));
  if (base.tp_mode == TpMode::row && base.tp.size > 1) {
    Tensor full = Tensor::empty({r, base.full_in()}, dt, Device::cpu, MemCategory::workspace);
    fill_uniform(full, counter_key(seed, stream), -bound, bound);
    A.copy_from(shard_cols(full, base.tp.size, base.tp.rank));
  } else {
    fill_uniform(A, counter_key(seed, stream), -bound, bound);
  }
  if (compute == dt) {
    A_work = A;
    B_work = B;
  } else {
    A_work = Tensor::empty(A.shape(), compute, dev, MemCategory::weights);
    B_work = Tensor::zeros(B.shape(), compute, dev, MemCategory::weights);
    convert_copy(A_work, A);
  }
}

void LoraAdapter::sync_working() {
  if (A_work.data() != A.data()) convert_copy(A_work, A);
  if (B_work.data() != B.data()) convert_copy(B_work, B);
}

Tensor LoraAdapter::part_of(const Tensor& buf, int64_t M) const {
  if (M > max_rows) ST_THROW("LoRA ", name, ": ", M, " rows exceed the buffer of ", max_rows);
  return buf.slice(group_row * M, (group_row + r) * M);
}

Tensor LoraAdapter::dropped_input(const Tensor& x, const LayerContext& ctx) const {
  if (dropout <= 0 || !ctx.training) return x;
  if (!ctx.scratch || ctx.scratch->numel() < x.numel())
    ST_THROW("LoRA dropout needs a scratch buffer of ", x.numel(), " elements");
  Tensor xd = ctx.scratch->view({ctx.scratch->numel()}).slice(0, x.numel()).view(x.shape());
  dropout_apply(x, xd, dropout, ctx.dropout_seed, stream, false);
  return xd;
}

bool LoraAdapter::forward(const Tensor& x, Tensor& y, bool accumulate, const Tensor* residual,
                          const LayerContext& ctx) {
  // SHARDTUNE_PROFILE=2 times LoRA's GEMMs one by one (by shape) rather than per adapter.
  ProfileScope prof(profile_level() >= 2 ? nullptr : "lora adapters (forward)", x.device());
  term_left_out = false;  // this call adds its term into y
  const int64_t M = x.numel() / x.dim(-1);
  Tensor xa_m = part_of(xa, M).view({M, r});
  // In a checkpoint recompute xa still holds dropout(x) A^T of this very micro-batch: the input
  // and the dropout mask are the same, so only the output update needs redoing.
  if (!ctx.recompute) {
    const Tensor xd = dropped_input(x, ctx);
    matmul(xa_m, xd, false, A_work, true);            // xa = dropout(x) A^T     [M, r]
    // Row-parallel: x and A hold this rank's input columns, so xa is a partial sum.
    if (tp_mode == TpMode::row) tp.comm->sum_partials(xa_m);
  }
  // Row-parallel: y is a partial sum the caller all-reduces; the replicated B adds once.
  if (tp_mode == TpMode::row && tp.rank != 0) return false;
  // y = scale * xa B^T [M, out]: a write only, unless y's content or a residual comes along.
  matmul(y, xa_m, false, B_work, true, scale, accumulate || residual ? 1.0 : 0.0, residual);
  return true;
}

bool LoraAdapter::backward(const Tensor& x, const Tensor& dy, Tensor* dx, bool dx_accumulate,
                           const LayerContext& ctx) {
  ProfileScope prof(profile_level() >= 2 ? nullptr : "lora adapters (backward)", x.device());
  const int64_t M = x.numel() / x.dim(-1);
  Tensor xa_m = part_of(xa, M).view({M, r}), dxa_m = part_of(dxa, M).view({M, r});
  // dB += scale * dy^T xa [out, r] and dxa = scale * dy B [M, r] (one pass over dy where it can)
  matmul_dy_pair(dB, 1.0, dxa_m, false, dy, xa_m, false, B_work, scale);
  const bool writes_dx = dx && dx->defined();
  if (writes_dx) {
    // Column-parallel: dxa is this rank's partial sum, and so is dx (the caller all-reduces it).
    if (dropout <= 0 || !ctx.training) {
      matmul(*dx, dxa_m, false, A_work, false, 1.0, dx_accumulate ? 1.0 : 0.0);  // dx (+)= dxa A
    } else {
      // dx (+)= dropout'(dxa A): the same mask and scale applied to the gradient.
      if (!ctx.scratch || ctx.scratch->numel() < dx->numel())
        ST_THROW("LoRA dropout needs a scratch buffer of ", dx->numel(), " elements");
      Tensor tmp = ctx.scratch->view({ctx.scratch->numel()}).slice(0, dx->numel()).view(dx->shape());
      matmul(tmp, dxa_m, false, A_work, false, 1.0, 0.0);
      dropout_apply(tmp, *dx, dropout, ctx.dropout_seed, stream, dx_accumulate);
    }
  }
  // Column-parallel: the replicated A needs the full dxa = sum over ranks of dy_i B_i, which
  // also keeps dA identical on every rank.
  if (tp_mode == TpMode::column) tp.comm->sum_partials(dxa_m);
  // dropout(x) regenerated from the same seed (after dx: both use ctx.scratch).
  const Tensor xd = dropped_input(x, ctx);
  matmul(dA, dxa_m, true, xd, false, 1.0, 1.0);         // dA += dxa^T dropout(x)       [r, in]
  return writes_dx;
}

LowRankTerm LoraAdapter::backward_leaving_dx_term(const Tensor& x, const Tensor& dy, const LayerContext& ctx) {
  // Not with dropout (dx's term goes through the mask) nor column-parallel (dx's term is made of
  // this rank's partial dxa, which the sum below would replace).
  if ((dropout > 0 && ctx.training) || tp_mode == TpMode::column) return LowRankTerm{};
  ProfileScope prof(profile_level() >= 2 ? nullptr : "lora adapters (backward)", x.device());
  const int64_t M = x.numel() / x.dim(-1);
  Tensor xa_m = part_of(xa, M).view({M, r}), dxa_m = part_of(dxa, M).view({M, r});
  matmul_dy_pair(dB, 1.0, dxa_m, false, dy, xa_m, false, B_work, scale);
  matmul(dA, dxa_m, true, x, false, 1.0, 1.0);  // dA += dxa^T x      [r, in]
  // dx's term dxa A [M, in], for the consumer of dx (valid until this adapter's next backward).
  LowRankTerm t;
  t.xa = dxa_m;
  t.B = A_work;
  t.scale = 1.0;
  t.b_t = true;
  return t;
}

// Staging buffers shared by all groups of a model: A_work and dA stacked, for layouts that keep
// the members' factors apart (ZeRO-3 gathers each parameter into its own place). Made on first
// use, at the size of the largest group.
struct LoraStage {
  int64_t numel = 0;
  DType work_dtype = DType::f32, master_dtype = DType::f32;
  Device device = Device::cpu;
  Tensor work, grad;
};

struct LoraGroup {
  // A call runs as a group only when its row count M is a multiple of this: the group's products
  // are stored transposed, [R, M], and GPU GEMM kernels read rows starting on 16-byte boundaries
  // (8 bf16 elements) at full speed. Other calls run member by member (both layouts use the
  // same elements of the saved-products buffer; forward, recompute and backward of one
  // micro-batch have the same M, so they agree).
  static constexpr int64_t kRowMultiple = 8;
  std::vector<LoraAdapter*> members;  // in the order of the model's group
  int64_t rows = 0, in = 0;           // the stacked [R, in]
  std::shared_ptr<LoraStage> stage;

  // Each member's index in `layers` (a member's layer must be there; false otherwise).
  template <typename L>
  bool find(const std::vector<L*>& layers, std::vector<size_t>& at) const {
    at.clear();
    for (const LoraAdapter* a : members) {
      size_t i = 0;
      while (i < layers.size() && layers[i]->adapter.get() != static_cast<const LinearAdapter*>(a)) ++i;
      if (i == layers.size()) return false;
      at.push_back(i);
    }
    return true;
  }
  std::vector<const Tensor*> parts(Tensor LoraAdapter::*t) const {
    std::vector<const Tensor*> out;
    for (const LoraAdapter* a : members) out.push_back(&(a->*t));
    return out;
  }
  // The members' A_work as one [R, in] tensor: a view where they are adjacent rows of one
  // buffer (as lora_join_groups lays them out), else a copy into the stage.
  Tensor stacked_work() {
    Tensor t = Tensor::adjacent_rows(parts(&LoraAdapter::A_work));
    if (t.defined()) return t;
    if (!stage->work.defined())
      stage->work = Tensor::empty({stage->numel}, stage->work_dtype, stage->device, MemCategory::workspace);
    t = stage->work.slice(0, rows * in).view({rows, in});
    for (const LoraAdapter* a : members) {
      Tensor dst = t.slice(a->group_row, a->group_row + a->r);
      dst.copy_from(a->A_work);
    }
    return t;
  }
  // dA += dxa^T x for every member: one GEMM into the stacked dA where the members' dA are
  // adjacent rows, else into the stage and then added to each.
  void add_grad_a(const Tensor& dxaT, const Tensor& x) {
    Tensor dA = Tensor::adjacent_rows(parts(&LoraAdapter::dA));
    if (dA.defined()) {
      matmul(dA, dxaT, false, x, false, 1.0, 1.0);  // dA += dxa^T x      [R, in]
      return;
    }
    if (!stage->grad.defined())
      stage->grad = Tensor::empty({stage->numel}, stage->master_dtype, stage->device, MemCategory::workspace);
    Tensor g = stage->grad.slice(0, rows * in).view({rows, in});
    matmul(g, dxaT, false, x, false, 1.0, 0.0);
    for (LoraAdapter* a : members) axpy(1.0, g.slice(a->group_row, a->group_row + a->r), a->dA);
  }
};

void LoraAdapter::group_forward(const std::vector<const Linear*>& layers, const Tensor& x,
                                const std::vector<Tensor*>& ys, const LayerContext& ctx, std::vector<bool>& covered,
                                std::vector<bool>* deferred) {
  std::vector<size_t> at;
  const int64_t M = x.numel() / x.dim(-1);
  if (!group || M % LoraGroup::kRowMultiple != 0 || !group->find(layers, at)) return;
  ProfileScope prof(profile_level() >= 2 ? nullptr : "lora adapters (forward)", x.device());
  const int64_t R = group->rows;
  if (M > max_rows) ST_THROW("LoRA ", name, ": ", M, " rows exceed the buffer of ", max_rows);
  // The saved x A^T is still valid in a checkpoint recompute (same input, no dropout).
  if (!ctx.recompute) {
    Tensor xaT = xa.slice(0, R * M).view({R, M});
    matmul(xaT, group->stacked_work(), false, x, true);  // xa^T = A_cat x^T    [R, M]
  }
  // Deferred members (linear_group_forward's choice) get their term after the base GEMM
  // (add_rotated) or leave it to the consumer (low_rank_term).
  for (size_t j = 0; j < at.size(); ++j) {
    covered[at[j]] = true;
    LoraAdapter& a = *group->members[j];
    a.term_left_out = false;
    if (deferred && (*deferred)[at[j]]) continue;
    const Tensor xaT = a.part_of(xa, M).view({a.r, M});
    matmul(*ys[at[j]], xaT, true, a.B_work, true, a.scale, 0.0);  // y = scale * xa B^T   [M, out]
  }
}

LowRankTerm LoraAdapter::low_rank_term(const Tensor& x) {
  // A deferred member of a group: its x A^T is in the group's transposed buffer [r, M].
  if (!group) ST_THROW("LoRA ", name, ": low_rank_term outside a group");
  term_left_out = true;
  return left_out_term(x);
}

LowRankTerm LoraAdapter::left_out_term(const Tensor& x) const {
  if (!term_left_out) return LowRankTerm{};
  const int64_t M = x.numel() / x.dim(-1);
  return LowRankTerm{part_of(xa, M).view({r, M}), true, B_work, scale};
}

void LoraAdapter::add_rotated(const Tensor& x, Tensor& y, const OutputRope& rope) {
  // A deferred member of a group: its x A^T is in the group's transposed buffer [r, M].
  ProfileScope prof(profile_level() >= 2 ? nullptr : "lora adapters (forward)", x.device());
  const int64_t M = x.numel() / x.dim(-1);
  if (!group) ST_THROW("LoRA ", name, ": add_rotated outside a group");
  const Tensor xaT = part_of(xa, M).view({r, M});
  matmul_add_rope(y, xaT, true, B_work, true, scale, rope.B, rope.T, *rope.tables, rope.positions);
}

bool LoraAdapter::group_backward(const std::vector<Linear*>& layers, const Tensor& x,
                                 const std::vector<const Tensor*>& dys, Tensor* dx, bool dx_accumulate,
                                 const LayerContext& ctx, std::vector<bool>& covered) {
  (void)ctx;
  std::vector<size_t> at;
  const int64_t M = x.numel() / x.dim(-1);
  if (!group || M % LoraGroup::kRowMultiple != 0 || !group->find(layers, at)) return false;
  ProfileScope prof(profile_level() >= 2 ? nullptr : "lora adapters (backward)", x.device());
  const int64_t R = group->rows;
  if (M > max_rows) ST_THROW("LoRA ", name, ": ", M, " rows exceed the buffer of ", max_rows);
  for (size_t j = 0; j < at.size(); ++j) {
    LoraAdapter& a = *group->members[j];
    const Tensor& dy = *dys[at[j]];
    const Tensor xaT = a.part_of(xa, M).view({a.r, M});
    Tensor dxaT = a.part_of(dxa, M).view({a.r, M});
    // dB += scale * dy^T xa [out, r] and dxa^T = scale * B^T dy^T [r, M] (one pass over dy where it can)
    matmul_dy_pair(a.dB, 1.0, dxaT, true, dy, xaT, true, a.B_work, a.scale);
    covered[at[j]] = true;
  }
  const Tensor dxaT = dxa.slice(0, R * M).view({R, M});
  const bool writes_dx = dx && dx->defined();
  // Column-parallel: dxa and dx are this rank's partial sums (the caller all-reduces dx).
  if (writes_dx) matmul(*dx, dxaT, true, group->stacked_work(), false, 1.0, dx_accumulate ? 1.0 : 0.0);
  // Column-parallel: the replicated A factors need the full dxa (one sum for the whole group).
  if (tp_mode == TpMode::column) {
    Tensor all = dxaT;
    tp.comm->sum_partials(all);
  }
  group->add_grad_a(dxaT, x);
  return writes_dx;
}

int64_t lora_join_groups(const std::vector<std::vector<Linear*>>& groups) {
  std::vector<std::shared_ptr<LoraGroup>> made;
  for (const std::vector<Linear*>& layers : groups) {
    std::vector<LoraAdapter*> ms;
    for (Linear* lin : layers) {
      auto* a = dynamic_cast<LoraAdapter*>(lin->adapter.get());
      if (!a || a->group || a->dropout > 0 || a->tp_mode == TpMode::row) continue;
      const LoraAdapter* f = ms.empty() ? a : ms.front();
      if (a->A.dtype() != f->A.dtype() || a->A_work.dtype() != f->A_work.dtype() || a->A.device() != f->A.device() ||
          a->A.dim(1) != f->A.dim(1) || a->max_rows != f->max_rows || a->tp_mode != f->tp_mode ||
          a->tp.comm != f->tp.comm)
        continue;
      ms.push_back(a);
    }
    if (ms.size() < 2) continue;
    auto g = std::make_shared<LoraGroup>();
    g->members = ms;
    g->in = ms.front()->A.dim(1);
    for (const LoraAdapter* a : ms) g->rows += a->r;
    const LoraAdapter& f = *ms.front();
    const Device dev = f.A.device();
    const bool separate = f.A_work.data() != f.A.data();
    // The stacked tensors, each member's current values copied into its rows (A as drawn from
    // its own name), then each member's tensors pointed at its rows.
    Tensor A = Tensor::empty({g->rows, g->in}, f.A.dtype(), dev, MemCategory::weights);
    Tensor dA = Tensor::empty({g->rows, g->in}, f.dA.dtype(), dev, MemCategory::gradients);
    Tensor W = separate ? Tensor::empty({g->rows, g->in}, f.A_work.dtype(), dev, MemCategory::weights) : A;
    int64_t row = 0;
    for (LoraAdapter* a : ms) {
      a->group_row = row;
      row += a->r;
      Tensor a_rows = A.slice(a->group_row, row), da_rows = dA.slice(a->group_row, row);
      a_rows.copy_from(a->A);
      da_rows.copy_from(a->dA);
      a->A = a_rows;
      a->dA = da_rows;
      if (separate) {
        Tensor w_rows = W.slice(a->group_row, row);
        w_rows.copy_from(a->A_work);
        a->A_work = w_rows;
      } else {
        a->A_work = a->A;
      }
      a->xa = Tensor();  // freed before the shared buffers are made
      a->dxa = Tensor();
    }
    const Tensor xa = Tensor::zeros({f.max_rows * g->rows}, f.A_work.dtype(), dev, MemCategory::activations);
    const Tensor dxa = Tensor::zeros({f.max_rows * g->rows}, f.A_work.dtype(), dev, MemCategory::workspace);
    for (LoraAdapter* a : ms) {
      a->xa = xa;
      a->dxa = dxa;
      a->group = g;
    }
    made.push_back(g);
  }
  // One stage for all groups of the model, of the largest group's size.
  auto stage = std::make_shared<LoraStage>();
  for (const auto& g : made) {
    const LoraAdapter& f = *g->members.front();
    stage->numel = std::max(stage->numel, g->rows * g->in);
    stage->work_dtype = f.A_work.dtype();
    stage->master_dtype = f.dA.dtype();
    stage->device = f.A.device();
    g->stage = stage;
  }
  return static_cast<int64_t>(made.size());
}

void LoraAdapter::collect_params(std::vector<ParamRef>& out) {
  const bool separate = A_work.data() != A.data();
  out.push_back({name + ".lora_A.weight", &A, &dA, true, separate ? &A_work : nullptr, tp_mode == TpMode::row,
                 separate ? nullptr : &A_work});
  out.push_back({name + ".lora_B.weight", &B, &dB, true, separate ? &B_work : nullptr, tp_mode == TpMode::column,
                 separate ? nullptr : &B_work});
}

void LoraAdapter::add_delta_to(Tensor& W) const {
  // W [out, in] += scale * B A, computed in the adapter precision on the CPU.
  Tensor a = A.to_cpu(DType::f64), b = B.to_cpu(DType::f64);
  Tensor w = W.to_cpu(DType::f64);
  matmul(w, b, false, a, false, scale, 1.0);
  W.copy_from(w.to_cpu(W.dtype()));
}

}  // namespace st
