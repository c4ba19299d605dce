#include "ops/optim.hpp"

#include "ops/cpu/cpu_kernels.hpp"
#include "ops/dispatch.hpp"

namespace st {

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h) {
  check_float_args("adamw_update", {&param, &grad, &m, &v});
  const int64_t n = param.numel();
  if (grad.numel() != n || m.numel() != n || v.numel() != n) ST_THROW("adamw_update: sizes differ");
  if (param.device() == Device::cuda) no_cuda_kernel("adamw_update");
  ST_DISPATCH_CPU_FLOAT(param.dtype(), T,
                        cpu::adamw_update<T>(n, param.ptr<T>(), grad.ptr<T>(), m.ptr<T>(), v.ptr<T>(), h.lr,
                                             h.beta1, h.beta2, h.eps, h.weight_decay, h.step));
}

double sum_squares(const Tensor& x) {
  if (x.device() == Device::cuda) no_cuda_kernel("sum_squares");
  double r = 0;
  ST_DISPATCH_CPU_FLOAT(x.dtype(), T, r = cpu::sum_squares<T>(x.numel(), x.ptr<T>()));
  return r;
}

void scale_inplace(Tensor& x, double s) {
  if (x.device() == Device::cuda) no_cuda_kernel("scale_inplace");
  ST_DISPATCH_CPU_FLOAT(x.dtype(), T, cpu::scale_inplace<T>(x.numel(), x.ptr<T>(), static_cast<T>(s)));
}

void axpy(double a, const Tensor& x, Tensor& y) {
  check_float_args("axpy", {&x, &y});
  if (x.numel() != y.numel()) ST_THROW("axpy: sizes differ");
  if (y.device() == Device::cuda) no_cuda_kernel("axpy");
  ST_DISPATCH_CPU_FLOAT(y.dtype(), T, cpu::axpy<T>(x.numel(), static_cast<T>(a), x.ptr<T>(), y.ptr<T>()));
}

}  // namespace st
