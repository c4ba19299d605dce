// CPU reference kernels: the clean, minimal definition of every op. They run in f32 for training
// on CPU and in f64 for the finite-difference gradient checks (explicitly instantiated for both).
// Every CUDA kernel is tested against these. Raw pointers and sizes; shapes in the comments.
//
// Convention for backward kernels: gradients are ACCUMULATED (+=) into every output, so callers
// zero a buffer once and several contributions (residual branches, tied weights) simply add up.
#pragma once

#include <cstdint>

namespace st::cpu {

// C[M,N] = alpha * op(A) op(B) + beta * C (row-major). op(A) is [M,K]: A is [M,K] (lda = K)
// or, with trans_a, [K,M] (lda = M). op(B) is [K,N]: B is [K,N] or, with trans_b, [N,K].
// beta == 0 overwrites C without reading it.
template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, T alpha, const T* A, bool trans_a, const T* B,
          bool trans_b, T beta, T* C);

// y[n,:] = x[n,:] * rstd[n] * w, rstd[n] = 1/sqrt(mean(x[n,:]^2) + eps).  x,y: [N,C]  w: [C]
template <typename T>
void rmsnorm_forward(int64_t N, int64_t C, const T* x, const T* w, T eps, T* y, T* rstd);
// dx += d/dx, dw += d/dw (dw may be null when the weight is frozen).
template <typename T>
void rmsnorm_backward(int64_t N, int64_t C, const T* dy, const T* x, const T* w, const T* rstd,
                      T* dx, T* dw);

// Rotary embedding, Hugging Face rotate-half layout, in place on x: [B, T, H, D]; position of
// row t is t. cos/sin: [T_max, D/2] tables. inverse=true applies the transpose (backward).
template <typename T>
void rope_apply(int64_t B, int64_t T_, int64_t H, int64_t D, T* x, const float* cos_table,
                const float* sin_table, bool inverse);
// The same for N tokens [N, H, D] at positions pos[n] (sequence packing: each document's
// positions restart at 0).
template <typename T>
void rope_apply_at(int64_t N, int64_t H, int64_t D, T* x, const int32_t* pos, const float* cos_table,
                   const float* sin_table, bool inverse);

// Attention with causal and key-padding masks, grouped-query heads and an additive score bias.
// q: [B,Tq,Hq,D], k,v: [B,Tk,Hkv,D], out: [B,Tq,Hq,D], lse: [B,Hq,Tq] (log-sum-exp of the
// scaled, biased, masked scores of each query row, saved for backward). lengths[b]: keys
// j >= lengths[b] are masked (null: none). causal (needs Tk == Tq): keys j > i masked.
// scale multiplies q.k; bias: [Hq,Tq,Tk] added after the scaling (null: none).
template <typename T>
void attention_forward(int64_t B, int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t D, const T* q,
                       const T* k, const T* v, const T* bias, const int32_t* lengths, bool causal, T scale,
                       T* out, T* lse);
// dq, dk, dv accumulate (+=); dbias [Hq,Tq,Tk] (null: not wanted) accumulates the sum over the
// batch of dL/d(score).
template <typename T>
void attention_backward(int64_t B, int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t D, const T* q,
                        const T* k, const T* v, const T* out, const T* lse, const T* dout, const T* bias,
                        const int32_t* lengths, bool causal, T scale, T* dq, T* dk, T* dv, T* dbias);
// Variable-length causal self-attention (ops/attention.hpp): S segments, segment s is tokens
// [cu[s], cu[s+1]) of q, k, v, out ([N, H, D]), seeing its own keys [0, min(i + 1, keys[s]));
// lse: [Hq, N]; max_len: the longest segment. The backward accumulates into dq, dk, dv.
template <typename T>
void attention_varlen_forward(int64_t S, const int32_t* cu, const int32_t* keys, int64_t N, int64_t max_len,
                              int64_t Hq, int64_t Hkv, int64_t D, const T* q, const T* k, const T* v, T scale, T* out,
                              T* lse);
template <typename T>
void attention_varlen_backward(int64_t S, const int32_t* cu, const int32_t* keys, int64_t N, int64_t max_len,
                               int64_t Hq, int64_t Hkv, int64_t D, const T* q, const T* k, const T* v, const T* out,
                               const T* lse, const T* dout, T scale, T* dq, T* dk, T* dv);

