// Reference of ops/decode_attention.hpp: each (query, head) row in one pass over its visible
// keys, max-subtracted softmax in the compute dtype.
#include <algorithm>
#include <cmath>
#include <vector>

#include "ops/cpu/cpu_kernels.hpp"

namespace st::cpu {

template <typename T>
void decode_attention(int64_t n, int64_t past, int64_t Hq, int64_t Hkv, int64_t D, const T* q, const T* k,
                      const T* v, T scale, T* out) {
  const int64_t group = Hq / Hkv, kv_stride = Hkv * D;
#pragma omp parallel
  {
    std::vector<T> s(static_cast<size_t>(past + n));
#pragma omp for collapse(2) schedule(static)
    for (int64_t i = 0; i < n; ++i)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t keys = past + i + 1, kh = h / group;
        const T* qi = q + (i * Hq + h) * D;
        T mx = -INFINITY;
        for (int64_t j = 0; j < keys; ++j) {
          const T* kj = k + j * kv_stride + kh * D;
          T dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += qi[d] * kj[d];
          s[static_cast<size_t>(j)] = scale * dot;
          mx = std::max(mx, s[static_cast<size_t>(j)]);
        }
        T sum = 0;
        for (int64_t j = 0; j < keys; ++j) sum += (s[static_cast<size_t>(j)] = std::exp(s[static_cast<size_t>(j)] - mx));
        T* o = out + (i * Hq + h) * D;
        std::fill(o, o + D, T(0));
        for (int64_t j = 0; j < keys; ++j) {
          const T p = s[static_cast<size_t>(j)] / sum;
          const T* vj = v + j * kv_stride + kh * D;
          for (int64_t d = 0; d < D; ++d) o[d] += p * vj[d];
        }
      }
  }
}

template void decode_attention<float>(int64_t, int64_t, int64_t, int64_t, int64_t, const float*, const float*,
                                      const float*, float, float*);
template void decode_attention<double>(int64_t, int64_t, int64_t, int64_t, int64_t, const double*, const double*,
                                       const double*, double, double*);

}  // namespace st::cpu
