// Fused softmax + cross-entropy over the vocabulary: one pass for the max, one for the sum of
// exponentials, and (training) one writing the gradient over the logits in place.
#include <cmath>

#include "core/error.hpp"
#include "ops/cpu/cpu_kernels.hpp"

namespace st::cpu {

template <typename T>
void cross_entropy(int64_t N, int64_t V, T* logits, const int32_t* targets, const float* weight,
                   T* losses, bool grad) {
  for (int64_t n = 0; n < N; ++n)
    if (targets[n] >= V) ST_THROW("target id ", targets[n], " at row ", n, " is outside the vocabulary [0, ", V, ")");
#pragma omp parallel for schedule(static) if (N * V > 65536)
  for (int64_t n = 0; n < N; ++n) {
    T* row = logits + n * V;
    const bool active = targets[n] >= 0 && weight[n] != 0.0f;
    if (!active) {
      losses[n] = T(0);
      if (grad)
        for (int64_t j = 0; j < V; ++j) row[j] = T(0);
      continue;
    }
    double mx = row[0];
    for (int64_t j = 1; j < V; ++j) mx = row[j] > mx ? row[j] : mx;
    double sum = 0;
    for (int64_t j = 0; j < V; ++j) sum += std::exp(static_cast<double>(row[j]) - mx);
    const double lse = mx + std::log(sum);
    losses[n] = static_cast<T>(lse - static_cast<double>(row[targets[n]]));
    if (grad) {
      const double w = weight[n];
      for (int64_t j = 0; j < V; ++j) row[j] = static_cast<T>(w * std::exp(static_cast<double>(row[j]) - lse));
      row[targets[n]] -= static_cast<T>(w);
    }
  }
}

template void cross_entropy<float>(int64_t, int64_t, float*, const int32_t*, const float*, float*, bool);
template void cross_entropy<double>(int64_t, int64_t, double*, const int32_t*, const float*, double*, bool);

}  // namespace st::cpu
