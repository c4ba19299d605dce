// Multi-head attention core (after the q/k/v projections, before the output projection).
// Grouped-query: Hq query heads share Hkv key/value heads (Hq % Hkv == 0).
// Self-attention (Tk = T) and cross-attention (Tk != T key/value positions per batch row), with
// an optional additive score bias (T5's relative position bias):
//   s_ij = scale * q_i . k_j + bias[h, i, j],  masked (causal j > i, padding j >= lengths[b]) to -inf,
//   out_i = softmax_j(s_ij) v_j,  lse_i = log sum_j exp(s_ij).
// A query row that sees no key at all (e.g. lengths[b] == 0) gets out = 0, lse = -inf and no
// gradient.
#pragma once

#include "core/tensor.hpp"
#include "ops/rope.hpp"

namespace st {

struct AttentionShape {
  int64_t B = 0, T = 0, Hq = 0, Hkv = 0, D = 0;
  bool causal = true;
  double scale = 0;  // usually 1/sqrt(D); T5 uses 1
  // Key/value positions per batch row; 0 (the default) means Tk = T (self-attention). Tk != T
  // (cross-attention) cannot be causal.
  int64_t Tk = 0;

  int64_t kv_len() const { return Tk > 0 ? Tk : T; }
};

// The CUDA backward's split of a KV head's query heads: self-attention without bias whose GQA
// group is even can run two blocks for each block of keys and KV head, each over half the group's
// query heads, their dK and dV sums added in f32 (two addends onto zero: the same result in either
// order). The 1B shape (32 query heads, 4 KV heads) otherwise has 512 blocks of 8 heads each at
// batch 8 x 1024, 1.3 waves of an H100 with the heaviest block 1.45x an even share. Where the
// shape allows it (2) or not (1):
inline int attention_head_split_shape(const AttentionShape& s, bool bias) {
  const int64_t group = s.Hkv > 0 ? s.Hq / s.Hkv : 1;
  return !bias && s.kv_len() == s.T && group >= 2 && group % 2 == 0 ? 2 : 1;
}
// Whether the split is on: unset or SHARDTUNE_ATTN_HEAD_SPLIT=1 (the default since it measured 0.765
// against 0.890 ms at the 1B shape on an H100, session 16), 0: off. Read once.
bool attention_head_split_on();
// The split the CUDA backward takes (and the planner reserves the scratch of): a function of the
// shape and the switch only.
inline int attention_head_split(const AttentionShape& s, bool bias) {
  return attention_head_split_on() ? attention_head_split_shape(s, bias) : 1;
}

// The f32 scratch the CUDA backward keeps between calls (grown on demand): delta [B*T*Hq] and,
// with dq_accumulator, the dQ accumulator [B*T*Hq*D] followed, where attention_head_split is 2,
// by the dK and dV sums [B*Tk*Hkv*D] each. In bytes.
inline size_t attention_scratch_bytes(const AttentionShape& s, bool dq_accumulator, bool bias = false) {
  const int64_t rows = s.B * s.T * s.Hq;
  if (!dq_accumulator) return static_cast<size_t>(rows) * sizeof(float);
  const int64_t kv = attention_head_split(s, bias) > 1 ? 2 * s.B * s.kv_len() * s.Hkv * s.D : 0;
  return static_cast<size_t>(rows * s.D + kv) * sizeof(float);
}

// q: [B*T, Hq*D], k, v: [B*Tk, Hkv*D], out: [B*T, Hq*D], lse: [B*Hq*T] (f32 on CUDA, else the
// compute dtype). lengths: i32 [B] (keys at j >= lengths[b] are masked; 0 <= lengths[b] <= Tk,
// checked on CPU, clamped to Tk on CUDA) or undefined for no padding mask.
// bias: [Hq, T, Tk] (Hq*T*Tk elements, shared by the batch rows; f32 on CUDA, else the compute
// dtype) added to the scaled scores, or undefined for none. On CUDA the scale must be positive.
void attention_forward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                       const Tensor& lengths, Tensor& out, Tensor& lse, const Tensor& bias = Tensor());
// The rotary embedding's backward on the query and key gradients, as part of the attention
// backward: dq and dk come out as rope_backward(tables, positions) would leave them after the
// call (q and k were rotated before the forward). On CUDA the rotation runs inside the kernels
// that store dq and dk (one pass over each fewer, and one bf16 rounding instead of two) when the
// head dimension is 16, 32, 64 or 128 and accumulate is false; otherwise, and on the CPU, it is
// rope_backward after the attention backward.
struct AttentionRope {
  const RopeTables* tables = nullptr;
  Tensor positions;  // i32 [B*T] (sequence packing), or undefined: positions 0..T-1 of each row
};

