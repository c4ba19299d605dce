// Embedding gather, and its gradient as a scatter-add of f32 atomics into the table gradient.
#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace st::cuda {

namespace {
template <typename T>
__global__ void embedding_forward_kernel(const int32_t* __restrict__ ids, const T* __restrict__ table, T* __restrict__ out,
                                         int64_t C, int64_t V, int64_t offset) {
  const int64_t n = blockIdx.x;
  const int64_t row = static_cast<int64_t>(ids[n]) - offset;
  if (row < 0 || row >= V) {  // another rank's vocabulary shard holds this id
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[n * C + c] = dev::from_f<T>(0.f);
    return;
  }
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) out[n * C + c] = table[row * C + c];
}

template <typename T>
__global__ void embedding_backward_kernel(const int32_t* __restrict__ ids, const T* __restrict__ dout,
                                          float* __restrict__ dtable, int64_t C, int64_t V, int64_t offset) {
  const int64_t n = blockIdx.x;
  const int64_t row = static_cast<int64_t>(ids[n]) - offset;
  if (row < 0 || row >= V) return;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) atomicAdd(dtable + row * C + c, dev::to_f(dout[n * C + c]));
}
}  // namespace

void embedding_forward(int64_t N, int64_t C, int64_t V, const Tensor& ids, const Tensor& table, Tensor& out,
                       int64_t offset) {
  if (N == 0) return;
  if (table.dtype() == DType::bf16)
    embedding_forward_kernel<<<static_cast<unsigned>(N), 256, 0, stream()>>>(
        ids.ptr<int32_t>(), static_cast<const __nv_bfloat16*>(table.data()), static_cast<__nv_bfloat16*>(out.data()), C, V, offset);
  else
    embedding_forward_kernel<<<static_cast<unsigned>(N), 256, 0, stream()>>>(ids.ptr<int32_t>(), table.ptr<float>(),
                                                                             out.ptr<float>(), C, V, offset);
  ST_CUDA_LAUNCH_CHECK("embedding_forward");
}

void embedding_backward(int64_t N, int64_t C, int64_t V, const Tensor& ids, const Tensor& dout, Tensor& dtable,
                        int64_t offset) {
  if (N == 0) return;
  if (dtable.dtype() != DType::f32) ST_THROW("embedding_backward on CUDA accumulates into an f32 gradient, got ", dtable.str());
  if (dout.dtype() == DType::bf16)
    embedding_backward_kernel<<<static_cast<unsigned>(N), 256, 0, stream()>>>(
        ids.ptr<int32_t>(), static_cast<const __nv_bfloat16*>(dout.data()), dtable.ptr<float>(), C, V, offset);
  else
    embedding_backward_kernel<<<static_cast<unsigned>(N), 256, 0, stream()>>>(ids.ptr<int32_t>(), dout.ptr<float>(),
                                                                              dtable.ptr<float>(), C, V, offset);
  ST_CUDA_LAUNCH_CHECK("embedding_backward");
}

}  // namespace st::cuda
