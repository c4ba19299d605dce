// AdamW over a list of trainable parameters: moments in the parameter's precision (f32 master
// copies on the CPU path), decoupled weight decay on matrices only, global-norm clipping.
#pragma once

#include <vector>

#include "model/linear.hpp"
#include "ops/optim.hpp"

namespace st {

class AdamW {
 public:
  AdamW(std::vector<ParamRef> params, double beta1, double beta2, double eps, double weight_decay);
  void zero_grad();
  // Global L2 norm of all gradients; if max_norm > 0 and the norm exceeds it, gradients are
  // scaled by max_norm / norm (as torch.nn.utils.clip_grad_norm_). Returns the norm before.
  double clip_grad_norm(double max_norm);
  void step(double lr);
  int64_t steps_taken() const { return step_; }
  const std::vector<ParamRef>& params() const { return params_; }
  int64_t num_parameters() const;

 private:
  std::vector<ParamRef> params_;
  std::vector<Tensor> m_, v_;
  double beta1_, beta2_, eps_, weight_decay_;
  int64_t step_ = 0;
};

}  // namespace st