// Attention of n queries at positions past..past+n-1 over a key/value cache (ops/decode_attention.hpp):
// q, out: [n, Hq, D]; k, v: [capacity, Hkv, D]; query i sees keys 0..past+i.
template <typename T>
void decode_attention(int64_t n, int64_t past, int64_t Hq, int64_t Hkv, int64_t D, const T* q, const T* k,
                      const T* v, T scale, T* out);

// y[m,n] += b[n] (y: [M,N], b: [N]); db[n] += sum over m of dy[m,n], summed in double.
template <typename T>
void bias_add(int64_t M, int64_t N, T* y, const T* b);
template <typename T>
void bias_backward(int64_t M, int64_t N, const T* dy, T* db);

// h = silu(g) * u.  g,u,h: [N]
template <typename T>
void swiglu_forward(int64_t N, const T* g, const T* u, T* h);
template <typename T>
void swiglu_backward(int64_t N, const T* dh, const T* g, const T* u, T* dg, T* du, bool accumulate = true);
template <typename T>
void geglu_forward(int64_t N, const T* g, const T* u, T* h);
template <typename T>
void geglu_backward(int64_t N, const T* dh, const T* g, const T* u, T* dg, T* du, bool accumulate = true);
template <typename T>
void relu_forward(int64_t N, const T* x, T* h);
template <typename T>
void relu_backward(int64_t N, const T* dh, const T* x, T* dx, bool accumulate = true);

// out[n,:] = table[ids[n],:].  table: [V,C]; ids outside [0,V) throw.
template <typename T>
// shard: the table holds rows [offset, offset + V) of a larger vocabulary; other ids give zero rows.
void embedding_forward(int64_t N, int64_t C, int64_t V, const int32_t* ids, const T* table, T* out, int64_t offset = 0,
                       bool shard = false);
template <typename T>
void embedding_backward(int64_t N, int64_t C, int64_t V, const int32_t* ids, const T* dout, T* dtable, int64_t offset = 0);

// Fused softmax cross-entropy over rows of logits [N,V]. losses[n] = logsumexp - logit[target].
// Rows with weight[n] == 0 or target < 0 get loss 0. When grad is true, logits is overwritten
// with dlogits = weight[n] * (softmax - onehot(target)) (rows with weight 0 become zeros).
template <typename T>
void cross_entropy(int64_t N, int64_t V, T* logits, const int32_t* targets, const float* weight,
                   T* losses, bool grad);

// PyTorch AdamW semantics (decoupled decay, bias correction). All arrays [n].
template <typename T>
void adamw_update(int64_t n, T* param, const T* grad, T* m, T* v, double lr, double beta1,
                  double beta2, double eps, double weight_decay, int64_t step, double grad_scale = 1.0);

// master_weights = none: param, grad, m, v are bf16 (raw bits), no master copy; the update in f32
// and stochastically rounded (ops/adamw_element.hpp update_bf16, keyed by `key`): the same bits
// as the CUDA kernel.
void adamw_update_bf16(int64_t n, uint16_t* param, const uint16_t* grad, uint16_t* m, uint16_t* v, double lr,
                       double beta1, double beta2, double eps, double weight_decay, int64_t step, double grad_scale,
                       uint64_t key);

// Sum of squares, accumulated in double.
template <typename T>
double sum_squares(int64_t n, const T* x);
double sum_squares_bf16(int64_t n, const uint16_t* x);  // bf16 bits (a pure-bf16 gradient)
template <typename T>
void scale_inplace(int64_t n, T* x, T s);
// y += a * x
template <typename T>
void axpy(int64_t n, T a, const T* x, T* y);

}  // namespace st::cpu

namespace st::cpu {
// Inverted dropout with a counter-based mask: keep element i when
// counter_uniform(seed, stream, i) >= p, scaled by 1/(1-p). accumulate adds into out.
template <typename T>
void dropout_apply(int64_t n, const T* x, T* out, double p, uint64_t seed, uint64_t stream, bool accumulate);
}  // namespace st::cpu
