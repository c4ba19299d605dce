// AdamW (PyTorch semantics) on f32 master weights with the bf16 working copy written in the same
// pass, one tensor or a list of them per launch; pure bf16 (no master, bf16 moments, stochastic
// rounding) for a list; gradient-norm reduction and scaling.
#include <algorithm>

#include "cuda/common.cuh"
#include "cuda/kernels.cuh"
#include "ops/adamw_element.hpp"
#include "ops/optim.hpp"

namespace st::cuda {

namespace {

using Coef = adamw::Coef<float>;

// Element i of one tensor (the scalar path): adamw::update, then the bf16 working copy.
__device__ __forceinline__ void adamw_one(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                                          float* __restrict__ v, __nv_bfloat16* __restrict__ working, int64_t i,
                                          float decay, const Coef& c) {
  float mi = m[i], vi = v[i];
  const float pi = adamw::update(p[i], g[i], mi, vi, decay, c);
  p[i] = pi;
  m[i] = mi;
  v[i] = vi;
  if (working) working[i] = __float2bfloat16(pi);
}

// Elements 4i .. 4i+3 (16-byte loads and stores of p, g, m, v; one 8-byte store of the bf16
// working copy): the same adamw::update per element, the same rounding of the copy.
__device__ __forceinline__ void adamw_four(float4* __restrict__ p, const float4* __restrict__ g, float4* __restrict__ m,
                                           float4* __restrict__ v, __nv_bfloat16* __restrict__ working, int64_t i,
                                           float decay, const Coef& c) {
  const float4 g4 = g[i];
  float4 p4 = p[i], m4 = m[i], v4 = v[i];
  p4.x = adamw::update(p4.x, g4.x, m4.x, v4.x, decay, c);
  p4.y = adamw::update(p4.y, g4.y, m4.y, v4.y, decay, c);
  p4.z = adamw::update(p4.z, g4.z, m4.z, v4.z, decay, c);
  p4.w = adamw::update(p4.w, g4.w, m4.w, v4.w, decay, c);
  p[i] = p4;
  m[i] = m4;
  v[i] = v4;
  if (working) {
    const __nv_bfloat162 lo = __floats2bfloat162_rn(p4.x, p4.y), hi = __floats2bfloat162_rn(p4.z, p4.w);
    uint2 packed;
    packed.x = *reinterpret_cast<const uint32_t*>(&lo);
    packed.y = *reinterpret_cast<const uint32_t*>(&hi);
    *reinterpret_cast<uint2*>(working + 4 * i) = packed;
  }
}

__global__ void adamw_kernel(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m,
                             float* __restrict__ v, __nv_bfloat16* __restrict__ working, int64_t n, Coef c) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    adamw_one(p, g, m, v, working, i, c.decay, c);
}

// For n % 4 == 0 and 16-byte aligned f32 arrays (8-byte aligned bf16 working copy).
__global__ void adamw_vec4_kernel(float4* __restrict__ p, const float4* __restrict__ g, float4* __restrict__ m,
                                  float4* __restrict__ v, __nv_bfloat16* __restrict__ working, int64_t n4, Coef c) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n4;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    adamw_four(p, g, m, v, working, i, c.decay, c);
}

// Many tensors in one launch: block b updates chunk b of the table (kAdamChunk elements of one
// tensor), 4-wide where the tensor's arrays are aligned (chunks start at multiples of 4), the
// last n % 4 elements of such a tensor and all of an unaligned one element by element.
struct AdamWTensor {
  float* p;
  const float* g;
  float* m;
  float* v;
  __nv_bfloat16* working;  // null: no bf16 copy
  int64_t n;
  int64_t first_block;     // index of this tensor's first chunk
  int32_t decay;           // 1: weight decay applies (Coef::decay), 0: decay 1
  int32_t vec4;            // 1: p, g, m, v 16-byte and working 8-byte aligned
};
constexpr int kAdamThreads = 256;
constexpr int64_t kAdamChunk = 4 * 8 * kAdamThreads;  // elements per block: 8 float4 per thread

