#include "ops/norm.hpp"

#include "ops/cpu/cpu_kernels.hpp"
#include "core/profile.hpp"
#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "ops/dispatch.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/kernels.cuh"
#endif

namespace st {

void rmsnorm_forward(const Tensor& x, const Tensor& w, double eps, Tensor& y, Tensor& rstd) {
  ProfileScope prof("rmsnorm_forward", x.device());
  check_float_args("rmsnorm_forward", {&x, &w, &y});
  check_stat_dtype("rmsnorm_forward", x, rstd);
  const int64_t C = w.numel(), N = x.numel() / C;
  if (x.dim(-1) != C || y.numel() != x.numel() || rstd.numel() < N)
    ST_THROW("rmsnorm_forward: x ", x.str(), " w ", w.str(), " y ", y.str(), " rstd ", rstd.str());
  const TracedOp traced(OpFamily::norm, {&x, &w, &y, &rstd});
  if (dry_run_active()) return;  // the planner: no compute
  if (x.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::rmsnorm_forward(N, C, x, w, static_cast<float>(eps), y, rstd);
    return;
#else
    no_cuda_kernel("rmsnorm_forward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(x.dtype(), T,
                        cpu::rmsnorm_forward<T>(N, C, x.ptr<T>(), w.ptr<T>(), static_cast<T>(eps),
                                                y.ptr<T>(), rstd.ptr<T>()));
}

void rmsnorm_backward(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor* dw) {
  ProfileScope prof("rmsnorm_backward", x.device());
  const Tensor* dwp = (dw && dw->defined()) ? dw : nullptr;
  check_float_args("rmsnorm_backward", {&dy, &x, &w, &dx});
  check_stat_dtype("rmsnorm_backward", x, rstd);
  if (dwp) check_grad_dtype("rmsnorm_backward (weight gradient)", x, *dwp);
  const int64_t C = w.numel(), N = x.numel() / C;
  if (dy.numel() != x.numel() || dx.numel() != x.numel() || (dwp && dwp->numel() != C))
    ST_THROW("rmsnorm_backward: shapes disagree (x ", x.str(), ", dy ", dy.str(), ", dx ", dx.str(), ")");
  const TracedOp traced(OpFamily::norm, {&dy, &x, &w, &rstd, &dx, &dx});
  if (dry_run_active()) return;  // the planner: no compute
  if (x.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::rmsnorm_backward(N, C, dy, x, w, rstd, dx, dw);
    return;
#else
    no_cuda_kernel("rmsnorm_backward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(x.dtype(), T,
                        cpu::rmsnorm_backward<T>(N, C, dy.ptr<T>(), x.ptr<T>(), w.ptr<T>(), rstd.ptr<T>(),
                                                 dx.ptr<T>(), dwp ? dwp->ptr<T>() : nullptr));
}

}  // namespace st
