#include "model/linear.hpp"

#include <algorithm>

#include "ops/matmul.hpp"
#include "quant/nf4.hpp"

namespace st {

DType Linear::dtype() const { return quantized() ? dequant->dtype() : weight.dtype(); }
Device Linear::device() const { return quantized() ? dequant->device() : weight.device(); }

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
  linear_forward(x, l.dense_weight(), y, accumulate, residual);
  if (l.adapter) l.adapter->forward(x, y, ctx);
}

void linear_layer_backward(Linear& l, const Tensor& x, const Tensor& dy, Tensor* dx, const LayerContext& ctx,
                           bool dx_accumulate) {
  if (dx || l.grad.defined())
    linear_backward(x, l.dense_weight(), dy, dx, l.grad.defined() ? &l.grad : nullptr, dx_accumulate);
  if (l.adapter) l.adapter->backward(x, dy, dx, ctx);
}

}  // namespace st
