// Cache-blocked, packed GEMM for the CPU path (no BLAS).
//
// The classic Goto/BLIS structure: loop over NC-wide column panels of op(B) and KC-deep slices of
// K; pack the KC x NC panel of B into NR-wide strips (shared by all threads), then each thread
// packs an MC x KC block of op(A) into MR-tall strips and runs an MR x NR register-blocked
// micro-kernel over it. Packing makes the inner loop read both operands contiguously whatever the
// transposes, and zero-pads ragged edges so the micro-kernel has no bounds checks. The
// micro-kernel is plain C++ that GCC vectorizes (16 floats = two AVX2 registers per row, 6 rows:
// 12 accumulators).
#include <omp.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/cpu/cpu_kernels.hpp"

namespace st::cpu {

namespace {

template <typename T> struct Blocking;
template <> struct Blocking<float> {
  static constexpr int MR = 6, NR = 16;
  static constexpr int64_t KC = 256, MC = 96, NC = 2048;
};
template <> struct Blocking<double> {
  static constexpr int MR = 6, NR = 8;
  static constexpr int64_t KC = 256, MC = 96, NC = 1024;
};

// op(A)[i, p] for the block starting at (i0, p0), packed into MR-row strips: out[s][p][r].
template <typename T, int MR>
void pack_a(const T* A, bool trans_a, int64_t M, int64_t K, int64_t i0, int64_t p0, int64_t mc,
            int64_t kc, T* out) {
  for (int64_t s = 0; s < mc; s += MR) {
    const int rows = static_cast<int>(std::min<int64_t>(MR, mc - s));
    T* dst = out + s * kc;
    for (int64_t p = 0; p < kc; ++p) {
      for (int r = 0; r < rows; ++r) {
        const int64_t i = i0 + s + r, pp = p0 + p;
        dst[p * MR + r] = trans_a ? A[pp * M + i] : A[i * K + pp];
      }
      for (int r = rows; r < MR; ++r) dst[p * MR + r] = T(0);
    }
  }
}

// op(B)[p, j] for the block starting at (p0, j0), packed into NR-column strips: out[s][p][c].
template <typename T, int NR>
void pack_b_strip(const T* B, bool trans_b, int64_t N, int64_t K, int64_t p0, int64_t j0,
                  int64_t kc, int cols, T* dst) {
  if (!trans_b) {
    for (int64_t p = 0; p < kc; ++p) {
      const T* src = B + (p0 + p) * N + j0;
      for (int c = 0; c < cols; ++c) dst[p * NR + c] = src[c];
      for (int c = cols; c < NR; ++c) dst[p * NR + c] = T(0);
    }
  } else {
    for (int64_t p = 0; p < kc; ++p)
      for (int c = cols; c < NR; ++c) dst[p * NR + c] = T(0);
    for (int c = 0; c < cols; ++c) {
      const T* src = B + (j0 + c) * K + p0;
      for (int64_t p = 0; p < kc; ++p) dst[p * NR + c] = src[p];
    }
  }
}

template <typename T, int MR, int NR>
inline void micro_kernel(int64_t kc, const T* __restrict a, const T* __restrict b,
                         T* __restrict c, int64_t ldc, int mr, int nr, T alpha) {
  T acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = T(0);
  for (int64_t p = 0; p < kc; ++p) {
    const T* ap = a + p * MR;
    const T* bp = b + p * NR;
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const T ai = ap[i];
#pragma GCC unroll 16
      for (int j = 0; j < NR; ++j) acc[i][j] += ai * bp[j];
    }
  }
  if (mr == MR && nr == NR) {
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) c[i * ldc + j] += alpha * acc[i][j];
  } else {
    for (int i = 0; i < mr; ++i)
      for (int j = 0; j < nr; ++j) c[i * ldc + j] += alpha * acc[i][j];
  }
}

// Small products: a direct triple loop beats packing and thread start-up.
template <typename T>
void gemm_small(int64_t M, int64_t N, int64_t K, T alpha, const T* A, bool trans_a, const T* B,
                bool trans_b, T* C) {
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < N; ++j) {
      T s = T(0);
      for (int64_t p = 0; p < K; ++p) {
        const T a = trans_a ? A[p * M + i] : A[i * K + p];
        const T b = trans_b ? B[j * K + p] : B[p * N + j];
        s += a * b;
      }
      C[i * N + j] += alpha * s;
    }
}

}  // namespace

