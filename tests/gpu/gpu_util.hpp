// Helpers of the GPU tests: device availability, host <-> device copies with conversion, and
// inputs that are exactly representable in bf16 (so the CPU f64 reference and the GPU see the
// same numbers and only the GPU's arithmetic and output rounding differ).
#pragma once

#include <gtest/gtest.h>

#include "core/rng.hpp"
#include "core/tensor.hpp"
#include "model/linear.hpp"

namespace st::test {

// True when this build has CUDA and a GPU is usable (selects device 0 once).
bool gpu_available();

#define ST_REQUIRE_GPU() \
  if (!::st::test::gpu_available()) GTEST_SKIP() << "no usable CUDA GPU (or a build without CUDA): GPU test skipped"

// A CPU f64 tensor of uniform(-scale, scale) values rounded to bf16.
Tensor random_bf16_values(const Shape& shape, Rng& rng, double scale = 1.0);
// Copy a CPU tensor to the device in dtype dt.
Tensor to_device(const Tensor& cpu, DType dt);
// The same frozen [out, in] layer (an MLP up projection) on the GPU in bf16 (`gpu`) and on the
// CPU in f64 (`cpu`) from one CPU tensor of bf16 values `w`: the two sides of a layer test.
void make_linear_pair(const Tensor& w, Linear& gpu, Linear& cpu);
// Relative L2 error of a (any device/dtype) against ref.
double rel_l2(const Tensor& a, const Tensor& ref);

// Tolerance for results computed in bf16 with f32 accumulation: a bf16 output is rounded to 8
// significant bits (relative error up to 2^-8 = 3.9e-3 per element, about 1e-3 in L2), plus one
// or two intermediate bf16 roundings inside the kernel (P in attention, xhat in RMSNorm).
constexpr double kBf16Tol = 1e-2;

}  // namespace st::test
