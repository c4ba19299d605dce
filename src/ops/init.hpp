// Initialisation and conversion. Random fills are counter-based: element i of a tensor gets a
// value that depends only on (key, i), so a model initialised on the GPU equals the one
// initialised on the CPU (up to the rounding of the target dtype), independent of threads.
#pragma once

#include <cstdint>
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

}  // namespace st
