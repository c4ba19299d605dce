// Rotary embedding in place, Hugging Face rotate-half layout: one thread per (row, head, pair).
// Token n = b*T + t is at position t, or at pos[n] when pos is given (sequence packing).
#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace st::cuda {

namespace {
template <typename T>
__global__ void rope_kernel(T* __restrict__ x, const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                            const int32_t* __restrict__ pos, int64_t B, int64_t T_, int64_t H, int64_t D, float sign) {
  const int64_t half = D / 2;
  const int64_t total = B * T_ * H * half;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % half;
    const int64_t bth = idx / half;  // (b*T + t)*H + h
    const int64_t t = pos ? pos[bth / H] : (bth / H) % T_;
    T* v = x + bth * D;
    const float c = cos_t[t * half + i], s = sign * sin_t[t * half + i];
    const float a = dev::to_f(v[i]), b = dev::to_f(v[i + half]);
    v[i] = dev::from_f<T>(a * c - b * s);
    v[i + half] = dev::from_f<T>(b * c + a * s);
  }
}
// bf16 with D/2 % 8 == 0: each thread rotates 8 pairs (16-byte loads of both halves and of the
// cos/sin tables).
union Vec8 {
  uint4 u;
  __nv_bfloat162 h[4];
};

__global__ void rope_vec8_kernel(__nv_bfloat16* __restrict__ x, const float* __restrict__ cos_t,
                                 const float* __restrict__ sin_t, const int32_t* __restrict__ pos, int64_t B, int64_t T_,
                                 int64_t H, int64_t D, float sign) {
  const int64_t half = D / 2, chunks = half / 8;
  const int64_t total = B * T_ * H * chunks;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = idx % chunks, bth = idx / chunks, t = pos ? pos[bth / H] : (bth / H) % T_;
    __nv_bfloat16* v = x + bth * D + c * 8;
    Vec8 a, b;
    a.u = *reinterpret_cast<const uint4*>(v);
    b.u = *reinterpret_cast<const uint4*>(v + half);
    const float4* cp = reinterpret_cast<const float4*>(cos_t + t * half + c * 8);
    const float4* sp = reinterpret_cast<const float4*>(sin_t + t * half + c * 8);
    const float4 c0 = cp[0], c1 = cp[1], s0 = sp[0], s1 = sp[1];
    const float cs[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
    const float sn[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 af = __bfloat1622float2(a.h[k]), bf = __bfloat1622float2(b.h[k]);
      const float c0k = cs[2 * k], c1k = cs[2 * k + 1], s0k = sign * sn[2 * k], s1k = sign * sn[2 * k + 1];
      a.h[k] = __floats2bfloat162_rn(af.x * c0k - bf.x * s0k, af.y * c1k - bf.y * s1k);
      b.h[k] = __floats2bfloat162_rn(bf.x * c0k + af.x * s0k, bf.y * c1k + af.y * s1k);
    }
    *reinterpret_cast<uint4*>(v) = a.u;
    *reinterpret_cast<uint4*>(v + half) = b.u;
  }
}

}  // namespace

void rope_apply(int64_t B, int64_t T, int64_t H, int64_t D, Tensor& x, const Tensor& cos, const Tensor& sin,
                bool inverse, const int32_t* pos) {
  const int64_t n = B * T * H * (D / 2);
  if (n == 0) return;
  const float sign = inverse ? -1.0f : 1.0f;
  if (x.dtype() == DType::bf16 && (D / 2) % 8 == 0 && reinterpret_cast<uintptr_t>(x.data()) % 16 == 0) {
    const int64_t nv = B * T * H * (D / 16);
    rope_vec8_kernel<<<grid_1d(nv, 256), 256, 0, stream()>>>(static_cast<__nv_bfloat16*>(x.data()), cos.ptr<float>(),
                                                             sin.ptr<float>(), pos, B, T, H, D, sign);
  } else if (x.dtype() == DType::bf16)
    rope_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(static_cast<__nv_bfloat16*>(x.data()), cos.ptr<float>(),
                                                         sin.ptr<float>(), pos, B, T, H, D, sign);
  else
    rope_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(x.ptr<float>(), cos.ptr<float>(), sin.ptr<float>(), pos, B, T, H, D,
                                                       sign);
  ST_CUDA_LAUNCH_CHECK("rope");
}

}  // namespace st::cuda
