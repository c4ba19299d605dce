// AdamW (PyTorch semantics) on f32 master weights with the bf16 working copy written in the same
// pass; gradient-norm reduction and scaling.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace st::cuda {

namespace {

template <typename W>
__global__ void adamw_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, W* __restrict__ working, int64_t n, float decay, float step_size,
                             float b1, float b2, float inv_bc2_sqrt, float eps, float grad_scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gi = g[i] * grad_scale;
    float pi = p[i] * decay;
    const float mi = b1 * m[i] + (1.0f - b1) * gi;
    const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    pi -= step_size * mi / (sqrtf(vi) * inv_bc2_sqrt + eps);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if (working) working[i] = dev::from_f<W>(pi);
  }
}

// Sums of squares, deterministic: each block writes its partial sum to its own slot, and one
// block adds the slots in a fixed order (no atomics, so the gradient norm and with it the
// clipping are the same bits in every run: exact resume and repeatable runs need that).
__global__ void sum_squares_kernel(const float* __restrict__ x, int64_t n, double* __restrict__ partial) {
  float s = 0.0f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    s += x[i] * x[i];
  s = dev::block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = static_cast<double>(s);
}

__global__ void sum_squares_bf16_kernel(const __nv_bfloat16* __restrict__ x, int64_t n, double* __restrict__ partial) {
  float s = 0.0f;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float v = __bfloat162float(x[i]);
    s += v * v;
  }
  s = dev::block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = static_cast<double>(s);
}

constexpr int kSumThreads = 1024;
// One block: thread t adds slots t, t + 1024, ... in order; thread 0 adds the 1024 results in order.
__global__ void sum_partials_kernel(const double* __restrict__ partial, int64_t n, double* __restrict__ out) {
  __shared__ double lane[kSumThreads];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += kSumThreads) s += partial[i];
  lane[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int i = 0; i < kSumThreads; ++i) t += lane[i];
    *out = t;
  }
}

template <typename T>
__global__ void scale_kernel(T* x, int64_t n, float s) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = dev::from_f<T>(dev::to_f(x[i]) * s);
}

template <typename T>
__global__ void axpy_kernel(float a, const T* x, T* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = dev::from_f<T>(dev::to_f(y[i]) + a * dev::to_f(x[i]));
}

}  // namespace

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, Tensor* working, double lr, double beta1,
                  double beta2, double eps, double weight_decay, int64_t step, double grad_scale) {
  const int64_t n = param.numel();
  if (n == 0) return;
  if (param.dtype() != DType::f32 || grad.dtype() != DType::f32 || m.dtype() != DType::f32 || v.dtype() != DType::f32)
    ST_THROW("adamw_update on CUDA: master, gradient and moments must be f32 (", param.str(), ", ", grad.str(), ")");
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step)));
  const float decay = static_cast<float>(1.0 - lr * weight_decay), step_size = static_cast<float>(lr / bc1);
  const unsigned g = grid_1d(n, 256);
  if (working && working->defined() && working->dtype() == DType::bf16)
    adamw_kernel<<<g, 256, 0, stream()>>>(param.ptr<float>(), grad.ptr<float>(), m.ptr<float>(), v.ptr<float>(),
                                          static_cast<__nv_bfloat16*>(working->data()), n, decay, step_size,
                                          static_cast<float>(beta1), static_cast<float>(beta2),
                                          static_cast<float>(1.0 / bc2_sqrt), static_cast<float>(eps),
                                          static_cast<float>(grad_scale));
  else
    adamw_kernel<<<g, 256, 0, stream()>>>(param.ptr<float>(), grad.ptr<float>(), m.ptr<float>(), v.ptr<float>(),
                                          static_cast<float*>(nullptr), n, decay, step_size, static_cast<float>(beta1),
                                          static_cast<float>(beta2), static_cast<float>(1.0 / bc2_sqrt),
                                          static_cast<float>(eps), static_cast<float>(grad_scale));
  ST_CUDA_LAUNCH_CHECK("adamw_update");
}

namespace {
// Raw device scratch (a few KiB: one double per block of the sums of squares), outside the
// allocator like the CUDA context's own memory.
double* partials(int64_t n) {
  static double* d = nullptr;
  static int64_t cap = 0;
  if (n > cap) {
    if (d) ST_CUDA_CHECK(cudaFree(d));
    cap = std::max<int64_t>(n, 2 * cap);
    ST_CUDA_CHECK(cudaMalloc(&d, static_cast<size_t>(cap + 1) * sizeof(double)));
  }
  return d;
}

unsigned sum_blocks(int64_t n) { return std::min<unsigned>(grid_1d(n, 512), 1024u); }

void add_sum_squares(const Tensor& x, double* slots) {
  const int64_t n = x.numel();
  const unsigned g = sum_blocks(n);
  if (x.dtype() == DType::f32) sum_squares_kernel<<<g, 512, 0, stream()>>>(x.ptr<float>(), n, slots);
  else if (x.dtype() == DType::bf16)
    sum_squares_bf16_kernel<<<g, 512, 0, stream()>>>(static_cast<const __nv_bfloat16*>(x.data()), n, slots);
  else ST_THROW("sum_squares on CUDA: unsupported ", x.str());
  ST_CUDA_LAUNCH_CHECK("sum_squares");
}
}  // namespace

double sum_squares_total(const std::vector<const Tensor*>& xs) {
  int64_t slots = 0;
  for (const Tensor* x : xs)
    if (x->numel() > 0) slots += sum_blocks(x->numel());
  if (slots == 0) return 0.0;
  double* d = partials(slots);
  int64_t at = 0;
  for (const Tensor* x : xs) {
    if (x->numel() == 0) continue;
    add_sum_squares(*x, d + at);
    at += sum_blocks(x->numel());
  }
  sum_partials_kernel<<<1, kSumThreads, 0, stream()>>>(d, slots, d + slots);
  ST_CUDA_LAUNCH_CHECK("sum_partials");
  double h = 0;
  ST_CUDA_CHECK(cudaMemcpy(&h, d + slots, sizeof(double), cudaMemcpyDeviceToHost));
  return h;
}

double sum_squares(const Tensor& x) { return sum_squares_total({&x}); }

void scale_inplace(Tensor& x, double s) {
  const int64_t n = x.numel();
  if (n == 0) return;
  if (x.dtype() == DType::f32) scale_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(x.ptr<float>(), n, static_cast<float>(s));
  else if (x.dtype() == DType::bf16)
    scale_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(static_cast<__nv_bfloat16*>(x.data()), n, static_cast<float>(s));
  else ST_THROW("scale_inplace on CUDA: unsupported ", x.str());
  ST_CUDA_LAUNCH_CHECK("scale_inplace");
}

void axpy(double a, const Tensor& x, Tensor& y) {
  const int64_t n = y.numel();
  if (n == 0) return;
  if (y.dtype() == DType::f32) axpy_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(static_cast<float>(a), x.ptr<float>(), y.ptr<float>(), n);
  else if (y.dtype() == DType::bf16)
    axpy_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(static_cast<float>(a), static_cast<const __nv_bfloat16*>(x.data()),
                                                       static_cast<__nv_bfloat16*>(y.data()), n);
  else ST_THROW("axpy on CUDA: unsupported ", y.str());
  ST_CUDA_LAUNCH_CHECK("axpy");
}

}  // namespace st::cuda
