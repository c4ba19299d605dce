// RMSNorm with the Hugging Face rounding: xhat = x * rstd in fp32, rounded to the activation
// type, then multiplied by the weight (as LlamaRMSNorm does in bf16).
#include <algorithm>

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

// Each block takes rows_per_block rows: per row a block reduction gives mean(g * xhat); each
// thread keeps its columns' dw partial sums in registers over the rows and writes them once to
// the block's row of partial [blocks, C] (no atomics: column_sum_kernel adds the rows in order).
constexpr int kBackwardThreads = 256;
constexpr int kMaxCols = 32;  // columns per thread held in registers: C <= 32 * 256 = 8192

template <typename T>
__global__ void __launch_bounds__(kBackwardThreads) rmsnorm_backward_kernel(const T* __restrict__ dy, const T* __restrict__ x, const T* __restrict__ w,
                                        const float* __restrict__ rstd, T* __restrict__ dx, float* __restrict__ partial,
                                        int64_t N, int64_t C, int64_t rows_per_block) {
  float acc[kMaxCols];
#pragma unroll
  for (int k = 0; k < kMaxCols; ++k) acc[k] = 0.0f;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  for (int64_t row = row0; row < row0 + rows_per_block && row < N; ++row) {
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
  if (!partial) return;
#pragma unroll
  for (int k = 0; k < kMaxCols; ++k) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    if (c < C) partial[blockIdx.x * C + c] = acc[k];
  }
}

// dw[c] += sum over b of partial[b, c], b in a fixed order (deterministic): 32 columns per block,
// 32 threads down each column, then one thread adds the 32 sums in order. dw is f32, or bf16
// (master_weights = none: the f32 sum added to it and rounded once).
template <typename W>
__global__ void column_sum_kernel(const float* __restrict__ partial, W* __restrict__ dw, int64_t B, int64_t C) {
  __shared__ float s[32][33];
  const int64_t c = static_cast<int64_t>(blockIdx.x) * 32 + threadIdx.x;
  float a = 0.0f;
  if (c < C)
    for (int64_t b = threadIdx.y; b < B; b += 32) a += partial[b * C + c];
  s[threadIdx.y][threadIdx.x] = a;
  __syncthreads();
  if (threadIdx.y == 0 && c < C) {
    float t = 0.0f;
    for (int k = 0; k < 32; ++k) t += s[k][threadIdx.x];
    dw[c] = dev::from_f<W>(dev::to_f(dw[c]) + t);
  }
}

// Block sums of K values at once (one pair of barriers for K rows); every thread gets them.
template <int K>
__device__ __forceinline__ void block_sum_n(float (&v)[K]) {
  __shared__ float part[K][32];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = dev::warp_sum(v[k]);
  __syncthreads();  // part may still be read by a previous call
  if (lane == 0)
#pragma unroll
    for (int k = 0; k < K; ++k) part[k][warp] = v[k];
  __syncthreads();
#pragma unroll
  for (int k = 0; k < K; ++k) v[k] = dev::warp_sum(lane < nw ? part[k][lane] : 0.0f);  // same order in every warp
}

// bf16 rows with C % 8 == 0: 16-byte vectors; in the backward each thread owns up to kMaxVec
// vectors of columns (C <= 8 * kMaxVec * blockDim) and keeps their dw sums in registers.
union Vec8 {
  uint4 u;
  __nv_bfloat162 h[4];
};
constexpr int kMaxVec = 4;  // C8 <= kMaxVec * kBackwardThreads

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

