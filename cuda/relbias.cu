// T5 relative position bias: gather from the [num_buckets, H] table, and its gradient summed
// back per (bucket, head) by a two-stage reduction (many (q, k) pairs share a bucket: atomics on
// the num_buckets * H addresses contended; 1.4 ms per call at 16 x 512 x 512 on an H100).
#include <algorithm>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace st::cuda {

namespace {
// The bias is f32 (an attention statistic) whatever the table's dtype.
template <typename T>
__global__ void relbias_forward_kernel(const T* __restrict__ table, const int32_t* __restrict__ buckets,
                                       float* __restrict__ bias, int64_t H, int64_t QK) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < H * QK;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t h = i / QK, qk = i % QK;
    bias[i] = dev::to_f(table[static_cast<int64_t>(buckets[qk]) * H + h]);
  }
}

// Fallback for tables too tall for the shared-memory histogram below: f32 atomics.
template <typename T>
__global__ void relbias_backward_atomic_kernel(const T* __restrict__ dbias, const int32_t* __restrict__ buckets,
                                               float* __restrict__ dtable, int64_t H, int64_t QK) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < H * QK;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t h = i / QK, qk = i % QK;
    atomicAdd(dtable + static_cast<int64_t>(buckets[qk]) * H + h, dev::to_f(dbias[i]));
  }
}

// The gradient without contention, deterministically. Block (chunk, h) reads a contiguous chunk
// of head h's [Tq * Tk] gradient (coalesced) and each thread adds into its own column of a
// shared [num_buckets, threads] histogram (address b * threads + t: always bank t % 32, so no
// conflicts and no atomics), summing runs of equal buckets in a register first (a T5 row's
// buckets change rarely). The block then sums each bucket's row in a fixed order into
// partial[h, chunk, bucket]; relbias_backward_finish adds the chunks in order.
template <typename T>
__global__ void relbias_backward_partial(const T* __restrict__ dbias, const int32_t* __restrict__ buckets,
                                         float* __restrict__ partial, int64_t QK, int NB, int64_t per_block) {
  extern __shared__ float hist[];  // [NB][blockDim.x]
  const int t = threadIdx.x, nt = blockDim.x;
  for (int b = 0; b < NB; ++b) hist[b * nt + t] = 0.0f;  // only this thread's column: no barrier needed
  const int64_t h = blockIdx.y, begin = blockIdx.x * per_block;
  const int64_t end = begin + per_block < QK ? begin + per_block : QK;
  const T* d = dbias + h * QK;
  int cur = -1;
  float run = 0.0f;
  for (int64_t i = begin + t; i < end; i += nt) {
    const int b = buckets[i];
    const float v = dev::to_f(d[i]);
    if (b == cur) {
      run += v;
    } else {
      if (cur >= 0) hist[cur * nt + t] += run;
      // A bucket outside the table (never made by t5_relative_buckets) is dropped, not written
      // out of bounds.
      cur = b >= 0 && b < NB ? b : -1;
      run = v;
    }
  }
  if (cur >= 0) hist[cur * nt + t] += run;
  __syncthreads();
  const int lane = t & 31, warp = t >> 5, nwarps = nt >> 5;
  for (int b = warp; b < NB; b += nwarps) {
    float s = 0.0f;
    for (int k = lane; k < nt; k += 32) s += hist[b * nt + k];
    s = dev::warp_sum(s);
    if (lane == 0) partial[(h * gridDim.x + blockIdx.x) * NB + b] = s;
  }
}

// dtable[b, h] += sum over chunks of partial[h, chunk, b], chunks in order, added once into an
// f32 or a bf16 gradient (master_weights = none: one rounding per call).
template <typename G>
__global__ void relbias_backward_finish(const float* __restrict__ partial, G* __restrict__ dtable, int64_t H,
                                        int NB, int chunks) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i >= NB * H) return;
  const int64_t b = i / H, h = i % H;
  float s = 0.0f;
  for (int c = 0; c < chunks; ++c) s += partial[(h * chunks + c) * NB + b];
  dtable[i] = dev::from_f<G>(dev::to_f(dtable[i]) + s);
}

constexpr int kRelbiasThreads = 256;
constexpr size_t kRelbiasMaxShared = 48 * 1024;  // without the opt-in to larger dynamic shared memory