// Block b's chunk of its tensor t (the table's entry that owns chunk b): four(i4) over its
// 4-wide elements where t.vec4 (chunks start at multiples of 4), one(i) over the rest.
template <typename Entry, typename Four, typename One>
__device__ __forceinline__ void for_chunk(const Entry& t, Four four, One one) {
  const int64_t begin = (static_cast<int64_t>(blockIdx.x) - t.first_block) * kAdamChunk;
  const int64_t end = begin + kAdamChunk < t.n ? begin + kAdamChunk : t.n;
  int64_t scalar_from = begin;
  if (t.vec4) {
    const int64_t end4 = end / 4;  // begin is a multiple of 4
    for (int64_t i = begin / 4 + threadIdx.x; i < end4; i += kAdamThreads) four(i);
    scalar_from = 4 * end4;
  }
  for (int64_t i = scalar_from + threadIdx.x; i < end; i += kAdamThreads) one(i);
}

__global__ void __launch_bounds__(kAdamThreads) adamw_multi_kernel(const AdamWTensor* __restrict__ ts, int nt, Coef c) {
  const AdamWTensor t = ts[dev::chunk_owner(ts, nt, blockIdx.x)];
  const float decay = t.decay ? c.decay : 1.0f;
  for_chunk(
      t,
      [&](int64_t i) {
        adamw_four(reinterpret_cast<float4*>(t.p), reinterpret_cast<const float4*>(t.g), reinterpret_cast<float4*>(t.m),
                   reinterpret_cast<float4*>(t.v), t.working, i, decay, c);
      },
      [&](int64_t i) { adamw_one(t.p, t.g, t.m, t.v, t.working, i, decay, c); });
}

// Pure bf16 (master_weights = none), many tensors in one launch, chunked as adamw_multi_kernel:
// value, gradient and moments are bf16, no master; adamw::update_bf16 per element (the f32
// update, then stochastic rounding with splitmix64(key + element)), 4-wide (8-byte loads and
// stores) where the tensor's four arrays are 8-byte aligned. The table holds no per-step value
// (each tensor's key is made from the step's key, a launch argument), so device_table uploads
// it once for the run.
struct AdamWBf16Tensor {
  uint16_t* p;  // bf16 bits
  const uint16_t* g;
  uint16_t* m;
  uint16_t* v;
  int64_t n;
  int64_t first_block;  // index of this tensor's first chunk
  uint64_t index;       // its place in the optimizer's list (adamw::stochastic_key's tensor)
  uint64_t first;       // its element 0's place in that stream (AdamWTensors::first_element)
  int32_t decay;        // 1: weight decay applies (Coef::decay), 0: decay 1
  int32_t vec4;         // 1: p, g, m, v 8-byte aligned
};

__device__ __forceinline__ void adamw_bf16_one(const AdamWBf16Tensor& t, uint64_t key, int64_t i, float decay,
                                               const Coef& c) {
  uint16_t p = t.p[i], m = t.m[i], v = t.v[i];
  adamw::update_bf16(p, t.g[i], m, v, decay, c, splitmix64(key + static_cast<uint64_t>(i)));
  t.p[i] = p;
  t.m[i] = m;
  t.v[i] = v;
}

__device__ __forceinline__ void adamw_bf16_four(const AdamWBf16Tensor& t, uint64_t key, int64_t i4, float decay,
                                                const Coef& c) {
  union Four {
    uint2 u;
    uint16_t h[4];
  };
  Four p, g, m, v;
  p.u = reinterpret_cast<const uint2*>(t.p)[i4];
  g.u = reinterpret_cast<const uint2*>(t.g)[i4];
  m.u = reinterpret_cast<const uint2*>(t.m)[i4];
  v.u = reinterpret_cast<const uint2*>(t.v)[i4];
#pragma unroll
  for (int k = 0; k < 4; ++k)
    adamw::update_bf16(p.h[k], g.h[k], m.h[k], v.h[k], decay, c, splitmix64(key + static_cast<uint64_t>(4 * i4 + k)));
  reinterpret_cast<uint2*>(t.p)[i4] = p.u;
  reinterpret_cast<uint2*>(t.m)[i4] = m.u;
  reinterpret_cast<uint2*>(t.v)[i4] = v.u;
}

