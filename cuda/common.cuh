// Shared pieces of the CUDA kernels: bf16 conversion, launch checks, the stream, small math.
//
// Numerics (DESIGN.md): bf16 weights and activations, fp32 accumulation everywhere, fp32 norm
// statistics, log-sum-exp, losses, gradients of trainable parameters and optimizer state.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "core/rng.hpp"
#include "cuda/device.cuh"

namespace st::cuda {

// All of shardtune's device work goes to one stream (the legacy default stream for now, so
// host copies synchronise with it implicitly).
inline cudaStream_t stream() { return 0; }

// After a launch: the launch error always; with SHARDTUNE_CUDA_SYNC=1 in the environment, also
// a device synchronisation, so an asynchronous fault is reported at the kernel that caused it.
void check_launch(const char* kernel, const char* file, int line);
bool debug_sync();

// Streaming multiprocessors of the current device (queried once), for sizing reduction grids.
int sm_count();
// Raw device scratch for the two-stage reductions (per-block partial sums): `slot` names one
// buffer, grown on demand and kept for the process, outside the allocator like the CUDA
// context's own memory. A few MiB, except the skinny slot: the pair kernel's f32 partial sums,
// 12-23 MB at the 7B / 13B shapes, which the planner's dry run counts as workspace (so its peak
// is above the allocator's measured one by that much). The caller's kernels must be done with the previous
// contents (one stream: any later launch is ordered after them).
void* raw_scratch(int slot, size_t bytes);
enum ScratchSlot { kScratchRmsnorm = 0, kScratchRelbias = 1, kScratchSkinny = 2, kScratchSlots = 3 };
// The device copy of a table of per-tensor descriptors for a kernel that takes a list of tensors
// in one launch (the gradient norm, AdamW, zeroing). `kind` names the user; each keeps its last
// few distinct tables on the device, found again by their bytes, so a list that comes back every
// step (the gradients, the parameters) is uploaded once and a step of the same list costs a
// comparison on the host. A new table goes up with one cudaMemcpyAsync on stream() (ordered
// after the kernels that read the buffer it reuses); `host` may be freed once this returns.
const void* device_table(int kind, const void* host, size_t bytes);
enum TableKind { kTableSumSquares = 0, kTableAdamW = 1, kTableZero = 2, kTableAdamWBf16 = 3, kTableKinds = 4 };

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline unsigned grid_1d(int64_t n, int threads) {
  const int64_t blocks = ceil_div(n, threads);
  return static_cast<unsigned>(blocks < 65535 * 32 ? blocks : 65535 * 32);
}

}  // namespace st::cuda

#define ST_CUDA_LAUNCH_CHECK(name) ::st::cuda::check_launch(name, __FILE__, __LINE__)

// Device helpers.
namespace st::cuda::dev {

__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f(float x) { return x; }
template <typename T> __device__ __forceinline__ T from_f(float x);
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ float from_f<float>(float x) { return x; }

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // partial may still be read by a previous call
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < static_cast<int>(blockDim.x >> 5) ? partial[lane] : 0.0f;
    s = warp_sum(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

__device__ __forceinline__ float block_max(float v) {
  __shared__ float partial[32];
  __shared__ float total;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) partial[warp] = v;
  __syncthreads();
  if (warp == 0) {
    float s = lane < static_cast<int>(blockDim.x >> 5) ? partial[lane] : -INFINITY;
    s = warp_max(s);
    if (lane == 0) total = s;
  }
  __syncthreads();
  return total;
}

// Tables of per-tensor chunks (kernels over a list of tensors in one launch, one chunk per
// block): the index of the entry that holds chunk b, the last of the nt entries (sorted by
// first_block, the first at 0) with first_block <= b.
template <typename E>
__device__ __forceinline__ int chunk_owner(const E* __restrict__ ts, int nt, unsigned b) {
  int lo = 0, hi = nt - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (ts[mid].first_block <= static_cast<int64_t>(b)) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

// SplitMix64 and its counter-based uniform: core/rng.hpp's, host and device.
using st::counter_uniform_keyed;
using st::splitmix64;

}  // namespace st::cuda::dev
