#include "ops/activation.hpp"

#include "ops/cpu/cpu_kernels.hpp"
#include "core/rng.hpp"
#include "core/profile.hpp"
#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "ops/dispatch.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/kernels.cuh"
#endif

namespace st {

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& h) {
  ProfileScope prof("swiglu_forward", h.device());
  check_float_args("swiglu_forward", {&gate, &up, &h});
  const int64_t n = h.numel();
  if (gate.numel() != n || up.numel() != n) ST_THROW("swiglu_forward: sizes differ");
  const TracedOp traced(OpFamily::activation, {&gate, &up, &h});
  if (dry_run_active()) return;  // the planner: no compute
  if (h.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::swiglu_forward(gate, up, h);
    return;
#else
    no_cuda_kernel("swiglu_forward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(h.dtype(), T, cpu::swiglu_forward<T>(n, gate.ptr<T>(), up.ptr<T>(), h.ptr<T>()));
}

void swiglu_backward(const Tensor& dh, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup,
                     bool accumulate) {
  ProfileScope prof("swiglu_backward", dh.device());
  check_float_args("swiglu_backward", {&dh, &gate, &up, &dgate, &dup});
  const int64_t n = dh.numel();
  if (gate.numel() != n || up.numel() != n || dgate.numel() != n || dup.numel() != n)
    ST_THROW("swiglu_backward: sizes differ");
  const TracedOp traced(OpFamily::activation, {&dh, &gate, &up, &dgate, &dup});
  if (dry_run_active()) return;  // the planner: no compute
  if (dh.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::swiglu_backward(dh, gate, up, dgate, dup, accumulate);
    return;
#else
    no_cuda_kernel("swiglu_backward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(dh.dtype(), T,
                        cpu::swiglu_backward<T>(n, dh.ptr<T>(), gate.ptr<T>(), up.ptr<T>(),
                                                dgate.ptr<T>(), dup.ptr<T>(), accumulate));
}

void geglu_forward(const Tensor& gate, const Tensor& up, Tensor& h) {
  ProfileScope prof("geglu_forward", h.device());
  check_float_args("geglu_forward", {&gate, &up, &h});
  const int64_t n = h.numel();
  if (gate.numel() != n || up.numel() != n) ST_THROW("geglu_forward: sizes differ");
  const TracedOp traced(OpFamily::activation, {&gate, &up, &h});
  if (dry_run_active()) return;  // the planner: no compute
  if (h.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::geglu_forward(gate, up, h);
    return;
#else
    no_cuda_kernel("geglu_forward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(h.dtype(), T, cpu::geglu_forward<T>(n, gate.ptr<T>(), up.ptr<T>(), h.ptr<T>()));
}

void geglu_backward(const Tensor& dh, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup,
                    bool accumulate) {
  ProfileScope prof("geglu_backward", dh.device());
  check_float_args("geglu_backward", {&dh, &gate, &up, &dgate, &dup});
  const int64_t n = dh.numel();
  if (gate.numel() != n || up.numel() != n || dgate.numel() != n || dup.numel() != n)
    ST_THROW("geglu_backward: sizes differ");
  const TracedOp traced(OpFamily::activation, {&dh, &gate, &up, &dgate, &dup});
  if (dry_run_active()) return;  // the planner: no compute
  if (dh.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::geglu_backward(dh, gate, up, dgate, dup, accumulate);
    return;
#else
    no_cuda_kernel("geglu_backward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(dh.dtype(), T,
                        cpu::geglu_backward<T>(n, dh.ptr<T>(), gate.ptr<T>(), up.ptr<T>(), dgate.ptr<T>(),
                                               dup.ptr<T>(), accumulate));
}

void relu_forward(const Tensor& x, Tensor& h) {
  ProfileScope prof("relu_forward", h.device());
  check_float_args("relu_forward", {&x, &h});
  if (x.numel() != h.numel()) ST_THROW("relu_forward: sizes differ");
  const TracedOp traced(OpFamily::activation, {&x, &h});
  if (dry_run_active()) return;  // the planner: no compute
  if (h.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::relu_forward(x, h);
    return;
#else
    no_cuda_kernel("relu_forward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(h.dtype(), T, cpu::relu_forward<T>(h.numel(), x.ptr<T>(), h.ptr<T>()));
}

void relu_backward(const Tensor& dh, const Tensor& x, Tensor& dx, bool accumulate) {
  ProfileScope prof("relu_backward", dh.device());
  check_float_args("relu_backward", {&dh, &x, &dx});
  if (x.numel() != dh.numel() || dx.numel() != dh.numel()) ST_THROW("relu_backward: sizes differ");
  const TracedOp traced(OpFamily::activation, {&dh, &x, &dx});
  if (dry_run_active()) return;  // the planner: no compute
  if (dh.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::relu_backward(dh, x, dx, accumulate);
    return;
#else
    no_cuda_kernel("relu_backward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(dh.dtype(), T, cpu::relu_backward<T>(dh.numel(), dh.ptr<T>(), x.ptr<T>(), dx.ptr<T>(), accumulate));
}

}  // namespace st

namespace st {
void dropout_apply(const Tensor& x, Tensor& out, double p, uint64_t seed, uint64_t stream, bool accumulate) {
  ProfileScope prof("dropout", x.device());
  check_float_args("dropout_apply", {&x, &out});
  if (x.numel() != out.numel()) ST_THROW("dropout_apply: sizes differ");
  const TracedOp traced(OpFamily::activation, {&x, &out});
  if (dry_run_active()) return;  // the planner: no compute
  if (x.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::dropout_apply(x, out, p, counter_key(seed, stream), accumulate);
    return;
#else
    no_cuda_kernel("dropout_apply");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(x.dtype(), T,
                        cpu::dropout_apply<T>(x.numel(), x.ptr<T>(), out.ptr<T>(), p, seed, stream, accumulate));
}
}  // namespace st
