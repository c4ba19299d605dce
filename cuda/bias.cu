// Linear-layer bias: a broadcast add over rows, and its gradient as per-column sums (one thread
// per column, rows in order: deterministic, coalesced across the threads of a warp), added once
// into an f32 or a bf16 gradient (master_weights = none: one rounding per call).
#include "cuda/common.cuh"
#include "cuda/kernels.cuh"

namespace st::cuda {

namespace {
template <typename T>
__global__ void bias_add_kernel(T* __restrict__ y, const T* __restrict__ b, int64_t M, int64_t N) {
  const int64_t total = M * N;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    y[i] = dev::from_f<T>(dev::to_f(y[i]) + dev::to_f(b[i % N]));
}

template <typename T, typename G>
__global__ void bias_backward_kernel(const T* __restrict__ dy, G* __restrict__ db, int64_t M, int64_t N) {
  const int64_t n = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (n >= N) return;
  float s = 0.f;
  for (int64_t m = 0; m < M; ++m) s += dev::to_f(dy[m * N + n]);
  db[n] = dev::from_f<G>(dev::to_f(db[n]) + s);
}

template <typename G>
void bias_backward_to(int64_t M, int64_t N, const Tensor& dy, G* db) {
  const unsigned blocks = static_cast<unsigned>((N + 127) / 128);
  if (dy.dtype() == DType::bf16)
    bias_backward_kernel<<<blocks, 128, 0, stream()>>>(static_cast<const __nv_bfloat16*>(dy.data()), db, M, N);
  else
    bias_backward_kernel<<<blocks, 128, 0, stream()>>>(dy.ptr<float>(), db, M, N);
}

unsigned blocks_for(int64_t n, int threads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(b < 65536 ? b : 65536);
}
}  // namespace

void bias_add(int64_t M, int64_t N, Tensor& y, const Tensor& b) {
  if (M == 0 || N == 0) return;
  if (y.dtype() == DType::bf16)
    bias_add_kernel<<<blocks_for(M * N, 256), 256, 0, stream()>>>(static_cast<__nv_bfloat16*>(y.data()),
                                                                  static_cast<const __nv_bfloat16*>(b.data()), M, N);
  else
    bias_add_kernel<<<blocks_for(M * N, 256), 256, 0, stream()>>>(y.ptr<float>(), b.ptr<float>(), M, N);
  ST_CUDA_LAUNCH_CHECK("bias_add");
}

void bias_backward(int64_t M, int64_t N, const Tensor& dy, Tensor& db) {
  if (M == 0 || N == 0) return;
  if (db.dtype() == DType::bf16)
    bias_backward_to(M, N, dy, static_cast<__nv_bfloat16*>(db.data()));
  else if (db.dtype() == DType::f32)
    bias_backward_to(M, N, dy, db.ptr<float>());
  else
    ST_THROW("bias_backward on CUDA: the gradient must be f32 or bf16, got ", db.str());
  ST_CUDA_LAUNCH_CHECK("bias_backward");
}

}  // namespace st::cuda
