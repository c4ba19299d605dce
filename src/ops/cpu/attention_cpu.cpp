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

// One query row against keys j = 0 .. nk-1 at k0 + j * kstride (v alike): out_i and lse_i.
// bi: the row's bias (nk entries; null: none). s, acc: scratch of at least nk and D entries.
template <typename T>
void forward_row(const T* qi, const T* k0, const T* v0, int64_t kstride, int64_t nk, const T* bi, int64_t D,
                 T scale, std::vector<double>& s, std::vector<double>& acc, T* oi, T* l) {
  double mx = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < nk; ++j) {
    const T* kj = k0 + j * kstride;
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
    return;
  }
  double sum = 0;
  for (int64_t j = 0; j < nk; ++j) {
    s[static_cast<size_t>(j)] = std::exp(s[static_cast<size_t>(j)] - mx);
    sum += s[static_cast<size_t>(j)];
  }
  std::fill(acc.begin(), acc.end(), 0.0);
  for (int64_t j = 0; j < nk; ++j) {
    const T* vj = v0 + j * kstride;
    const double p = s[static_cast<size_t>(j)] / sum;
    for (int64_t d = 0; d < D; ++d) acc[static_cast<size_t>(d)] += p * vj[d];
  }
  for (int64_t d = 0; d < D; ++d) oi[d] = static_cast<T>(acc[static_cast<size_t>(d)]);
  *l = static_cast<T>(mx + std::log(sum));
}

// The backward of one query row (see attention_backward below): keys j = 0 .. nk-1 at
// k0 + j * kstride (v, dk, dv alike); dbias_row (null: not wanted) gets dS.
template <typename T>
void backward_row(const T* qi, const T* doi, const T* oi, double l, const T* k0, const T* v0, int64_t kstride,
                  int64_t nk, const T* bi, int64_t D, T scale, std::vector<double>& p, std::vector<double>& ds,
                  std::vector<double>& dqi, T* dq_i, T* dk0, T* dv0, T* dbias_row) {
  if (nk <= 0 || l == -std::numeric_limits<double>::infinity()) return;  // a row that saw nothing
  double Di = 0;
  for (int64_t d = 0; d < D; ++d) Di += static_cast<double>(doi[d]) * oi[d];
  for (int64_t j = 0; j < nk; ++j) {
    const T* kj = k0 + j * kstride;
    const T* vj = v0 + j * kstride;
    double dot = 0, dP = 0;
    for (int64_t d = 0; d < D; ++d) {
      dot += static_cast<double>(qi[d]) * kj[d];
      dP += static_cast<double>(doi[d]) * vj[d];
    }
    double sj = dot * scale;
    if (bi) sj += static_cast<double>(bi[j]);
    p[static_cast<size_t>(j)] = std::exp(sj - l);
    ds[static_cast<size_t>(j)] = p[static_cast<size_t>(j)] * (dP - Di);
  }
  if (dbias_row)
    for (int64_t j = 0; j < nk; ++j) dbias_row[j] += static_cast<T>(ds[static_cast<size_t>(j)]);
  for (auto& x : dqi) x = 0;
  for (int64_t j = 0; j < nk; ++j) {
    const T* kj = k0 + j * kstride;
    T* dkj = dk0 + j * kstride;
    T* dvj = dv0 + j * kstride;
    const double dsj = ds[static_cast<size_t>(j)] * scale, pj = p[static_cast<size_t>(j)];
    for (int64_t d = 0; d < D; ++d) {
      dqi[static_cast<size_t>(d)] += dsj * kj[d];
      dkj[d] += static_cast<T>(dsj * qi[d]);
      dvj[d] += static_cast<T>(pj * doi[d]);
    }
  }
  for (int64_t d = 0; d < D; ++d) dq_i[d] += static_cast<T>(dqi[static_cast<size_t>(d)]);
}
}  // namespace

