#include "model/tp_plan.hpp"

#include "ops/init.hpp"
#include "ops/shard.hpp"

namespace st {

TpMode TpPlan::style_of(const std::string& key) const {
  for (const auto& [k, mode] : styles)
    if (k == key) return mode;
  ST_THROW("TP plan: no style for '", key, "'");
}

void check_tp_divisible(int p, std::initializer_list<TpDimension> dims) {
  if (p < 1) ST_THROW_INPUT("tp_size must be at least 1 (got ", p, ")");
  for (const TpDimension& d : dims)
    if (d.size % p != 0)
      ST_THROW_INPUT("tensor parallelism: ", d.what, " (", d.key, " = ", d.size, ") is not divisible by tp_size = ", p,
                     ": choose a tp_size that divides it");
}

Shape tp_local_shape(const Shape& full, TpMode split, int p) {
  Shape s = full;
  if (split == TpMode::none || p == 1) return s;
  const size_t d = split == TpMode::column ? 0 : static_cast<size_t>(s.ndim - 1);
  if (s.d[d] % p != 0) ST_THROW_INPUT("tensor parallelism: ", full.str(), " is not divisible by tp_size = ", p);
  s.d[d] /= p;
  return s;
}

Tensor tp_shard_of(const Tensor& full, TpMode split, const TpGroup& tp) {
  if (split == TpMode::none || tp.size == 1) return full.clone(MemCategory::workspace);
  if (split == TpMode::column) {
    const int64_t rows = full.dim(0) / tp.size;
    if (rows * tp.size != full.dim(0))
      ST_THROW_INPUT("tp_shard_of: ", full.str(), " has ", full.dim(0), " rows, not divisible by tp_size ", tp.size);
    return full.slice(rows * tp.rank, rows * (tp.rank + 1)).clone(MemCategory::workspace);
  }
  // Columns: a strided copy, done on the host (in f32/f64), then back to the device.
  if (full.device() == Device::cpu) return shard_cols(full, tp.size, tp.rank);
  const Tensor part = shard_cols(full.to_cpu(full.dtype() == DType::f64 ? DType::f64 : DType::f32), tp.size, tp.rank);
  Tensor staged = Tensor::empty(part.shape(), part.dtype(), full.device(), MemCategory::workspace);
  staged.copy_from(part);
  if (staged.dtype() == full.dtype()) return staged;
  Tensor out = Tensor::empty(part.shape(), full.dtype(), full.device(), MemCategory::workspace);
  convert_copy(out, staged);
  return out;
}

Tensor tp_gather_full(const Tensor& local, TpMode split, const TpGroup& tp, DType dtype) {
  if (dtype != DType::f32 && dtype != DType::f64) ST_THROW("tp_gather_full: f32 or f64 output, not ", dtype_name(dtype));
  if (split == TpMode::none || tp.size == 1) return local.to_cpu(dtype);
  if (!tp.comm) ST_THROW("tp_gather_full: TP size ", tp.size, " without a communicator");
  return tp.comm->gather_full(local, split, dtype);
}

}  // namespace st
