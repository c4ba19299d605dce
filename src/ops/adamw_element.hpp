// The AdamW update of one element (torch.optim.AdamW semantics: decoupled weight decay, bias
// correction), shared by the CPU loop (ops/cpu/elementwise_cpu.cpp) and every CUDA AdamW kernel
// (cuda/optim.cu: one tensor, scalar and 4-wide; many tensors in one launch), so that all of
// them do the same operations in the same order: the single- and multi-tensor CUDA updates give
// the same bits.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define ST_ADAMW_HD __host__ __device__ __forceinline__
#else
#define ST_ADAMW_HD inline
#endif

namespace st::adamw {

// The per-step constants in the element type T (f32 on CUDA; f32 or f64 on the CPU), rounded
// once from their double values. decay = 1 - lr * weight_decay applies to the tensors that take
// weight decay; the others use 1 (exactly what weight_decay = 0 gives).
template <typename T>
struct Coef {
  T decay, step_size, b1, b2, inv_bc2_sqrt, eps, grad_scale;
};

template <typename T>
inline Coef<T> coefficients(double lr, double beta1, double beta2, double eps, double weight_decay, int64_t step,
                            double grad_scale) {
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step)));
  Coef<T> c;
  c.decay = static_cast<T>(1.0 - lr * weight_decay);
  c.step_size = static_cast<T>(lr / bc1);
  c.b1 = static_cast<T>(beta1);
  c.b2 = static_cast<T>(beta2);
  c.inv_bc2_sqrt = static_cast<T>(1.0 / bc2_sqrt);
  c.eps = static_cast<T>(eps);
  c.grad_scale = static_cast<T>(grad_scale);
  return c;
}

// One element: p (the master value), its gradient g, moments m and v updated in place; returns
// the new value. `decay` is c.decay or 1 (see Coef).
//
// On the device (f32) every rounding is spelled out with intrinsics, which the compiler never
// fuses into an FMA or reorders: the result cannot depend on the kernel this is inlined into
// (nvcc contracts a * b + c * d into either fma(a, b, c * d) or fma(c, d, a * b), depending on
// the code around it). The roundings are those nvcc chose for the per-tensor kernels before
// they shared this function, so the bits are unchanged. The CPU keeps the plain expressions
// (the compiler's contraction under -march, unchanged by this function too).
template <typename T>
ST_ADAMW_HD T update(T p, T g, T& m, T& v, T decay, const Coef<T>& c) {
#if defined(__CUDA_ARCH__)
  const float gs = __fmul_rn(g, c.grad_scale);
  const float pd = __fmul_rn(p, decay);
  m = __fmaf_rn(__fsub_rn(1.0f, c.b1), gs, __fmul_rn(m, c.b1));
  v = __fmaf_rn(gs, __fmul_rn(__fsub_rn(1.0f, c.b2), gs), __fmul_rn(v, c.b2));
  const float denom = __fmaf_rn(__fsqrt_rn(v), c.inv_bc2_sqrt, c.eps);
  return __fsub_rn(pd, __fdiv_rn(__fmul_rn(m, c.step_size), denom));
#else
  const T gs = g * c.grad_scale;
  p *= decay;
  m = c.b1 * m + (T(1) - c.b1) * gs;
  v = c.b2 * v + (T(1) - c.b2) * gs * gs;
  const T denom = std::sqrt(v) * c.inv_bc2_sqrt + c.eps;
  p -= c.step_size * m / denom;
  return p;
#endif
}

}  // namespace st::adamw
