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

// The f32 scratch the CUDA backward keeps between calls (grown on demand): delta [B*T*Hq] and,
// with dq_accumulator, the dQ accumulator [B*T*Hq*D]. In bytes.
inline size_t attention_scratch_bytes(const AttentionShape& s, bool dq_accumulator) {
  const int64_t rows = s.B * s.T * s.Hq;
  return static_cast<size_t>(dq_accumulator ? rows * s.D : rows) * sizeof(float);
}

// q: [B*T, Hq*D], k, v: [B*Tk, Hkv*D], out: [B*T, Hq*D], lse: [B*Hq*T] (f32 on CUDA, else the
// compute dtype). lengths: i32 [B] (keys at j >= lengths[b] are masked; 0 <= lengths[b] <= Tk,
// checked on CPU, clamped to Tk on CUDA) or undefined for no padding mask.
// bias: [Hq, T, Tk] (Hq*T*Tk elements, shared by the batch rows; f32 on CUDA, else the compute
// dtype) added to the scaled scores, or undefined for none. On CUDA a bias needs scale != 0.
void attention_forward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                       const Tensor& lengths, Tensor& out, Tensor& lse, const Tensor& bias = Tensor());
// dq, dk, dv accumulate (+=); with accumulate = false they are overwritten (no zeroing needed).
// bias: the forward's bias (or undefined). dbias: [Hq, T, Tk] like bias, ALWAYS accumulated
// (+=, whatever `accumulate` says) with sum over the batch of dL/d(s_ij) (no `scale` factor;
// zero at masked positions); null or undefined when the bias gradient is not wanted.
void attention_backward(const AttentionShape& s, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& lse, const Tensor& dout,
                        const Tensor& lengths, Tensor& dq, Tensor& dk, Tensor& dv, bool accumulate = true,
                        const Tensor& bias = Tensor(), Tensor* dbias = nullptr);

}  // namespace st
