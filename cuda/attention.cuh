// Flash-style attention kernels (see attention.cu). bf16 q, out in [B, T, Hq, D] layout, bf16 k, v
// in [B, Tk, Hkv, D], f32 lse [B, Hq, T]; lengths (i32 [B], keys j >= lengths[b] masked, values
// clamped to Tk) may be null; bias (f32 [Hq, T, Tk], added to the scaled scores) may be null.
#pragma once

#include <cstdint>

namespace st::cuda {

struct AttentionArgs {
  int64_t B = 0, T = 0, Hq = 0, Hkv = 0, D = 0;
  int64_t Tk = 0;  // key/value positions per batch row; 0 means Tk = T
  bool causal = true;  // needs Tk == T
  float scale = 1.0f;  // positive (the kernels take row maxima of q.k and fold bias / scale into it)
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  const int32_t* lengths = nullptr;
  const float* bias = nullptr;
  void* out = nullptr;  // written by the forward, read by the backward
  float* lse = nullptr;
  // Variable-length causal self-attention (ops/attention.hpp): with `tiles` (device i32
  // [n_tiles, 4]: segment begin, segment end, key end, the tile's first token; tiles of 64
  // tokens) the B = 1, T = Tk = N tokens are cut into segments that attend only to themselves;
  // lengths and bias must be null.
  const int32_t* tiles = nullptr;
  int64_t n_tiles = 0;
  // The backward's fused inverse rotary embedding of dq and dk (ops/attention.hpp AttentionRope):
  // cos / sin tables f32 [positions, D / 2] and the tokens' positions (i32, one per token of q;
  // null: token n is at position n % rope_T, its index within a batch row of rope_T tokens).
  // Needs D in {16, 32, 64, 128} and accumulate = false; null rope_cos: none.
  const float* rope_cos = nullptr;
  const float* rope_sin = nullptr;
  const int32_t* rope_pos = nullptr;
  int64_t rope_T = 0;
  // The backward's query-head split (ops/attention.hpp attention_head_split: 1 or 2, decided by
  // the op layer, whose dry run reserves the matching scratch); the bias kernels never split.
  int head_split = 1;
};

void attention_forward(const AttentionArgs& a);
// dq, dk, dv (bf16) are accumulated into (+=), or overwritten when accumulate is false.
// dbias (f32 [Hq, T, Tk], may be null) is always accumulated into (+=) with the batch sum of
// dL/d(score) (atomics: the summation order is not deterministic).
void attention_backward(const AttentionArgs& a, const void* dout, void* dq, void* dk, void* dv, bool accumulate,
                        float* dbias = nullptr);

}  // namespace st::cuda
