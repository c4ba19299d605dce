// Counter-based fills and dtype conversion on the device (see src/ops/init.hpp).
#pragma once

#include <cstdint>

#include "core/tensor.hpp"

namespace st::cuda {
void fill_normal(Tensor& t, uint64_t key, double mean, double std);
void fill_uniform(Tensor& t, uint64_t key, double lo, double hi);
void fill_constant(Tensor& t, double value);
void convert_copy(Tensor& dst, const Tensor& src);
}  // namespace st::cuda
