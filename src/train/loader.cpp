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

int64_t batch_length(int64_t longest, int64_t T_max) { return std::max<int64_t>(2, std::min(T_max, longest)); }

BatchBuffers::BatchBuffers(int64_t B_max, int64_t T_max, Device device)
    : B_max_(B_max), T_max_(T_max), S_max_(B_max * (T_max + 1)), device_(device) {
  const int64_t n = B_max * T_max;
  auto both = [&](Tensor& dev, Tensor& host, const Shape& s, DType dt) {
    host = Tensor::empty(s, dt, Device::cpu, MemCategory::workspace);
    dev = device == Device::cpu ? host : Tensor::empty(s, dt, device, MemCategory::workspace);
  };
  both(ids_, h_ids_, {n}, DType::i32);
  both(targets_, h_targets_, {n}, DType::i32);
  both(weight_, h_weight_, {n}, DType::f32);
  both(lengths_, h_lengths_, {B_max}, DType::i32);
  both(positions_, h_positions_, {n}, DType::i32);
  cu_ = Tensor::empty({S_max_ + 1}, DType::i32, Device::cpu, MemCategory::workspace);
  keys_ = Tensor::empty({S_max_}, DType::i32, Device::cpu, MemCategory::workspace);
  if (device != Device::cpu)  // the CUDA kernels' tile table
    both(tiles_, h_tiles_, {4 * attention_max_tiles(n, S_max_)}, DType::i32);
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
  const int64_t L = host.seq_len;
  const bool packed = !host.pack_rows.empty();
  const int64_t B = packed ? static_cast<int64_t>(host.pack_rows.size()) : host.rows;
  // Training row b is documents [first[b], first[b + 1]) of the host rows.
  std::vector<int64_t> first(static_cast<size_t>(B) + 1, 0);
  for (int64_t b = 0; b < B; ++b)
    first[static_cast<size_t>(b) + 1] = first[static_cast<size_t>(b)] + (packed ? host.pack_rows[static_cast<size_t>(b)] : 1);
  if (first.back() != host.rows)
    ST_THROW("packed batch: pack_rows add up to ", first.back(), " documents, the batch has ", host.rows);
  std::vector<int64_t> fill(static_cast<size_t>(B), 0);
  int64_t longest = 0;
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t d = first[static_cast<size_t>(b)]; d < first[static_cast<size_t>(b) + 1]; ++d)
      fill[static_cast<size_t>(b)] += std::min<int64_t>(L, host.lengths[static_cast<size_t>(d)]);
    longest = std::max(longest, fill[static_cast<size_t>(b)]);
  }
  const int64_t T = batch_length(longest, packed ? T_max_ : std::min(L, T_max_));
  if (B > B_max_ || longest > T_max_ || B < 1)
    ST_THROW("batch [", B, ", ", longest, "] exceeds buffers [", B_max_, ", ", T_max_, "]");
  int32_t* ids = h_ids_.ptr<int32_t>();
  int32_t* tg = h_targets_.ptr<int32_t>();
  float* w = h_weight_.ptr<float>();
  int32_t* pos = h_positions_.ptr<int32_t>();
  int32_t* cu = cu_.ptr<int32_t>();
  int32_t* keys = keys_.ptr<int32_t>();
  int64_t S = 0, max_position = 0;
  cu[0] = 0;
  auto segment = [&](int64_t end, int64_t nkeys) {  // the next segment ends at token `end`
    if (end == cu[S]) return;
    keys[S] = static_cast<int32_t>(nkeys);
    cu[++S] = static_cast<int32_t>(end);
  };
  for (int64_t b = 0; b < B; ++b) {
    int64_t t0 = 0;  // where the next document starts in the row
    for (int64_t d = first[static_cast<size_t>(b)]; d < first[static_cast<size_t>(b) + 1]; ++d) {
      const int64_t len = std::min<int64_t>(L, host.lengths[static_cast<size_t>(d)]);
      for (int64_t t = 0; t < len; ++t) {
        const size_t src = static_cast<size_t>(d * L + t);
        const int64_t o = b * T + t0 + t;
        ids[o] = host.ids[src];
        pos[o] = static_cast<int32_t>(t);
        // Position t predicts token t+1 of the same document when that token is a target.
        const bool target = t + 1 < len && host.loss_mask[src + 1] != 0;
        tg[o] = target ? host.ids[src + 1] : -1;
        w[o] = target ? static_cast<float>(token_weight) : 0.0f;
      }
      max_position = std::max(max_position, len - 1);
      segment(b * T + t0 + len, len);
      t0 += len;
    }
    // Padding (a segment that sees no key; no targets): an unpacked row keeps its shard padding
    // and positions t, a packed row pads with id 0 at position 0.
    for (int64_t t = t0; t < T; ++t) {
      const int64_t o = b * T + t;
      ids[o] = !packed && t < L ? host.ids[static_cast<size_t>(b * L + t)] : 0;
      pos[o] = static_cast<int32_t>(packed ? 0 : t);
      tg[o] = -1;
      w[o] = 0.0f;
    }
    if (!packed) max_position = std::max(max_position, T - 1);
    segment((b + 1) * T, 0);
    h_lengths_.ptr<int32_t>()[b] = static_cast<int32_t>(fill[static_cast<size_t>(b)]);
  }
  LlamaBatch out;
  out.B = B;
  out.T = T;
  out.ids = ids_.slice(0, B * T);
  out.targets = targets_.slice(0, B * T);
  out.weight = weight_.slice(0, B * T);
  out.lengths = lengths_.slice(0, B);
  out.positions = positions_.slice(0, B * T);
  out.max_position = max_position;
  const Tensor tiles_host = h_tiles_.defined() ? h_tiles_ : Tensor();
  attention_segments_finish(out.segments, cu_.slice(0, S + 1), keys_.slice(0, S), tiles_host);
  if (device_ != Device::cpu) {
    out.ids.copy_from(h_ids_.slice(0, B * T));
    out.targets.copy_from(h_targets_.slice(0, B * T));
    out.weight.copy_from(h_weight_.slice(0, B * T));
    out.lengths.copy_from(h_lengths_.slice(0, B));
    out.positions.copy_from(h_positions_.slice(0, B * T));
    out.segments.tiles = tiles_.slice(0, 4 * out.segments.n_tiles);
    if (out.segments.n_tiles > 0) out.segments.tiles.copy_from(h_tiles_.slice(0, 4 * out.segments.n_tiles));
  }
  return out;
}

}  // namespace st
