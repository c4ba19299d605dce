#include "ops/embedding.hpp"

#include "ops/cpu/cpu_kernels.hpp"
#include "core/profile.hpp"
#include "ops/dispatch.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/kernels.cuh"
#endif

namespace st {

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) {
  ProfileScope prof("embedding_forward", table.device());
  check_float_args("embedding_forward", {&table, &out});
  const int64_t V = table.dim(0), C = table.dim(-1), N = ids.numel();
  if (ids.dtype() != DType::i32 || out.numel() < N * C) ST_THROW("embedding_forward: ids ", ids.str(), " out ", out.str());
  if (table.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::embedding_forward(N, C, ids, table, out);
    return;
#else
    no_cuda_kernel("embedding_forward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(table.dtype(), T,
                        cpu::embedding_forward<T>(N, C, V, ids.ptr<int32_t>(), table.ptr<T>(), out.ptr<T>()));
}

void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  ProfileScope prof("embedding_backward", dtable.device());
  check_stat_dtype("embedding_backward (table gradient)", dout, dtable);
  const int64_t C = dtable.dim(-1), N = ids.numel();
  if (ids.dtype() != DType::i32 || dout.numel() < N * C) ST_THROW("embedding_backward: ids ", ids.str(), " dout ", dout.str());
  if (dtable.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::embedding_backward(N, C, ids, dout, dtable);
    return;
#else
    no_cuda_kernel("embedding_backward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(dtable.dtype(), T,
                        cpu::embedding_backward<T>(N, C, ids.ptr<int32_t>(), dout.ptr<T>(), dtable.ptr<T>()));
}

}  // namespace st
