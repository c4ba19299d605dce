#include "cuda/common.cuh"
#include "cuda/init.cuh"

namespace st::cuda {

namespace {

__device__ __forceinline__ double open_uniform(uint64_t key, uint64_t i) {
  return (static_cast<double>(dev::splitmix64(key + i) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

template <typename T>
__global__ void fill_normal_kernel(T* p, int64_t n, uint64_t key, double mean, double std) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const double u1 = open_uniform(key, 2 * static_cast<uint64_t>(i));
    const double u2 = open_uniform(key, 2 * static_cast<uint64_t>(i) + 1);
    p[i] = dev::from_f<T>(static_cast<float>(mean + std * sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2)));
  }
}

template <typename T>
__global__ void fill_uniform_kernel(T* p, int64_t n, uint64_t key, double lo, double hi) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[i] = dev::from_f<T>(static_cast<float>(lo + (hi - lo) * open_uniform(key, static_cast<uint64_t>(i))));
}

template <typename T>
__global__ void fill_constant_kernel(T* p, int64_t n, float v) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[i] = dev::from_f<T>(v);
}

template <typename D, typename S>
__global__ void convert_kernel(D* dst, const S* src, int64_t n) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    dst[i] = dev::from_f<D>(dev::to_f(src[i]));
}

constexpr int kThreads = 256;

template <typename Launch>
void by_dtype(Tensor& t, const char* what, Launch launch) {
  if (t.dtype() == DType::f32) launch(static_cast<float*>(t.data()));
  else if (t.dtype() == DType::bf16) launch(static_cast<__nv_bfloat16*>(t.data()));
  else ST_THROW(what, ": unsupported dtype ", dtype_name(t.dtype()), " on CUDA");
}

}  // namespace

void fill_normal(Tensor& t, uint64_t key, double mean, double std) {
  const int64_t n = t.numel();
  if (n == 0) return;
  by_dtype(t, "fill_normal", [&](auto* p) {
    fill_normal_kernel<<<grid_1d(n, kThreads), kThreads, 0, stream()>>>(p, n, key, mean, std);
  });
  ST_CUDA_LAUNCH_CHECK("fill_normal");
}

void fill_uniform(Tensor& t, uint64_t key, double lo, double hi) {
  const int64_t n = t.numel();
  if (n == 0) return;
  by_dtype(t, "fill_uniform", [&](auto* p) {
    fill_uniform_kernel<<<grid_1d(n, kThreads), kThreads, 0, stream()>>>(p, n, key, lo, hi);
  });
  ST_CUDA_LAUNCH_CHECK("fill_uniform");
}

void fill_constant(Tensor& t, double value) {
  const int64_t n = t.numel();
  if (n == 0) return;
  by_dtype(t, "fill_constant", [&](auto* p) {
    fill_constant_kernel<<<grid_1d(n, kThreads), kThreads, 0, stream()>>>(p, n, static_cast<float>(value));
  });
  ST_CUDA_LAUNCH_CHECK("fill_constant");
}

void convert_copy(Tensor& dst, const Tensor& src) {
  const int64_t n = dst.numel();
  if (n == 0) return;
  const unsigned g = grid_1d(n, kThreads);
  if (dst.dtype() == DType::bf16 && src.dtype() == DType::f32)
    convert_kernel<<<g, kThreads, 0, stream()>>>(static_cast<__nv_bfloat16*>(dst.data()), static_cast<const float*>(src.data()), n);
  else if (dst.dtype() == DType::f32 && src.dtype() == DType::bf16)
    convert_kernel<<<g, kThreads, 0, stream()>>>(static_cast<float*>(dst.data()), static_cast<const __nv_bfloat16*>(src.data()), n);
  else
    ST_THROW("convert_copy on CUDA: ", dtype_name(src.dtype()), " -> ", dtype_name(dst.dtype()), " is not supported");
  ST_CUDA_LAUNCH_CHECK("convert_copy");
}

namespace {

// Zeroing many tensors in one launch: block b clears chunk b of the table (kZeroChunk bytes of
// one tensor) with 16-byte stores over its 16-byte aligned middle and byte stores before and
// after it (views and odd sizes: at most 15 bytes at each end).
struct ZeroRange {
  unsigned char* ptr;
  int64_t bytes;
  int64_t first_block;  // index of this range's first chunk
};
constexpr int kZeroThreads = 256;
constexpr int64_t kZeroChunk = 16 * 16 * kZeroThreads;  // bytes per block: 16 16-byte stores per thread

__global__ void __launch_bounds__(kZeroThreads) zero_multi_kernel(const ZeroRange* __restrict__ ts, int nt) {
  const ZeroRange t = ts[dev::chunk_owner(ts, nt, blockIdx.x)];
  const int64_t begin = (static_cast<int64_t>(blockIdx.x) - t.first_block) * kZeroChunk;
  const int64_t end = begin + kZeroChunk < t.bytes ? begin + kZeroChunk : t.bytes;
  unsigned char* const a = t.ptr + begin;
  unsigned char* const b = t.ptr + end;
  const uintptr_t mid0 = (reinterpret_cast<uintptr_t>(a) + 15) & ~uintptr_t{15};
  const uintptr_t mid1 = reinterpret_cast<uintptr_t>(b) & ~uintptr_t{15};
  if (mid0 >= mid1) {  // no whole aligned 16 bytes inside
    for (int64_t i = threadIdx.x; i < end - begin; i += kZeroThreads) a[i] = 0;
    return;
  }
  const int64_t head = static_cast<int64_t>(mid0 - reinterpret_cast<uintptr_t>(a));
  const int64_t tail = static_cast<int64_t>(reinterpret_cast<uintptr_t>(b) - mid1);
  if (threadIdx.x < head) a[threadIdx.x] = 0;
  if (threadIdx.x < tail) reinterpret_cast<unsigned char*>(mid1)[threadIdx.x] = 0;
  uint4* const q = reinterpret_cast<uint4*>(mid0);
  const int64_t n16 = static_cast<int64_t>((mid1 - mid0) / 16);
  for (int64_t i = threadIdx.x; i < n16; i += kZeroThreads) q[i] = make_uint4(0u, 0u, 0u, 0u);
}

}  // namespace

void zero_tensors(const std::vector<Tensor*>& ts) {
  std::vector<ZeroRange> table;
  table.reserve(ts.size());
  int64_t blocks = 0;
  for (const Tensor* t : ts) {
    const int64_t bytes = static_cast<int64_t>(t->nbytes());
    if (bytes == 0) continue;
    table.push_back(ZeroRange{static_cast<unsigned char*>(t->data()), bytes, blocks});
    blocks += ceil_div(bytes, kZeroChunk);
  }
  if (blocks == 0) return;
  if (blocks > 0x7fffffff) ST_THROW("zero_tensors on CUDA: ", blocks, " chunks");
  const void* d = device_table(kTableZero, table.data(), table.size() * sizeof(ZeroRange));
  zero_multi_kernel<<<static_cast<unsigned>(blocks), kZeroThreads, 0, stream()>>>(static_cast<const ZeroRange*>(d),
                                                                                  static_cast<int>(table.size()));
  ST_CUDA_LAUNCH_CHECK("zero_tensors");
}

}  // namespace st::cuda
