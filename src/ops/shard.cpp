#include "ops/shard.hpp"

#include <cstring>

#include "core/dryrun.hpp"

namespace st {

namespace {

// p, i and the divisibility of dimension `dim` (size n) of W by p; throws InputError naming them.
int64_t shard_extent(const char* fn, const Tensor& W, int dim, int p, int i) {
  if (!W.defined()) ST_THROW_INPUT(fn, ": undefined tensor");
  if (W.device() != Device::cpu) ST_THROW_INPUT(fn, ": CPU tensors only (got ", W.str(), ")");
  if (W.ndim() < 1) ST_THROW_INPUT(fn, ": ", W.str(), " has no dimension to shard");
  if (p < 1) ST_THROW_INPUT(fn, ": number of shards p = ", p, " must be at least 1");
  if (i < 0 || i >= p) ST_THROW_INPUT(fn, ": shard index ", i, " outside [0, ", p, ")");
  const int64_t n = W.dim(dim);
  if (n % p != 0)
    ST_THROW_INPUT(fn, ": dimension ", dim < 0 ? W.ndim() + dim : dim, " (size ", n, ") of ", W.str(),
                   " is not divisible by p = ", p);
  return n / p;
}

}  // namespace

Tensor shard_rows(const Tensor& W, int p, int i) {
  const int64_t r = shard_extent("shard_rows", W, 0, p, i);
  return W.slice(i * r, (i + 1) * r).clone(W.category());
}

Tensor shard_cols(const Tensor& W, int p, int i) {
  const int64_t c = shard_extent("shard_cols", W, -1, p, i);
  const int64_t n = W.dim(-1), rows = n == 0 ? 0 : W.numel() / n;
  Shape s = W.shape();
  s.d[static_cast<size_t>(s.ndim - 1)] = c;
  Tensor out = Tensor::empty(s, W.dtype(), Device::cpu, W.category());
  if (dry_run_active()) return out;  // the planner: sizes only
  const size_t es = dtype_size(W.dtype());
  const auto* src = static_cast<const unsigned char*>(W.data());
  auto* dst = static_cast<unsigned char*>(out.data());
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + static_cast<size_t>(r * c) * es, src + static_cast<size_t>(r * n + i * c) * es,
                static_cast<size_t>(c) * es);
  return out;
}

Tensor concat_cols(const std::vector<Tensor>& parts) {
  if (parts.empty()) ST_THROW("concat_cols: no parts");
  const Tensor& first = parts.front();
  const int64_t c = first.dim(-1), rows = c == 0 ? 0 : first.numel() / c, p = static_cast<int64_t>(parts.size());
  Shape s = first.shape();
  s.d[static_cast<size_t>(s.ndim - 1)] = c * p;
  Tensor full = Tensor::empty(s, first.dtype(), Device::cpu, MemCategory::workspace);
  if (dry_run_active()) return full;
  const size_t es = dtype_size(first.dtype());
  auto* dst = static_cast<unsigned char*>(full.data());
  for (int64_t r = 0; r < p; ++r) {
    const Tensor& part = parts[static_cast<size_t>(r)];
    if (part.shape() != first.shape() || part.dtype() != first.dtype() || part.device() != Device::cpu)
      ST_THROW("concat_cols: part ", r, " ", part.str(), " differs from ", first.str());
    const auto* src = static_cast<const unsigned char*>(part.data());
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(dst + static_cast<size_t>(i * c * p + r * c) * es, src + static_cast<size_t>(i * c) * es,
                  static_cast<size_t>(c) * es);
  }
  return full;
}

}  // namespace st
