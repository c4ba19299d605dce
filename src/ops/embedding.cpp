#include "ops/embedding.hpp"

#include "ops/cpu/cpu_kernels.hpp"
#include "ops/dispatch.hpp"

namespace st {

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) {
  check_float_args("embedding_forward", {&table, &out});
  const int64_t V = table.dim(0), C = table.dim(-1), N = ids.numel();
  if (ids.dtype() != DType::i32 || out.numel() < N * C) ST_THROW("embedding_forward: ids ", ids.str(), " out ", out.str());
  if (table.device() == Device::cuda) no_cuda_kernel("embedding_forward");
  ST_DISPATCH_CPU_FLOAT(table.dtype(), T,
                        cpu::embedding_forward<T>(N, C, V, ids.ptr<int32_t>(), table.ptr<T>(), out.ptr<T>()));
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  check_float_args("embedding_backward", {&dout, &dtable});
  const int64_t C = dtable.dim(-1), N = ids.numel();
  if (ids.dtype() != DType::i32 || dout.numel() < N * C) ST_THROW("embedding_backward: ids ", ids.str(), " dout ", dout.str());
  if (dtable.device() == Device::cuda) no_cuda_kernel("embedding_backward");
  ST_DISPATCH_CPU_FLOAT(dtable.dtype(), T,
                        cpu::embedding_backward<T>(N, C, ids.ptr<int32_t>(), dout.ptr<T>(), dtable.ptr<T>()));
}

}  // namespace st
