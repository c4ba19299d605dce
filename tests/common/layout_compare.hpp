// The MPI tests' comparison of a parallel layout's model (tensor parallelism, ZeRO-3, on CPU
// ranks in f64) with the same model on one rank, computed on every rank: the two runs differ only
// in the order of floating-point sums. Checks are non-fatal (EXPECT_*), so every rank makes the
// same collective calls whatever fails.
#pragma once

#include <functional>
#include <vector>

#include "core/tensor.hpp"
#include "model/linear.hpp"
#include "model/param_table.hpp"
#include "model/tp_plan.hpp"
#include "parallel/runtime.hpp"

namespace st::test {

// max |a - b| / max |b| over f64 copies; infinite when the shapes differ or a NaN stands where
// the other has a number.
double max_rel_diff(const Tensor& a, const Tensor& b);

// Every rank of the world as one TP group.
TpGroup world_tp();
// The world's ranks as a tp x dp grid with its own communicators; its TP group.
Runtime world_grid(int tp);
TpGroup grid_tp(const Runtime& grid);

// Two AdamW steps (lr 1e-2, betas 0.9 / 0.999, eps 1e-8, weight decay 0.1) of the one-rank model
// (`ref`: its parameters; ref_loss(step): a forward and backward on the whole batch) and of the
// layout (`got`: ZeRO-3's parameters; local_loss(step): on this rank's rows, summed over `dp`):
// the losses within `tol` (relative) at each step.
void expect_adamw_steps_match(const std::vector<ParamRef>& ref, const std::vector<ParamRef>& got, Comm& dp,
                              const std::function<double(int)>& ref_loss, const std::function<double(int)>& local_loss,
                              double tol);

// Slot by slot: the same names, the same full weights (exactly) and the gradients gathered over
// `tp` within `tol` of the one-rank model's. Returns the worst gradient.
double expect_gathered_grads_match(const std::vector<WeightSlot>& ref, const std::vector<WeightSlot>& got,
                                   const TpGroup& tp, double tol);
// The weights gathered over `tp` within `tol` of the one-rank model's. Returns the worst.
double expect_weights_match(const std::vector<WeightSlot>& ref, const std::vector<WeightSlot>& got, const TpGroup& tp,
                            double tol);

// LoRA adapters (r 2, alpha 4, the same seed on every rank) on every linear but the head; those
// of each of `input_groups` (the family's layers that read the same input) joined into a group
// (lora_join_groups), the others each on its own.
void attach_test_lora(const std::vector<Linear*>& linears, const std::vector<std::vector<Linear*>>& input_groups = {});

enum class LoraPart {
  masters,   // A and B (B trained away from zero)
  gradients  // dA and dB
};
// The LoRA adapters of the layout's linears, gathered over `tp` by their sharding (A split with
// a row-parallel layer's input, B with a column-parallel layer's output), within `tol` of the
// one-rank model's. Returns the worst.
double expect_lora_match(const std::vector<Linear*>& ref, const std::vector<Linear*>& got, const TpGroup& tp,
                         LoraPart part, double tol);

}  // namespace st::test