// dq, dk, dv accumulate (+=); with accumulate = false they are overwritten (no zeroing needed).
// bias: the forward's bias (or undefined). dbias: [Hq, T, Tk] like bias, ALWAYS accumulated
// (+=, whatever `accumulate` says) with sum over the batch of dL/d(s_ij) (no `scale` factor;
// zero at masked positions); null or undefined when the bias gradient is not wanted.
void attention_backward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const Tensor& dout,
                        const Tensor& lengths, Tensor& dq, Tensor& dk, Tensor& dv, bool accumulate = true,
                        const Tensor& bias = Tensor(), Tensor* dbias = nullptr, const AttentionRope* rope = nullptr);

// ---- Variable-length causal self-attention (sequence packing), as flash-attn's varlen API.
// The N = B*T tokens of q, k, v ([N, H*D], the flattened batch) are cut into S consecutive
// segments: segment s is tokens [cu_seqlens[s], cu_seqlens[s+1]), and its query at offset i from
// the segment's start sees the segment's keys at offsets [0, min(i + 1, keys[s])), nothing of
// any other segment. A document is a segment with keys = its length (its own causal attention,
// RoPE positions restarting at 0 are the caller's); padding is a segment with keys = 0 (out 0,
// lse -inf, no gradient). A packed row is several documents and its padding; a padded batch row
// is one document and its padding; a row [b T, b T + T) with keys = lengths[b] is exactly the
// batched path's causal + key-padding mask. lse: [Hq, N] (f32 on CUDA).
//
// The CUDA kernels run over a tile table: one entry per kAttentionTile tokens of each segment
// (segment begin, segment end, key end, the tile's first token), so that a block never visits a
// tile that its segment masks completely and a short document costs what it should.
constexpr int64_t kAttentionTile = 64;

struct AttentionSegments {
  int64_t tokens = 0;   // N
  int64_t count = 0;    // S
  int64_t max_len = 0;  // longest segment
  int64_t n_tiles = 0;
  double pairs = 0;     // visible (query, key) pairs: the basis of the FLOP count
  Tensor cu_seqlens;    // i32 [S + 1], host
  Tensor keys;          // i32 [S], host
  Tensor tiles;         // i32 [n_tiles, 4] on the compute device (CUDA; undefined on the CPU)
  bool defined() const { return count > 0; }
};

// Most tile-table entries N tokens in S segments can need.
inline int64_t attention_max_tiles(int64_t tokens, int64_t segments) {
  return segments + tokens / kAttentionTile;
}
// Checks cu_seqlens and keys (host tensors of S + 1 and S entries: cu_seqlens[0] = 0,
// nondecreasing, cu_seqlens[S] = N, 0 <= keys[s] <= the segment's length; empty segments are
// allowed) and sets tokens, count, max_len and pairs. With `tiles_host` (i32, at least
// 4 * attention_max_tiles(N, S) entries) it also writes the tile table there and sets n_tiles;
// the caller copies it to the device and sets s.tiles.
void attention_segments_finish(AttentionSegments& s, const Tensor& cu_seqlens, const Tensor& keys,
                               const Tensor& tiles_host = Tensor());

// q: [N, Hq*D], k, v: [N, Hkv*D], out: [N, Hq*D], lse: [Hq, N]; shape supplies Hq, Hkv, D and
// scale (shape.B * shape.T must be N; causal only, no bias).
void attention_varlen_forward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                              const AttentionSegments& seg, Tensor& out, Tensor& lse);
// dq, dk, dv accumulate (+=), or are overwritten with accumulate = false; rope as for
// attention_backward (its positions are the stream's: [N]).
void attention_varlen_backward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                               const Tensor& out, const Tensor& lse, const Tensor& dout, const AttentionSegments& seg,
                               Tensor& dq, Tensor& dk, Tensor& dv, bool accumulate = true,
                               const AttentionRope* rope = nullptr);

}  // namespace st