template <typename T>
void attention_forward(int64_t B, int64_t Tq, int64_t Tk, int64_t Hq, int64_t Hkv, int64_t D, const T* q,
                       const T* k, const T* v, const T* bias, const int32_t* lengths, bool causal, T scale,
                       T* out, T* lse) {
  const int64_t group = Hq / Hkv, kstride = Hkv * D;
#pragma omp parallel
  {
    std::vector<double> s(static_cast<size_t>(Tk)), acc(static_cast<size_t>(D));
#pragma omp for collapse(3) schedule(static)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t h = 0; h < Hq; ++h)
        for (int64_t i = 0; i < Tq; ++i) {
          const int64_t len = lengths ? lengths[b] : Tk;
          const int64_t hk = h / group;
          const size_t qoff = static_cast<size_t>(((b * Tq + i) * Hq + h) * D);
          const size_t koff = static_cast<size_t>((b * Tk * Hkv + hk) * D);
          forward_row(q + qoff, k + koff, v + koff, kstride, visible_keys(i, Tk, len, causal),
                      bias ? bias + (h * Tq + i) * Tk : nullptr, D, scale, s, acc, out + qoff,
                      lse + (b * Hq + h) * Tq + i);
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
  const int64_t group = Hq / Hkv, kstride = Hkv * D;
#pragma omp parallel
  {
    std::vector<double> p(static_cast<size_t>(Tk)), ds(static_cast<size_t>(Tk));
    std::vector<double> dqi(static_cast<size_t>(D));
    auto task = [&](int64_t b, int64_t hk) {
      for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
        for (int64_t i = 0; i < Tq; ++i) {
          const int64_t len = lengths ? lengths[b] : Tk;
          const size_t qoff = static_cast<size_t>(((b * Tq + i) * Hq + h) * D);
          const size_t koff = static_cast<size_t>((b * Tk * Hkv + hk) * D);
          const size_t boff = static_cast<size_t>((h * Tq + i) * Tk);
          backward_row(q + qoff, dout + qoff, out + qoff, static_cast<double>(lse[(b * Hq + h) * Tq + i]), k + koff,
                       v + koff, kstride, visible_keys(i, Tk, len, causal), bias ? bias + boff : nullptr, D, scale, p,
                       ds, dqi, dq + qoff, dk + koff, dv + koff, dbias ? dbias + boff : nullptr);
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

// Varlen: segment s is tokens [cu[s], cu[s+1]); its query at offset i sees its keys at offsets
// [0, min(i + 1, keys[s])). lse: [Hq, N]. A task is one (segment, head) in the forward and one
// (segment, kv head) in the backward: segments share no keys, so nothing races.
template <typename T>
void attention_varlen_forward(int64_t S, const int32_t* cu, const int32_t* keys, int64_t N, int64_t max_len,
                              int64_t Hq, int64_t Hkv, int64_t D, const T* q, const T* k, const T* v, T scale, T* out,
                              T* lse) {
  const int64_t group = Hq / Hkv, kstride = Hkv * D;
#pragma omp parallel
  {
    std::vector<double> s(static_cast<size_t>(max_len)), acc(static_cast<size_t>(D));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t sg = 0; sg < S; ++sg)
      for (int64_t h = 0; h < Hq; ++h) {
        const int64_t begin = cu[sg], len = cu[sg + 1] - begin, hk = h / group;
        const size_t koff = static_cast<size_t>((begin * Hkv + hk) * D);
        for (int64_t i = 0; i < len; ++i) {
          const size_t qoff = static_cast<size_t>(((begin + i) * Hq + h) * D);
          forward_row(q + qoff, k + koff, v + koff, kstride, visible_keys(i, len, keys[sg], true),
                      static_cast<const T*>(nullptr), D, scale, s, acc, out + qoff, lse + h * N + begin + i);
        }
      }
  }
}

template <typename T>
void attention_varlen_backward(int64_t S, const int32_t* cu, const int32_t* keys, int64_t N, int64_t max_len,
                               int64_t Hq, int64_t Hkv, int64_t D, const T* q, const T* k, const T* v, const T* out,
                               const T* lse, const T* dout, T scale, T* dq, T* dk, T* dv) {
  const int64_t group = Hq / Hkv, kstride = Hkv * D;
#pragma omp parallel
  {
    std::vector<double> p(static_cast<size_t>(max_len)), ds(static_cast<size_t>(max_len));
    std::vector<double> dqi(static_cast<size_t>(D));
#pragma omp for collapse(2) schedule(dynamic, 1)
    for (int64_t sg = 0; sg < S; ++sg)
      for (int64_t hk = 0; hk < Hkv; ++hk) {
        const int64_t begin = cu[sg], len = cu[sg + 1] - begin;
        const size_t koff = static_cast<size_t>((begin * Hkv + hk) * D);
        for (int64_t h = hk * group; h < (hk + 1) * group; ++h)
          for (int64_t i = 0; i < len; ++i) {
            const size_t qoff = static_cast<size_t>(((begin + i) * Hq + h) * D);
            backward_row(q + qoff, dout + qoff, out + qoff, static_cast<double>(lse[h * N + begin + i]), k + koff,
                         v + koff, kstride, visible_keys(i, len, keys[sg], true), static_cast<const T*>(nullptr), D,
                         scale, p, ds, dqi, dq + qoff, dk + koff, dv + koff, static_cast<T*>(nullptr));
          }
      }
  }
}

template void attention_forward<float>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const float*, const float*, const float*, const float*, const int32_t*, bool, float, float*, float*);
template void attention_forward<double>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const double*, const double*, const double*, const double*, const int32_t*, bool, double, double*, double*);
template void attention_backward<float>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const float*, const float*, const float*, const float*, const float*, const float*, const float*, const int32_t*, bool, float, float*, float*, float*, float*);
template void attention_backward<double>(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, const double*, const double*, const double*, const double*, const double*, const double*, const double*, const int32_t*, bool, double, double*, double*, double*, double*);

template void attention_varlen_forward<float>(int64_t, const int32_t*, const int32_t*, int64_t, int64_t, int64_t, int64_t, int64_t, const float*, const float*, const float*, float, float*, float*);
template void attention_varlen_forward<double>(int64_t, const int32_t*, const int32_t*, int64_t, int64_t, int64_t, int64_t, int64_t, const double*, const double*, const double*, double, double*, double*);
template void attention_varlen_backward<float>(int64_t, const int32_t*, const int32_t*, int64_t, int64_t, int64_t, int64_t, int64_t, const float*, const float*, const float*, const float*, const float*, const float*, float, float*, float*, float*);
template void attention_varlen_backward<double>(int64_t, const int32_t*, const int32_t*, int64_t, int64_t, int64_t, int64_t, int64_t, const double*, const double*, const double*, const double*, const double*, const double*, double, double*, double*, double*);

}  // namespace st::cpu
