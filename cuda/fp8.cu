// FP8 E4M3 kernels (see src/ops/fp8.hpp). Per-tensor current scaling: one grid-stride pass for
// the amax (block max, then an atomicMax on the float's bits: non-negative floats order as their
// unsigned bits, and a maximum is the same in any order), one for the codes, which every block
// derives from the amax in device memory (no host synchronisation). Per-row scaling: one block per
// row, the row's amax by a block reduction, then its codes. Eight values per thread and step
// (16-byte loads, two values per conversion instruction) where the row length and alignment allow.
#include <cuda_fp8.h>

#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/fp8.cuh"
#include "ops/fp8_codec.hpp"

namespace st::cuda {

namespace {

using bf16 = __nv_bfloat16;
constexpr int kThreads = 256;

__device__ __forceinline__ uint8_t to_e4m3(float v) {
  return static_cast<uint8_t>(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
}
// Two values in one conversion: a in the low byte, b in the high byte.
__device__ __forceinline__ uint16_t to_e4m3x2(float a, float b) {
  return static_cast<uint16_t>(__nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3));
}
__device__ __forceinline__ float from_e4m3(uint8_t c) {
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(c, __NV_E4M3)));
}

__device__ __forceinline__ void load8(const bf16* p, float v[8]) {
  const uint4 u = *reinterpret_cast<const uint4*>(p);
  const bf16* h = reinterpret_cast<const bf16*>(&u);
#pragma unroll
  for (int j = 0; j < 8; ++j) v[j] = __bfloat162float(h[j]);
}
__device__ __forceinline__ void load8(const float* p, float v[8]) {
  const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
  v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
}
// codes[0..8) = e4m3(v * s), each product rounded to f32 once (as the CPU reference).
__device__ __forceinline__ void store8(uint8_t* codes, const float v[8], float s) {
  uint2 out;
  uint16_t* o = reinterpret_cast<uint16_t*>(&out);
#pragma unroll
  for (int j = 0; j < 4; ++j) o[j] = to_e4m3x2(__fmul_rn(v[2 * j], s), __fmul_rn(v[2 * j + 1], s));
  *reinterpret_cast<uint2*>(codes) = out;
}

// max |x| of n values from `begin`, threads [t0, n) in steps of `stride` (NaN ignored: fmaxf).
template <typename T>
__device__ float partial_amax(const T* x, int64_t n, bool vec, int64_t t0, int64_t stride) {
  float m = 0.0f;
  if (vec) {
    float v[8];
    for (int64_t i = t0; i < n / 8; i += stride) {
      load8(x + 8 * i, v);
#pragma unroll
      for (int j = 0; j < 8; ++j) m = fmaxf(m, fabsf(v[j]));
    }
  } else {
    for (int64_t i = t0; i < n; i += stride) m = fmaxf(m, fabsf(dev::to_f(x[i])));
  }
  return m;
}

// codes = e4m3(x * s) for n values; with kRecord, also returns this thread's max |x|.
template <typename T, bool kRecord>
__device__ float partial_quantize(const T* x, int64_t n, bool vec, float s, uint8_t* codes, int64_t t0,
                                  int64_t stride) {
  float m = 0.0f;
  if (vec) {
    float v[8];
    for (int64_t i = t0; i < n / 8; i += stride) {
      load8(x + 8 * i, v);
      store8(codes + 8 * i, v, s);
      if (kRecord) {
#pragma unroll
        for (int j = 0; j < 8; ++j) m = fmaxf(m, fabsf(v[j]));
      }
    }
  } else {
    for (int64_t i = t0; i < n; i += stride) {
      const float v = dev::to_f(x[i]);
      codes[i] = to_e4m3(__fmul_rn(v, s));
      if (kRecord) m = fmaxf(m, fabsf(v));
    }
  }
  return m;
}

__device__ __forceinline__ void atomic_max_nonneg(float* addr, float v) {
  atomicMax(reinterpret_cast<unsigned int*>(addr), __float_as_uint(v));
}

template <typename T>
__global__ void amax_kernel(const T* __restrict__ x, int64_t n, bool vec, float* __restrict__ amax) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  float m = partial_amax(x, n, vec, static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x, stride);
  m = dev::block_max(m);
  if (threadIdx.x == 0) atomic_max_nonneg(amax, m);
}

