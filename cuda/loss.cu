// Fused softmax cross-entropy over the vocabulary: one block per row; the max, the sum of
// exponentials and (training) the gradient written over the logits in place. No [N, V] f32
// buffer exists: logits stay in their bf16 buffer and become dlogits there.
#include <type_traits>

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

// Vocabulary-parallel cross-entropy (parallel/tp_ops.hpp), in three passes around the caller's
// two all-reduces; one block per row, f32 statistics.
template <typename T>
__global__ void vp_max_kernel(const T* __restrict__ logits, const int32_t* __restrict__ targets,
                              const float* __restrict__ weight, float* __restrict__ mx, int64_t Vl) {
  const int64_t n = blockIdx.x;
  if (targets[n] < 0 || weight[n] == 0.0f) {
    if (threadIdx.x == 0) mx[n] = 0.0f;
    return;
  }
  const T* row = logits + n * Vl;
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < Vl; j += blockDim.x) m = fmaxf(m, dev::to_f(row[j]));
  m = dev::block_max(m);
  if (threadIdx.x == 0) mx[n] = m;
}

template <typename T>
__global__ void vp_sum_kernel(const T* __restrict__ logits, const int32_t* __restrict__ targets,
                              const float* __restrict__ weight, const float* __restrict__ mx, float* __restrict__ st,
                              int64_t N, int64_t Vl, int64_t off) {
  const int64_t n = blockIdx.x;
  const int32_t target = targets[n];
  if (target < 0 || weight[n] == 0.0f) {
    if (threadIdx.x == 0) st[n] = st[N + n] = 0.0f;
    return;
  }
  const T* row = logits + n * Vl;
  float s = 0.0f;
  for (int64_t j = threadIdx.x; j < Vl; j += blockDim.x) s += __expf(dev::to_f(row[j]) - mx[n]);
  s = dev::block_sum(s);
  if (threadIdx.x == 0) {
    st[n] = s;
    const int64_t t = static_cast<int64_t>(target) - off;
    st[N + n] = (t >= 0 && t < Vl) ? dev::to_f(row[t]) : 0.0f;  // only the owner contributes
  }
}

template <typename T>
__global__ void vp_finish_kernel(T* __restrict__ logits, const int32_t* __restrict__ targets,
                                 const float* __restrict__ weight, const float* __restrict__ mx,
                                 const float* __restrict__ st, float* __restrict__ losses, int64_t N, int64_t Vl,
                                 int64_t off, bool grad) {
  const int64_t n = blockIdx.x;
  T* row = logits + n * Vl;
  const int32_t target = targets[n];
  const float w = weight[n];
  if (target < 0 || w == 0.0f) {
    if (threadIdx.x == 0) losses[n] = 0.0f;
    if (grad)
      for (int64_t j = threadIdx.x; j < Vl; j += blockDim.x) row[j] = dev::from_f<T>(0.0f);
    return;
  }
  const float lse = mx[n] + logf(st[n]);
  if (threadIdx.x == 0) losses[n] = lse - st[N + n];
  if (!grad) return;
  const int64_t t = static_cast<int64_t>(target) - off;
  for (int64_t j = threadIdx.x; j < Vl; j += blockDim.x) {
    const float p = __expf(dev::to_f(row[j]) - lse);
    row[j] = dev::from_f<T>(w * (p - (j == t ? 1.0f : 0.0f)));
  }
}

void vocab_parallel_ce_pass(int pass, int64_t N, int64_t Vl, int64_t off, Tensor& logits, const Tensor& targets,
                            const Tensor& weight, Tensor& mx, Tensor& st, Tensor* losses, bool grad) {
  if (N == 0) return;
  const unsigned blocks = static_cast<unsigned>(N);
  auto launch = [&](auto* p) {
    using T = std::remove_pointer_t<decltype(p)>;
    if (pass == 0)
      vp_max_kernel<<<blocks, 512, 0, stream()>>>(p, targets.ptr<int32_t>(), weight.ptr<float>(), mx.ptr<float>(), Vl);
    else if (pass == 1)
      vp_sum_kernel<<<blocks, 512, 0, stream()>>>(p, targets.ptr<int32_t>(), weight.ptr<float>(), mx.ptr<float>(),
                                                  st.ptr<float>(), N, Vl, off);
    else
      vp_finish_kernel<<<blocks, 512, 0, stream()>>>(static_cast<T*>(p), targets.ptr<int32_t>(), weight.ptr<float>(),
                                                     mx.ptr<float>(), st.ptr<float>(), losses->ptr<float>(), N, Vl, off,
                                                     grad);
  };
  if (logits.dtype() == DType::bf16) launch(static_cast<__nv_bfloat16*>(logits.data()));
  else launch(logits.ptr<float>());
  ST_CUDA_LAUNCH_CHECK("vocab_parallel_cross_entropy");
}

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
