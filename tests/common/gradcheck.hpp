// Finite-difference gradient checks in double precision.
//
// The CPU kernels are instantiated for f64, so the analytic backward can be compared with
// central differences (f(x+h) - f(x-h)) / 2h at h = 1e-5: truncation error O(h^2 f''') ~ 1e-10
// and rounding error O(eps_f64 |f| / h) ~ 1e-11, so agreement to ~1e-7 relative is expected of a
// correct backward, and any indexing or sign mistake shows up as O(1).
#pragma once

#include <functional>
#include <string>

#include "core/rng.hpp"
#include "core/tensor.hpp"

namespace st::test {

// A CPU f64 tensor of the shape filled with uniform(-scale, scale).
Tensor random_f64(const Shape& shape, Rng& rng, double scale = 1.0);
Tensor random_f32(const Shape& shape, Rng& rng, double scale = 1.0);

struct GradCheckResult {
  double max_abs_err = 0;   // max |analytic - numeric|
  double max_rel_err = 0;   // max |analytic - numeric| / max(|numeric|, floor)
  int checked = 0;
  std::string worst;        // description of the worst element
};

// Compare analytic (same shape as x) with central differences of f over x's elements
// (at most max_checks of them, chosen at random but always including the first and last).
GradCheckResult check_gradient(const std::function<double()>& f, Tensor& x, const Tensor& analytic,
                               int max_checks = 64, double h = 1e-5, double floor = 1e-3);

// Relative error ||a - b|| / ||b|| over two tensors (any float dtype, any device).
double rel_error(const Tensor& a, const Tensor& b);
// Sum of a[i] * w[i] (f64 tensors), the scalar objective used to test backward passes.
double weighted_sum(const Tensor& a, const Tensor& w);

}  // namespace st::test