// step_key: counter_key(seed, step), the first half of adamw::stochastic_key.
__global__ void __launch_bounds__(kAdamThreads) adamw_bf16_multi_kernel(const AdamWBf16Tensor* __restrict__ ts, int nt,
                                                                        Coef c, uint64_t step_key) {
  const AdamWBf16Tensor t = ts[dev::chunk_owner(ts, nt, blockIdx.x)];
  const float decay = t.decay ? c.decay : 1.0f;
  const uint64_t key = counter_key(step_key, t.index) + t.first;  // element e: splitmix64(key + e)
  for_chunk(
      t, [&](int64_t i) { adamw_bf16_four(t, key, i, decay, c); }, [&](int64_t i) { adamw_bf16_one(t, key, i, decay, c); });
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
  const SumTensor t = ts[dev::chunk_owner(ts, nt, blockIdx.x)];
  const int64_t begin = (static_cast<int64_t>(blockIdx.x) - t.first_block) * kSumChunk;
  const int64_t end = begin + kSumChunk < t.n ? begin + kSumChunk : t.n;
  float s = 0.0f;
  if (t.bf16) {
    const __nv_bfloat16* x = static_cast<const __nv_bfloat16*>(t.ptr);
    if (reinterpret_cast<uintptr_t>(x) % 16 == 0 && end - begin == kSumChunk) {
      // A whole chunk of an aligned bf16 tensor: 16-byte loads of 8 values (begin is a multiple of 8).
      const uint4* x8 = reinterpret_cast<const uint4*>(x + begin);
#pragma unroll
      for (int k = 0; k < static_cast<int>(kSumChunk / 8 / kSumSqThreads); ++k) {
        const uint4 u = x8[threadIdx.x + k * kSumSqThreads];
        const unsigned words[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const float lo = bf16_to_f32(static_cast<uint16_t>(words[j])), hi = bf16_to_f32(static_cast<uint16_t>(words[j] >> 16));
          s += lo * lo + hi * hi;
        }
      }
    } else {
#pragma unroll 4
      for (int64_t i = begin + threadIdx.x; i < end; i += kSumSqThreads) {
        const float v = __bfloat162float(x[i]);
        s += v * v;
      }
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

namespace {
bool aligned(const void* q, uintptr_t to) { return reinterpret_cast<uintptr_t>(q) % to == 0; }
Coef coef(const AdamWHyper& h, double weight_decay) {
  return adamw::coefficients<float>(h.lr, h.beta1, h.beta2, h.eps, weight_decay, h.step, h.grad_scale);
}

// A multi-tensor kernel's table: one entry per non-empty tensor of `ts`, made by make(t, n,
// first_block); `blocks` (the grid) counts one block per kAdamChunk elements of each.
template <typename Entry, typename Make>
std::vector<Entry> chunk_table(const std::vector<const AdamWTensors*>& ts, int64_t& blocks, Make make) {
  std::vector<Entry> table;
  table.reserve(ts.size());
  blocks = 0;
  for (const AdamWTensors* t : ts) {
    const int64_t n = t->param->numel();
    if (n == 0) continue;
    table.push_back(make(*t, n, blocks));
    blocks += ceil_div(n, kAdamChunk);
  }
  return table;
}

// adamw_bf16_multi_kernel's table for the pure-bf16 entries (the same every step).
std::vector<AdamWBf16Tensor> adamw_bf16_table(const std::vector<const AdamWTensors*>& ts, int64_t& blocks) {
  return chunk_table<AdamWBf16Tensor>(ts, blocks, [](const AdamWTensors& t, int64_t n, int64_t first) {
    const auto bits = [](const Tensor& x) { return static_cast<uint16_t*>(x.data()); };
    AdamWBf16Tensor e{bits(*t.param), bits(*t.grad), bits(*t.m), bits(*t.v), n, first, t.index, t.first_element,
                      t.weight_decay ? 1 : 0, 0};
    e.vec4 = aligned(e.p, 8) && aligned(e.g, 8) && aligned(e.m, 8) && aligned(e.v, 8);
    return e;
  });
}
// The step's half of adamw::stochastic_key, the bf16 kernel's argument.
uint64_t step_key(const AdamWHyper& h) { return counter_key(h.seed, static_cast<uint64_t>(h.step)); }
}  // namespace

#ifndef ST_CUDA_EMU  // the host side: launchers and the public functions (the emulator runs the kernels)
namespace {
void check_f32(const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v) {
  if (param.dtype() != DType::f32 || grad.dtype() != DType::f32 || m.dtype() != DType::f32 || v.dtype() != DType::f32)
    ST_THROW("adamw_update on CUDA: master, gradient and moments must be f32 (", param.str(), ", ", grad.str(), ")");
}
// The bf16 working copy a kernel writes (null: none; another dtype is the op layer's to copy).
__nv_bfloat16* bf16_copy(Tensor* working) {
  return working && working->defined() && working->dtype() == DType::bf16 ? static_cast<__nv_bfloat16*>(working->data())
                                                                          : nullptr;
}
}  // namespace

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, Tensor* working, const AdamWHyper& h) {
  const int64_t n = param.numel();
  if (n == 0) return;
  check_f32(param, grad, m, v);
  const Coef c = coef(h, h.weight_decay);
  __nv_bfloat16* w = bf16_copy(working);
  if (n % 4 == 0 && aligned(param.data(), 16) && aligned(grad.data(), 16) && aligned(m.data(), 16) &&
      aligned(v.data(), 16) && aligned(w, 8)) {
    adamw_vec4_kernel<<<grid_1d(n / 4, 256), 256, 0, stream()>>>(
        static_cast<float4*>(param.data()), static_cast<const float4*>(grad.data()), static_cast<float4*>(m.data()),
        static_cast<float4*>(v.data()), w, n / 4, c);
  } else {
    adamw_kernel<<<grid_1d(n, 256), 256, 0, stream()>>>(param.ptr<float>(), grad.ptr<float>(), m.ptr<float>(),
                                                         v.ptr<float>(), w, n, c);
  }
  ST_CUDA_LAUNCH_CHECK("adamw_update");
}

namespace {
// One launch of a multi-tensor kernel over its table (uploaded once per distinct table).
template <typename Entry, typename... Args>
void launch_multi(void (*kernel)(const Entry*, int, Args...), int kind, const std::vector<Entry>& table, int64_t blocks,
                  const char* name, Args... args) {
  if (blocks == 0) return;
  if (blocks > 0x7fffffff) ST_THROW(name, " on CUDA: ", blocks, " chunks");
  const void* d = device_table(kind, table.data(), table.size() * sizeof(Entry));
  kernel<<<static_cast<unsigned>(blocks), kAdamThreads, 0, stream()>>>(static_cast<const Entry*>(d),
                                                                        static_cast<int>(table.size()), args...);
  ST_CUDA_LAUNCH_CHECK(name);
}
}  // namespace

void adamw_update_multi(const std::vector<AdamWTensors>& ts, const AdamWHyper& h) {
  std::vector<const AdamWTensors*> pure, master;
  for (const AdamWTensors& t : ts) {
    if (t.pure_bf16()) {  // the op layer checked that grad, m and v are bf16 too
      pure.push_back(&t);
    } else {
      check_f32(*t.param, *t.grad, *t.m, *t.v);
      master.push_back(&t);
    }
  }
  const Coef c = coef(h, h.weight_decay);
  int64_t blocks = 0;
  if (!pure.empty()) {
    const std::vector<AdamWBf16Tensor> table = adamw_bf16_table(pure, blocks);
    launch_multi(adamw_bf16_multi_kernel, kTableAdamWBf16, table, blocks, "adamw_update_multi (pure bf16)", c, step_key(h));
  }
  const std::vector<AdamWTensor> table =
      chunk_table<AdamWTensor>(master, blocks, [](const AdamWTensors& t, int64_t n, int64_t first) {
        AdamWTensor e{t.param->ptr<float>(), t.grad->ptr<float>(), t.m->ptr<float>(), t.v->ptr<float>(),
                      bf16_copy(t.working), n, first, t.weight_decay ? 1 : 0, 0};
        e.vec4 = aligned(e.p, 16) && aligned(e.g, 16) && aligned(e.m, 16) && aligned(e.v, 16) && aligned(e.working, 8);
        return e;
      });
  launch_multi(adamw_multi_kernel, kTableAdamW, table, blocks, "adamw_update_multi", c);
}

namespace {
// Raw device scratch (one double per chunk of the sums of squares), outside the allocator like the CUDA context's own memory.
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
  static double* d_partial = nullptr;
  static int64_t partial_cap = 0;
  // The table of (pointer, size, first chunk): the gradient list is the same every step, so
  // device_table uploads it once.
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
  const SumTensor* d_table =
      static_cast<const SumTensor*>(device_table(kTableSumSquares, table.data(), table.size() * sizeof(SumTensor)));
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

#endif  // ST_CUDA_EMU

}  // namespace st::cuda
