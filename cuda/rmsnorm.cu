// RMSNorm with the Hugging Face rounding: xhat = x * rstd in fp32, rounded to the activation
// type, then multiplied by the weight (as LlamaRMSNorm does in bf16).
#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace st::cuda {

namespace {

using bf16 = __nv_bfloat16;

template <typename T>
__global__ void rmsnorm_forward_kernel(const T* __restrict__ x, const T* __restrict__ w, T* __restrict__ y,
                                       float* __restrict__ rstd, int64_t C, float eps) {
  const int64_t row = blockIdx.x;
  const T* xr = x + row * C;
  T* yr = y + row * C;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float v = dev::to_f(xr[c]);
    ss += v * v;
  }
  ss = dev::block_sum(ss);
  const float r = rsqrtf(ss / static_cast<float>(C) + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  for (int64_t c = threadIdx.x; c < C; c += blockDim.x) {
    const float xhat = dev::to_f(dev::from_f<T>(dev::to_f(xr[c]) * r));
    yr[c] = dev::from_f<T>(xhat * dev::to_f(w[c]));
  }
}

// Each block takes kRows rows: per row a block reduction gives mean(g * xhat); each thread keeps
// its columns' dw partial sums in registers over the rows and adds them once per block.
constexpr int kRows = 16;
constexpr int kBackwardThreads = 256;
constexpr int kMaxCols = 32;  // columns per thread held in registers: C <= 32 * 256 = 8192

template <typename T>
__global__ void __launch_bounds__(kBackwardThreads) rmsnorm_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                                        const float* __restrict__ rstd, T* __restrict__ dx, float* __restrict__ dw,
                                        int64_t N, int64_t C) {
  float acc[kMaxCols];
#pragma unroll
  for (int k = 0; k < kMaxCols; ++k) acc[k] = 0.0f;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  for (int64_t row = row0; row < row0 + kRows && row < N; ++row) {
    const T* xr = x + row * C;
    const T* dyr = dy + row * C;
    T* dxr = dx + row * C;
    const float r = rstd[row];
    float dot = 0.0f;
    for (int64_t c = threadIdx.x; c < C; c += blockDim.x)
      dot += dev::to_f(dyr[c]) * dev::to_f(w[c]) * dev::to_f(xr[c]) * r;
    const float mean = dev::block_sum(dot) / static_cast<float>(C);
    // k is a compile-time index after unrolling, so acc stays in registers.
#pragma unroll
    for (int k = 0; k < kMaxCols; ++k) {
      const int64_t c = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      if (c < C) {
        const float xv = dev::to_f(xr[c]), g = dev::to_f(dyr[c]) * dev::to_f(w[c]);
        dxr[c] = dev::from_f<T>(dev::to_f(dxr[c]) + r * (g - xv * r * mean));
        acc[k] += dev::to_f(dyr[c]) * xv * r;
      }
    }
  }
  if (!dw) return;
#pragma unroll
  for (int k = 0; k < kMaxCols; ++k) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    if (c < C) atomicAdd(dw + c, acc[k]);
  }
}

// bf16 rows with C % 8 == 0: 16-byte vectors; in the backward each thread owns up to kMaxVec
// vectors of columns (C <= 8 * kMaxVec * blockDim) and keeps their dw sums in registers.
union Vec8 {
  uint4 u;
  __nv_bfloat162 h[4];
};
constexpr int kMaxVec = 4;

__global__ void rmsnorm_forward_vec8(const uint4* __restrict__ x, const uint4* __restrict__ w, uint4* __restrict__ y,
                                     float* __restrict__ rstd, int64_t C8, float eps) {
  const int64_t row = blockIdx.x;
  const uint4* xr = x + row * C8;
  uint4* yr = y + row * C8;
  float ss = 0.0f;
  for (int64_t c = threadIdx.x; c < C8; c += blockDim.x) {
    Vec8 v;
    v.u = xr[c];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = __bfloat1622float2(v.h[k]);
      ss += f.x * f.x + f.y * f.y;
    }
  }
  ss = dev::block_sum(ss);
  const float r = rsqrtf(ss / static_cast<float>(C8 * 8) + eps);
  if (threadIdx.x == 0) rstd[row] = r;
  for (int64_t c = threadIdx.x; c < C8; c += blockDim.x) {
    Vec8 v, wv, o;
    v.u = xr[c];
    wv.u = w[c];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = __bfloat1622float2(v.h[k]), wf = __bfloat1622float2(wv.h[k]);
      const float2 xh = __bfloat1622float2(__floats2bfloat162_rn(f.x * r, f.y * r));  // HF rounds xhat first
      o.h[k] = __floats2bfloat162_rn(xh.x * wf.x, xh.y * wf.y);
    }
    yr[c] = o.u;
  }
}

