// Random initialisation of a model from its weight slots, shared by the model families.
// Counter-based: the same values on any device, generated where the weights live. An NF4
// layer is generated densely (one layer at a time, in a workspace) and then quantized, so a
// quantized model starts from the quantized version of the dense model of the same seed. Under
// TP each rank draws the full tensor and keeps its part, so every layout starts from the same
// model. Norms (1-D) start at one; everything else is Normal(0, std), seeded by (seed, name).
#pragma once

#include <cstdint>

#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "model/linear.hpp"
#include "ops/init.hpp"

namespace st {

// Slots: items with name, tensor, linear, shape, full_shape, split. set_weight(slot, value)
// stores a dense value (quantizing NF4 layers); shard_of(slot, full) cuts this rank's part.
template <typename Slots, typename SetWeight, typename ShardOf>
void init_slots_random(const Slots& slots, uint64_t seed, double std, DType dtype, Device device, SetWeight set_weight,
                       ShardOf shard_of) {
  for (const auto& s : slots) {
    const uint64_t key = counter_key(seed, name_hash(s.name));
    if (s.shape.ndim == 1) {
      fill_constant(*s.tensor, 1.0);
    } else if (s.split != TpMode::none) {
      Tensor w = Tensor::empty(s.full_shape, dtype, device, MemCategory::workspace);
      fill_normal(w, key, 0.0, std);
      set_weight(s, shard_of(s, w));
    } else if (s.linear) {
      Tensor w = Tensor::empty(s.shape, dtype, device, MemCategory::workspace);
      fill_normal(w, key, 0.0, std);
      set_weight(s, w);
    } else {
      fill_normal(*s.tensor, key, 0.0, std);
    }
  }
}

}  // namespace st
