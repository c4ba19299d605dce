// SwiGLU, embedding lookup, AdamW and small reductions.
#include <cmath>

#include "core/error.hpp"
#include "ops/adamw_element.hpp"
#include "ops/cpu/cpu_kernels.hpp"

namespace st::cpu {

template <typename T>
static inline T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}

template <typename T>
void swiglu_forward(int64_t N, const T* g, const T* u, T* h) {
#pragma omp parallel for schedule(static) if (N > 65536)
  for (int64_t i = 0; i < N; ++i) h[i] = g[i] * sigmoid(g[i]) * u[i];
}

// d silu(g)/dg = s + g s (1 - s) with s = sigmoid(g).
template <typename T>
void swiglu_backward(int64_t N, const T* dh, const T* g, const T* u, T* dg, T* du, bool accumulate) {
#pragma omp parallel for schedule(static) if (N > 65536)
  for (int64_t i = 0; i < N; ++i) {
    const T s = sigmoid(g[i]);
    const T dgi = dh[i] * u[i] * (s + g[i] * s * (T(1) - s)), dui = dh[i] * g[i] * s;
    dg[i] = accumulate ? dg[i] + dgi : dgi;
    du[i] = accumulate ? du[i] + dui : dui;
  }
}

// gelu_new (tanh approximation) and its derivative, in T.
template <typename T>
inline void gelu_tanh(T x, T* value, T* deriv) {
  const T k = T(0.7978845608028654), c = T(0.044715);  // sqrt(2/pi)
  const T t = std::tanh(k * (x + c * x * x * x));
  *value = T(0.5) * x * (T(1) + t);
  if (deriv) *deriv = T(0.5) * (T(1) + t) + T(0.5) * x * (T(1) - t * t) * k * (T(1) + T(3) * c * x * x);
}

template <typename T>
void geglu_forward(int64_t N, const T* g, const T* u, T* h) {
#pragma omp parallel for schedule(static) if (N > 65536)
  for (int64_t i = 0; i < N; ++i) {
    T v;
    gelu_tanh(g[i], &v, static_cast<T*>(nullptr));
    h[i] = v * u[i];
  }
}

template <typename T>
void geglu_backward(int64_t N, const T* dh, const T* g, const T* u, T* dg, T* du, bool accumulate) {
#pragma omp parallel for schedule(static) if (N > 65536)
  for (int64_t i = 0; i < N; ++i) {
    T v, dv;
    gelu_tanh(g[i], &v, &dv);
    const T dgi = dh[i] * u[i] * dv, dui = dh[i] * v;
    dg[i] = accumulate ? dg[i] + dgi : dgi;
    du[i] = accumulate ? du[i] + dui : dui;
  }
}

template <typename T>
void relu_forward(int64_t N, const T* x, T* h) {
#pragma omp parallel for schedule(static) if (N > 65536)
  for (int64_t i = 0; i < N; ++i) h[i] = x[i] > T(0) ? x[i] : T(0);
}

template <typename T>
void relu_backward(int64_t N, const T* dh, const T* x, T* dx, bool accumulate) {
#pragma omp parallel for schedule(static) if (N > 65536)
  for (int64_t i = 0; i < N; ++i) {
    const T d = x[i] > T(0) ? dh[i] : T(0);
    dx[i] = accumulate ? dx[i] + d : d;
  }
}

template <typename T>
void embedding_forward(int64_t N, int64_t C, int64_t V, const int32_t* ids, const T* table, T* out, int64_t offset,
                       bool shard) {
  if (!shard)
    for (int64_t n = 0; n < N; ++n)
      if (ids[n] < 0 || ids[n] >= V) ST_THROW("token id ", ids[n], " at position ", n, " is outside the vocabulary [0, ", V, ")");
#pragma omp parallel for schedule(static) if (N * C > 65536)
  for (int64_t n = 0; n < N; ++n) {
    const int64_t row = static_cast<int64_t>(ids[n]) - offset;
    T* dst = out + n * C;
    if (row < 0 || row >= V) {  // another rank's vocabulary shard holds this id
      for (int64_t c = 0; c < C; ++c) dst[c] = T(0);
      continue;
    }
    const T* src = table + row * C;
    for (int64_t c = 0; c < C; ++c) dst[c] = src[c];
  }
}