template <typename T>
void gemm(int64_t M, int64_t N, int64_t K, T alpha, const T* A, bool trans_a, const T* B,
          bool trans_b, T beta, T* C) {
  if (M <= 0 || N <= 0) return;
  // C = beta * C first; beta == 0 must not read C (it may hold garbage or NaN).
  if (beta == T(0)) std::memset(C, 0, static_cast<size_t>(M * N) * sizeof(T));
  else if (beta != T(1))
    for (int64_t i = 0; i < M * N; ++i) C[i] *= beta;
  if (K <= 0 || alpha == T(0)) return;

  if (M * N * K <= 16384) {
    gemm_small(M, N, K, alpha, A, trans_a, B, trans_b, C);
    return;
  }

  using Bk = Blocking<T>;
  constexpr int MR = Bk::MR, NR = Bk::NR;
  const int64_t KC = Bk::KC, MC = Bk::MC, NC = Bk::NC;
  std::vector<T> bpack(static_cast<size_t>(KC * ((std::min(NC, N) + NR - 1) / NR * NR)));
  const int max_threads = omp_get_max_threads();
  std::vector<std::vector<T>> apack(static_cast<size_t>(max_threads));

  for (int64_t jc = 0; jc < N; jc += NC) {
    const int64_t nc = std::min(NC, N - jc);
    const int64_t nstrips = (nc + NR - 1) / NR;
    for (int64_t pc = 0; pc < K; pc += KC) {
      const int64_t kc = std::min(KC, K - pc);
      const int64_t mblocks = (M + MC - 1) / MC;
      // Enough work for threads? (Each block is at least ~MC*nc*kc*2 flops.)
      const bool parallel = static_cast<double>(M) * nc * kc > 2.0e5 && max_threads > 1;
#pragma omp parallel if (parallel)
      {
#pragma omp for schedule(static)
        for (int64_t s = 0; s < nstrips; ++s) {
          const int cols = static_cast<int>(std::min<int64_t>(NR, nc - s * NR));
          pack_b_strip<T, NR>(B, trans_b, N, K, pc, jc + s * NR, kc, cols, bpack.data() + s * kc * NR);
        }
        std::vector<T>& ap = apack[static_cast<size_t>(omp_get_thread_num())];
        ap.resize(static_cast<size_t>((MC + MR) * KC));
        // Work items: (row block, column chunk) so narrow-M products still use every thread.
        const int64_t nchunks = std::max<int64_t>(1, std::min<int64_t>(nstrips, (omp_get_num_threads() + mblocks - 1) / mblocks));
        const int64_t strips_per_chunk = (nstrips + nchunks - 1) / nchunks;
#pragma omp for schedule(dynamic, 1) collapse(2)
        for (int64_t ib = 0; ib < mblocks; ++ib) {
          for (int64_t ch = 0; ch < nchunks; ++ch) {
            const int64_t ic = ib * MC;
            const int64_t mc = std::min(MC, M - ic);
            pack_a<T, MR>(A, trans_a, M, K, ic, pc, mc, kc, ap.data());
            const int64_t s0 = ch * strips_per_chunk, s1 = std::min(nstrips, s0 + strips_per_chunk);
            for (int64_t s = s0; s < s1; ++s) {
              const int64_t jr = s * NR;
              const int nr = static_cast<int>(std::min<int64_t>(NR, nc - jr));
              for (int64_t ir = 0; ir < mc; ir += MR) {
                const int mr = static_cast<int>(std::min<int64_t>(MR, mc - ir));
                micro_kernel<T, MR, NR>(kc, ap.data() + ir * kc, bpack.data() + s * kc * NR,
                                        C + (ic + ir) * N + jc + jr, N, mr, nr, alpha);
              }
            }
          }
        }
      }
    }
  }
}

template void gemm<float>(int64_t, int64_t, int64_t, float, const float*, bool, const float*, bool, float, float*);
template void gemm<double>(int64_t, int64_t, int64_t, double, const double*, bool, const double*, bool, double, double*);

}  // namespace st::cpu
