// T5 relative position bias: gather from the [num_buckets, H] table, and its gradient scattered
// back with f32 atomics (many (q, k) pairs share a bucket).
#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace st::cuda {

namespace {
// The bias is f32 (an attention statistic) whatever the table's dtype.
template <typename T>
__global__ void relbias_forward_kernel(const T* __restrict__ table, const int32_t* __restrict__ buckets,
                                       float* __restrict__ bias, int64_t H, int64_t QK) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < H * QK;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t h = i / QK, qk = i % QK;
    bias[i] = dev::to_f(table[static_cast<int64_t>(buckets[qk]) * H + h]);
  }
}

template <typename T>
__global__ void relbias_backward_kernel(const T* __restrict__ dbias, const int32_t* __restrict__ buckets,
                                        float* __restrict__ dtable, int64_t H, int64_t QK) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < H * QK;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t h = i / QK, qk = i % QK;
    atomicAdd(dtable + static_cast<int64_t>(buckets[qk]) * H + h, dev::to_f(dbias[i]));
  }
}
}  // namespace

void relative_bias_forward(const Tensor& table, const Tensor& buckets, int64_t Tq, int64_t Tk, Tensor& bias) {
  const int64_t H = table.dim(1), QK = Tq * Tk;
  if (H * QK == 0) return;
  if (bias.dtype() != DType::f32) ST_THROW("relative_bias_forward on CUDA writes an f32 bias");
  if (table.dtype() == DType::bf16)
    relbias_forward_kernel<<<grid_1d(H * QK, 256), 256, 0, stream()>>>(
        static_cast<const __nv_bfloat16*>(table.data()), buckets.ptr<int32_t>(), bias.ptr<float>(), H, QK);
  else
    relbias_forward_kernel<<<grid_1d(H * QK, 256), 256, 0, stream()>>>(table.ptr<float>(), buckets.ptr<int32_t>(),
                                                                         bias.ptr<float>(), H, QK);
  ST_CUDA_LAUNCH_CHECK("relative_bias_forward");
}

void relative_bias_backward(const Tensor& dbias, const Tensor& buckets, int64_t Tq, int64_t Tk, Tensor& dtable) {
  const int64_t H = dtable.dim(1), QK = Tq * Tk;
  if (H * QK == 0) return;
  if (dtable.dtype() != DType::f32) ST_THROW("relative_bias_backward on CUDA accumulates into an f32 table gradient");
  if (dbias.dtype() == DType::bf16)
    relbias_backward_kernel<<<grid_1d(H * QK, 256), 256, 0, stream()>>>(
        static_cast<const __nv_bfloat16*>(dbias.data()), buckets.ptr<int32_t>(), dtable.ptr<float>(), H, QK);
  else
    relbias_backward_kernel<<<grid_1d(H * QK, 256), 256, 0, stream()>>>(dbias.ptr<float>(), buckets.ptr<int32_t>(),
                                                                          dtable.ptr<float>(), H, QK);
  ST_CUDA_LAUNCH_CHECK("relative_bias_backward");
}

}  // namespace st::cuda
