#include "ops/loss.hpp"

#include "ops/cpu/cpu_kernels.hpp"
#include "core/profile.hpp"
#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "ops/dispatch.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/kernels.cuh"
#endif

namespace st {

void cross_entropy(Tensor& logits, const Tensor& targets, const Tensor& weight, Tensor& losses, bool grad) {
  ProfileScope prof("cross_entropy", logits.device());
  check_stat_dtype("cross_entropy (losses)", logits, losses);
  const int64_t V = logits.dim(-1), N = logits.numel() / V;
  if (targets.dtype() != DType::i32 || targets.numel() < N || weight.dtype() != DType::f32 ||
      weight.numel() < N || losses.numel() < N)
    ST_THROW("cross_entropy: logits ", logits.str(), " targets ", targets.str(), " weight ", weight.str(),
             " losses ", losses.str());
  const TracedOp traced(OpFamily::loss, {&logits, &targets, &weight, &losses});
  if (dry_run_active()) return;  // the planner: no compute
  if (logits.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::cross_entropy(N, V, logits, targets, weight, losses, grad);
    return;
#else
    no_cuda_kernel("cross_entropy");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(logits.dtype(), T,
                        cpu::cross_entropy<T>(N, V, logits.ptr<T>(), targets.ptr<int32_t>(),
                                              weight.ptr<float>(), losses.ptr<T>(), grad));
}

}  // namespace st
