#include "model/linear.hpp"

#include <algorithm>

#include "model/fp8_base.hpp"
#include "ops/bias.hpp"
#include "ops/embedding.hpp"
#include "ops/loss.hpp"
#include "ops/matmul.hpp"
#include "quant/nf4.hpp"

namespace st {

DType Linear::dtype() const {
  if (fp8 && !quantized()) return fp8->dtype;
  return quantized() ? dequant->dtype() : weight.dtype();
}
Device Linear::device() const {
  if (fp8 && !quantized()) return fp8->w.device();
  return quantized() ? dequant->device() : weight.device();
}

Tensor Linear::dense_weight() const {
  if (!quantized()) return weight;
  Tensor w = dequant->view({dequant->numel()}).slice(0, out * in).view({out, in});
  nf4_dequantize(*nf4, w);
  return w;
}

size_t nf4_stored_bytes(const Linear& l) { return l.nf4->nbytes(); }

std::shared_ptr<Tensor> share_dequant_buffer(const std::vector<Linear*>& linears, DType dtype, Device device) {
  int64_t largest = 0;
  for (Linear* lin : linears)
    if (lin->quantized()) largest = std::max(largest, lin->out * lin->in);
  if (largest == 0) return nullptr;
  auto buf = std::make_shared<Tensor>(Tensor::empty({largest}, dtype, device, MemCategory::workspace));
  for (Linear* lin : linears)
    if (lin->quantized()) lin->dequant = buf;
  return buf;
}

void dequantize_linears(const std::vector<Linear*>& linears, DType dtype) {
  for (Linear* lin : linears) {
    if (!lin->quantized()) continue;
    lin->weight = Tensor::empty({lin->out, lin->in}, dtype, lin->dequant->device(), MemCategory::weights);
    nf4_dequantize(*lin->nf4, lin->weight);
    lin->nf4.reset();
    lin->dequant.reset();
  }
}

void linear_layer_forward(const Linear& l, const Tensor& x, Tensor& y, bool accumulate, const LayerContext& ctx,
                          const Tensor* residual) {
  // A row-parallel layer's ranks each hold a partial sum: what enters once (y's prior content,
  // the residual, the bias) is added on TP rank 0 only, and the sum over the group completes it
  // (Megatron's g).
  const bool row = l.tp_mode == TpMode::row && l.tp.active();
  const bool once_here = !row || l.tp.rank == 0;
  const Tensor* res = once_here ? residual : nullptr;
  bool acc = accumulate && once_here;
  // The adapter first (its rank-r update writes y, taking y's prior content or the residual
  // along), then the base GEMM adds into y in its epilogue.
  if (l.adapter && l.adapter->forward(x, y, acc, res, ctx)) {
    acc = true;
    res = nullptr;
  }
  if (l.fp8) fp8_linear_forward(l, x, y, acc || res ? 1.0 : 0.0, res);
  else linear_forward(x, l.dense_weight(), y, acc, res);
  if (l.bias.defined() && once_here) bias_add(y, l.bias);
  if (row) l.tp.comm->sum_partials(y);
}

void linear_layer_backward(Linear& l, const Tensor& x, const Tensor& dy, Tensor* dx, const LayerContext& ctx,
                           bool dx_accumulate) {
  // As in the forward: the adapter's input gradient first, the base GEMM then adds into dx.
  if (l.adapter && l.adapter->backward(x, dy, dx, dx_accumulate, ctx)) dx_accumulate = true;
  if (l.fp8) {
    if (dx && dx->defined()) fp8_linear_backward_input(l, dy, *dx, dx_accumulate);
  } else if (dx || l.grad.defined()) {
    linear_backward(x, l.dense_weight(), dy, dx, l.grad.defined() ? &l.grad : nullptr, dx_accumulate);
  }
  if (l.bias_grad.defined()) bias_backward(dy, l.bias_grad);
}

void embedding_layer_forward(const Tensor& ids, const Tensor& table, const TpGroup& tp, Tensor& out) {
  if (!tp.active()) {
    embedding_forward(ids, table, out);
    return;
  }
  // Vocabulary-parallel: each rank looks up its own rows, zeros elsewhere, then the sum.
  embedding_forward_shard(ids, table, table.dim(0) * tp.rank, out);
  tp.comm->sum_partials(out);
}

void embedding_layer_backward(const Tensor& ids, const Tensor& dout, const TpGroup& tp, Tensor& dtable) {
  if (tp.active()) embedding_backward_shard(ids, dout, dtable.dim(0) * tp.rank, dtable);
  else embedding_backward(ids, dout, dtable);
}

double lm_cross_entropy(Tensor& logits, const Tensor& targets, const Tensor& weight, Tensor& losses, bool grad,
                        const TpGroup& tp) {
  // No rank holds the [N, V] logits under TP: each has its vocabulary columns.
  if (tp.active()) return tp.comm->vocab_cross_entropy(logits, targets, weight, &losses, grad);
  cross_entropy(logits, targets, weight, losses, grad);
  // Objective = sum_n weight_n * loss_n, reduced on the host in double.
  const int64_t N = losses.numel();
  const Tensor lh = losses.to_cpu(DType::f64);
  const Tensor wh = weight.device() == Device::cpu ? weight : weight.to_cpu(DType::f32);
  const double* lp = lh.ptr<double>();
  const float* wp = wh.ptr<float>();
  double total = 0;
  for (int64_t i = 0; i < N; ++i) total += static_cast<double>(wp[i]) * lp[i];
  return total;
}

}  // namespace st
