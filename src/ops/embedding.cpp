#include "ops/embedding.hpp"

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

namespace {

void forward_impl(const Tensor& ids, const Tensor& table, Tensor& out, int64_t offset, bool shard) {
  ProfileScope prof("embedding_forward", table.device());
  check_float_args("embedding_forward", {&table, &out});
  const int64_t V = table.dim(0), C = table.dim(-1), N = ids.numel();
  if (ids.dtype() != DType::i32 || out.numel() < N * C) ST_THROW("embedding_forward: ids ", ids.str(), " out ", out.str());
  const TracedOp traced(OpFamily::embedding, {&ids, &out, &out});
  if (dry_run_active()) return;  // the planner: no compute
  if (table.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::embedding_forward(N, C, V, ids, table, out, offset);
    return;
#else
    no_cuda_kernel("embedding_forward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(table.dtype(), T,
                        cpu::embedding_forward<T>(N, C, V, ids.ptr<int32_t>(), table.ptr<T>(), out.ptr<T>(), offset, shard));
}

void backward_impl(const Tensor& ids, const Tensor& dout, Tensor& dtable, int64_t offset) {
  ProfileScope prof("embedding_backward", dtable.device());
  check_grad_dtype("embedding_backward (table gradient)", dout, dtable);
  const int64_t V = dtable.dim(0), C = dtable.dim(-1), N = ids.numel();
  if (ids.dtype() != DType::i32 || dout.numel() < N * C) ST_THROW("embedding_backward: ids ", ids.str(), " dout ", dout.str());
  // The CUDA kernel adds with f32 atomics: a bf16 table gradient goes through an f32 scratch of
  // the table (master_weights = none).
  accumulate_grad_in_f32(dtable, [&](Tensor& g) {
    const TracedOp traced(OpFamily::embedding, {&ids, &dout, &dout});
    if (dry_run_active()) return;  // the planner: no compute
    if (g.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
      cuda::embedding_backward(N, C, V, ids, dout, g, offset);
      return;
#else
      no_cuda_kernel("embedding_backward");
#endif
    }
    ST_DISPATCH_CPU_FLOAT(g.dtype(), T,
                          cpu::embedding_backward<T>(N, C, V, ids.ptr<int32_t>(), dout.ptr<T>(), g.ptr<T>(), offset));
  });
}

}  // namespace

void embedding_forward(const Tensor& ids, const Tensor& table, Tensor& out) { forward_impl(ids, table, out, 0, false); }
void embedding_backward(const Tensor& ids, const Tensor& dout, Tensor& dtable) { backward_impl(ids, dout, dtable, 0); }
void embedding_forward_shard(const Tensor& ids, const Tensor& table, int64_t offset, Tensor& out) {
  forward_impl(ids, table, out, offset, true);
}
void embedding_backward_shard(const Tensor& ids, const Tensor& dout, int64_t offset, Tensor& dtable) {
  backward_impl(ids, dout, dtable, offset);
}

}  // namespace st
