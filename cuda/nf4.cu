// NF4 kernels. Quantize: one warp per block of `blk` values (blk/32 per lane, in pairs, so a lane
// writes whole bytes), warp max for the absmax, the reciprocal, then the NF4 decision by the
// midpoints. Double quantization: the mean of the absmax values (an f32 sum times the f32
// reciprocal of n, as bitsandbytes' torch.mean) in the fixed order of nf4_fixed_order_mean (one
// block of kMeanLanes threads), then one block of 256 threads per 256
// absmax values for the 8-bit dynamic codes. Dequantize: 16 values per thread (8 code bytes in,
// two 16-byte bf16 stores out), the block's absmax rebuilt from its 8-bit code on the fly.
#include "cuda/common.cuh"
#include "cuda/nf4.cuh"
#include "quant/nf4_codec.hpp"

#include <vector>

namespace st::cuda {

namespace {

using bf16 = __nv_bfloat16;

__constant__ float c_nf4_mid[15];
__constant__ float c_nf4_val[16];
__constant__ float c_dyn_map[256];

void upload_tables() {
  static bool done = false;
  if (done) return;
  const auto& v = nf4_code_values();
  float mid[15];
  for (int i = 0; i < 15; ++i)
    mid[i] = static_cast<float>((static_cast<double>(v[static_cast<size_t>(i)]) +
                                 static_cast<double>(v[static_cast<size_t>(i) + 1])) / 2.0);
  ST_CUDA_CHECK(cudaMemcpyToSymbol(c_nf4_mid, mid, sizeof(mid)));
  ST_CUDA_CHECK(cudaMemcpyToSymbol(c_nf4_val, v.data(), sizeof(float) * 16));
  ST_CUDA_CHECK(cudaMemcpyToSymbol(c_dyn_map, dynamic_map_signed().data(), sizeof(float) * 256));
  done = true;
}

using nf4::dynamic_encode;
__device__ __forceinline__ uint8_t nf4_encode(const float* mid, float x) { return nf4::encode(mid, x); }

template <typename T>
__global__ void nf4_quantize_kernel(const T* __restrict__ w, int64_t n, int blk, uint8_t* __restrict__ codes,
                                    float* __restrict__ absmax) {
  __shared__ float mid[15];
  if (threadIdx.x < 15) mid[threadIdx.x] = c_nf4_mid[threadIdx.x];
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  const int64_t nb = (n + blk - 1) / blk;
  const int per = blk / 32;  // 2, 4 or 8 values per lane
  for (int64_t b = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5); b < nb; b += warps) {
    const int64_t lo = b * blk + static_cast<int64_t>(lane) * per;
    float v[8];
    float a = 0.0f;
    for (int j = 0; j < per; ++j) {
      v[j] = lo + j < n ? dev::to_f(w[lo + j]) : 0.0f;
      a = fmaxf(a, fabsf(v[j]));
    }
    a = dev::warp_max(a);
    if (lane == 0) absmax[b] = a;
    const float inv = __frcp_rn(a);
    for (int j = 0; j < per; j += 2) {
      if (lo + j >= n) break;
      const uint8_t hi4 = nf4_encode(mid, __fmul_rn(v[j], inv));
      const uint8_t lo4 = lo + j + 1 < n ? nf4_encode(mid, __fmul_rn(v[j + 1], inv)) : 0;
      codes[(lo + j) / 2] = static_cast<uint8_t>(hi4 << 4 | lo4);
    }
  }
}

// The mean of nf4_fixed_order_mean (f32 lanes, a binary tree, times the f32 reciprocal of n):
// one block of kMeanLanes threads, every operation rounded on its own as on the CPU.
__global__ void fixed_order_mean_kernel(const float* __restrict__ x, int64_t n, float* __restrict__ out) {
  __shared__ float lane[kMeanLanes];
  const int t = threadIdx.x;
  float s = 0.0f;
  for (int64_t i = t; i < n; i += kMeanLanes) s = __fadd_rn(s, x[i]);
  lane[t] = s;
  __syncthreads();
  for (int h = kMeanLanes / 2; h > 0; h >>= 1) {
    if (t < h) lane[t] = __fadd_rn(lane[t], lane[t + h]);
    __syncthreads();
  }
  if (t == 0) *out = __fmul_rn(lane[0], __fdiv_rn(1.0f, static_cast<float>(n)));
}

// (absmax - offset) quantized blockwise (256) with the dynamic map: one block per 256 values.
__global__ void dynamic_quantize_kernel(const float* __restrict__ absmax, int64_t nb, const float* __restrict__ offset,
                                        uint8_t* __restrict__ qabsmax, float* __restrict__ absmax2) {
  __shared__ float map[256];
  map[threadIdx.x] = c_dyn_map[threadIdx.x];
  const int64_t i = static_cast<int64_t>(blockIdx.x) * 256 + threadIdx.x;
  const float v = i < nb ? __fsub_rn(absmax[i], *offset) : 0.0f;
  const float a = dev::block_max(fabsf(v));  // synchronises, so map is ready too
  if (threadIdx.x == 0) absmax2[blockIdx.x] = a;
  if (i < nb) qabsmax[i] = dynamic_encode(map, __fmul_rn(v, __frcp_rn(a)));
}

__device__ __forceinline__ float block_absmax(int64_t b, const float* absmax, const uint8_t* qabsmax,
                                              const float* absmax2, float offset, const float* map) {
  if (absmax) return absmax[b];
  return __fadd_rn(__fmul_rn(map[qabsmax[b]], absmax2[b / 256]), offset);
}

template <typename T>
__device__ __forceinline__ void store16(T* out, const float* v);
template <>
__device__ __forceinline__ void store16<bf16>(bf16* out, const float* v) {
  uint4 p[2];
  uint32_t* u = reinterpret_cast<uint32_t*>(p);
#pragma unroll
  for (int j = 0; j < 8; ++j) {
    const __nv_bfloat162 h = __floats2bfloat162_rn(v[2 * j], v[2 * j + 1]);
    u[j] = *reinterpret_cast<const uint32_t*>(&h);
  }
  reinterpret_cast<uint4*>(out)[0] = p[0];
  reinterpret_cast<uint4*>(out)[1] = p[1];
}
template <>
__device__ __forceinline__ void store16<float>(float* out, const float* v) {
#pragma unroll
  for (int j = 0; j < 4; ++j) reinterpret_cast<float4*>(out)[j] = make_float4(v[4 * j], v[4 * j + 1], v[4 * j + 2], v[4 * j + 3]);
}

template <typename T>
__global__ void nf4_dequantize_kernel(const uint8_t* __restrict__ codes, int64_t n, int blk,
                                      const float* __restrict__ absmax, const uint8_t* __restrict__ qabsmax,
                                      const float* __restrict__ absmax2, float offset, T* __restrict__ out) {
  __shared__ float val[16];
  __shared__ float map[256];
  for (int i = threadIdx.x; i < 256; i += blockDim.x) map[i] = c_dyn_map[i];
  if (threadIdx.x < 16) val[threadIdx.x] = c_nf4_val[threadIdx.x];
  __syncthreads();
  const int64_t groups = n / 16;  // whole groups of 16 values; blk is a multiple of 16
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t g = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; g < groups; g += stride) {
    const int64_t i0 = g * 16;
    const float a = block_absmax(i0 / blk, absmax, qabsmax, absmax2, offset, map);
    const uint2 packed = reinterpret_cast<const uint2*>(codes)[g];
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&packed);
    float v[16];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
      v[2 * j] = __fmul_rn(val[bytes[j] >> 4], a);
      v[2 * j + 1] = __fmul_rn(val[bytes[j] & 0x0F], a);
    }
    store16(out + i0, v);
  }
  // The tail (n not a multiple of 16): one value per thread of the first block.
  if (blockIdx.x == 0) {
    for (int64_t i = groups * 16 + threadIdx.x; i < n; i += blockDim.x) {
      const float a = block_absmax(i / blk, absmax, qabsmax, absmax2, offset, map);
      const uint8_t byte = codes[i / 2];
      out[i] = dev::from_f<T>(__fmul_rn(val[(i & 1) ? (byte & 0x0F) : (byte >> 4)], a));
    }
  }
}

}  // namespace

