// Launchers of the CUDA kernel families behind the op interface (src/ops/*.cpp). Tensors are
// validated by the op layer; these take the shapes as arguments. Element types: activations and
// weights bf16, statistics, losses and trainable gradients f32 (see common.cuh; with
// master_weights = none trainable gradients are bf16: the op layer folds them, ops/init.hpp).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.hpp"

namespace st {
struct AdamWHyper;
struct AdamWTensors;
}  // namespace st

namespace st::cuda {

// rmsnorm.cu
void rmsnorm_forward(int64_t N, int64_t C, const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd);
void rmsnorm_backward(int64_t N, int64_t C, const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor* dw);
// rope.cu
// pos: i32 [B*T] device positions of the tokens (null: t within each row).
void rope_apply(int64_t B, int64_t T, int64_t H, int64_t D, Tensor& x, const Tensor& cos, const Tensor& sin, bool inverse,
                const int32_t* pos = nullptr);
// activation.cu
void swiglu_forward(const Tensor& g, const Tensor& u, Tensor& h);
void swiglu_backward(const Tensor& dh, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du, bool accumulate);
void relative_bias_forward(const Tensor& table, const Tensor& buckets, int64_t Tq, int64_t Tk, Tensor& bias);
void relative_bias_backward(const Tensor& dbias, const Tensor& buckets, int64_t Tq, int64_t Tk, Tensor& dtable);
void geglu_forward(const Tensor& g, const Tensor& u, Tensor& h);
void geglu_backward(const Tensor& dh, const Tensor& g, const Tensor& u, Tensor& dg, Tensor& du, bool accumulate);
void relu_forward(const Tensor& x, Tensor& h);
void relu_backward(const Tensor& dh, const Tensor& x, Tensor& dx, bool accumulate);
void dropout_apply(const Tensor& x, Tensor& out, double p, uint64_t key, bool accumulate);
// embedding.cu
// The table holds vocabulary rows [offset, offset + V); other ids give zero rows / are skipped.
void embedding_forward(int64_t N, int64_t C, int64_t V, const Tensor& ids, const Tensor& table, Tensor& out, int64_t offset);
void embedding_backward(int64_t N, int64_t C, int64_t V, const Tensor& ids, const Tensor& dout, Tensor& dtable,
                        int64_t offset);
// bias.cu: y [M, N] += b [N] (same dtype); db [N] (f32) += column sums of dy [M, N].
void bias_add(int64_t M, int64_t N, Tensor& y, const Tensor& b);
void bias_backward(int64_t M, int64_t N, const Tensor& dy, Tensor& db);
// decode_attention.cu: n queries [n, Hq*D] at positions past.. over the caches [capacity, Hkv*D]
// (ops/decode_attention.hpp); bf16 or f32, f32 scores; D <= kDecodeMaxHeadDim.
void decode_attention(int64_t n, int64_t past, int64_t Hq, int64_t Hkv, int64_t D, float scale, const Tensor& q,
                      const Tensor& k, const Tensor& v, Tensor& out);
// loss.cu
// Pass 0: mx[n] = max of the row's local logits; 1: st[n] = sum exp(x - mx[n]), st[N+n] = the
// target logit where owned; 2: losses[n] (f32) and, with grad, dlogits in place. mx/st are f32
// device buffers [N], [2N], all-reduced (max, sum) by the caller between the passes.
void vocab_parallel_ce_pass(int pass, int64_t N, int64_t Vl, int64_t off, Tensor& logits, const Tensor& targets,
                            const Tensor& weight, Tensor& mx, Tensor& st, Tensor* losses, bool grad);
void cross_entropy(int64_t N, int64_t V, Tensor& logits, const Tensor& targets, const Tensor& weight, Tensor& losses,
                   bool grad);
// optim.cu
// f32 master, gradient and moments; a bf16 working copy is written in the same pass.
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, Tensor* working, const AdamWHyper& h);
// Every tensor of the list in one launch (a table of them uploaded once per distinct list).
void adamw_update_multi(const std::vector<AdamWTensors>& ts, const AdamWHyper& h);
double sum_squares(const Tensor& x);
double sum_squares_total(const std::vector<const Tensor*>& xs);
void scale_inplace(Tensor& x, double s);
void axpy(double a, const Tensor& x, Tensor& y);

// attention.cu (the backward's folds of its f32 sums; also pure-bf16 parameter gradients that a
// kernel accumulates in f32, ops/init.cpp): dst[i] (+)= scale * src[i] in f32, rounded once to
// bf16. src f32, dst bf16, n elements each, on the device.
void fold_f32_into_bf16(const float* src, void* dst, int64_t n, float scale, bool accumulate);

}  // namespace st::cuda
