#include "cuda/common.cuh"
#include "cuda/init.cuh"

namespace st::cuda {

namespace {

__device__ __forceinline__ double open_uniform(uint64_t key, uint64_t i) {
  return (static_cast<double>(dev::splitmix64(key + i) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

template <typename T>
__global__ void fill_normal_kernel(T* p, int64_t n, uint64_t key, double mean, double std) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double u1 = open_uniform(key, 2 * static_cast<uint64_t>(i));
    const double u2 = open_uniform(key, 2 * static_cast<uint64_t>(i) + 1);
    p[i] = dev::from_f<T>(static_cast<float>(mean + std * sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2)));
  }
}

template <typename T>
__global__ void fill_uniform_kernel(T* p, int64_t n, uint64_t key, double lo, double hi) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[i] = dev::from_f<T>(static_cast<float>(lo + (hi - lo) * open_uniform(key, static_cast<uint64_t>(i))));
}

template <typename T>
__global__ void fill_constant_kernel(T* p, int64_t n, float v) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[i] = dev::from_f<T>(v);
}

template <typename D, typename S>
__global__ void convert_kernel(D* dst, const S* src, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = dev::from_f<D>(dev::to_f(src[i]));
}

constexpr int kThreads = 256;

template <typename Launch>
void by_dtype(Tensor& t, const char* what, Launch launch) {
  if (t.dtype() == DType::f32) launch(static_cast<float*>(t.data()));
  else if (t.dtype() == DType::bf16) launch(static_cast<__nv_bfloat16*>(t.data()));
  else ST_THROW(what, ": unsupported dtype ", dtype_name(t.dtype()), " on CUDA");
}

}  // namespace

void fill_normal(Tensor& t, uint64_t key, double mean, double std) {
  const int64_t n = t.numel();
  if (n == 0) return;
  by_dtype(t, "fill_normal", [&](auto* p) {
    fill_normal_kernel<<<grid_1d(n, kThreads), kThreads, 0, stream()>>>(p, n, key, mean, std);
  });
  ST_CUDA_LAUNCH_CHECK("fill_normal");
}

void fill_uniform(Tensor& t, uint64_t key, double lo, double hi) {
  const int64_t n = t.numel();
  if (n == 0) return;
  by_dtype(t, "fill_uniform", [&](auto* p) {
    fill_uniform_kernel<<<grid_1d(n, kThreads), kThreads, 0, stream()>>>(p, n, key, lo, hi);
  });
  ST_CUDA_LAUNCH_CHECK("fill_uniform");
}

void fill_constant(Tensor& t, double value) {
  const int64_t n = t.numel();
  if (n == 0) return;
  by_dtype(t, "fill_constant", [&](auto* p) {
    fill_constant_kernel<<<grid_1d(n, kThreads), kThreads, 0, stream()>>>(p, n, static_cast<float>(value));
  });
  ST_CUDA_LAUNCH_CHECK("fill_constant");
}

void convert_copy(Tensor& dst, const Tensor& src) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  const unsigned g = grid_1d(n, kThreads);
  if (dst.dtype() == DType::bf16 && src.dtype() == DType::f32)
    convert_kernel<<<g, kThreads, 0, stream()>>>(static_cast<__nv_bfloat16*>(dst.data()), static_cast<const float*>(src.data()), n);
  else if (dst.dtype() == DType::f32 && src.dtype() == DType::bf16)
    convert_kernel<<<g, kThreads, 0, stream()>>>(static_cast<float*>(dst.data()), static_cast<const __nv_bfloat16*>(src.data()), n);
  else
    ST_THROW("convert_copy on CUDA: ", dtype_name(src.dtype()), " -> ", dtype_name(dst.dtype()), " is not supported");
  ST_CUDA_LAUNCH_CHECK("convert_copy");
}

}  // namespace st::cuda