// Each thread owns V vectors of 8 columns (C8 <= V * blockDim.x, every thread busy) and takes
// RU rows at a time (RU * V = 4: 4 vectors each of dy and x in flight per thread, one block
// reduction for the RU rows); dy and x stay in registers between the dot and the update. The
// dw sums stay in registers over the block's rows and go to its row of partial [blocks, C].
template <int V, int RU>
__global__ void __launch_bounds__(kBackwardThreads) rmsnorm_backward_vec8(
    const uint4* __restrict__ dy, const uint4* __restrict__ x, const uint4* __restrict__ w, const float* __restrict__ rstd,
    uint4* __restrict__ dx, float* __restrict__ partial, int64_t N, int64_t C8, int64_t rows_per_block) {
  float acc[V][8];
  Vec8 wv[V];
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    wv[k].u = c < C8 ? w[c] : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[k][e] = 0.0f;
  }
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * rows_per_block;
  const int64_t row_end = row0 + rows_per_block < N ? row0 + rows_per_block : N;
  const float inv_c = 1.0f / static_cast<float>(C8 * 8);
  for (int64_t row = row0; row < row_end; row += RU) {
    Vec8 dv[RU][V], xv[RU][V];
    float r[RU], dot[RU];
#pragma unroll
    for (int u = 0; u < RU; ++u) {
      const int64_t rr = row + u;
      r[u] = rr < row_end ? rstd[rr] : 0.0f;
      dot[u] = 0.0f;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int64_t c = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
        const bool ok = rr < row_end && c < C8;
        dv[u][k].u = ok ? dy[rr * C8 + c] : make_uint4(0, 0, 0, 0);
        xv[u][k].u = ok ? x[rr * C8 + c] : make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < RU; ++u)
#pragma unroll
      for (int k = 0; k < V; ++k)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float2 d = __bfloat1622float2(dv[u][k].h[e]), xf = __bfloat1622float2(xv[u][k].h[e]),
                       wf = __bfloat1622float2(wv[k].h[e]);
          dot[u] += d.x * wf.x * xf.x + d.y * wf.y * xf.y;
        }
    block_sum_n<RU>(dot);
#pragma unroll
    for (int u = 0; u < RU; ++u) {
      const int64_t rr = row + u;
      const float mean = dot[u] * r[u] * inv_c;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const int64_t c = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
        if (rr < row_end && c < C8) {
          Vec8 ov;
          ov.u = dx[rr * C8 + c];
#pragma unroll
          for (int e = 0; e < 4; ++e) {
            const float2 d = __bfloat1622float2(dv[u][k].h[e]), xf = __bfloat1622float2(xv[u][k].h[e]),
                         wf = __bfloat1622float2(wv[k].h[e]);
            const float2 o = __bfloat1622float2(ov.h[e]);
            ov.h[e] = __floats2bfloat162_rn(o.x + r[u] * (d.x * wf.x - xf.x * r[u] * mean),
                                            o.y + r[u] * (d.y * wf.y - xf.y * r[u] * mean));
            acc[k][2 * e] += d.x * xf.x * r[u];
            acc[k][2 * e + 1] += d.y * xf.y * r[u];
          }
          dx[rr * C8 + c] = ov.u;
        }
      }
    }
  }
  if (!partial) return;
