// Rotary position embedding (Hugging Face rotate-half layout).
#pragma once

#include <vector>

#include "core/tensor.hpp"

namespace st {

// Frequency scaling of the rotary embedding (transformers' rope_type); none = "default".
// llama3 (Llama 3.1+): wavelengths longer than original_max_position_embeddings /
// low_freq_factor are divided by `factor`, those shorter than original / high_freq_factor kept,
// and the band between interpolated smoothly (transformers' _compute_llama3_parameters).
struct RopeScaling {
  enum class Type { none, llama3 } type = Type::none;
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;
  bool operator==(const RopeScaling& o) const = default;
};

// inv_freq [head_dim/2] in f32 as transformers computes it: 1 / theta^(2i/D) (the exponent in
// f32, the power, the reciprocal), then the scaling, every step an f32 operation in torch's order
// (CPU semantics: x / s divides, s / x is reciprocal(x) * s).
std::vector<float> rope_inv_freq(int64_t head_dim, double theta, const RopeScaling& scaling = {});

// cos/sin tables [max_positions, head_dim/2] in f32, computed as Hugging Face does:
// angle = position * inv_freq (f32), then cos and sin (the scaling lives in inv_freq alone).
struct RopeTables {
  Tensor cos, sin;  // f32 on the compute device
  int64_t max_positions = 0, head_dim = 0;
};
RopeTables rope_tables(int64_t max_positions, int64_t head_dim, double theta, Device device,
                       const RopeScaling& scaling = {});

// In place on x: [B, T, H, D] at positions 0..T-1 of each row, or, with `positions` (i32 [B*T]
// on x's device, each in [0, max_positions): checked on the CPU, the caller's duty on CUDA), at
// positions[b*T + t] (sequence packing: each document's positions restart at 0).
// rope_backward applies the inverse rotation (the transpose).
void rope_forward(Tensor& x, int64_t B, int64_t T, const RopeTables& tables, const Tensor& positions = Tensor());
void rope_backward(Tensor& dx, int64_t B, int64_t T, const RopeTables& tables, const Tensor& positions = Tensor());
// The checks of rope_forward / rope_backward on x (shape, positions, their range on the CPU),
// for kernels that apply the rotation inside another op; returns x's heads H.
int64_t rope_check(const Tensor& x, int64_t B, int64_t T, const RopeTables& tables, const Tensor& positions);

}  // namespace st
