// Optimizer and gradient-norm primitives over flat parameter tensors.
#pragma once

#include <vector>

#include "core/tensor.hpp"

namespace st {

struct AdamWHyper {
  double lr = 0, beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0;
  int64_t step = 1;         // 1-based, for bias correction
  double grad_scale = 1.0;  // the gradient is used as grad_scale * grad (clipping folded in)
  uint64_t seed = 0;        // pure-bf16 entries: the stochastic rounding's seed (the run's)
};

// PyTorch torch.optim.AdamW semantics on the master copy `param` (f32 on CUDA; f32/f64 on CPU).
// working, if given, receives the updated value in its own dtype (e.g. the bf16 weights the
// kernels read) in the same pass. A bf16 param (pure bf16) is refused: adamw_update_multi's.
void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h,
                  Tensor* working = nullptr);
// One entry of adamw_update_multi: adamw_update's arguments for one tensor; weight_decay: whether
// h.weight_decay applies to it (else 0).
// A pure-bf16 entry (master_weights = none): param, grad, m and v all bf16 and no working copy;
// the update is computed in f32 and param, m and v are rounded to bf16 stochastically, element e
// with the bits of element first_element + e of the stream (h.seed, h.step, index)
// (ops/adamw_element.hpp stochastic_key): the same bits on the CPU and CUDA.
struct AdamWTensors {
  Tensor* param = nullptr;
  const Tensor* grad = nullptr;
  Tensor* m = nullptr;
  Tensor* v = nullptr;
  Tensor* working = nullptr;
  bool weight_decay = true;
  uint64_t index = 0;  // its place in the optimizer's list (the stochastic rounding's stream)
  uint64_t first_element = 0;  // the stream's element number of its element 0 (ParamRef's)
  bool pure_bf16() const;
};
// adamw_update on every entry, the same arithmetic element for element (the same bits on CUDA),
// as one op: one launch on CUDA per kind of entry (f32 master, pure bf16; a loop over the entries
// on the CPU), traced as one optimizer op whose bytes are the entries' sum.
void adamw_update_multi(const std::vector<AdamWTensors>& ts, const AdamWHyper& h);
double sum_squares(const Tensor& x);      // accumulated in double (f32 partial sums on CUDA); f32, f64, bf16
// Sum of squares over many tensors with one device synchronisation (the global gradient norm).
double sum_squares_total(const std::vector<const Tensor*>& xs);
void scale_inplace(Tensor& x, double s);
void axpy(double a, const Tensor& x, Tensor& y);  // y += a x (bf16: in f32, rounded once)

}  // namespace st