#pragma unroll
  for (int k = 0; k < V; ++k) {
    const int64_t c = threadIdx.x + static_cast<int64_t>(k) * blockDim.x;
    if (c < C8) {
      float4* out = reinterpret_cast<float4*>(partial + (blockIdx.x * C8 + c) * 8);
      out[0] = make_float4(acc[k][0], acc[k][1], acc[k][2], acc[k][3]);
      out[1] = make_float4(acc[k][4], acc[k][5], acc[k][6], acc[k][7]);
    }
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

namespace {
// dw (+)= the column sums of the [B, C] partial sums (dw: f32 or bf16).
void column_sum(const float* partial, Tensor& dw, int64_t B, int64_t C) {
  const dim3 grid(static_cast<unsigned>(ceil_div(C, 32))), block(32, 32);
  if (dw.dtype() == DType::bf16)
    column_sum_kernel<<<grid, block, 0, stream()>>>(partial, static_cast<bf16*>(dw.data()), B, C);
  else
    column_sum_kernel<<<grid, block, 0, stream()>>>(partial, dw.ptr<float>(), B, C);
}

// Rows per block of the backward: enough blocks for about 16 resident warps per SM (memory
// parallelism), and no more (each block adds a row of C partial dw sums to read back).
int64_t backward_rows_per_block(int64_t N, int threads, int64_t multiple) {
  const int64_t warps = threads / 32;
  const int64_t target = static_cast<int64_t>(sm_count()) * std::max<int64_t>(1, 16 / warps);
  return ceil_div(std::max<int64_t>(1, ceil_div(N, target)), multiple) * multiple;
}

template <int V>
void launch_backward_vec8(const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd, Tensor& dx,
                          Tensor* dwp, int64_t N, int64_t C8) {
  constexpr int RU = 4 / V;
  const int threads = static_cast<int>(ceil_div(ceil_div(C8, V), 32) * 32);
  const int64_t rows = backward_rows_per_block(N, threads, RU);
  const int64_t blocks = ceil_div(N, rows);
  float* partial = dwp ? static_cast<float*>(raw_scratch(kScratchRmsnorm, static_cast<size_t>(blocks * C8 * 8) * sizeof(float)))
                       : nullptr;
  rmsnorm_backward_vec8<V, RU><<<static_cast<unsigned>(blocks), threads, 0, stream()>>>(
      static_cast<const uint4*>(dy.data()), static_cast<const uint4*>(x.data()), static_cast<const uint4*>(w.data()),
      rstd.ptr<float>(), static_cast<uint4*>(dx.data()), partial, N, C8, rows);
  if (dwp) column_sum(partial, *dwp, blocks, C8 * 8);
}

template <typename T>
void launch_backward(const T* dy, const T* x, const T* w, const float* rstd, T* dx, Tensor* dwp, int64_t N, int64_t C) {
  const int64_t rows = backward_rows_per_block(N, kBackwardThreads, 1);
  const int64_t blocks = ceil_div(N, rows);
  float* partial = dwp ? static_cast<float*>(raw_scratch(kScratchRmsnorm, static_cast<size_t>(blocks * C) * sizeof(float))) : nullptr;
  rmsnorm_backward_kernel<<<static_cast<unsigned>(blocks), kBackwardThreads, 0, stream()>>>(dy, x, w, rstd, dx, partial, N, C, rows);
  if (dwp) column_sum(partial, *dwp, blocks, C);
}
}  // namespace

void rmsnorm_backward(int64_t N, int64_t C, const Tensor& dy, const Tensor& x, const Tensor& w, const Tensor& rstd,
                      Tensor& dx, Tensor* dw) {
  if (N == 0) return;
  if (C > static_cast<int64_t>(kMaxCols) * kBackwardThreads)
    ST_THROW("rmsnorm_backward on CUDA: C=", C, " above ", kMaxCols * kBackwardThreads);
  Tensor* dwp = (dw && dw->defined()) ? dw : nullptr;  // f32 or bf16 (the op layer checked)
  const int64_t C8 = C / 8;
  if (x.dtype() == DType::bf16 && C % 8 == 0 && C8 <= kMaxVec * kBackwardThreads &&
      aligned16({dy.data(), x.data(), w.data(), dx.data()})) {
    if (C8 <= kBackwardThreads) launch_backward_vec8<1>(dy, x, w, rstd, dx, dwp, N, C8);
    else if (C8 <= 2 * kBackwardThreads) launch_backward_vec8<2>(dy, x, w, rstd, dx, dwp, N, C8);
    else launch_backward_vec8<4>(dy, x, w, rstd, dx, dwp, N, C8);
  } else if (x.dtype() == DType::bf16) {
    launch_backward(static_cast<const bf16*>(dy.data()), static_cast<const bf16*>(x.data()),
                    static_cast<const bf16*>(w.data()), rstd.ptr<float>(), static_cast<bf16*>(dx.data()), dwp, N, C);
  } else {
    launch_backward(dy.ptr<float>(), x.ptr<float>(), w.ptr<float>(), rstd.ptr<float>(), dx.ptr<float>(), dwp, N, C);
  }
  ST_CUDA_LAUNCH_CHECK("rmsnorm_backward");
}

}  // namespace st::cuda
