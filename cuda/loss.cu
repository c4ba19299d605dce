// Fused softmax cross-entropy over the vocabulary: one block per row; the max, the sum of
// exponentials and (training) the gradient written over the logits in place. No [N, V] f32
// buffer exists: logits stay in their bf16 buffer and become dlogits there.
#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace st::cuda {

namespace {
template <typename T>
__global__ void cross_entropy_kernel(T* __restrict__ logits, const int32_t* __restrict__ targets,
                                     const float* __restrict__ weight, float* __restrict__ losses, int64_t V, bool grad) {
  const int64_t n = blockIdx.x;
  T* row = logits + n * V;
  const int32_t target = targets[n];
  const float w = weight[n];
  if (target < 0 || w == 0.0f) {
    if (threadIdx.x == 0) losses[n] = 0.0f;
    if (grad)
      for (int64_t j = threadIdx.x; j < V; j += blockDim.x) row[j] = dev::from_f<T>(0.0f);
    return;
  }
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) mx = fmaxf(mx, dev::to_f(row[j]));
  mx = dev::block_max(mx);
  float sum = 0.0f;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) sum += __expf(dev::to_f(row[j]) - mx);
  sum = dev::block_sum(sum);
  const float lse = mx + logf(sum);
  const float target_logit = dev::to_f(row[target]);
  __syncthreads();  // every thread has read row[target] before anyone overwrites it
  if (threadIdx.x == 0) losses[n] = lse - target_logit;
  if (!grad) return;
  for (int64_t j = threadIdx.x; j < V; j += blockDim.x) {
    const float p = __expf(dev::to_f(row[j]) - lse);
    row[j] = dev::from_f<T>(w * (p - (j == target ? 1.0f : 0.0f)));
  }
}
}  // namespace

void cross_entropy(int64_t N, int64_t V, Tensor& logits, const Tensor& targets, const Tensor& weight, Tensor& losses,
                   bool grad) {
  if (N == 0) return;
  if (losses.dtype() != DType::f32) ST_THROW("cross_entropy on CUDA writes f32 losses, got ", losses.str());
  if (logits.dtype() == DType::bf16)
    cross_entropy_kernel<<<static_cast<unsigned>(N), 512, 0, stream()>>>(
        static_cast<__nv_bfloat16*>(logits.data()), targets.ptr<int32_t>(), weight.ptr<float>(), losses.ptr<float>(), V, grad);
  else
    cross_entropy_kernel<<<static_cast<unsigned>(N), 512, 0, stream()>>>(logits.ptr<float>(), targets.ptr<int32_t>(),
                                                                         weight.ptr<float>(), losses.ptr<float>(), V, grad);
  ST_CUDA_LAUNCH_CHECK("cross_entropy");
}

}  // namespace st::cuda
