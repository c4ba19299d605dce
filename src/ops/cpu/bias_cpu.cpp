#include "ops/cpu/cpu_kernels.hpp"

namespace st::cpu {

template <typename T>
void bias_add(int64_t M, int64_t N, T* y, const T* b) {
#pragma omp parallel for schedule(static) if (M * N > 65536)
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) y[m * N + n] += b[n];
}

// Parallel over columns: each column's sum in row order, whatever the thread count.
template <typename T>
void bias_backward(int64_t M, int64_t N, const T* dy, T* db) {
#pragma omp parallel for schedule(static) if (M * N > 65536)
  for (int64_t n = 0; n < N; ++n) {
    double s = 0;
    for (int64_t m = 0; m < M; ++m) s += static_cast<double>(dy[m * N + n]);
    db[n] = static_cast<T>(static_cast<double>(db[n]) + s);
  }
}

template void bias_add<float>(int64_t, int64_t, float*, const float*);
template void bias_add<double>(int64_t, int64_t, double*, const double*);
template void bias_backward<float>(int64_t, int64_t, const float*, float*);
template void bias_backward<double>(int64_t, int64_t, const double*, double*);

}  // namespace st::cpu
