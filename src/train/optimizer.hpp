// AdamW over a list of trainable parameters: moments and master weights in f32 (f64 in reference
// checks). A bf16 parameter with an f32 gradient gets an f32 master copy here, updated in place
// of it, with the bf16 value rewritten in the same kernel; adapters bring their own masters
// (ParamRef::working). A bf16 parameter with a bf16 gradient (master_weights = none: the model
// allocated it so, model/param_table.hpp) trains in pure bf16: no master, m and v in bf16, the
// update computed in f32 and rounded stochastically (ops/optim.hpp), keyed by the seed, the step
// and the parameter's index in this list. Decoupled weight decay on matrices only; global-norm
// clipping. zero_grad and step are one op each over all parameters (zero_tensors,
// adamw_update_multi: one launch each on CUDA, per kind of parameter).
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "model/linear.hpp"
#include "ops/optim.hpp"
#include "parallel/comm.hpp"

namespace st {

class AdamW {
 public:
  // seed: the stochastic rounding's (pure-bf16 parameters only; the run's seed).
  AdamW(std::vector<ParamRef> params, double beta1, double beta2, double eps, double weight_decay, uint64_t seed = 0);
  void zero_grad();
  // Global L2 norm of all gradients; if max_norm > 0 and the norm exceeds it, the next step()
  // uses the gradients scaled by max_norm / norm (as torch.nn.utils.clip_grad_norm_ followed by
  // the update; the scaling is fused into the update). Returns the norm before clipping.
  // With `group`, the parameters are parts of a larger set spread over the group's ranks (tensor
  // parallelism, ZeRO-3): the squared norms of the parameters counted here (ParamRef::tp_sharded,
  // or every parameter on a rank where count_replicated is true) are summed over the group.
  double clip_grad_norm(double max_norm, Comm* group = nullptr, bool count_replicated = true);
  void step(double lr);
  int64_t steps_taken() const { return step_; }
  const std::vector<ParamRef>& params() const { return params_; }
  int64_t num_parameters() const;

  // Checkpoints (train/checkpoint.hpp): every tensor of the optimizer's state that changes as
  // it steps, named "<i>.<param name>.<part>" (part: value, working, master, m, v), in the
  // parameters' order; restoring copies into them in place (handles that alias them stay valid).
  // A pure-bf16 parameter has no master part and bf16 m and v.
  std::vector<std::pair<std::string, Tensor*>> state_tensors();
  void set_steps_taken(int64_t n) { step_ = n; }

 private:
  std::vector<ParamRef> params_;
  std::vector<Tensor> master_;  // f32 copy of a bf16 value (undefined when the value is the master)
  std::vector<Tensor> m_, v_;   // in the gradient's dtype
  double beta1_, beta2_, eps_, weight_decay_;
  uint64_t seed_;
  int64_t step_ = 0;
  double grad_scale_ = 1.0;
};

}  // namespace st
