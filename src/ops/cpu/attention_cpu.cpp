// Scaled dot-product attention, reference version with the flash-attention interface: the
// forward saves only the output and the log-sum-exp of each query row; the backward recomputes
// the probabilities from them (no [Tq, Tk] matrix is kept between the passes).
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "ops/cpu/cpu_kernels.hpp"

namespace st::cpu {

namespace {
// Number of keys query i may see (keys [0, n)): causal limit and padding limit.
inline int64_t visible_keys(int64_t i, int64_t Tk, int64_t len, bool causal) {
  const int64_t n = causal ? std::min(i + 1, Tk) : Tk;
  return std::min(n, len);
}
}  // namespace

template <typename T>
void attention_forward(int64_t B, int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t D, const T* q,
                       const T* k, const T* v, const T* bias, const int32_t* lengths, bool causal, T scale,
                       T* out, T* lse) {
  const int64_t group = Hq / Hkv;
#pragma omp parallel
  {
    std::vector<double> s(static_cast<size_t>(Tk)), acc(static_cast<size_t>(D));
#pragma omp for collapse(3) schedule(static)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t i = 0; i < Tq; ++i) {
          const int64_t len = lengths ? lengths[b] : Tk;
          const int64_t nk = visible_keys(i, Tk, len, causal);
          const int64_t hk = h / group;
          const T* qi = q + ((b * Tq + i) * Hq + h) * D;
          const T* bi = bias ? bias + (h * Tq + i) * Tk : nullptr;
          T* oi = out + ((b * Tq + i) * Hq + h) * D;
          T* l = lse + (b * Hq + h) * Tq + i;
          double mx = -std::numeric_limits<double>::infinity();
          for (int64_t j = 0; j < nk; ++j) {
            const T* kj = k + ((b * Tk + j) * Hkv + hk) * D;
            double dot = 0;
            for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(qi[d]) * kj[d];
            double sj = dot * scale;
            if (bi) sj += static_cast<double>(bi[j]);
            s[static_cast<size_t>(j)] = sj;
            if (sj > mx) mx = sj;
          }
          // Nothing visible (an empty row, or a bias of -inf on every visible key): output 0, lse -inf.
          if (nk <= 0 || mx == -std::numeric_limits<double>::infinity()) {
            for (int64_t d = 0; d < D; ++d) oi[d] = T(0);
            *l = -std::numeric_limits<T>::infinity();
            continue;
          }
          double sum = 0;
          for (int64_t j = 0; j < nk; ++j) {
            s[static_cast<size_t>(j)] = std::exp(s[static_cast<size_t>(j)] - mx);
            sum += s[static_cast<size_t>(j)];
          }
          std::fill(acc.begin(), acc.end(), 0.0);
          for (int64_t j = 0; j < nk; ++j) {
            const T* vj = v + ((b * Tk + j) * Hkv + hk) * D;
            const double p = s[static_cast<size_t>(j)] / sum;
            for (int64_t d = 0; d < D; ++d) acc[static_cast<size_t>(d)] += p * vj[d];
          }
          for (int64_t d = 0; d < D; ++d) oi[d] = static_cast<T>(acc[static_cast<size_t>(d)]);
          *l = static_cast<T>(mx + std::log(sum));
        }
  }
}

