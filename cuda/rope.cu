// Rotary embedding in place, Hugging Face rotate-half layout: one thread per (row, head, pair).
#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace st::cuda {

namespace {
template <typename T>
__global__ void rope_kernel(T* __restrict__ x, const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                            int64_t B, int64_t T_, int64_t H, int64_t D, float sign) {
  const int64_t half = D / 2;
  const int64_t total = B * T_ * H * half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half;
    const int64_t bth = idx / half;  // (b*T + t)*H + h
    const int64_t t = (bth / H) % T_;
    T* v = x + bth * D;
    const float c = cos_t[t * half + i], s = sign * sin_t[t * half + i];
    const float a = dev::to_f(v[i]), b = dev::to_f(v[i + half]);
    v[i] = dev::from_f<T>(a * c - b * s);
    v[i + half] = dev::from_f<T>(b * c + a * s);
  }
}
}  // namespace

void rope_apply(int64_t B, int64_t T, int64_t H, int64_t D, Tensor& x, const Tensor& cos, const Tensor& sin,
                bool inverse) {
  const int64_t n = B * T * H * (D / 2);
  if (n == 0) return;
  const float sign = inverse ? -1.0f : 1.0f;
  if (x.dtype() == DType::bf16)
    rope_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(static_cast<__nv_bfloat16*>(x.data()), cos.ptr<float>(),
                                                         sin.ptr<float>(), B, T, H, D, sign);
  else
    rope_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(x.ptr<float>(), cos.ptr<float>(), sin.ptr<float>(), B, T, H, D, sign);
  ST_CUDA_LAUNCH_CHECK("rope");
}

}  // namespace st::cuda
