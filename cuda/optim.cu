// AdamW (PyTorch semantics) on f32 master weights with the bf16 working copy written in the same
// pass; gradient-norm reduction and scaling.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace st::cuda {

namespace {

template <typename W>
__global__ void adamw_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, W* __restrict__ working, int64_t n, float decay, float step_size,
                             float b1, float b2, float inv_bc2_sqrt, float eps, float grad_scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float gi = g[i] * grad_scale;
    float pi = p[i] * decay;
    const float mi = b1 * m[i] + (1.0f - b1) * gi;
    const float vi = b2 * v[i] + (1.0f - b2) * gi * gi;
    pi -= step_size * mi / (sqrtf(vi) * inv_bc2_sqrt + eps);
    p[i] = pi;
    m[i] = mi;
    v[i] = vi;
    if (working) working[i] = dev::from_f<W>(pi);
  }
}

// The same update four elements at a time (16-byte loads and stores), for n % 4 == 0 and
// 16-byte aligned f32 arrays (8-byte aligned bf16 working copy); element for element the same
// arithmetic as adamw_kernel.
template <typename W>
__global__ void adamw_vec4_kernel(float4* __restrict__ p, const float4* __restrict__ g, float4* __restrict__ m,
                                  float4* __restrict__ v, W* __restrict__ working, int64_t n4, float decay,
                                  float step_size, float b1, float b2, float inv_bc2_sqrt, float eps, float grad_scale) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const float4 g4 = g[i];
    float4 p4 = p[i], m4 = m[i], v4 = v[i];
    float* pe = &p4.x;
    float* me = &m4.x;
    float* ve = &v4.x;
    const float* ge = &g4.x;
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const float gi = ge[e] * grad_scale;
      float pi = pe[e] * decay;
      const float mi = b1 * me[e] + (1.0f - b1) * gi;
      const float vi = b2 * ve[e] + (1.0f - b2) * gi * gi;
      pi -= step_size * mi / (sqrtf(vi) * inv_bc2_sqrt + eps);
      pe[e] = pi;
      me[e] = mi;
      ve[e] = vi;
    }
    p[i] = p4;
    m[i] = m4;
    v[i] = v4;
    if (working) {
      W* wk = working + 4 * i;
      if constexpr (sizeof(W) == 2) {
        const __nv_bfloat162 lo = __floats2bfloat162_rn(p4.x, p4.y), hi = __floats2bfloat162_rn(p4.z, p4.w);
        uint2 packed;
        packed.x = *reinterpret_cast<const uint32_t*>(&lo);
        packed.y = *reinterpret_cast<const uint32_t*>(&hi);
        *reinterpret_cast<uint2*>(wk) = packed;
      } else {
#pragma unroll
        for (int e = 0; e < 4; ++e) wk[e] = dev::from_f<W>(pe[e]);
      }
    }
  }
}

// Sums of squares over many tensors in one launch, deterministic: block i takes chunk i of the
// table (one tensor's elements [begin, begin + kSumChunk)), writes its f32 sum (as a double) to
// its own slot, and sum_partials_kernel adds the slots in a fixed order. No atomics, so the
// gradient norm and with it the clipping are the same bits in every run (exact resume and
// repeatable runs need that); the chunking depends only on the tensors' sizes.
struct SumTensor {
  const void* ptr;
  int64_t n;
  int64_t first_block;  // index of this tensor's first chunk
  int32_t bf16;         // element type: 1 bf16, 0 f32
  int32_t pad;
};
constexpr int kSumSqThreads = 512;
constexpr int64_t kSumChunk = 64 * kSumSqThreads;  // elements per block: 64 per thread

