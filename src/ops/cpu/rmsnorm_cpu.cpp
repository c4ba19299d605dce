// RMSNorm as in Hugging Face Llama / T5: y = w * x / sqrt(mean(x^2) + eps), no mean, no bias.
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_kernels.hpp"

namespace st::cpu {

template <typename T>
void rmsnorm_forward(int64_t N, int64_t C, const T* x, const T* w, T eps, T* y, T* rstd) {
#pragma omp parallel for schedule(static) if (N * C > 32768)
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    T* yr = y + n * C;
    double ss = 0;
    for (int64_t c = 0; c < C; ++c) ss += static_cast<double>(xr[c]) * xr[c];
    const T r = static_cast<T>(1.0 / std::sqrt(ss / static_cast<double>(C) + static_cast<double>(eps)));
    rstd[n] = r;
    for (int64_t c = 0; c < C; ++c) yr[c] = (xr[c] * r) * w[c];
  }
}

// With xhat = x * rstd and g = dy * w:  dx = rstd * (g - xhat * mean(g * xhat)),  dw = sum_n dy * xhat.
template <typename T>
void rmsnorm_backward(int64_t N, int64_t C, const T* dy, const T* x, const T* w, const T* rstd,
                      T* dx, T* dw) {
#pragma omp parallel for schedule(static) if (N * C > 32768)
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * C;
    const T* dyr = dy + n * C;
    T* dxr = dx + n * C;
    const T r = rstd[n];
    double dot = 0;
    for (int64_t c = 0; c < C; ++c) dot += static_cast<double>(dyr[c]) * w[c] * xr[c] * r;
    const T mean = static_cast<T>(dot / static_cast<double>(C));
    for (int64_t c = 0; c < C; ++c) dxr[c] += r * (dyr[c] * w[c] - xr[c] * r * mean);
  }
  if (!dw) return;
  // Column sums: parallel over columns so no two threads write the same dw element.
#pragma omp parallel for schedule(static) if (N * C > 32768)
  for (int64_t c = 0; c < C; ++c) {
    double s = 0;
    for (int64_t n = 0; n < N; ++n) s += static_cast<double>(dy[n * C + c]) * x[n * C + c] * rstd[n];
    dw[c] += static_cast<T>(s);
  }
}

template void rmsnorm_forward<float>(int64_t, int64_t, const float*, const float*, float, float*, float*);
template void rmsnorm_forward<double>(int64_t, int64_t, const double*, const double*, double, double*, double*);
template void rmsnorm_backward<float>(int64_t, int64_t, const float*, const float*, const float*, const float*, float*, float*);
template void rmsnorm_backward<double>(int64_t, int64_t, const double*, const double*, const double*, const double*, double*, double*);

}  // namespace st::cpu
