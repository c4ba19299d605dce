// The pure-bf16 AdamW update on the CPU (master_weights = none), the reference of cuda/optim.cu's
// bf16 kernel. Compiled with -ffp-contract=off (Makefile): adamw::update_f32_exact spells out
// its roundings, and g++ must not fuse any other product into an fma, so that the f32 result,
// and with it the stochastic rounding, are CUDA's bits.
#include "core/dtype.hpp"
#include "ops/adamw_element.hpp"
#include "ops/cpu/cpu_kernels.hpp"

namespace st::cpu {

void adamw_update_bf16(int64_t n, uint16_t* param, const uint16_t* grad, uint16_t* m, uint16_t* v, double lr,
                       double beta1, double beta2, double eps, double weight_decay, int64_t step, double grad_scale,
                       uint64_t key) {
  const adamw::Coef<float> c = adamw::coefficients<float>(lr, beta1, beta2, eps, weight_decay, step, grad_scale);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i)
    adamw::update_bf16(param[i], grad[i], m[i], v[i], c.decay, c, splitmix64(key + static_cast<uint64_t>(i)));
}

double sum_squares_bf16(int64_t n, const uint16_t* x) {
  double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const double d = bf16_to_f32(x[i]);
    s += d * d;
  }
  return s;
}

}  // namespace st::cpu
