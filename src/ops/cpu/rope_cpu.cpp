// Rotary position embedding in the Hugging Face rotate-half layout: within each head the first
// and second halves pair up, (x[i], x[i + D/2]) rotated by angle pos * theta^(-2i/D).
#include "ops/cpu/cpu_kernels.hpp"

namespace st::cpu {

namespace {
// The H heads of one token at the position whose table rows are cs, sn.
template <typename T>
void rotate_token(T* x, int64_t H, int64_t D, const float* cs, const float* sn, T sign) {
  const int64_t half = D / 2;
  for (int64_t h = 0; h < H; ++h) {
    T* v = x + h * D;
    for (int64_t i = 0; i < half; ++i) {
      const T c = static_cast<T>(cs[i]), s = sign * static_cast<T>(sn[i]);
      const T a = v[i], bb = v[i + half];
      v[i] = a * c - bb * s;
      v[i + half] = bb * c + a * s;
    }
  }
}
}  // namespace

template <typename T>
void rope_apply(int64_t B, int64_t T_, int64_t H, int64_t D, T* x, const float* cos_table,
                const float* sin_table, bool inverse) {
  const int64_t half = D / 2;
  const T sign = inverse ? T(-1) : T(1);  // the inverse rotation is the transpose
#pragma omp parallel for collapse(2) schedule(static) if (B * T_ * H * D > 32768)
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T_; ++t)
      rotate_token(x + (b * T_ + t) * H * D, H, D, cos_table + t * half, sin_table + t * half, sign);
}

template <typename T>
void rope_apply_at(int64_t N, int64_t H, int64_t D, T* x, const int32_t* pos, const float* cos_table,
                   const float* sin_table, bool inverse) {
  const int64_t half = D / 2;
  const T sign = inverse ? T(-1) : T(1);
#pragma omp parallel for schedule(static) if (N * H * D > 32768)
  for (int64_t n = 0; n < N; ++n)
    rotate_token(x + n * H * D, H, D, cos_table + pos[n] * half, sin_table + pos[n] * half, sign);
}

template void rope_apply<float>(int64_t, int64_t, int64_t, int64_t, float*, const float*, const float*, bool);
template void rope_apply<double>(int64_t, int64_t, int64_t, int64_t, double*, const float*, const float*, bool);
template void rope_apply_at<float>(int64_t, int64_t, int64_t, float*, const int32_t*, const float*, const float*, bool);
template void rope_apply_at<double>(int64_t, int64_t, int64_t, double*, const int32_t*, const float*, const float*, bool);

}  // namespace st::cpu
