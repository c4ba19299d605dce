// Rotary position embedding in the Hugging Face rotate-half layout: within each head the first
// and second halves pair up, (x[i], x[i + D/2]) rotated by angle pos * theta^(-2i/D).
#include "ops/cpu/cpu_kernels.hpp"

namespace st::cpu {

template <typename T>
void rope_apply(int64_t B, int64_t T_, int64_t H, int64_t D, T* x, const float* cos_table,
                const float* sin_table, bool inverse) {
  const int64_t half = D / 2;
  const T sign = inverse ? T(-1) : T(1);  // the inverse rotation is the transpose
#pragma omp parallel for collapse(2) schedule(static) if (B * T_ * H * D > 32768)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T_; ++t) {
      const float* cs = cos_table + t * half;
      const float* sn = sin_table + t * half;
      for (int64_t h = 0; h < H; ++h) {
        T* v = x + ((b * T_ + t) * H + h) * D;
        for (int64_t i = 0; i < half; ++i) {
          const T c = static_cast<T>(cs[i]), s = sign * static_cast<T>(sn[i]);
          const T a = v[i], bb = v[i + half];
          v[i] = a * c - bb * s;
          v[i + half] = bb * c + a * s;
        }
      }
    }
}

template void rope_apply<float>(int64_t, int64_t, int64_t, int64_t, float*, const float*, const float*, bool);
template void rope_apply<double>(int64_t, int64_t, int64_t, int64_t, double*, const float*, const float*, bool);

}  // namespace st::cpu
