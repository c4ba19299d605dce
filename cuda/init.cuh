// Counter-based fills and dtype conversion on the device (see src/ops/init.hpp).
#pragma once

#include <cstdint>
#include <vector>

#include "core/tensor.hpp"

namespace st::cuda {
void fill_normal(Tensor& t, uint64_t key, double mean, double std);
void fill_uniform(Tensor& t, uint64_t key, double lo, double hi);
void fill_constant(Tensor& t, double value);
void convert_copy(Tensor& dst, const Tensor& src);
// Zero bytes over every tensor of the list, in one launch.
void zero_tensors(const std::vector<Tensor*>& ts);
}  // namespace st::cuda
