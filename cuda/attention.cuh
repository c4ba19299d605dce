// Flash-style attention kernels (see attention.cu). bf16 q, k, v, out in [B, T, H, D] layout,
// f32 lse [B, Hq, T]; lengths (i32 [B]) may be null.
#pragma once

#include <cstdint>

namespace st::cuda {

struct AttentionArgs {
  int64_t B = 0, T = 0, Hq = 0, Hkv = 0, D = 0;
  bool causal = true;
  float scale = 1.0f;
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const int32_t* lengths = nullptr;
  void* out = nullptr;  // written by the forward, read by the backward
  float* lse = nullptr;
};

void attention_forward(const AttentionArgs& a);
// dq, dk, dv (bf16) are accumulated into (+=), or overwritten when accumulate is false.
void attention_backward(const AttentionArgs& a, const void* dout, void* dq, void* dk, void* dv, bool accumulate);

}  // namespace st::cuda
