// Cross-entropy over the vocabulary, fused with its gradient.
#pragma once

#include "core/tensor.hpp"

namespace st {

// logits [N, V]; targets i32 [N] (-1 = ignore); weight f32 [N]: the factor each row's loss has
// in the objective (e.g. mask / number of target tokens in the global batch). losses [N] gets
// each row's unweighted loss (0 for ignored rows). With grad, logits are overwritten in place
// by d(objective)/d(logits).
void cross_entropy(Tensor& logits, const Tensor& targets, const Tensor& weight, Tensor& losses, bool grad);

}  // namespace st
