#include "ops/bias.hpp"

#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "core/profile.hpp"
#include "ops/cpu/cpu_kernels.hpp"
#include "ops/dispatch.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/kernels.cuh"
#endif

namespace st {

namespace {

int64_t columns_of(const char* op, const Tensor& y, const Tensor& b) {
  const int64_t N = b.numel();
  if (b.ndim() != 1 || y.dim(-1) != N) ST_THROW(op, ": bias ", b.str(), " does not match ", y.str());
  return N;
}

}  // namespace

void bias_add(Tensor& y, const Tensor& b) {
  ProfileScope prof("bias", y.device());
  check_float_args("bias_add", {&y, &b});
  const int64_t N = columns_of("bias_add", y, b), M = y.numel() / N;
  const TracedOp traced(OpFamily::elementwise, {&y, &y, &b});
  if (dry_run_active()) return;  // the planner: no compute
  if (y.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::bias_add(M, N, y, b);
    return;
#else
    no_cuda_kernel("bias_add");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(y.dtype(), T, cpu::bias_add<T>(M, N, y.ptr<T>(), b.ptr<T>()));
}

void bias_backward(const Tensor& dy, Tensor& db) {
  ProfileScope prof("bias", dy.device());
  check_grad_dtype("bias_backward (bias gradient)", dy, db);
  const int64_t N = columns_of("bias_backward", dy, db), M = dy.numel() / N;
  // The CUDA kernel sums each column in f32 and adds it once into db (f32, or bf16 under
  // master_weights = none); the CPU's db has dy's dtype.
  const TracedOp traced(OpFamily::elementwise, {&dy, &db});
  if (dry_run_active()) return;  // the planner: no compute
  if (dy.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::bias_backward(M, N, dy, db);
    return;
#else
    no_cuda_kernel("bias_backward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(dy.dtype(), T, cpu::bias_backward<T>(M, N, dy.ptr<T>(), db.ptr<T>()));
}

}  // namespace st