// Scatter-add; parallel over column blocks so threads never touch the same element.
template <typename T>
void embedding_backward(int64_t N, int64_t C, int64_t V, const int32_t* ids, const T* dout, T* dtable, int64_t offset) {
  const int64_t block = 64;
  const int64_t nblocks = (C + block - 1) / block;
#pragma omp parallel for schedule(static) if (N * C > 65536)
  for (int64_t cb = 0; cb < nblocks; ++cb) {
    const int64_t c0 = cb * block, c1 = c0 + block < C ? c0 + block : C;
    for (int64_t n = 0; n < N; ++n) {
      const int64_t row = static_cast<int64_t>(ids[n]) - offset;
      if (row < 0 || row >= V) continue;  // not in this rank's shard
      T* dst = dtable + row * C;
      const T* src = dout + n * C;
      for (int64_t c = c0; c < c1; ++c) dst[c] += src[c];
    }
  }
}

template <typename T>
void adamw_update(int64_t n, T* param, const T* grad, T* m, T* v, double lr, double beta1,
                  double beta2, double eps, double weight_decay, int64_t step, double grad_scale) {
  const adamw::Coef<T> c = adamw::coefficients<T>(lr, beta1, beta2, eps, weight_decay, step, grad_scale);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) param[i] = adamw::update(param[i], grad[i], m[i], v[i], c.decay, c);
}

template <typename T>
double sum_squares(int64_t n, const T* x) {
  double s = 0;
#pragma omp parallel for reduction(+ : s) schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  return s;
}

template <typename T>
void scale_inplace(int64_t n, T* x, T s) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

template <typename T>
void axpy(int64_t n, T a, const T* x, T* y) {
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

#define ST_INSTANTIATE(T)                                                                        \
  template void swiglu_forward<T>(int64_t, const T*, const T*, T*);                              \
  template void swiglu_backward<T>(int64_t, const T*, const T*, const T*, T*, T*, bool);         \
  template void geglu_forward<T>(int64_t, const T*, const T*, T*);                                  \
  template void geglu_backward<T>(int64_t, const T*, const T*, const T*, T*, T*, bool);              \
  template void relu_forward<T>(int64_t, const T*, T*);                                              \
  template void relu_backward<T>(int64_t, const T*, const T*, T*, bool);                             \
  template void embedding_forward<T>(int64_t, int64_t, int64_t, const int32_t*, const T*, T*, int64_t, bool); \
  template void embedding_backward<T>(int64_t, int64_t, int64_t, const int32_t*, const T*, T*, int64_t);     \
  template void adamw_update<T>(int64_t, T*, const T*, T*, T*, double, double, double, double,   \
                                double, int64_t, double);                                        \
  template double sum_squares<T>(int64_t, const T*);                                             \
  template void scale_inplace<T>(int64_t, T*, T);                                                \
  template void axpy<T>(int64_t, T, const T*, T*);
ST_INSTANTIATE(float)
ST_INSTANTIATE(double)
#undef ST_INSTANTIATE

}  // namespace st::cpu

#include "core/rng.hpp"

namespace st::cpu {

template <typename T>
void dropout_apply(int64_t n, const T* x, T* out, double p, uint64_t seed, uint64_t stream, bool accumulate) {
  const T keep_scale = static_cast<T>(1.0 / (1.0 - p));
  const float pf = static_cast<float>(p);
  const uint64_t key = counter_key(seed, stream);
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int64_t i = 0; i < n; ++i) {
    const T v = counter_uniform_keyed(key, static_cast<uint64_t>(i)) >= pf ? x[i] * keep_scale : T(0);
    out[i] = accumulate ? out[i] + v : v;
  }
}

template void dropout_apply<float>(int64_t, const float*, float*, double, uint64_t, uint64_t, bool);
template void dropout_apply<double>(int64_t, const double*, double*, double, uint64_t, uint64_t, bool);

}  // namespace st::cpu