// Per tensor. kGiven: the scale is scale[0] and x's amax goes to amax_out (zeroed before);
// otherwise the scale comes from amax_in[0] (amax_kernel's result).
template <typename T, bool kGiven>
__global__ void quantize_tensor_kernel(const T* __restrict__ x, int64_t n, bool vec, const float* __restrict__ scale,
                                       const float* amax_in, uint8_t* __restrict__ codes, float* __restrict__ scale_inv,
                                       float* amax_out) {
  const float s = kGiven ? scale[0] : fp8::scale_from_amax(amax_in[0]);
  if (blockIdx.x == 0 && threadIdx.x == 0) scale_inv[0] = fp8::scale_inv_of(s);
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  float m = partial_quantize<T, kGiven>(x, n, vec, s, codes, static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x,
                                        stride);
  if (kGiven) {
    m = dev::block_max(m);
    if (threadIdx.x == 0) atomic_max_nonneg(amax_out, m);
  }
}

// Per row: block b handles rows b, b + gridDim.x, ...
template <typename T, bool kGiven>
__global__ void quantize_rows_kernel(const T* __restrict__ x, int64_t rows, int64_t cols, bool vec,
                                     const float* __restrict__ scale, uint8_t* __restrict__ codes,
                                     float* __restrict__ scale_inv, float* __restrict__ amax) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const T* xr = x + r * cols;
    uint8_t* cr = codes + r * cols;
    float m = 0.0f, s;
    if (kGiven) {
      s = scale[r];
    } else {
      m = dev::block_max(partial_amax(xr, cols, vec, threadIdx.x, blockDim.x));
      s = fp8::scale_from_amax(m);
    }
    const float mq = partial_quantize<T, kGiven>(xr, cols, vec, s, cr, threadIdx.x, blockDim.x);
    if (kGiven) m = dev::block_max(mq);
    if (threadIdx.x == 0) {
      amax[r] = m;
      scale_inv[r] = fp8::scale_inv_of(s);
    }
  }
}

template <typename T>
__global__ void dequantize_kernel(const uint8_t* __restrict__ codes, int64_t rows, int64_t cols, bool per_row,
                                  const float* __restrict__ scale_inv, T* __restrict__ out) {
  const int64_t n = rows * cols, stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride)
    out[i] = dev::from_f<T>(__fmul_rn(from_e4m3(codes[i]), scale_inv[per_row ? i / cols : 0]));
}

// out [cols, rows] = in [rows, cols]^T through a 32 x 33 shared tile; block (32, 8).
__global__ void transpose_kernel(const uint8_t* __restrict__ in, int64_t rows, int64_t cols, uint8_t* __restrict__ out) {
  __shared__ uint8_t tile[32][33];
  const int64_t c0 = static_cast<int64_t>(blockIdx.x) * 32, r0 = static_cast<int64_t>(blockIdx.y) * 32;
  for (int j = threadIdx.y; j < 32; j += 8) {
    const int64_t r = r0 + j, c = c0 + threadIdx.x;
    if (r < rows && c < cols) tile[j][threadIdx.x] = in[r * cols + c];
  }
  __syncthreads();
  for (int j = threadIdx.y; j < 32; j += 8) {
    const int64_t orow = c0 + j, ocol = r0 + threadIdx.x;
    if (orow < cols && ocol < rows) out[orow * rows + ocol] = tile[threadIdx.x][j];
  }
}

__global__ void update_scale_kernel(float* __restrict__ history, int64_t L, int64_t n, const float* __restrict__ amax,
                                    int64_t slot, int margin, float* __restrict__ scale) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  history[slot * n + j] = amax[j];
  float m = 0.0f;
  for (int64_t l = 0; l < L; ++l) m = fmaxf(m, history[l * n + j]);
  scale[j] = fp8::scale_from_amax(m, margin);
}

