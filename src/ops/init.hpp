// Initialisation and conversion. Random fills are counter-based: element i of a tensor gets a
// value that depends only on (key, i), so a model initialised on the GPU equals the one
// initialised on the CPU (up to the rounding of the target dtype), independent of threads.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "core/tensor.hpp"

namespace st {

// Normal(mean, std) by Box-Muller from the uniforms of (key, 2i) and (key, 2i+1), in double.
void fill_normal(Tensor& t, uint64_t key, double mean, double std);
// Uniform[lo, hi) from the uniform of (key, i), in double.
void fill_uniform(Tensor& t, uint64_t key, double lo, double hi);
void fill_constant(Tensor& t, double value);
// dst = src converted (f64, f32, bf16 in any combination; same element count and device).
void convert_copy(Tensor& dst, const Tensor& src);
// Every tensor of the list set to zero bytes (one device, any dtypes, views included), as one
// op: one launch on CUDA (a table of the ranges uploaded once per distinct list), a memset per
// tensor on the CPU; traced as one copy op of the bytes written, as Tensor::zero_ is.
void zero_tensors(const std::vector<Tensor*>& ts);
// A parameter gradient that an op's CUDA kernel accumulates in f32 (atomics or partial sums: the
// embedding table, a bias, T5's relative-bias table): add(g) with g = grad itself, or, for a
// bf16 gradient on CUDA (master_weights = none), a zeroed f32 scratch that is then added into
// grad with one rounding per element (the scratch is the dry run's workspace too).
void accumulate_grad_in_f32(Tensor& grad, const std::function<void(Tensor&)>& add);

}  // namespace st
