// Attention of n new queries over a key/value cache (ops/decode_attention.hpp). One block per
// (query, head): its 8 warps take the visible keys round-robin, each warp computes a key's score
// with its 32 lanes over the head dimension (lane d, d+32, ...: the query and the accumulator in
// registers, D <= kDecodeMaxHeadDim), keeps an online softmax (running max, sum and weighted sum
// of values), and the block merges the warps' partial results in shared memory. Scores, sums and
// accumulation in f32; deterministic (fixed assignment of keys to warps, fixed merge order).
#include "cuda/common.cuh"
#include "cuda/kernels.cuh"
#include "ops/decode_attention.hpp"

namespace st::cuda {

namespace {

constexpr int kWarps = 8;
constexpr int kRegs = static_cast<int>(kDecodeMaxHeadDim / 32);

template <typename T>
__global__ void decode_attention_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                        T* __restrict__ out, int64_t past, int Hq, int Hkv, int D, float scale) {
  const int i = blockIdx.x, h = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int kh = h / (Hq / Hkv);
  const int64_t keys = past + i + 1, kv_stride = static_cast<int64_t>(Hkv) * D;
  const T* qi = q + (static_cast<int64_t>(i) * Hq + h) * D;
  float qr[kRegs], acc[kRegs];
#pragma unroll
  for (int r = 0; r < kRegs; ++r) {
    const int d = lane + 32 * r;
    qr[r] = d < D ? dev::to_f(qi[d]) * scale : 0.f;
    acc[r] = 0.f;
  }
  float m = -INFINITY, l = 0.f;
  for (int64_t j = warp; j < keys; j += kWarps) {
    const T* kj = k + j * kv_stride + static_cast<int64_t>(kh) * D;
    const T* vj = v + j * kv_stride + static_cast<int64_t>(kh) * D;
    float dot = 0.f;
#pragma unroll
    for (int r = 0; r < kRegs; ++r) {
      const int d = lane + 32 * r;
      if (d < D) dot += qr[r] * dev::to_f(kj[d]);
    }
    dot = dev::warp_sum(dot);
    const float mn = fmaxf(m, dot);
    const float corr = expf(m - mn);  // 0 for the first key (m = -inf)
    const float p = expf(dot - mn);
    l = l * corr + p;
#pragma unroll
    for (int r = 0; r < kRegs; ++r) {
      const int d = lane + 32 * r;
      if (d < D) acc[r] = acc[r] * corr + p * dev::to_f(vj[d]);
    }
    m = mn;
  }
  __shared__ float sm[kWarps], sl[kWarps];
  __shared__ float sacc[kWarps][kDecodeMaxHeadDim];
  if (lane == 0) {
    sm[warp] = m;
    sl[warp] = l;
  }
#pragma unroll
  for (int r = 0; r < kRegs; ++r) {
    const int d = lane + 32 * r;
    if (d < D) sacc[warp][d] = acc[r];
  }
  __syncthreads();
  float M = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, sm[w]);
  T* o = out + (static_cast<int64_t>(i) * Hq + h) * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float L = 0.f, num = 0.f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) {
      if (sl[w] == 0.f) continue;  // a warp that saw no key
      const float c = expf(sm[w] - M);
      L += c * sl[w];
      num += c * sacc[w][d];
    }
    o[d] = dev::from_f<T>(num / L);
  }
}

}  // namespace

void decode_attention(int64_t n, int64_t past, int64_t Hq, int64_t Hkv, int64_t D, float scale, const Tensor& q,
                      const Tensor& k, const Tensor& v, Tensor& out) {
  if (n > 2147483647 || Hq > 65535) ST_THROW("decode_attention: ", n, " queries x ", Hq, " heads exceed the CUDA grid");
  const dim3 grid(static_cast<unsigned>(n), static_cast<unsigned>(Hq));
  const int threads = 32 * kWarps;
  if (q.dtype() == DType::bf16)
    decode_attention_kernel<<<grid, threads, 0, stream()>>>(
        static_cast<const __nv_bfloat16*>(q.data()), static_cast<const __nv_bfloat16*>(k.data()),
        static_cast<const __nv_bfloat16*>(v.data()), static_cast<__nv_bfloat16*>(out.data()), past,
        static_cast<int>(Hq), static_cast<int>(Hkv), static_cast<int>(D), scale);
  else
    decode_attention_kernel<<<grid, threads, 0, stream()>>>(q.ptr<float>(), k.ptr<float>(), v.ptr<float>(),
                                                            out.ptr<float>(), past, static_cast<int>(Hq),
                                                            static_cast<int>(Hkv), static_cast<int>(D), scale);
  ST_CUDA_LAUNCH_CHECK("decode_attention");
}

}  // namespace st::cuda
