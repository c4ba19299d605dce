#include "model/linear.hpp"

#include <algorithm>

#include "model/fp8_base.hpp"
#include "ops/bias.hpp"
#include "ops/embedding.hpp"
#include "ops/loss.hpp"
#include "ops/matmul.hpp"
#include "quant/nf4.hpp"

namespace st {

bool Linear::fp8_stored() const { return fp8 && !fp8->from_nf4; }
DType Linear::dtype() const {
  if (fp8_stored()) return fp8->dtype;
  return quantized() ? dequant->dtype() : weight.dtype();
}
Device Linear::device() const {
  if (fp8_stored()) return fp8->w.device();
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

namespace {

bool row_parallel(const Linear& l) { return l.tp_mode == TpMode::row && l.tp.active(); }

// The base part of a layer's forward, after its adapter: y (+)= x W^T (+ b), then the sum over
// the group of a row-parallel layer. acc and res: what the GEMM adds (y's content, a residual).
void base_forward(const Linear& l, const Tensor& x, Tensor& y, bool acc, const Tensor* res) {
  const bool row = row_parallel(l);
  if (l.fp8) fp8_linear_forward(l, x, y, acc || res ? 1.0 : 0.0, res);
  else linear_forward(x, l.dense_weight(), y, acc, res);
  if (l.bias.defined() && (!row || l.tp.rank == 0)) bias_add(y, l.bias);
  if (row) l.tp.comm->sum_partials(y);
}

// The base part of a layer's backward, after its adapter: dx (+)= dy W, dW += dy^T x, the bias
// gradient.
void base_backward(Linear& l, const Tensor& x, const Tensor& dy, Tensor* dx, bool dx_accumulate) {
  if (l.fp8) {
    if (dx && dx->defined()) fp8_linear_backward_input(l, dy, *dx, dx_accumulate);
  } else if (dx || l.grad.defined()) {
    linear_backward(x, l.dense_weight(), dy, dx, l.grad.defined() ? &l.grad : nullptr, dx_accumulate);
  }
  if (l.bias_grad.defined()) bias_backward(dy, l.bias_grad);
}

}  // namespace

void linear_layer_forward(const Linear& l, const Tensor& x, Tensor& y, bool accumulate, const LayerContext& ctx,
                          const Tensor* residual) {
  // A row-parallel layer's ranks each hold a partial sum: what enters once (y's prior content,
  // the residual, the bias) is added on TP rank 0 only, and the sum over the group completes it
  // (Megatron's g).
  const bool once_here = !row_parallel(l) || l.tp.rank == 0;
  const Tensor* res = once_here ? residual : nullptr;
  bool acc = accumulate && once_here;
  // The adapter first (its rank-r update writes y, taking y's prior content or the residual
  // along), then the base GEMM adds into y in its epilogue.
  if (l.adapter && l.adapter->forward(x, y, acc, res, ctx)) {
    acc = true;
    res = nullptr;
  }
  base_forward(l, x, y, acc, res);
}

void linear_layer_backward(Linear& l, const Tensor& x, const Tensor& dy, Tensor* dx, const LayerContext& ctx,
                           bool dx_accumulate, LowRankTerm* dx_term) {
  if (dx_term) {
    *dx_term = LowRankTerm{};
    if (l.adapter && dx && dx->defined()) {
      *dx_term = l.adapter->backward_leaving_dx_term(x, dy, ctx);
      if (dx_term->defined()) return base_backward(l, x, dy, dx, dx_accumulate);
    }
  }
  // As in the forward: the adapter's input gradient first, the base GEMM then adds into dx.
  if (l.adapter && l.adapter->backward(x, dy, dx, dx_accumulate, ctx)) dx_accumulate = true;
  base_backward(l, x, dy, dx, dx_accumulate);
}

void LinearAdapter::add_rotated(const Tensor& x, Tensor& y, const OutputRope& rope) {
  (void)x, (void)y, (void)rope;
  ST_THROW("add_rotated: this adapter defers no layer");
}

LowRankTerm LinearAdapter::low_rank_term(const Tensor& x) {
  (void)x;
  ST_THROW("low_rank_term: this adapter defers no layer");
}
LowRankTerm LinearAdapter::left_out_term(const Tensor& x) const {
  (void)x;
  return LowRankTerm{};
}
LowRankTerm LinearAdapter::backward_leaving_dx_term(const Tensor& x, const Tensor& dy, const LayerContext& ctx) {
  (void)x, (void)dy, (void)ctx;
  return LowRankTerm{};
}

bool& lora_rotated_after_base_on_cpu() {
  static bool on = false;
  return on;
}

void linear_group_forward(std::initializer_list<const Linear*> layers_in, const Tensor& x,
                          std::initializer_list<Tensor*> ys_in, const LayerContext& ctx, const OutputRope* rope,
                          std::vector<LowRankTerm>* terms) {
  const std::vector<const Linear*> layers(layers_in);
  const std::vector<Tensor*> ys(ys_in);
  if (layers.size() != ys.size()) ST_THROW("linear_group_forward: ", layers.size(), " layers, ", ys.size(), " outputs");
  if (rope && (rope->rotate.size() != layers.size() || !rope->tables))
    ST_THROW("linear_group_forward: RoPE for ", rope->rotate.size(), " of ", layers.size(), " outputs");
  auto rotates = [&](size_t i) { return rope && rope->rotate[i]; };
  if (terms) terms->assign(layers.size(), LowRankTerm{});
  // The adapters that run together first, each writing its layer's output; then every base GEMM
  // adds into what its adapter wrote. A layer no group hook took on runs on its own. Deferred
  // outputs go base first instead: RoPE-rotated ones where the adapter's term and the rotation
  // are one pass (CUDA with SHARDTUNE_SKINNY's rope kind; the CPU in tests), then add_rotated;
  // with `terms`, the others, whose terms the consumer adds.
  const bool rope_after = matmul_add_rope_one_pass(x.device()) ||
                          (x.device() == Device::cpu && lora_rotated_after_base_on_cpu());
  std::vector<bool> covered(layers.size(), false), deferred(layers.size(), false);
  for (size_t i = 0; i < layers.size(); ++i) deferred[i] = rotates(i) ? rope_after : terms != nullptr;
  for (size_t i = 0; i < layers.size(); ++i)
    if (!covered[i] && layers[i]->adapter) layers[i]->adapter->group_forward(layers, x, ys, ctx, covered, &deferred);
  for (size_t i = 0; i < layers.size(); ++i) {
    if (!covered[i]) {
      linear_layer_forward(*layers[i], x, *ys[i], false, ctx);
      if (rotates(i)) rope_forward(*ys[i], rope->B, rope->T, *rope->tables, rope->positions);
      continue;
    }
    if (row_parallel(*layers[i]))  // its adapter term would enter once per rank
      ST_THROW("linear_group_forward: ", layers[i]->name, " is row-parallel; a group hook cannot take it on");
    if (deferred[i]) {
      base_forward(*layers[i], x, *ys[i], false, nullptr);
      if (rotates(i)) layers[i]->adapter->add_rotated(x, *ys[i], *rope);
      else (*terms)[i] = layers[i]->adapter->low_rank_term(x);
      continue;
    }
    base_forward(*layers[i], x, *ys[i], true, nullptr);
    if (rotates(i)) rope_forward(*ys[i], rope->B, rope->T, *rope->tables, rope->positions);
  }
}

std::vector<LowRankTerm> linear_left_out_terms(std::initializer_list<const Linear*> layers, const Tensor& x) {
  std::vector<LowRankTerm> out;
  for (const Linear* l : layers) out.push_back(l->adapter ? l->adapter->left_out_term(x) : LowRankTerm{});
  return out;
}

void linear_group_backward(std::initializer_list<Linear*> layers_in, const Tensor& x,
                           std::initializer_list<const Tensor*> dys_in, Tensor* dx, const LayerContext& ctx,
                           bool dx_accumulate) {
  const std::vector<Linear*> layers(layers_in);
  const std::vector<const Tensor*> dys(dys_in);
  if (layers.size() != dys.size()) ST_THROW("linear_group_backward: ", layers.size(), " layers, ", dys.size(), " gradients");
  const bool writes_dx = dx && dx->defined();
  bool acc = dx_accumulate;
  std::vector<bool> covered(layers.size(), false);
  for (size_t i = 0; i < layers.size(); ++i)
    if (!covered[i] && layers[i]->adapter &&
        layers[i]->adapter->group_backward(layers, x, dys, dx, acc, ctx, covered))
      acc = true;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (covered[i]) base_backward(*layers[i], x, *dys[i], dx, acc);
    else linear_layer_backward(*layers[i], x, *dys[i], dx, ctx, acc);
    if (writes_dx) acc = true;
  }
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
  return weighted_loss_sum(losses, weight);
}

double weighted_loss_sum(const Tensor& losses, const Tensor& weight) {
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