template <typename T, typename G>
void relbias_backward_launch(const T* dbias, const int32_t* buckets, G* dtable, int64_t NB, int64_t H, int64_t QK) {
  int nt = kRelbiasThreads;
  while (nt > 32 && static_cast<size_t>(NB) * nt * sizeof(float) > kRelbiasMaxShared) nt /= 2;
  if (static_cast<size_t>(NB) * nt * sizeof(float) > kRelbiasMaxShared) {
    if constexpr (std::is_same_v<G, float>) {
      relbias_backward_atomic_kernel<<<grid_1d(H * QK, 256), 256, 0, stream()>>>(dbias, buckets, dtable, H, QK);
    } else {  // a bf16 gradient: the atomics add into a zeroed f32 copy, added once into it
      float* sum = static_cast<float*>(raw_scratch(kScratchRelbias, static_cast<size_t>(NB * H) * sizeof(float)));
      ST_CUDA_CHECK(cudaMemsetAsync(sum, 0, static_cast<size_t>(NB * H) * sizeof(float), stream()));
      relbias_backward_atomic_kernel<<<grid_1d(H * QK, 256), 256, 0, stream()>>>(dbias, buckets, sum, H, QK);
      fold_f32_into_bf16(sum, dtable, NB * H, 1.0f, true);
    }
    return;
  }
  // About eight blocks per SM over all heads; at least one thread's worth of work per block.
  const int64_t want = ceil_div(8 * static_cast<int64_t>(sm_count()), H);
  const int64_t chunks = std::max<int64_t>(1, std::min<int64_t>({want, ceil_div(QK, nt), 65535}));
  const int64_t per_block = ceil_div(QK, chunks);
  const int64_t used = ceil_div(QK, per_block);  // chunks actually holding elements
  float* partial = static_cast<float*>(raw_scratch(kScratchRelbias, static_cast<size_t>(H * used * NB) * sizeof(float)));
  relbias_backward_partial<<<dim3(static_cast<unsigned>(used), static_cast<unsigned>(H)), nt,
                             static_cast<size_t>(NB) * nt * sizeof(float), stream()>>>(dbias, buckets, partial, QK,
                                                                                        static_cast<int>(NB), per_block);
  relbias_backward_finish<<<static_cast<unsigned>(ceil_div(NB * H, 256)), 256, 0, stream()>>>(
      partial, dtable, H, static_cast<int>(NB), static_cast<int>(used));
}
}  // namespace

void relative_bias_forward(const Tensor& table, const Tensor& buckets, int64_t Tq, int64_t Tk, Tensor& bias) {
  const int64_t H = table.dim(1), QK = Tq * Tk;
  if (H * QK == 0) return;
  if (bias.dtype() != DType::f32) ST_THROW("relative_bias_forward on CUDA writes an f32 bias");
  if (table.dtype() == DType::bf16)
    relbias_forward_kernel<<<grid_1d(H * QK, 256), 256, 0, stream()>>>(
        static_cast<const __nv_bfloat16*>(table.data()), buckets.ptr<int32_t>(), bias.ptr<float>(), H, QK);
  else
    relbias_forward_kernel<<<grid_1d(H * QK, 256), 256, 0, stream()>>>(table.ptr<float>(), buckets.ptr<int32_t>(),
                                                                         bias.ptr<float>(), H, QK);
  ST_CUDA_LAUNCH_CHECK("relative_bias_forward");
}

namespace {
template <typename G>
void relbias_backward_to(const Tensor& dbias, const Tensor& buckets, G* dtable, int64_t NB, int64_t H, int64_t QK) {
  if (dbias.dtype() == DType::bf16)
    relbias_backward_launch(static_cast<const __nv_bfloat16*>(dbias.data()), buckets.ptr<int32_t>(), dtable, NB, H, QK);
  else
    relbias_backward_launch(dbias.ptr<float>(), buckets.ptr<int32_t>(), dtable, NB, H, QK);
}
}  // namespace

void relative_bias_backward(const Tensor& dbias, const Tensor& buckets, int64_t Tq, int64_t Tk, Tensor& dtable) {
  const int64_t H = dtable.dim(1), QK = Tq * Tk;
  if (H * QK == 0) return;
  const int64_t NB = dtable.dim(0);
  if (dtable.dtype() == DType::bf16)
    relbias_backward_to(dbias, buckets, static_cast<__nv_bfloat16*>(dtable.data()), NB, H, QK);
  else if (dtable.dtype() == DType::f32)
    relbias_backward_to(dbias, buckets, dtable.ptr<float>(), NB, H, QK);
  else
    ST_THROW("relative_bias_backward on CUDA: the table gradient must be f32 or bf16, got ", dtable.str());
  ST_CUDA_LAUNCH_CHECK("relative_bias_backward");
}

}  // namespace st::cuda
