// The AdamW update of one element (torch.optim.AdamW semantics: decoupled weight decay, bias
// correction), shared by the CPU loop (ops/cpu/elementwise_cpu.cpp) and every CUDA AdamW kernel
// (cuda/optim.cu: one tensor, scalar and 4-wide; many tensors in one launch), so that all of
// them do the same operations in the same order: the single- and multi-tensor CUDA updates give
// the same bits (a NaN's payload aside: which NaN an invalid operation makes is the hardware's).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "core/dtype.hpp"
#include "core/hd.hpp"
#include "core/rng.hpp"

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
ST_HD T update(T p, T g, T& m, T& v, T decay, const Coef<T>& c) {
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

// ---------------------------------------------------------------- pure bf16 (master_weights = none)
// A bf16 parameter without an f32 master: value, gradient and moments are bf16 (raw bits here),
// the update is computed in f32 and its results rounded stochastically, so that an update below
// half a bf16 ulp of the value moves it with the right probability instead of never.

// update<float>'s operations with every rounding spelled out on the host too (an fma where the
// device has __fmaf_rn, plain operations elsewhere): the same f32 bits on the CPU and CUDA, which
// the stochastic rounding after it needs. The CPU kernel that inlines it is compiled with
// -ffp-contract=off (Makefile), so that g++ fuses no other product into an fma.
ST_HD float update_f32_exact(float p, float g, float& m, float& v, float decay, const Coef<float>& c) {
#if defined(__CUDA_ARCH__)
  return update<float>(p, g, m, v, decay, c);
#else
  const float gs = g * c.grad_scale;
  const float pd = p * decay;
  m = std::fma(1.0f - c.b1, gs, m * c.b1);
  v = std::fma(gs, (1.0f - c.b2) * gs, v * c.b2);
  const float denom = std::fma(std::sqrt(v), c.inv_bc2_sqrt, c.eps);
  return pd - (m * c.step_size) / denom;
#endif
}

// x rounded to bf16 stochastically with the uniform 16-bit integer r: r is added to the 16 bits
// that bf16 drops and the sum truncated, so |x| rounds away from zero with probability exactly
// (its dropped bits) / 2^16 and the expected result is x (unbiased; x already in bf16: unchanged,
// r never carries). A carry out of the mantissa moves to the next binade, past bf16's largest
// finite value to inf (as round-to-nearest does above it). NaN stays a (quiet) NaN, inf stays inf.
ST_HD uint16_t f32_to_bf16_stochastic(float x, uint32_t r) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(x);
#else
  std::memcpy(&u, &x, 4);
#endif
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + (r & 0xffffu)) >> 16);
}

// The key of one tensor's rounding at one step: counter_key(counter_key(seed, step), tensor),
// tensor = its index in the optimizer's parameter list. Element e's random bits are then
// splitmix64(key + first + e) (the SplitMix64 sequence started at the key, as core/rng.hpp's
// counter draws; first = 0 but for a ZeRO-3 shard, whose element 0 is element rank x shard of
// its group: ParamRef::first_element): bits 0-15 round the value, 16-31 m, 32-47 v. A pure
// function of (seed, step, tensor, element): any device, thread order, launch shape or number
// of ZeRO-3 ranks gives the same bits.
ST_HD uint64_t stochastic_key(uint64_t seed, int64_t step, uint64_t tensor) {
  return counter_key(counter_key(seed, static_cast<uint64_t>(step)), tensor);
}

// One element: p, g, m, v bf16 bits (p, m, v updated in place) with the element's random bits.
// m and v are rounded stochastically too: with beta2 = 0.999 a step changes v by 1e-3 of itself,
// below half a bf16 ulp (2^-9), so round-to-nearest would hold v where it is.
ST_HD void update_bf16(uint16_t& p, uint16_t g, uint16_t& m, uint16_t& v, float decay, const Coef<float>& c,
                             uint64_t bits) {
  float mf = bf16_to_f32(m), vf = bf16_to_f32(v);
  const float pf = update_f32_exact(bf16_to_f32(p), bf16_to_f32(g), mf, vf, decay, c);
  p = f32_to_bf16_stochastic(pf, static_cast<uint32_t>(bits));
  m = f32_to_bf16_stochastic(mf, static_cast<uint32_t>(bits >> 16));
  v = f32_to_bf16_stochastic(vf, static_cast<uint32_t>(bits >> 32));
}

}  // namespace st::adamw
