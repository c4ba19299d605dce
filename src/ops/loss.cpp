#include "ops/loss.hpp"

#include "ops/cpu/cpu_kernels.hpp"
#include "ops/dispatch.hpp"

namespace st {

void cross_entropy(Tensor& logits, const Tensor& targets, const Tensor& weight, Tensor& losses, bool grad) {
  check_float_args("cross_entropy", {&logits, &losses});
  const int64_t V = logits.dim(-1), N = logits.numel() / V;
  if (targets.dtype() != DType::i32 || targets.numel() < N || weight.dtype() != DType::f32 ||
      weight.numel() < N || losses.numel() < N)
    ST_THROW("cross_entropy: logits ", logits.str(), " targets ", targets.str(), " weight ", weight.str(),
             " losses ", losses.str());
  if (logits.device() == Device::cuda) no_cuda_kernel("cross_entropy");
  ST_DISPATCH_CPU_FLOAT(logits.dtype(), T,
                        cpu::cross_entropy<T>(N, V, logits.ptr<T>(), targets.ptr<int32_t>(),
                                              weight.ptr<float>(), losses.ptr<T>(), grad));
}

}  // namespace st