__global__ void __launch_bounds__(kSumSqThreads) sum_squares_multi_kernel(const SumTensor* __restrict__ ts, int nt,
                                                                         double* __restrict__ partial) {
  // The tensor holding this block's chunk: the last with first_block <= blockIdx.x.
  int lo = 0, hi = nt - 1;
  while (lo < hi) {
    const int mid = (lo + hi + 1) / 2;
    if (ts[mid].first_block <= static_cast<int64_t>(blockIdx.x)) lo = mid;
    else hi = mid - 1;
  }
  const SumTensor t = ts[lo];
  const int64_t begin = (static_cast<int64_t>(blockIdx.x) - t.first_block) * kSumChunk;
  const int64_t end = begin + kSumChunk < t.n ? begin + kSumChunk : t.n;
  float s = 0.0f;
  if (t.bf16) {
    const __nv_bfloat16* x = static_cast<const __nv_bfloat16*>(t.ptr);
#pragma unroll 4
    for (int64_t i = begin + threadIdx.x; i < end; i += kSumSqThreads) {
      const float v = __bfloat162float(x[i]);
      s += v * v;
    }
  } else {
    const float* x = static_cast<const float*>(t.ptr);
    if (reinterpret_cast<uintptr_t>(x) % 16 == 0 && end - begin == kSumChunk) {
      // A whole chunk of an aligned f32 tensor: 16-byte loads (begin is a multiple of 4).
      const float4* x4 = reinterpret_cast<const float4*>(x + begin);
#pragma unroll
      for (int k = 0; k < static_cast<int>(kSumChunk / 4 / kSumSqThreads); ++k) {
        const float4 v = x4[threadIdx.x + k * kSumSqThreads];
        s += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
      }
    } else {
#pragma unroll 4
      for (int64_t i = begin + threadIdx.x; i < end; i += kSumSqThreads) s += x[i] * x[i];
    }
  }
  s = dev::block_sum(s);
  if (threadIdx.x == 0) partial[blockIdx.x] = static_cast<double>(s);
}

constexpr int kSumThreads = 1024;
// One block: thread t adds slots t, t + 1024, ... in order; thread 0 adds the 1024 results in order.
__global__ void sum_partials_kernel(const double* __restrict__ partial, int64_t n, double* __restrict__ out) {
  __shared__ double lane[kSumThreads];
  double s = 0;
  for (int64_t i = threadIdx.x; i < n; i += kSumThreads) s += partial[i];
  lane[threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    double t = 0;
    for (int i = 0; i < kSumThreads; ++i) t += lane[i];
    *out = t;
  }
}

template <typename T>
__global__ void scale_kernel(T* x, int64_t n, float s) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = dev::from_f<T>(dev::to_f(x[i]) * s);
}

template <typename T>
__global__ void axpy_kernel(float a, const T* x, T* y, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = dev::from_f<T>(dev::to_f(y[i]) + a * dev::to_f(x[i]));
}

}  // namespace

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, Tensor* working, double lr, double beta1,
                  double beta2, double eps, double weight_decay, int64_t step, double grad_scale) {
  const int64_t n = param.numel();
  if (n == 0) return;
  if (param.dtype() != DType::f32 || grad.dtype() != DType::f32 || m.dtype() != DType::f32 || v.dtype() != DType::f32)
    ST_THROW("adamw_update on CUDA: master, gradient and moments must be f32 (", param.str(), ", ", grad.str(), ")");
  const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(step));
  const double bc2_sqrt = std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step)));
  const float decay = static_cast<float>(1.0 - lr * weight_decay), step_size = static_cast<float>(lr / bc1);
  const bool bf16_copy = working && working->defined() && working->dtype() == DType::bf16;
  const auto a16 = [](const void* q) { return reinterpret_cast<uintptr_t>(q) % 16 == 0; };
  if (n % 4 == 0 && a16(param.data()) && a16(grad.data()) && a16(m.data()) && a16(v.data()) &&
      (!bf16_copy || reinterpret_cast<uintptr_t>(working->data()) % 8 == 0)) {
    const int64_t n4 = n / 4;
    const unsigned g4 = grid_1d(n4, 256);
    adamw_vec4_kernel<<<g4, 256, 0, stream()>>>(
        static_cast<float4*>(param.data()), static_cast<const float4*>(grad.data()), static_cast<float4*>(m.data()),
        static_cast<float4*>(v.data()), bf16_copy ? static_cast<__nv_bfloat16*>(working->data()) : nullptr, n4, decay,
        step_size, static_cast<float>(beta1), static_cast<float>(beta2), static_cast<float>(1.0 / bc2_sqrt),
        static_cast<float>(eps), static_cast<float>(grad_scale));
    ST_CUDA_LAUNCH_CHECK("adamw_update");
    return;
  }
  const unsigned g = grid_1d(n, 256);
  if (bf16_copy)
    adamw_kernel<<<g, 256, 0, stream()>>>(param.ptr<float>(), grad.ptr<float>(), m.ptr<float>(), v.ptr<float>(),
                                          static_cast<__nv_bfloat16*>(working->data()), n, decay, step_size,
                                          static_cast<float>(beta1), static_cast<float>(beta2),
                                          static_cast<float>(1.0 / bc2_sqrt), static_cast<float>(eps),
                                          static_cast<float>(grad_scale));
  else
    adamw_kernel<<<g, 256, 0, stream()>>>(param.ptr<float>(), grad.ptr<float>(), m.ptr<float>(), v.ptr<float>(),
                                          static_cast<float*>(nullptr), n, decay, step_size, static_cast<float>(beta1),
                                          static_cast<float>(beta2), static_cast<float>(1.0 / bc2_sqrt),
                                          static_cast<float>(eps), static_cast<float>(grad_scale));
  ST_CUDA_LAUNCH_CHECK("adamw_update");
}

