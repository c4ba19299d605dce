// Deterministic random numbers.
//
// Rng is xoshiro256** seeded through splitmix64: the same seed gives the same stream on every
// machine. counter_uniform() is a stateless, counter-based draw (a hash of seed, stream and
// index) used where values must be reproducible without storing them, e.g. LoRA dropout masks
// regenerated in the backward pass, on any device and in any thread order.
#pragma once

#include <cstdint>
#include <string_view>

#include "core/hd.hpp"

namespace st {

// Host and device (the CUDA kernels draw from the same counters: cuda/common.cuh).
ST_HD uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// FNV-1a of a name: the stream id of a named tensor's initialisation or dropout mask.
inline uint64_t name_hash(std::string_view s) {
  uint64_t h = 1469598103934665603ull;
  for (unsigned char c : s) h = (h ^ c) * 1099511628211ull;
  return h;
}

// Counter-based uniforms: a key from (seed, stream), then element i of the stream is
// splitmix64(key + i) -- the SplitMix64 sequence started at the key, one hash per element.
ST_HD uint64_t counter_key(uint64_t seed, uint64_t stream) { return splitmix64(seed ^ splitmix64(stream)); }
// Uniform in [0, 1) with 24 bits of resolution (exact in float).
ST_HD float counter_uniform_keyed(uint64_t key, uint64_t index) {
  return static_cast<float>(splitmix64(key + index) >> 40) * (1.0f / 16777216.0f);
}
inline float counter_uniform(uint64_t seed, uint64_t stream, uint64_t index) {
  return counter_uniform_keyed(counter_key(seed, stream), index);
}

class Rng {
 public:
  explicit Rng(uint64_t seed = 0) { reseed(seed); }
  void reseed(uint64_t seed);
  uint64_t next_u64();
  double uniform();                        // [0, 1)
  double uniform(double lo, double hi);    // [lo, hi)
  double normal();                         // mean 0, std 1 (Box-Muller)
  uint64_t below(uint64_t n);              // [0, n), unbiased
  // State, for checkpoints.
  void get_state(uint64_t out[4]) const;
  void set_state(const uint64_t in[4]);

 private:
  uint64_t s_[4];
  bool has_spare_ = false;
  double spare_ = 0;
};

}  // namespace st
