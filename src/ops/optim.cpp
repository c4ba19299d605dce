#include "ops/optim.hpp"

#include "ops/cpu/cpu_kernels.hpp"
#include "core/profile.hpp"
#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "ops/dispatch.hpp"
#include "ops/init.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/kernels.cuh"
#endif

namespace st {

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h, Tensor* working) {
  ProfileScope prof("adamw", param.device());
  check_float_args("adamw_update", {&param, &grad, &m, &v});
  const int64_t n = param.numel();
  if (grad.numel() != n || m.numel() != n || v.numel() != n || (working && working->numel() != n))
    ST_THROW("adamw_update: sizes differ");
  const TracedOp traced(OpFamily::optimizer, {&param, &grad, &m, &v, &param, &m, &v, working});
  if (dry_run_active()) return;  // the planner: no compute
  if (param.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::adamw_update(param, grad, m, v, working, h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.step, h.grad_scale);
    return;
#else
    no_cuda_kernel("adamw_update");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(param.dtype(), T,
                        cpu::adamw_update<T>(n, param.ptr<T>(), grad.ptr<T>(), m.ptr<T>(), v.ptr<T>(), h.lr,
                                             h.beta1, h.beta2, h.eps, h.weight_decay, h.step, h.grad_scale));
  if (working && working->defined() && working->data() != param.data()) convert_copy(*working, param);
}

double sum_squares(const Tensor& x) {
  ProfileScope prof("grad_norm", x.device());
  TracedOp traced(OpFamily::optimizer, {&x});
  traced.host_waits();  // the result is read on the host
  if (dry_run_active()) return 0.0;  // the planner: no compute
  if (x.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    return cuda::sum_squares(x);
#else
    no_cuda_kernel("sum_squares");
#endif
  }
  double r = 0;
  ST_DISPATCH_CPU_FLOAT(x.dtype(), T, r = cpu::sum_squares<T>(x.numel(), x.ptr<T>()));
  return r;
}

double sum_squares_total(const std::vector<const Tensor*>& xs) {
  if (xs.empty()) return 0.0;
  ProfileScope prof("grad_norm", xs.front()->device());
  TracedOp traced(OpFamily::optimizer, [&] { double b = 0; for (const Tensor* x : xs) b += tensor_bytes({x}); return b; }(), 0.0);
  traced.host_waits();  // the result is read on the host
  if (dry_run_active()) return 0.0;  // the planner: no compute
  if (xs.front()->device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    return cuda::sum_squares_total(xs);
#else
    no_cuda_kernel("sum_squares_total");
#endif
  }
  double r = 0;
  for (const Tensor* x : xs) r += sum_squares(*x);
  return r;
}

void scale_inplace(Tensor& x, double s) {
  ProfileScope prof("grad_clip_scale", x.device());
  const TracedOp traced(OpFamily::optimizer, {&x, &x});
  if (dry_run_active()) return;  // the planner: no compute
  if (x.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::scale_inplace(x, s);
    return;
#else
    no_cuda_kernel("scale_inplace");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(x.dtype(), T, cpu::scale_inplace<T>(x.numel(), x.ptr<T>(), static_cast<T>(s)));
}

void axpy(double a, const Tensor& x, Tensor& y) {
  check_float_args("axpy", {&x, &y});
  if (x.numel() != y.numel()) ST_THROW("axpy: sizes differ");
  const TracedOp traced(OpFamily::optimizer, {&x, &y, &y});
  if (dry_run_active()) return;  // the planner: no compute
  if (y.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::axpy(a, x, y);
    return;
#else
    no_cuda_kernel("axpy");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(y.dtype(), T, cpu::axpy<T>(x.numel(), static_cast<T>(a), x.ptr<T>(), y.ptr<T>()));
}

}  // namespace st
