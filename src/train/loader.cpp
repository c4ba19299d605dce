#include "train/loader.hpp"

#include <algorithm>
#include <numeric>

#include "core/rng.hpp"

namespace st {

std::vector<int64_t> epoch_order(int64_t n, uint64_t seed, int64_t epoch, bool shuffle) {
  std::vector<int64_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  if (!shuffle) return order;
  Rng rng(splitmix64(seed ^ 0x5eedda7aull) + static_cast<uint64_t>(epoch));
  for (int64_t i = n - 1; i > 0; --i) {
    const int64_t j = static_cast<int64_t>(rng.below(static_cast<uint64_t>(i + 1)));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  return order;
}

BatchBuffers::BatchBuffers(int64_t B_max, int64_t T_max, Device device)
    : B_max_(B_max), T_max_(T_max), device_(device) {
  const int64_t n = B_max * T_max;
  auto both = [&](Tensor& dev, Tensor& host, const Shape& s, DType dt) {
    host = Tensor::empty(s, dt, Device::cpu, MemCategory::workspace);
    dev = device == Device::cpu ? host : Tensor::empty(s, dt, device, MemCategory::workspace);
  };
  both(ids_, h_ids_, {n}, DType::i32);
  both(targets_, h_targets_, {n}, DType::i32);
  both(weight_, h_weight_, {n}, DType::f32);
  both(lengths_, h_lengths_, {B_max}, DType::i32);
}

Tensor tensor_on(const std::vector<int32_t>& values, DType dtype, Device device) {
  Tensor h = Tensor::empty({static_cast<int64_t>(values.size())}, dtype);
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::i32) h.ptr<int32_t>()[i] = values[i];
    else if (dtype == DType::f32) h.ptr<float>()[i] = static_cast<float>(values[i]);
    else ST_THROW("tensor_on: i32 or f32, not ", dtype_name(dtype));
  }
  if (device == Device::cpu) return h;
  Tensor t = Tensor::empty(h.shape(), dtype, device, MemCategory::workspace);
  t.copy_from(h);
  return t;
}

LlamaBatch BatchBuffers::make(const Batch& host, double token_weight) {
  const int64_t B = host.rows, L = host.seq_len;
  const int64_t T = std::max<int64_t>(2, std::min(L, host.max_length()));
  if (B > B_max_ || T > T_max_) ST_THROW("batch [", B, ", ", T, "] exceeds buffers [", B_max_, ", ", T_max_, "]");
  int32_t* ids = h_ids_.ptr<int32_t>();
  int32_t* tg = h_targets_.ptr<int32_t>();
  float* w = h_weight_.ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    const int64_t len = host.lengths[static_cast<size_t>(b)];
    h_lengths_.ptr<int32_t>()[b] = static_cast<int32_t>(len);
    for (int64_t t = 0; t < T; ++t) {
      const size_t src = static_cast<size_t>(b * L + t);
      ids[b * T + t] = t < L ? host.ids[src] : 0;
      // Position t predicts token t+1 when that token is a target.
      const bool target = t + 1 < len && host.loss_mask[src + 1] != 0;
      tg[b * T + t] = target ? host.ids[src + 1] : -1;
      w[b * T + t] = target ? static_cast<float>(token_weight) : 0.0f;
    }
  }
  LlamaBatch out;
  out.B = B;
  out.T = T;
  out.ids = ids_.slice(0, B * T);
  out.targets = targets_.slice(0, B * T);
  out.weight = weight_.slice(0, B * T);
  out.lengths = lengths_.slice(0, B);
  if (device_ != Device::cpu) {
    out.ids.copy_from(h_ids_.slice(0, B * T));
    out.targets.copy_from(h_targets_.slice(0, B * T));
    out.weight.copy_from(h_weight_.slice(0, B * T));
    out.lengths.copy_from(h_lengths_.slice(0, B));
  }
  return out;
}

}  // namespace st