namespace {
// Raw device scratch (one double per chunk of the sums of squares, and the tensor table),
// outside the allocator like the CUDA context's own memory.
template <typename E>
E* device_array(E*& d, int64_t& cap, int64_t n) {
  if (n > cap) {
    if (d) ST_CUDA_CHECK(cudaFree(d));
    cap = std::max<int64_t>(n, 2 * cap);
    ST_CUDA_CHECK(cudaMalloc(&d, static_cast<size_t>(cap) * sizeof(E)));
  }
  return d;
}
}  // namespace

double sum_squares_total(const std::vector<const Tensor*>& xs) {
  // The table of (pointer, size, first chunk): uploaded only when it differs from the last call's
  // (the gradient list is the same every step).
  static std::vector<SumTensor> last;
  static SumTensor* d_table = nullptr;
  static int64_t table_cap = 0;
  static double* d_partial = nullptr;
  static int64_t partial_cap = 0;
  std::vector<SumTensor> table;
  table.reserve(xs.size());
  int64_t blocks = 0;
  for (const Tensor* x : xs) {
    if (x->numel() == 0) continue;
    if (x->dtype() != DType::f32 && x->dtype() != DType::bf16) ST_THROW("sum_squares on CUDA: unsupported ", x->str());
    table.push_back(SumTensor{x->data(), x->numel(), blocks, x->dtype() == DType::bf16 ? 1 : 0, 0});
    blocks += ceil_div(x->numel(), kSumChunk);
  }
  if (blocks == 0) return 0.0;
  if (blocks > 0x7fffffff) ST_THROW("sum_squares on CUDA: ", blocks, " chunks");
  const auto same = [&] {
    if (last.size() != table.size()) return false;
    for (size_t i = 0; i < table.size(); ++i)
      if (last[i].ptr != table[i].ptr || last[i].n != table[i].n || last[i].bf16 != table[i].bf16) return false;
    return true;
  };
  if (!same() || table_cap < static_cast<int64_t>(table.size())) {
    SumTensor* d = device_array(d_table, table_cap, static_cast<int64_t>(table.size()));
    // Pageable source: returns once the table is read, so `table` may go out of scope.
    ST_CUDA_CHECK(cudaMemcpyAsync(d, table.data(), table.size() * sizeof(SumTensor), cudaMemcpyHostToDevice, stream()));
    last = table;
  }
  double* d = device_array(d_partial, partial_cap, blocks + 1);
  sum_squares_multi_kernel<<<static_cast<unsigned>(blocks), kSumSqThreads, 0, stream()>>>(
      d_table, static_cast<int>(table.size()), d);
  ST_CUDA_LAUNCH_CHECK("sum_squares");
  sum_partials_kernel<<<1, kSumThreads, 0, stream()>>>(d, blocks, d + blocks);
  ST_CUDA_LAUNCH_CHECK("sum_partials");
  double h = 0;
  ST_CUDA_CHECK(cudaMemcpy(&h, d + blocks, sizeof(double), cudaMemcpyDeviceToHost));
  return h;
}

double sum_squares(const Tensor& x) { return sum_squares_total({&x}); }

void scale_inplace(Tensor& x, double s) {
  const int64_t n = x.numel();
  if (n == 0) return;
  if (x.dtype() == DType::f32) scale_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(x.ptr<float>(), n, static_cast<float>(s));
  else if (x.dtype() == DType::bf16)
    scale_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(static_cast<__nv_bfloat16*>(x.data()), n, static_cast<float>(s));
  else ST_THROW("scale_inplace on CUDA: unsupported ", x.str());
  ST_CUDA_LAUNCH_CHECK("scale_inplace");
}

void axpy(double a, const Tensor& x, Tensor& y) {
  const int64_t n = y.numel();
  if (n == 0) return;
  if (y.dtype() == DType::f32) axpy_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(static_cast<float>(a), x.ptr<float>(), y.ptr<float>(), n);
  else if (y.dtype() == DType::bf16)
    axpy_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(static_cast<float>(a), static_cast<const __nv_bfloat16*>(x.data()),
                                                       static_cast<__nv_bfloat16*>(y.data()), n);
  else ST_THROW("axpy on CUDA: unsupported ", y.str());
  ST_CUDA_LAUNCH_CHECK("axpy");
}

}  // namespace st::cuda
