#include "tests/common/gradcheck.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace st::test {

Tensor random_f64(const Shape& shape, Rng& rng, double scale) {
  Tensor t = Tensor::empty(shape, DType::f64);
  double* p = t.ptr<double>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = rng.uniform(-scale, scale);
  return t;
}

Tensor random_f32(const Shape& shape, Rng& rng, double scale) {
  Tensor t = Tensor::empty(shape, DType::f32);
  float* p = t.ptr<float>();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = static_cast<float>(rng.uniform(-scale, scale));
  return t;
}

GradCheckResult check_gradient(const std::function<double()>& f, Tensor& x, const Tensor& analytic,
                               int max_checks, double h, double floor) {
  GradCheckResult r;
  double* xp = x.ptr<double>();
  const Tensor a64 = analytic.to_cpu(DType::f64);
  const double* ap = a64.ptr<double>();
  const int64_t n = x.numel();
  std::vector<int64_t> idx;
  if (n <= max_checks) {
    for (int64_t i = 0; i < n; ++i) idx.push_back(i);
  } else {
    Rng rng(12345 + static_cast<uint64_t>(n));
    idx.push_back(0);
    idx.push_back(n - 1);
    while (static_cast<int>(idx.size()) < max_checks) idx.push_back(static_cast<int64_t>(rng.below(static_cast<uint64_t>(n))));
  }
  for (int64_t i : idx) {
    const double saved = xp[i];
    xp[i] = saved + h;
    const double fp = f();
    xp[i] = saved - h;
    const double fm = f();
    xp[i] = saved;
    const double numeric = (fp - fm) / (2 * h);
    const double abs_err = std::fabs(ap[i] - numeric);
    const double rel = abs_err / std::max(std::fabs(numeric), floor);
    if (rel > r.max_rel_err) {
      r.max_rel_err = rel;
      r.worst = str("element ", i, ": analytic ", ap[i], " numeric ", numeric);
    }
    r.max_abs_err = std::max(r.max_abs_err, abs_err);
    r.checked++;
  }
  return r;
}

double rel_error(const Tensor& a, const Tensor& b) {
  const Tensor a64 = a.to_cpu(DType::f64), b64 = b.to_cpu(DType::f64);
  if (a64.numel() != b64.numel()) return INFINITY;
  double num = 0, den = 0;
  for (int64_t i = 0; i < a64.numel(); ++i) {
    const double d = a64.ptr<double>()[i] - b64.ptr<double>()[i];
    num += d * d;
    den += b64.ptr<double>()[i] * b64.ptr<double>()[i];
  }
  if (den == 0) return std::sqrt(num);
  return std::sqrt(num / den);
}

double weighted_sum(const Tensor& a, const Tensor& w) {
  double s = 0;
  for (int64_t i = 0; i < a.numel(); ++i) s += a.ptr<double>()[i] * w.ptr<double>()[i];
  return s;
}

}  // namespace st::test
