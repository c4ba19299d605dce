#include "adapters/lora.hpp"

#include <cmath>

#include "core/profile.hpp"
#include "core/rng.hpp"
#include "ops/activation.hpp"
#include "ops/init.hpp"
#include "ops/matmul.hpp"
#include "ops/shard.hpp"

namespace st {

LoraAdapter::LoraAdapter(const Linear& base, const LoraConfig& cfg, int64_t max_rows, uint64_t seed)
    : name(base.name), r(cfg.r), scale(cfg.scale()), dropout(cfg.dropout), stream(name_hash(base.name)),
      tp_mode(base.tp.active() ? base.tp_mode : TpMode::none), tp(base.tp) {
  if (cfg.r <= 0) ST_THROW_INPUT("lora_r must be positive (got ", cfg.r, ")");
  const DType compute = base.dtype(), dt = master_dtype(compute);
  const Device dev = base.device();
  A = Tensor::empty({r, base.in}, dt, dev, MemCategory::weights);
  B = Tensor::zeros({base.out, r}, dt, dev, MemCategory::weights);
  dA = Tensor::zeros(A.shape(), dt, dev, MemCategory::gradients);
  dB = Tensor::zeros(B.shape(), dt, dev, MemCategory::gradients);
  xa = Tensor::zeros({max_rows, r}, compute, dev, MemCategory::activations);
  dxa = Tensor::zeros({max_rows, r}, compute, dev, MemCategory::workspace);
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
  const int64_t M = x.numel() / x.dim(-1);
  if (M > xa.dim(0)) ST_THROW("LoRA ", name, ": ", M, " rows exceed the buffer of ", xa.dim(0));
  Tensor xa_m = xa.slice(0, M);
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
  Tensor xa_m = xa.slice(0, M), dxa_m = dxa.slice(0, M);
  matmul(dB, dy, true, xa_m, false, scale, 1.0);        // dB += scale * dy^T xa        [out, r]
  matmul(dxa_m, dy, false, B_work, false, scale, 0.0);  // dxa = scale * dy B           [M, r]
  const bool writes_dx = dx && dx->defined();
  if (writes_dx) {
    // Column-parallel: dxa is this rank's partial sum, and so is dx (the caller all-reduces it).
    if (dropout <= 0 || !ctx.training) {
      matmul(*dx, dxa_m, false, A_work, false, 1.0, dx_accumulate ? 1.0 : 0.0);  // dx (+)= dxa A
    } else {
      // dx (+)= dropout'(dxa A): the same mask and scale applied to the gradient.
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