void nf4_quantize(const Tensor& w_in, Nf4Tensor& q) {
  upload_tables();
  const Tensor& w = w_in;
  if (w.dtype() != DType::bf16 && w.dtype() != DType::f32)
    ST_THROW("nf4_quantize on CUDA reads bf16 or f32, got ", w.str());
  const int64_t n = q.numel(), nb = q.nblocks();
  const int blk = static_cast<int>(q.cfg.block);
  Tensor amax = q.cfg.double_quant ? Tensor::empty({nb}, DType::f32, Device::cuda, MemCategory::workspace) : q.absmax;
  const int threads = 256;
  const unsigned grid = grid_1d(nb, threads / 32);
  if (w.dtype() == DType::bf16)
    nf4_quantize_kernel<<<grid, threads, 0, stream()>>>(static_cast<const bf16*>(w.data()), n, blk,
                                                         q.codes.ptr<uint8_t>(), amax.ptr<float>());
  else
    nf4_quantize_kernel<<<grid, threads, 0, stream()>>>(w.ptr<float>(), n, blk, q.codes.ptr<uint8_t>(),
                                                         amax.ptr<float>());
  ST_CUDA_LAUNCH_CHECK("nf4_quantize");
  if (!q.cfg.double_quant) return;
  Tensor offset = Tensor::empty({1}, DType::f32, Device::cuda, MemCategory::workspace);
  fixed_order_mean_kernel<<<1, kMeanLanes, 0, stream()>>>(amax.ptr<float>(), nb, offset.ptr<float>());
  ST_CUDA_LAUNCH_CHECK("nf4_absmax_mean");
  const unsigned g2 = static_cast<unsigned>(ceil_div(nb, 256));
  dynamic_quantize_kernel<<<g2, 256, 0, stream()>>>(amax.ptr<float>(), nb, offset.ptr<float>(),
                                                    q.qabsmax.ptr<uint8_t>(), q.absmax2.ptr<float>());
  ST_CUDA_LAUNCH_CHECK("nf4_absmax_quantize");
  q.offset = offset.to_cpu(DType::f32).ptr<float>()[0];
}

