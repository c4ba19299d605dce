// Rotary position embedding (Hugging Face rotate-half layout).
#pragma once

#include "core/tensor.hpp"

namespace st {

// cos/sin tables [max_positions, head_dim/2] in f32, computed as Hugging Face does:
// inv_freq[i] = 1 / theta^(2i/D) in f32, angle = position * inv_freq (f32), then cos and sin.
struct RopeTables {
  Tensor cos, sin;  // f32 on the compute device
  int64_t max_positions = 0, head_dim = 0;
};
RopeTables rope_tables(int64_t max_positions, int64_t head_dim, double theta, Device device);

// In place on x: [B, T, H, D] at positions 0..T-1 of each row, or, with `positions` (i32 [B*T]
// on x's device, each in [0, max_positions): checked on the CPU, the caller's duty on CUDA), at
// positions[b*T + t] (sequence packing: each document's positions restart at 0).
// rope_backward applies the inverse rotation (the transpose).
void rope_forward(Tensor& x, int64_t B, int64_t T, const RopeTables& tables, const Tensor& positions = Tensor());
void rope_backward(Tensor& dx, int64_t B, int64_t T, const RopeTables& tables, const Tensor& positions = Tensor());

}  // namespace st
