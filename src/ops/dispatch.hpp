// Dispatch helpers for the op interface: pick the kernel by device and element type.
// CPU kernels exist for f32 (training) and f64 (reference checks); CUDA kernels for bf16/f32
// are added in cuda/ and selected where SHARDTUNE_CUDA is defined.
#pragma once

#include "core/tensor.hpp"

#define ST_DISPATCH_CPU_FLOAT(dtype, T, ...)                                              \
  switch (dtype) {                                                                        \
    case ::st::DType::f32: { using T = float; __VA_ARGS__; break; }                       \
    case ::st::DType::f64: { using T = double; __VA_ARGS__; break; }                      \
    default: ST_THROW("no CPU kernel for dtype ", ::st::dtype_name(dtype), " in ", __func__); \
  }

namespace st {

// All tensors on one device with one float dtype; throws naming the op otherwise.
inline void check_float_args(const char* op, std::initializer_list<const Tensor*> ts) {
  const Tensor* first = nullptr;
  for (const Tensor* t : ts) {
    if (!t || !t->defined()) continue;
    if (!first) { first = t; continue; }
    if (t->device() != first->device() || t->dtype() != first->dtype())
      ST_THROW(op, ": mixed tensors ", first->str(), " and ", t->str());
  }
}

// Precision rules of the op layer. CPU: every float tensor of a call has one dtype (f32, or f64
// in reference checks). CUDA: activations and weights are bf16 (f32 accepted), while norm
// statistics, attention log-sum-exp and losses are f32, and the gradients of trainable
// parameters f32 (beside f32 master weights) or bf16 (master_weights = none).
inline void check_stat_dtype(const char* op, const Tensor& main, const Tensor& stat) {
  const DType want = main.device() == Device::cuda ? DType::f32 : main.dtype();
  if (stat.dtype() != want || stat.device() != main.device())
    ST_THROW(op, ": ", stat.str(), " must be ", dtype_name(want), " on ", device_name(main.device()), " (with ", main.str(), ")");
}

// The gradient of a trainable parameter: on CUDA f32 (beside f32 master weights) or bf16
// (master_weights = none: pure bf16); on the CPU the op's dtype.
inline void check_grad_dtype(const char* op, const Tensor& main, const Tensor& grad) {
  const bool cuda = main.device() == Device::cuda;
  const bool ok = grad.device() == main.device() &&
                  (cuda ? grad.dtype() == DType::f32 || grad.dtype() == DType::bf16 : grad.dtype() == main.dtype());
  if (!ok)
    ST_THROW(op, ": ", grad.str(), " must be ", cuda ? "f32 or bf16" : dtype_name(main.dtype()), " on ",
             device_name(main.device()), " (with ", main.str(), ")");
}

[[noreturn]] inline void no_cuda_kernel(const char* op) {
  ST_THROW(op, ": tensors on CUDA but no CUDA kernel is available in this build");
}

}  // namespace st
