#include "model/linear.hpp"

#include "ops/matmul.hpp"

namespace st {

void linear_layer_forward(const Linear& l, const Tensor& x, Tensor& y, bool accumulate, const LayerContext& ctx,
                          const Tensor* residual) {
  linear_forward(x, l.weight, y, accumulate, residual);
  if (l.adapter) l.adapter->forward(x, y, ctx);
}

void linear_layer_backward(Linear& l, const Tensor& x, const Tensor& dy, Tensor* dx, const LayerContext& ctx,
                           bool dx_accumulate) {
  linear_backward(x, l.weight, dy, dx, l.grad.defined() ? &l.grad : nullptr, dx_accumulate);
  if (l.adapter) l.adapter->backward(x, dy, dx, ctx);
}

}  // namespace st