// For each query row i:  p_j = exp(s_ij - lse_i),  dP_j = dout_i . v_j,  Di = dout_i . out_i,
// dS_j = p_j (dP_j - Di);  dq_i += scale sum_j dS_j k_j,  dk_j += scale dS_j q_i,  dv_j += p_j dout_i,
// dbias[h, i, j] += dS_j.
// A task is one (batch row, kv head), so the dk/dv sums of a query-head group never race. When
// dbias is wanted a task is one kv head over all batch rows in order, so that the batch sum of
// dbias is race-free and deterministic (at the price of Hkv-way parallelism only).
template <typename T>
void attention_backward(int64_t B, int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t D, const T* q,
                        const T* k, const T* v, const T* out, const T* lse, const T* dout, const T* bias,
                        const int32_t* lengths, bool causal, T scale, T* dq, T* dk, T* dv, T* dbias) {
  const int64_t group = Hq / Hkv;
#pragma omp parallel
  {
    std::vector<double> p(static_cast<size_t>(Tk)), ds(static_cast<size_t>(Tk));
    std::vector<double> dqi(static_cast<size_t>(D));
    auto task = [&](int64_t b, int64_t hk) {
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
        for (int64_t i = 0; i < Tq; ++i) {
          const int64_t len = lengths ? lengths[b] : Tk;
          const int64_t nk = visible_keys(i, Tk, len, causal);
          if (nk <= 0) continue;
          const double l = lse[(b * Hq + h) * Tq + i];
          if (l == -std::numeric_limits<double>::infinity()) continue;  // a row that saw nothing
          const size_t qoff = static_cast<size_t>(((b * Tq + i) * Hq + h) * D);
          const T* qi = q + qoff;
          const T* doi = dout + qoff;
          const T* oi = out + qoff;
          const size_t boff = static_cast<size_t>((h * Tq + i) * Tk);
          double Di = 0;
          for (int64_t d = 0; d < D; ++d) Di += static_cast<double>(doi[d]) * oi[d];
          for (int64_t j = 0; j < nk; ++j) {
            const size_t koff = static_cast<size_t>(((b * Tk + j) * Hkv + hk) * D);
            double dot = 0, dP = 0;
            for (int64_t d = 0; d < D; ++d) {
              dot += static_cast<double>(qi[d]) * k[koff + static_cast<size_t>(d)];
              dP += static_cast<double>(doi[d]) * v[koff + static_cast<size_t>(d)];
            }
            double sj = dot * scale;
            if (bias) sj += static_cast<double>(bias[boff + static_cast<size_t>(j)]);
            p[static_cast<size_t>(j)] = std::exp(sj - l);
            ds[static_cast<size_t>(j)] = p[static_cast<size_t>(j)] * (dP - Di);
          }
          if (dbias)
            for (int64_t j = 0; j < nk; ++j)
              dbias[boff + static_cast<size_t>(j)] += static_cast<T>(ds[static_cast<size_t>(j)]);
          for (auto& x : dqi) x = 0;
          for (int64_t j = 0; j < nk; ++j) {
            const size_t koff = static_cast<size_t>(((b * Tk + j) * Hkv + hk) * D);
            const double dsj = ds[static_cast<size_t>(j)] * scale, pj = p[static_cast<size_t>(j)];
            for (int64_t d = 0; d < D; ++d) {
              dqi[static_cast<size_t>(d)] += dsj * k[koff + static_cast<size_t>(d)];
              dk[koff + static_cast<size_t>(d)] += static_cast<T>(dsj * qi[d]);
              dv[koff + static_cast<size_t>(d)] += static_cast<T>(pj * doi[d]);
            }
          }
          for (int64_t d = 0; d < D; ++d) dq[qoff + static_cast<size_t>(d)] += static_cast<T>(dqi[static_cast<size_t>(d)]);
        }
    };
    if (dbias) {
#pragma omp for schedule(dynamic, 1)
      for (int64_t hk = 0; hk < Hkv; ++hk)
        for (int64_t b = 0; b < B; ++b) task(b, hk);
    } else {
#pragma omp for collapse(2) schedule(dynamic, 1)
      for (int64_t b = 0; b < B; ++b)
        for (int64_t hk = 0; hk < Hkv; ++hk) task(b, hk);
    }
  }
}

template void attention_forward<float>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const float*, const float*, const float*, const float*, const int32_t*, bool, float, float*, float*);
template void attention_forward<double>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const double*, const double*, const double*, const double*, const int32_t*, bool, double, double*, double*);
template void attention_backward<float>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const float*, const float*, const float*, const float*, const float*, const float*, const float*, const int32_t*, bool, float, float*, float*, float*, float*);
template void attention_backward<double>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const double*, const double*, const double*, const double*, const double*, const double*, const double*, const int32_t*, bool, double, double*, double*, double*, double*);

}  // namespace st::cpu
