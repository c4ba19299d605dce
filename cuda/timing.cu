#include "cuda/timing.cuh"

#include <algorithm>
#include <chrono>

#include "cuda/common.cuh"
#include "cuda/device.cuh"

namespace st::cuda {

namespace {

__global__ void spin_kernel(unsigned long long ns) {
  unsigned long long t0, t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    __nanosleep(1000);
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

BlockedTiming time_blocked(const std::function<void()>& op, int reps) {
  reps = std::max(1, reps);
  cudaEvent_t e0, e1;
  ST_CUDA_CHECK(cudaEventCreate(&e0));
  ST_CUDA_CHECK(cudaEventCreate(&e1));
  BlockedTiming out;
  double spin = 2e-3;
  // The spin must outlast the host's enqueueing of all calls: retried with a longer spin when it
  // did not (up to 0.5 s; then the GPU time includes host gaps and `hidden` stays false).
  for (int attempt = 0; attempt < 5; ++attempt) {
    ST_CUDA_CHECK(cudaDeviceSynchronize());
    const double launched = now();
    spin_kernel<<<1, 1, 0, stream()>>>(static_cast<unsigned long long>(spin * 1e9));
    ST_CUDA_CHECK(cudaGetLastError());
    ST_CUDA_CHECK(cudaEventRecord(e0, stream()));
    const double h0 = now();
    for (int r = 0; r < reps; ++r) op();
    const double h1 = now();
    ST_CUDA_CHECK(cudaEventRecord(e1, stream()));
    ST_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    ST_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    out.gpu_seconds = 1e-3 * static_cast<double>(ms) / reps;
    out.host_seconds = (h1 - h0) / reps;
    out.hidden = (h1 - launched) < 0.8 * spin;
    if (out.hidden || spin >= 0.5) break;
    spin = std::min(0.5, 2.5 * (h1 - launched));
  }
  ST_CUDA_CHECK(cudaEventDestroy(e0));
  ST_CUDA_CHECK(cudaEventDestroy(e1));
  return out;
}

}  // namespace st::cuda