void nf4_dequantize(const Nf4Tensor& q, Tensor& out) {
  upload_tables();
  const int64_t n = q.numel();
  const bool dq = q.cfg.double_quant;
  const float* absmax = dq ? nullptr : q.absmax.ptr<float>();
  const uint8_t* qabsmax = dq ? q.qabsmax.ptr<uint8_t>() : nullptr;
  const float* absmax2 = dq ? q.absmax2.ptr<float>() : nullptr;
  const int threads = 256;
  const unsigned grid = std::max(1u, grid_1d(n / 16, threads));
  const int blk = static_cast<int>(q.cfg.block);
  if (out.dtype() == DType::bf16)
    nf4_dequantize_kernel<<<grid, threads, 0, stream()>>>(q.codes.ptr<uint8_t>(), n, blk, absmax, qabsmax, absmax2,
                                                           q.offset, static_cast<bf16*>(out.data()));
  else if (out.dtype() == DType::f32)
    nf4_dequantize_kernel<<<grid, threads, 0, stream()>>>(q.codes.ptr<uint8_t>(), n, blk, absmax, qabsmax, absmax2,
                                                           q.offset, out.ptr<float>());
  else
    ST_THROW("nf4_dequantize on CUDA writes bf16 or f32, got ", out.str());
  ST_CUDA_LAUNCH_CHECK("nf4_dequantize");
}

}  // namespace st::cuda