__global__ void __launch_bounds__(kBackwardThreads) rmsnorm_backward_vec8(
    const uint4* __restrict__ dy, const uint4* __restrict__ x, const uint4* __restrict__ w, const float* __restrict__ rstd,
    uint4* __restrict__ dx, float* __restrict__ dw, int64_t N, int64_t C8) {
  float acc[kMaxVec][8];
#pragma unroll
  for (int k = 0; k < kMaxVec; ++k)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[k][e] = 0.0f;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kRows;
  const float inv_c = 1.0f / static_cast<float>(C8 * 8);
  for (int64_t row = row0; row < row0 + kRows && row < N; ++row) {
    const float r = rstd[row];
    float dot = 0.0f;
#pragma unroll
    for (int k = 0; k < kMaxVec; ++k) {
      const int64_t c = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      if (c < C8) {
        Vec8 dv, xv, wv;
        dv.u = dy[row * C8 + c];
        xv.u = x[row * C8 + c];
        wv.u = w[c];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float2 d = __bfloat1622float2(dv.h[e]), xf = __bfloat1622float2(xv.h[e]), wf = __bfloat1622float2(wv.h[e]);
          dot += d.x * wf.x * xf.x + d.y * wf.y * xf.y;
        }
      }
    }
    const float mean = dev::block_sum(dot) * r * inv_c;
#pragma unroll
    for (int k = 0; k < kMaxVec; ++k) {
      const int64_t c = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
      if (c < C8) {
        Vec8 dv, xv, wv, ov;
        dv.u = dy[row * C8 + c];
        xv.u = x[row * C8 + c];
        wv.u = w[c];
        ov.u = dx[row * C8 + c];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float2 d = __bfloat1622float2(dv.h[e]), xf = __bfloat1622float2(xv.h[e]), wf = __bfloat1622float2(wv.h[e]);
          const float2 o = __bfloat1622float2(ov.h[e]);
          ov.h[e] = __floats2bfloat162_rn(o.x + r * (d.x * wf.x - xf.x * r * mean), o.y + r * (d.y * wf.y - xf.y * r * mean));
          acc[k][2 * e] += d.x * xf.x * r;
          acc[k][2 * e + 1] += d.y * xf.y * r;
        }
        dx[row * C8 + c] = ov.u;
      }
    }
  }
  if (!dw) return;
#pragma unroll
  for (int k = 0; k < kMaxVec; ++k) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    if (c < C8)
#pragma unroll
      for (int e = 0; e < 8; ++e) atomicAdd(dw + c * 8 + e, acc[k][e]);
  }
}

bool aligned16(std::initializer_list<const void*> ptrs) {
  for (const void* p : ptrs)
    if (reinterpret_cast<uintptr_t>(p) % 16 != 0) return false;
  return true;
}

}  // namespace

void rmsnorm_forward(int64_t N, int64_t C, const Tensor& x, const Tensor& w, float eps, Tensor& y, Tensor& rstd) {
  if (N == 0) return;
  const int threads = C >= 1024 ? 512 : 256;
  if (x.dtype() == DType::bf16 && C % 8 == 0 && aligned16({x.data(), w.data(), y.data()}))
    rmsnorm_forward_vec8<<<static_cast<unsigned>(N), C >= 4096 ? 256 : 128, 0, stream()>>>(
        static_cast<const uint4*>(x.data()), static_cast<const uint4*>(w.data()), static_cast<uint4*>(y.data()),
        rstd.ptr<float>(), C / 8, eps);
  else if (x.dtype() == DType::bf16)
    rmsnorm_forward_kernel<<<static_cast<unsigned>(N), threads, 0, stream()>>>(
        static_cast<const bf16*>(x.data()), static_cast<const bf16*>(w.data()), static_cast<bf16*>(y.data()),
        rstd.ptr<float>(), C, eps);
  else
    rmsnorm_forward_kernel<<<static_cast<unsigned>(N), threads, 0, stream()>>>(
        x.ptr<float>(), w.ptr<float>(), y.ptr<float>(), rstd.ptr<float>(), C, eps);
  ST_CUDA_LAUNCH_CHECK("rmsnorm_forward");
}

void rmsnorm_backward(int64_t N, int64_t C, const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor* dw) {
  if (N == 0) return;
  const int threads = kBackwardThreads;
  if (C > static_cast<int64_t>(kMaxCols) * threads) ST_THROW("rmsnorm_backward on CUDA: C=", C, " above ", kMaxCols * threads);
  const unsigned blocks = static_cast<unsigned>(ceil_div(N, kRows));
  float* dwp = (dw && dw->defined()) ? dw->ptr<float>() : nullptr;
  if (x.dtype() == DType::bf16 && C % 8 == 0 && C <= 8 * kMaxVec * threads &&
      aligned16({dy.data(), x.data(), w.data(), dx.data()}))
    rmsnorm_backward_vec8<<<blocks, threads, 0, stream()>>>(
        static_cast<const uint4*>(dy.data()), static_cast<const uint4*>(x.data()), static_cast<const uint4*>(w.data()),
        rstd.ptr<float>(), static_cast<uint4*>(dx.data()), dwp, N, C / 8);
  else if (x.dtype() == DType::bf16)
    rmsnorm_backward_kernel<<<blocks, threads, 0, stream()>>>(
        static_cast<const bf16*>(dy.data()), static_cast<const bf16*>(x.data()), static_cast<const bf16*>(w.data()),
        rstd.ptr<float>(), static_cast<bf16*>(dx.data()), dwp, N, C);
  else
    rmsnorm_backward_kernel<<<blocks, threads, 0, stream()>>>(dy.ptr<float>(), x.ptr<float>(), w.ptr<float>(),
                                                              rstd.ptr<float>(), dx.ptr<float>(), dwp, N, C);
  ST_CUDA_LAUNCH_CHECK("rmsnorm_backward");
}

}  // namespace st::cuda