bool aligned(const void* p, uintptr_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename T>
void quantize_typed(const Tensor& x, const Tensor* scale, Fp8Tensor& q) {
  const T* xp = static_cast<const T*>(x.data());
  uint8_t* codes = static_cast<uint8_t*>(q.codes.data());
  float* scale_inv = q.scale_inv.ptr<float>();
  float* amax = q.amax.ptr<float>();
  const float* sp = scale ? scale->ptr<float>() : nullptr;
  if (q.scaling == Fp8Scaling::per_row) {
    const bool vec = q.cols % 8 == 0 && aligned(xp, 16) && aligned(codes, 8);
    const unsigned grid = static_cast<unsigned>(std::min<int64_t>(q.rows, 65535));
    if (scale) quantize_rows_kernel<T, true><<<grid, kThreads, 0, stream()>>>(xp, q.rows, q.cols, vec, sp, codes, scale_inv, amax);
    else quantize_rows_kernel<T, false><<<grid, kThreads, 0, stream()>>>(xp, q.rows, q.cols, vec, sp, codes, scale_inv, amax);
    ST_CUDA_LAUNCH_CHECK("fp8_quantize (per row)");
    return;
  }
  const int64_t n = q.rows * q.cols;
  const bool vec = n % 8 == 0 && aligned(xp, 16) && aligned(codes, 8);
  const unsigned grid = std::min<unsigned>(grid_1d(vec ? n / 8 : n, kThreads), 4096);
  ST_CUDA_CHECK(cudaMemsetAsync(amax, 0, sizeof(float), stream()));
  if (scale) {
    quantize_tensor_kernel<T, true><<<grid, kThreads, 0, stream()>>>(xp, n, vec, sp, nullptr, codes, scale_inv, amax);
  } else {
    amax_kernel<T><<<grid, kThreads, 0, stream()>>>(xp, n, vec, amax);
    ST_CUDA_LAUNCH_CHECK("fp8_quantize (amax)");
    quantize_tensor_kernel<T, false><<<grid, kThreads, 0, stream()>>>(xp, n, vec, nullptr, amax, codes, scale_inv, nullptr);
  }
  ST_CUDA_LAUNCH_CHECK("fp8_quantize (per tensor)");
}

}  // namespace

void fp8_quantize(const Tensor& x, const Tensor* scale, Fp8Tensor& q) {
  if (x.dtype() == DType::bf16) quantize_typed<bf16>(x, scale, q);
  else if (x.dtype() == DType::f32) quantize_typed<float>(x, scale, q);
  else ST_THROW("fp8_quantize on CUDA: input ", x.str(), " must be bf16 or f32");
}

void fp8_dequantize(const Fp8Tensor& q, Tensor& out) {
  const int64_t n = q.rows * q.cols;
  const unsigned grid = std::min<unsigned>(grid_1d(n, kThreads), 65535);
  const uint8_t* codes = static_cast<const uint8_t*>(q.codes.data());
  const bool per_row = q.scaling == Fp8Scaling::per_row;
  if (out.dtype() == DType::bf16)
    dequantize_kernel<bf16><<<grid, kThreads, 0, stream()>>>(codes, q.rows, q.cols, per_row, q.scale_inv.ptr<float>(),
                                                             static_cast<bf16*>(out.data()));
  else if (out.dtype() == DType::f32)
    dequantize_kernel<float><<<grid, kThreads, 0, stream()>>>(codes, q.rows, q.cols, per_row, q.scale_inv.ptr<float>(),
                                                              out.ptr<float>());
  else ST_THROW("fp8_dequantize on CUDA: output ", out.str(), " must be bf16 or f32");
  ST_CUDA_LAUNCH_CHECK("fp8_dequantize");
}

void fp8_transpose(const Fp8Tensor& q, Fp8Tensor& qt) {
  const dim3 grid(static_cast<unsigned>(ceil_div(q.cols, 32)), static_cast<unsigned>(ceil_div(q.rows, 32)));
  if (grid.y > 65535) ST_THROW("fp8_transpose on CUDA: ", q.rows, " rows (at most ", 65535 * 32, ")");
  transpose_kernel<<<grid, dim3(32, 8), 0, stream()>>>(static_cast<const uint8_t*>(q.codes.data()), q.rows, q.cols,
                                                        static_cast<uint8_t*>(qt.codes.data()));
  ST_CUDA_LAUNCH_CHECK("fp8_transpose");
  ST_CUDA_CHECK(cudaMemcpyAsync(qt.scale_inv.data(), q.scale_inv.data(), sizeof(float), cudaMemcpyDeviceToDevice, stream()));
  ST_CUDA_CHECK(cudaMemcpyAsync(qt.amax.data(), q.amax.data(), sizeof(float), cudaMemcpyDeviceToDevice, stream()));
}

void fp8_update_scale(Tensor& history, const Tensor& amax, int64_t step, int margin, Tensor& scale) {
  const int64_t L = history.dim(0), n = amax.numel();
  update_scale_kernel<<<static_cast<unsigned>(ceil_div(n, kThreads)), kThreads, 0, stream()>>>(
      history.ptr<float>(), L, n, amax.ptr<float>(), step % L, margin, scale.ptr<float>());
  ST_CUDA_LAUNCH_CHECK("fp8_update_scale");
}

}  // namespace st::cuda
