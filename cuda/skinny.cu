// Skinny GEMMs: shardtune's own kernels for LoRA's rank-r products (one of M, N, K is r <= 64, a
// multiple of 8), as an alternative to cuBLASLt, by kind (cuda/matmul.cu): SHARDTUNE_SKINNY=custom,
// cublaslt or a comma list of the kinds below; unset: expand, rope and pair.
// These products move tens of MB per call for a few GFLOP: they are memory-bound, and the
// kernels are built to stream their large operand at HBM speed (cp.async multi-stage pipelines or
// many resident blocks) while bf16 tensor cores (mma.sync m16n8k16, f32 accumulation) do the
// arithmetic.
//
// Three kinds, by where r is (row-major operands, as in src/ops/matmul.hpp):
//  thin    C[rows, r] = alpha X[rows, K] W(K, r) + beta Cin   (xa = x A^T, dxa = dy B; K large)
//          X is streamed; W is [r, K] ("WK") or [K, r] ("KR"). C may be [rows, r] or [r, rows]
//          (strides cs_m, cs_j): the M-small form C[r, N] = op(A) B^T is the same product.
//  reduce  C(n, j) = alpha sum_t P(t, j) X[t, n] + beta Cin   (dA = dxa^T x, dB = dy^T xa)
//          the sum runs over tokens t; X [tokens, wide] is streamed; P is [tokens, r] ("PM") or
//          [r, tokens] ("PR"). Each block sums one column tile over one slice of the tokens into
//          an f32 partial; a second kernel adds the slices in a fixed order (deterministic, no
//          atomics) and applies alpha, beta and the output type.
//  expand  C[M, N] = alpha P(M, r) W(r, N) + beta Cin          (y += s xa B^T, dx += dxa A)
//          output-bound: Cin's tile is prefetched with cp.async beside the small P and W tiles.
//
// mma.sync fragments (PTX ISA, m16n8k16 with .bf16): g = lane / 4, q = lane % 4;
//  A (16 x 16, row): a[0] = A[g][2q, 2q+1], a[1] = A[g+8][2q..], a[2] = A[g][2q+8..], a[3] = A[g+8][2q+8..]
//  B (16 x 8, col):  b[0] = B[2q, 2q+1][g], b[1] = B[2q+8, 2q+9][g]
//  C/D (16 x 8):     d[0], d[1] = D[g][2q, 2q+1], d[2], d[3] = D[g+8][2q, 2q+1]
// ldmatrix .x4 loads four 8 x 8 b16 matrices, matrix i's row addresses from lanes 8i..8i+7; thread t
// receives row t/4, elements 2(t%4), 2(t%4)+1 of each (register i); with .trans, of the transpose,
// i.e. stored rows 2(t%4), 2(t%4)+1 at column t/4. frag_a / frag_b2 below map each operand's
// stored orientation onto these fragments (their comments give the per-lane addresses).
//
// Coverage (each output element written once, each k summed once): thin block b owns rows
// [BM b, BM b + BM) and all r columns; its stages cover k in [0, 128 nk) >= [0, K), and within a
// stage each warp takes a disjoint (16-row group, column slice). reduce block (x, y) owns wide
// columns [128 x, 128 x + 128) and tokens [y S, min(T, y S + S)): the slices partition [0, T), and
// slice y's partial is added once, in order y = 0, 1, ... expand: one block per 64 x 128 output
// tile, k = 0..RK-1 once.
//
// Zero fill: every tile is copied in 16-byte vectors; a vector outside its matrix (a row past the
// end, a column past the end, or a token past the block's slice) is written as zeros (cp.async
// with source size 0). Both operands of a product are zero-filled past K, so stale shared memory
// (possibly NaN bits) never meets a product. r not in {8, 16, 32, 64} runs in the next larger
// instantiation with the extra W / P rows zero and the extra outputs not stored.
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <string>
#include <type_traits>

#include "core/error.hpp"
#include "cuda/common.cuh"
#include "cuda/matmul.cuh"

namespace st::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kThreads = 128;  // every kernel: 4 warps

// Shared-memory row stride (elements of 2 bytes) for a tile of `cols` columns: an odd number of
// 16-byte units, so the 8 rows one ldmatrix matrix reads fall in 8 different 16-byte bank groups.
__host__ __device__ constexpr int pad_ld(int cols) { return (cols / 8) % 2 == 1 ? cols : cols + 8; }

// ---------------------------------------------------------------- PTX wrappers
#ifdef ST_CUDA_EMU
// The CPU emulator's versions (tests/emu/cuda_emu.hpp): the same operations, run on std::threads.
alignas(128) unsigned char smem[emu::kSharedBytes];  // the kernels' dynamic shared memory
const bool smem_registered = (emu::set_shared(smem), true);
inline uint32_t smem_addr(const void* p) { return emu::to_shared(smem, p); }
inline void cp_async16(uint32_t dst, const void* src, bool valid) { emu::cp_async(smem, dst, src, 16, valid ? 16 : 0); }
inline void cp_async_commit() { emu::cp_async_commit(); }
template <int N>
inline void cp_async_wait() {
  emu::cp_async_wait(N);
}
inline void ldsm_x4(uint32_t (&r)[4], const bf16* p) { emu::ldmatrix(smem, r, 4, false, smem_addr(p)); }
inline void ldsm_x4_t(uint32_t (&r)[4], const bf16* p) { emu::ldmatrix(smem, r, 4, true, smem_addr(p)); }
inline void ldsm_x2(uint32_t (&r)[2], const bf16* p) { emu::ldmatrix(smem, r, 2, false, smem_addr(p)); }
inline void ldsm_x2_t(uint32_t (&r)[2], const bf16* p) { emu::ldmatrix(smem, r, 2, true, smem_addr(p)); }
inline void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) { emu::mma_m16n8k16(d, a, b0, b1); }
#else
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16 bytes global -> shared, bypassing L1; `valid` false writes 16 zero bytes (nothing is read).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int n = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(n) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}
__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x2(uint32_t (&r)[2], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldsm_x2_t(uint32_t (&r)[2], const bf16* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(smem_addr(p)));
}
// d += A B (16 x 8 x 16, bf16 inputs, f32 accumulation)
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

#endif  // ST_CUDA_EMU

// ---------------------------------------------------------------- tiles and fragments
// Copies rows [r0, r0 + ROWS) x columns [c0, c0 + COLS) of the row-major matrix g (leading
// dimension ld) into the shared tile s (row stride LDS), as 16-byte cp.async vectors spread over
// the block's threads. Vectors at rows >= rows or columns >= cols are zero-filled; cols is a
// multiple of the vector (checked by the dispatch), so a vector is wholly inside or outside.
template <typename T, int ROWS, int COLS, int LDS>
__device__ __forceinline__ void load_tile(T* s, const T* __restrict__ g, int64_t ld, int64_t rows, int64_t cols,
                                          int64_t r0, int64_t c0, int tid) {
  constexpr int V = 16 / sizeof(T), VPR = COLS / V, NV = ROWS * VPR;
  static_assert(COLS % V == 0 && LDS % V == 0, "tile columns must be whole 16-byte vectors");
#pragma unroll
  for (int i = 0; i < (NV + kThreads - 1) / kThreads; ++i) {
    const int v = tid + i * kThreads;
    if (NV % kThreads == 0 || v < NV) {
      const int r = v / VPR, c = (v % VPR) * V;
      const int64_t gr = r0 + r, gc = c0 + c;
      const bool ok = gr < rows && gc < cols;
      cp_async16(smem_addr(s + r * LDS + c), ok ? g + gr * ld + gc : g, ok);
    }
  }
}

// The A fragment (rows m0..m0+15, k0..k0+15) of a tile stored [m][k] (KMAJ false) or [k][m]
// (KMAJ true). Lane l addresses matrix i = l / 8, row l % 8:
//  [m][k]: matrix i covers rows m0 + 8 (i % 2), columns k0 + 8 (i / 2) -> a[i] as listed above.
//  [k][m]: matrix i covers stored rows k0 + 8 (i / 2), columns m0 + 8 (i % 2); .trans gives the
//          thread A[m0 + 8 (i % 2) + g][k0 + 8 (i / 2) + 2q..], the same a[i].
template <bool KMAJ>
__device__ __forceinline__ void frag_a(uint32_t (&a)[4], const bf16* s, int ld, int m0, int k0, int lane) {
  const int r8 = lane & 7, lo = (lane >> 3) & 1, hi = lane >> 4;
  if constexpr (!KMAJ) ldsm_x4(a, s + (m0 + r8 + lo * 8) * ld + k0 + hi * 8);
  else ldsm_x4_t(a, s + (k0 + r8 + hi * 8) * ld + m0 + lo * 8);
}
// B fragments of two n-tiles (n0..n0+7 -> b[0], b[1]; n0+8..n0+15 -> b[2], b[3]) over k0..k0+15,
// from a tile stored [n][k] (KMAJ false) or [k][n] (KMAJ true). Matrix i: n-tile i / 2, k half i % 2.
//  [n][k]: stored rows n0 + 8 (i / 2) + l % 8, columns k0 + 8 (i % 2): thread gets B[k0 + 8 (i % 2) + 2q..][n]
//  [k][n]: stored rows k0 + 8 (i % 2) + l % 8, columns n0 + 8 (i / 2); .trans: the same.
template <bool KMAJ>
__device__ __forceinline__ void frag_b2(uint32_t (&b)[4], const bf16* s, int ld, int n0, int k0, int lane) {
  const int r8 = lane & 7, lo = (lane >> 3) & 1, hi = lane >> 4;
  if constexpr (!KMAJ) ldsm_x4(b, s + (n0 + r8 + hi * 8) * ld + k0 + lo * 8);
  else ldsm_x4_t(b, s + (k0 + r8 + lo * 8) * ld + n0 + hi * 8);
}
// One n-tile (n0..n0+7) over k0..k0+15 (lanes 0..15 give the addresses; 16..31 are ignored).
template <bool KMAJ>
__device__ __forceinline__ void frag_b1(uint32_t (&b)[2], const bf16* s, int ld, int n0, int k0, int lane) {
  const int r8 = lane & 7, lo = (lane >> 3) & 1;
  if constexpr (!KMAJ) ldsm_x2(b, s + (n0 + r8) * ld + k0 + lo * 8);
  else ldsm_x2_t(b, s + (k0 + r8 + lo * 8) * ld + n0);
}

// acc[nt] (n-tile nt = columns 8 nt..) += A(16 x 16) B(16 x R) for B's tile at k0.
template <int R, bool B_KMAJ>
__device__ __forceinline__ void mma_row(float (&acc)[R / 8][4], const uint32_t (&a)[4], const bf16* bs, int ldb,
                                        int k0, int lane) {
#pragma unroll
  for (int np = 0; np < R / 16; ++np) {
    uint32_t b[4];
    frag_b2<B_KMAJ>(b, bs, ldb, np * 16, k0, lane);
    mma_bf16(acc[2 * np], a, b[0], b[1]);
    mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
  }
  if constexpr (R % 16 != 0) {
    uint32_t b[2];
    frag_b1<B_KMAJ>(b, bs, ldb, R - 8, k0, lane);
    mma_bf16(acc[R / 8 - 1], a, b[0], b[1]);
  }
}

// The output's element type: 4 consecutive values to / from registers (8- or 16-byte aligned).
__device__ __forceinline__ float4 load4(const float* p) { return *reinterpret_cast<const float4*>(p); }
__device__ __forceinline__ float4 load4(const bf16* p) {
  const uint2 u = *reinterpret_cast<const uint2*>(p);
  const float2 lo = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.x));
  const float2 hi = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&u.y));
  return make_float4(lo.x, lo.y, hi.x, hi.y);
}
__device__ __forceinline__ void store4(float* p, float4 v) { *reinterpret_cast<float4*>(p) = v; }
// Pairs (an even element offset from a 16-byte aligned base: 4- or 8-byte aligned).
__device__ __forceinline__ float2 load2(const float* p) { return *reinterpret_cast<const float2*>(p); }
__device__ __forceinline__ float2 load2(const bf16* p) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(p));
}
__device__ __forceinline__ void store2(float* p, float2 v) { *reinterpret_cast<float2*>(p) = v; }
__device__ __forceinline__ void store2(bf16* p, float2 v) {
  *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(v.x, v.y);
}
__device__ __forceinline__ void store4(bf16* p, float4 v) {
  const __nv_bfloat162 lo = __floats2bfloat162_rn(v.x, v.y), hi = __floats2bfloat162_rn(v.z, v.w);
  uint2 u;
  u.x = *reinterpret_cast<const uint32_t*>(&lo);
  u.y = *reinterpret_cast<const uint32_t*>(&hi);
  *reinterpret_cast<uint2*>(p) = u;
}

// ---------------------------------------------------------------- thin: C[rows, r] = X W
// Rows per block: 64 (32 at r = 8). Every block reads all of W (r x K) from L2 beside its rows
// of X: at 64 rows and r = 16 that is 25% more L2 -> SM traffic than X alone (32 rows: 50%). At 8192
// rows, 128 blocks of 4 warps with 4 stages of 16 KiB of X in flight each keep ~8 MiB in flight.
// Stages: 5 (4 at r = 64: 140 KiB, within an A100's 163 KiB of shared memory per block).
constexpr int kThinBK = 128;
template <int R>
struct ThinCfg {
  static constexpr int STAGES = R >= 64 ? 4 : 5;
  static constexpr int BM = R <= 8 ? 32 : 64;   // rows per block
  static constexpr int RG = BM / 16;            // row groups (one m16 tile each)
  static constexpr int KS = 4 / RG;             // warps sharing a row group split each stage's columns
  static constexpr int KW = kThinBK / KS;       // columns per warp per stage
  static constexpr int LDX = pad_ld(kThinBK);
};
template <int R, bool W_KR>
__host__ __device__ constexpr int thin_ldw() { return W_KR ? pad_ld(R) : pad_ld(kThinBK); }
template <int R, bool W_KR>
__host__ __device__ constexpr int thin_stage_elems() {
  return ThinCfg<R>::BM * ThinCfg<R>::LDX + (W_KR ? kThinBK : R) * thin_ldw<R, W_KR>();
}
template <int R, bool W_KR>
__host__ __device__ constexpr size_t thin_smem() {
  return sizeof(bf16) * ThinCfg<R>::STAGES * thin_stage_elems<R, W_KR>();
}

struct ThinArgs {
  const bf16* x;  // [rows, K]
  const bf16* w;  // [r, K] (WK) or [K, r] (KR)
  void* c;
  const void* cin;  // null when beta == 0
  int64_t rows, K, cs_m, cs_j;
  int r;
  float alpha, beta;
};

// Block: BM rows of X, all r columns of C. Warp w takes row group w % RG (16 rows) and the
// column slice w / RG of each stage (KS slices of KW); the KS partial sums are added in warp order
// through shared memory at the end. Stages: a STAGES-deep cp.async ring, one __syncthreads per
// stage (the load issued at step kt goes to the slot computed at step kt-1, which every warp has
// left when it passes step kt's barrier).
template <int R, bool W_KR, typename TC>
__global__ void __launch_bounds__(kThreads) thin_kernel(const ThinArgs p) {
  using Cfg = ThinCfg<R>;
  constexpr int BM = Cfg::BM, LDX = Cfg::LDX, LDW = thin_ldw<R, W_KR>();
  constexpr int XS = BM * LDX, SS = thin_stage_elems<R, W_KR>();
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* const tiles = reinterpret_cast<bf16*>(smem);  // stage s: X at s * SS, W at s * SS + XS
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int rg = warp % Cfg::RG, ks = warp / Cfg::RG;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * BM;
  const int nk = static_cast<int>((p.K + kThinBK - 1) / kThinBK);

  auto load = [&](int slot, int kt) {
    bf16* xs = tiles + slot * SS;
    const int64_t k0 = static_cast<int64_t>(kt) * kThinBK;
    load_tile<bf16, BM, kThinBK, LDX>(xs, p.x, p.K, p.rows, p.K, m0, k0, tid);
    if constexpr (W_KR) load_tile<bf16, kThinBK, R, LDW>(xs + XS, p.w, p.r, p.K, p.r, k0, 0, tid);
    else load_tile<bf16, R, kThinBK, LDW>(xs + XS, p.w, p.K, p.r, p.K, 0, k0, tid);
  };

  float acc[R / 8][4];
#pragma unroll
  for (int i = 0; i < R / 8; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;

#pragma unroll
  for (int s = 0; s < Cfg::STAGES - 1; ++s) {
    if (s < nk) load(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < nk; ++kt) {
    cp_async_wait<Cfg::STAGES - 2>();  // groups 0..kt are complete: stage kt has landed (this thread's part)
    __syncthreads();                   // ... and every thread's; slot (kt - 1) % S is free
    if (kt + Cfg::STAGES - 1 < nk) load((kt + Cfg::STAGES - 1) % Cfg::STAGES, kt + Cfg::STAGES - 1);
    cp_async_commit();  // possibly empty: keeps one group per step
    const bf16* xs = tiles + (kt % Cfg::STAGES) * SS;
#pragma unroll
    for (int kk = 0; kk < Cfg::KW; kk += 16) {
      const int k = ks * Cfg::KW + kk;
      uint32_t a[4];
      frag_a<false>(a, xs, LDX, rg * 16, k, lane);
      mma_row<R, W_KR>(acc, a, xs + XS, LDW, k, lane);
    }
  }
  cp_async_wait<0>();
  __syncthreads();  // all warps are done with the tiles: their memory takes the partial sums

  if constexpr (Cfg::KS > 1) {
    float* red = reinterpret_cast<float*>(smem);  // [KS - 1][RG][R / 2][32]
    if (ks > 0) {
#pragma unroll
      for (int i = 0; i < R / 8; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c) red[(((ks - 1) * Cfg::RG + rg) * (R / 2) + i * 4 + c) * 32 + lane] = acc[i][c];
    }
    __syncthreads();
    if (ks > 0) return;
    for (int s = 1; s < Cfg::KS; ++s)
#pragma unroll
      for (int i = 0; i < R / 8; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[i][c] += red[(((s - 1) * Cfg::RG + rg) * (R / 2) + i * 4 + c) * 32 + lane];
  }

  TC* C = static_cast<TC*>(p.c);
  const TC* Cin = static_cast<const TC*>(p.cin);
  const int g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int i = 0; i < R / 8; ++i)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t m = m0 + rg * 16 + g + (c >> 1) * 8;
      const int j = i * 8 + 2 * q + (c & 1);
      if (m < p.rows && j < p.r) {
        const int64_t idx = m * p.cs_m + j * p.cs_j;
        float v = p.alpha * acc[i][c];
        if (Cin) v += p.beta * dev::to_f(Cin[idx]);
        C[idx] = dev::from_f<TC>(v);
      }
    }
}

// ---------------------------------------------------------------- reduce: C(n, j) = sum_t P(t, j) X[t, n]
constexpr int kRedBN = 128, kRedBT = 64, kRedStages = 4;
constexpr int kRedLDX = pad_ld(kRedBN);
template <int R, bool P_RM>
__host__ __device__ constexpr int red_ldp() { return P_RM ? pad_ld(kRedBT) : pad_ld(R); }
template <int R, bool P_RM>
__host__ __device__ constexpr int red_stage_elems() {
  return kRedBT * kRedLDX + (P_RM ? R : kRedBT) * red_ldp<R, P_RM>();
}
template <int R, bool P_RM>
__host__ __device__ constexpr size_t red_smem() {
  return sizeof(bf16) * kRedStages * red_stage_elems<R, P_RM>();
}

struct ReduceArgs {
  const bf16* x;  // [tokens, wide]
  const bf16* p;  // [tokens, r] (PM) or [r, tokens] (PR)
  float* part;    // [splits][C's layout]: element (n, j) at n * cs_n + j * cs_j
  int64_t tokens, wide, rows_per_split, cs_n, cs_j, part_stride;
  int r;
};

// Block (x, y): wide columns [128 x, 128 x + 128) over tokens [y * rows_per_split, ...). The mma
// runs with m = wide column, n = j, k = token: X's tile [token][column] is A stored [k][m]
// (ldmatrix .trans), P's tile is B stored [k][n] (PM, .trans) or [n][k] (PR). Warp w takes wide
// columns 32 w .. 32 w + 31 (two m16 tiles) and every token of each stage. Tokens past the slice's
// end are zero-filled in both tiles (the next slice counts them).
template <int R, bool P_RM>
__global__ void __launch_bounds__(kThreads, 2) reduce_kernel(const ReduceArgs p) {
  constexpr int LDP = red_ldp<R, P_RM>(), XS = kRedBT * kRedLDX, SS = red_stage_elems<R, P_RM>();
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* const tiles = reinterpret_cast<bf16*>(smem);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * kRedBN;
  const int64_t t_begin = static_cast<int64_t>(blockIdx.y) * p.rows_per_split;
  const int64_t t_end = t_begin + p.rows_per_split < p.tokens ? t_begin + p.rows_per_split : p.tokens;
  const int nk = static_cast<int>((t_end - t_begin + kRedBT - 1) / kRedBT);

  auto load = [&](int slot, int kt) {
    bf16* xs = tiles + slot * SS;
    const int64_t t0 = t_begin + static_cast<int64_t>(kt) * kRedBT;
    load_tile<bf16, kRedBT, kRedBN, kRedLDX>(xs, p.x, p.wide, t_end, p.wide, t0, n0, tid);
    if constexpr (P_RM) load_tile<bf16, R, kRedBT, LDP>(xs + XS, p.p, p.tokens, p.r, t_end, 0, t0, tid);
    else load_tile<bf16, kRedBT, R, LDP>(xs + XS, p.p, p.r, t_end, p.r, t0, 0, tid);
  };

  float acc[2][R / 8][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int i = 0; i < R / 8; ++i) acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.0f;

#pragma unroll
  for (int s = 0; s < kRedStages - 1; ++s) {
    if (s < nk) load(s, s);
    cp_async_commit();
  }
  for (int kt = 0; kt < nk; ++kt) {
    cp_async_wait<kRedStages - 2>();  // as in thin_kernel
    __syncthreads();
    if (kt + kRedStages - 1 < nk) load((kt + kRedStages - 1) % kRedStages, kt + kRedStages - 1);
    cp_async_commit();
    const bf16* xs = tiles + (kt % kRedStages) * SS;
#pragma unroll
    for (int kk = 0; kk < kRedBT; kk += 16) {
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        uint32_t a[4];
        frag_a<true>(a, xs, kRedLDX, warp * 32 + mt * 16, kk, lane);
        mma_row<R, !P_RM>(acc[mt], a, xs + XS, LDP, kk, lane);
      }
    }
  }
  cp_async_wait<0>();

  float* part = p.part + static_cast<int64_t>(blockIdx.y) * p.part_stride;
  const int g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int i = 0; i < R / 8; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t n = n0 + warp * 32 + mt * 16 + g + (c >> 1) * 8;
        const int j = i * 8 + 2 * q + (c & 1);
        if (n < p.wide && j < p.r) part[n * p.cs_n + j * p.cs_j] = acc[mt][i][c];
      }
}

// C[i] = alpha * sum_s part[s][i] + beta * Cin[i] for i < count (a multiple of 4), s in order.
template <typename TC>
__global__ void sum_splits_kernel(const float* __restrict__ part, int splits, int64_t count, TC* C, const TC* Cin,
                                  float alpha, float beta) {
  const int64_t step = static_cast<int64_t>(gridDim.x) * blockDim.x * 4;
  for (int64_t i = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * 4; i < count; i += step) {
    float4 s = load4(part + i);
#pragma unroll 4
    for (int k = 1; k < splits; ++k) {
      const float4 t = load4(part + k * count + i);
      s.x += t.x;
      s.y += t.y;
      s.z += t.z;
      s.w += t.w;
    }
    float4 v = make_float4(alpha * s.x, alpha * s.y, alpha * s.z, alpha * s.w);
    if (Cin) {
      const float4 c = load4(Cin + i);
      v.x += beta * c.x;
      v.y += beta * c.y;
      v.z += beta * c.z;
      v.w += beta * c.w;
    }
    store4(C + i, v);
  }
}

// ---------------------------------------------------------------- expand: C[M, N] = P W
constexpr int kExpBM = 64, kExpBN = 128;
template <int RK, bool P_RM>
__host__ __device__ constexpr int exp_ldp() { return P_RM ? pad_ld(kExpBM) : pad_ld(RK); }
template <int RK, bool W_NR>
__host__ __device__ constexpr int exp_ldw() { return W_NR ? pad_ld(RK) : pad_ld(kExpBN); }
template <int RK, bool P_RM>
__host__ __device__ constexpr int exp_p_elems() { return (P_RM ? RK : kExpBM) * exp_ldp<RK, P_RM>(); }
template <int RK, bool W_NR>
__host__ __device__ constexpr int exp_w_elems() { return (W_NR ? kExpBN : RK) * exp_ldw<RK, W_NR>(); }
constexpr int kExpLDC = kExpBN + 8;  // C tile row stride (elements): see expand_kernel's epilogue
template <int RK, bool P_RM, bool W_NR, typename TC>
__host__ __device__ constexpr size_t exp_smem() {
  return sizeof(bf16) * (exp_p_elems<RK, P_RM>() + exp_w_elems<RK, W_NR>()) + sizeof(TC) * kExpBM * kExpLDC;
}

struct ExpandArgs {
  const bf16* p;  // [M, r] (PM) or [r, M] (PR)
  const bf16* w;  // [r, N] (RN) or [N, r] (NR)
  void* c;        // [M, N]
  const void* cin;  // [M, N]; null when beta == 0; may be c itself
  int64_t M, N, tiles_n;
  int r;
  float alpha, beta;
  // RoPE on the result (skinny_expand_rope; bf16 C only): rope_D > 0 is the head dim (16, 32,
  // 64 or 128, dividing N), row m of C is token m at position rope_pos[m] or m % rope_T, and
  // each head's columns (c, c + D/2) rotate by cos / sin [positions, D/2] (f32).
  const float* rope_cos = nullptr;
  const float* rope_sin = nullptr;
  const int32_t* rope_pos = nullptr;
  int64_t rope_T = 0;
  int rope_D = 0;
};

// Block b: the 64 x 128 tile (b / tiles_n, b % tiles_n) of C. One cp.async group brings P's rows,
// W's columns (r padded to RK with zeros) and, when beta != 0, Cin's tile; warp w computes rows
// 32 (w % 2).. (two m16 tiles) x columns 64 (w / 2).. (eight n8 tiles) over k = 0..RK-1. Epilogue:
// each thread turns its fragments into alpha acc + beta cin in the tile's shared copy (it reads
// cin and writes the result at the same place, nobody else touches it), then after a barrier the
// block writes the tile out in 16-byte rows. In place (cin == c) is safe: a block reads only its
// own tile, before it writes it. Row stride kExpLDC = 136: the fragment accesses (rows g, columns
// 2q) hit 32 different banks for 4-byte bf16 pairs and per half warp for 8-byte f32 pairs.
template <int RK, bool P_RM, bool W_NR, typename TC, bool kRope = false>
__global__ void __launch_bounds__(kThreads) expand_kernel(const ExpandArgs p) {
  constexpr int LDP = exp_ldp<RK, P_RM>(), LDW = exp_ldw<RK, W_NR>();
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* const ps = reinterpret_cast<bf16*>(smem);
  bf16* const ws = ps + exp_p_elems<RK, P_RM>();
  TC* const cs = reinterpret_cast<TC*>(ws + exp_w_elems<RK, W_NR>());
  static_assert((sizeof(bf16) * (exp_p_elems<RK, P_RM>() + exp_w_elems<RK, W_NR>())) % 16 == 0, "C tile alignment");
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x / p.tiles_n) * kExpBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x % p.tiles_n) * kExpBN;
  TC* const C = static_cast<TC*>(p.c);
  const TC* const Cin = static_cast<const TC*>(p.cin);

  if constexpr (P_RM) load_tile<bf16, RK, kExpBM, LDP>(ps, p.p, p.M, p.r, p.M, 0, m0, tid);
  else load_tile<bf16, kExpBM, RK, LDP>(ps, p.p, p.r, p.M, p.r, m0, 0, tid);
  if constexpr (W_NR) load_tile<bf16, kExpBN, RK, LDW>(ws, p.w, p.r, p.N, p.r, n0, 0, tid);
  else load_tile<bf16, RK, kExpBN, LDW>(ws, p.w, p.N, p.r, p.N, 0, n0, tid);
  if (Cin) load_tile<TC, kExpBM, kExpBN, kExpLDC>(cs, Cin, p.N, p.M, p.N, m0, n0, tid);
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  const int wm = warp & 1, wn = warp >> 1;
  float acc[2][8][4];
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int i = 0; i < 8; ++i) acc[mt][i][0] = acc[mt][i][1] = acc[mt][i][2] = acc[mt][i][3] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < RK; kk += 16) {
#pragma unroll
    for (int mt = 0; mt < 2; ++mt) {
      uint32_t a[4];
      frag_a<P_RM>(a, ps, LDP, wm * 32 + mt * 16, kk, lane);
#pragma unroll
      for (int np = 0; np < 4; ++np) {
        uint32_t b[4];
        frag_b2<!W_NR>(b, ws, LDW, wn * 64 + np * 16, kk, lane);
        mma_bf16(acc[mt][2 * np], a, b[0], b[1]);
        mma_bf16(acc[mt][2 * np + 1], a, b[2], b[3]);
      }
    }
  }

  const int g = lane >> 2, q = lane & 3;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        TC* e = cs + (wm * 32 + mt * 16 + g + h * 8) * kExpLDC + wn * 64 + i * 8 + 2 * q;
        float2 v = make_float2(p.alpha * acc[mt][i][2 * h], p.alpha * acc[mt][i][2 * h + 1]);
        if (Cin) {
          const float2 c = load2(e);
          v.x += p.beta * c.x;
          v.y += p.beta * c.y;
        }
        store2(e, v);
      }
  __syncthreads();
  if constexpr (kRope && std::is_same_v<TC, bf16>) {
    if (p.rope_D > 0) {
      // RoPE on the way out: a tile of 128 columns holds whole heads (n0 is a multiple of 128,
      // D divides 128), so each thread takes 8 pairs (c, c + D/2) of one row and head: 16-byte
      // reads of both halves from the shared tile and of cos / sin, rotated in f32 (rope_forward's
      // arithmetic) and rounded to bf16: the second rounding, after the tile's (the unfused
      // path's two as well).
      const int D = p.rope_D, half = D / 2, vph = half / 8, per_row = (kExpBN / D) * vph;
      for (int it = tid; it < kExpBM * per_row; it += kThreads) {
        const int row = it / per_row, rem = it % per_row, col = (rem / vph) * D + (rem % vph) * 8;
        const int64_t gm = m0 + row, gn = n0 + col;
        if (gm >= p.M || gn >= p.N) continue;  // N % D == 0: the partner half is inside too
        const int64_t pos = p.rope_pos ? p.rope_pos[gm] : gm % p.rope_T;
        const int c8 = (rem % vph) * 8;
        const float4* cp = reinterpret_cast<const float4*>(p.rope_cos + pos * half + c8);
        const float4* sp = reinterpret_cast<const float4*>(p.rope_sin + pos * half + c8);
        const float4 c0 = cp[0], c1 = cp[1], s0 = sp[0], s1 = sp[1];
        const float cs8[8] = {c0.x, c0.y, c0.z, c0.w, c1.x, c1.y, c1.z, c1.w};
        const float sn8[8] = {s0.x, s0.y, s0.z, s0.w, s1.x, s1.y, s1.z, s1.w};
        uint4 av = *reinterpret_cast<const uint4*>(cs + row * kExpLDC + col);
        uint4 bv = *reinterpret_cast<const uint4*>(cs + row * kExpLDC + col + half);
        __nv_bfloat162* ah = reinterpret_cast<__nv_bfloat162*>(&av);
        __nv_bfloat162* bh = reinterpret_cast<__nv_bfloat162*>(&bv);
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const float2 a = __bfloat1622float2(ah[k]), b = __bfloat1622float2(bh[k]);
          const float ca = cs8[2 * k], cb = cs8[2 * k + 1], sa = sn8[2 * k], sb = sn8[2 * k + 1];
          ah[k] = __floats2bfloat162_rn(a.x * ca - b.x * sa, a.y * cb - b.y * sb);
          bh[k] = __floats2bfloat162_rn(b.x * ca + a.x * sa, b.y * cb + a.y * sb);
        }
        *reinterpret_cast<uint4*>(C + gm * p.N + gn) = av;
        *reinterpret_cast<uint4*>(C + gm * p.N + gn + half) = bv;
      }
      return;
    }
  }
  constexpr int V = 16 / sizeof(TC), VPR = kExpBN / V;
#pragma unroll
  for (int it = 0; it < kExpBM * VPR / kThreads; ++it) {
    const int v = tid + it * kThreads, row = v / VPR, col = (v % VPR) * V;
    const int64_t gm = m0 + row, gn = n0 + col;
    if (gm < p.M && gn < p.N)  // N is a multiple of 8: the vector is whole
      *reinterpret_cast<uint4*>(C + gm * p.N + gn) = *reinterpret_cast<const uint4*>(cs + row * kExpLDC + col);
  }
}

// ---------------------------------------------------------------- pair: dB and dxa from one pass over dy
// dB(n, j) = sum_t X[t, n] P(t, j)   (the reduce kind's product: m = column n, n = j, k = token)
// D(t, j)  = sum_n X[t, n] W[n, j]   (the thin kind's, W [K, r]: m = token, n = j, k = column)
// X = dy [tokens, wide], P = xa ([tokens, r] or [r, tokens]), W = B [wide, r]. A stage is one 64
// token x 128 column tile of X with P's 64 tokens and W's 128 rows; the two products read it from
// shared memory in their own fragment layouts (X^T through ldmatrix .trans for dB, X for D).
constexpr int kPairBT = 64, kPairBN = 128;
constexpr int kPairLDX = pad_ld(kPairBN);
template <int R>
__host__ __device__ constexpr int pair_stages() { return R >= 32 ? 3 : 4; }  // <= 104 KiB: 2 blocks an H100 SM, 1 an A100's
template <int R, bool P_RM>
__host__ __device__ constexpr int pair_ldp() { return P_RM ? pad_ld(kPairBT) : pad_ld(R); }
template <int R, bool P_RM>
__host__ __device__ constexpr int pair_p_elems() { return (P_RM ? R : kPairBT) * pair_ldp<R, P_RM>(); }
template <int R, bool P_RM>
__host__ __device__ constexpr int pair_stage_elems() {
  return kPairBT * kPairLDX + pair_p_elems<R, P_RM>() + kPairBN * pad_ld(R);
}
template <int R, bool P_RM>
__host__ __device__ constexpr size_t pair_smem() {
  return sizeof(bf16) * pair_stages<R>() * pair_stage_elems<R, P_RM>();
}
// Column chunks of 128 a block spans: its dB accumulators take NC R registers a thread.
template <int R>
__host__ __device__ constexpr int pair_nc() { return R <= 16 ? 4 : 2; }

struct PairArgs {
  const bf16* x;  // dy [tokens, wide]
  const bf16* p;  // xa [tokens, r] (PM) or [r, tokens] (PR)
  const bf16* w;  // B [wide, r]
  float* part_d;  // [splits_n][tokens * r]: D's partial sums, element (t, j) at t * d_cs_t + j * d_cs_j
  float* part_b;  // [splits_t][wide * r]: dB's, element (n, j) at n * r + j
  int64_t tokens, wide, tokens_per_split, d_cs_t, d_cs_j;
  int r;
};

// Block (x, y): columns [NC 128 x, NC 128 (x + 1)) and tokens [y S, min(tokens, (y + 1) S)), S =
// tokens_per_split; stages run token chunk by token chunk, each over the block's column chunks
// (the same cp.async ring as thin_kernel: one group and one barrier a stage). Warp w takes, of
// every stage, columns 32 w .. 32 w + 31 (two m16 tiles) over the 64 tokens for dB, whose sums
// stay in registers (one set per column chunk) until the end, and tokens 16 w .. 16 w + 15 over
// the 128 columns for D, whose sums are complete for the block's columns after the token chunk's
// last stage and go to part_d then. Tokens past the split's end are zero-filled and not stored
// (the next split's block owns them); columns past `wide` are never loaded as chunks or stored.
template <int R, bool P_RM>
__global__ void __launch_bounds__(kThreads, 2) pair_kernel(const PairArgs p) {
  constexpr int NC = pair_nc<R>(), S = pair_stages<R>();
  constexpr int LDP = pair_ldp<R, P_RM>(), LDW = pad_ld(R), XS = kPairBT * kPairLDX, PS = pair_p_elems<R, P_RM>();
  constexpr int SS = pair_stage_elems<R, P_RM>();
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* const tiles = reinterpret_cast<bf16*>(smem);  // stage s: X at s SS, P at + XS, W at + XS + PS
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, q = lane & 3;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * (NC * kPairBN);
  const int64_t t_begin = static_cast<int64_t>(blockIdx.y) * p.tokens_per_split;
  const int64_t t_end = t_begin + p.tokens_per_split < p.tokens ? t_begin + p.tokens_per_split : p.tokens;
  const int nt = static_cast<int>((t_end - t_begin + kPairBT - 1) / kPairBT);
  const int64_t chunks_left = (p.wide - n0 + kPairBN - 1) / kPairBN;
  const int nc = chunks_left < NC ? static_cast<int>(chunks_left) : NC;  // column chunks inside `wide`
  const int steps = nt * nc;

  auto load = [&](int slot, int it) {
    bf16* xs = tiles + slot * SS;
    const int64_t t0 = t_begin + static_cast<int64_t>(it / nc) * kPairBT;
    const int64_t c0 = n0 + static_cast<int64_t>(it % nc) * kPairBN;
    load_tile<bf16, kPairBT, kPairBN, kPairLDX>(xs, p.x, p.wide, t_end, p.wide, t0, c0, tid);
    if constexpr (P_RM) load_tile<bf16, R, kPairBT, LDP>(xs + XS, p.p, p.tokens, p.r, t_end, 0, t0, tid);
    else load_tile<bf16, kPairBT, R, LDP>(xs + XS, p.p, p.r, t_end, p.r, t0, 0, tid);
    load_tile<bf16, kPairBN, R, LDW>(xs + XS + PS, p.w, p.r, p.wide, p.r, c0, 0, tid);
  };

  float accB[NC][2][R / 8][4];
  float accD[R / 8][4];
#pragma unroll
  for (int cc = 0; cc < NC; ++cc)
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < R / 8; ++i) accB[cc][mt][i][0] = accB[cc][mt][i][1] = accB[cc][mt][i][2] = accB[cc][mt][i][3] = 0.0f;
#pragma unroll
  for (int i = 0; i < R / 8; ++i) accD[i][0] = accD[i][1] = accD[i][2] = accD[i][3] = 0.0f;

#pragma unroll
  for (int s = 0; s < S - 1; ++s) {
    if (s < steps) load(s, s);
    cp_async_commit();
  }
  int it = 0;
  float* const part_d = p.part_d + static_cast<int64_t>(blockIdx.x) * (p.tokens * p.r);
  for (int tc = 0; tc < nt; ++tc) {
#pragma unroll
    for (int cc = 0; cc < NC; ++cc) {
      if (cc < nc) {  // uniform over the block
        cp_async_wait<S - 2>();  // as in thin_kernel
        __syncthreads();
        if (it + S - 1 < steps) load((it + S - 1) % S, it + S - 1);
        cp_async_commit();
        const bf16* xs = tiles + (it % S) * SS;
#pragma unroll
        for (int kk = 0; kk < kPairBT; kk += 16)
#pragma unroll
          for (int mt = 0; mt < 2; ++mt) {
            uint32_t a[4];
            frag_a<true>(a, xs, kPairLDX, warp * 32 + mt * 16, kk, lane);
            mma_row<R, !P_RM>(accB[cc][mt], a, xs + XS, LDP, kk, lane);
          }
#pragma unroll
        for (int kk = 0; kk < kPairBN; kk += 16) {
          uint32_t a[4];
          frag_a<false>(a, xs, kPairLDX, warp * 16, kk, lane);
          mma_row<R, true>(accD, a, xs + XS + PS, LDW, kk, lane);
        }
        ++it;
      }
    }
    // D of this token chunk's 64 tokens over the block's columns is complete: to part_d.
    const int64_t t0 = t_begin + static_cast<int64_t>(tc) * kPairBT;
#pragma unroll
    for (int i = 0; i < R / 8; ++i)
#pragma unroll
      for (int c = 0; c < 4; ++c) {
        const int64_t t = t0 + warp * 16 + g + (c >> 1) * 8;
        const int j = i * 8 + 2 * q + (c & 1);
        if (t < t_end && j < p.r) part_d[t * p.d_cs_t + j * p.d_cs_j] = accD[i][c];
        accD[i][c] = 0.0f;
      }
  }
  cp_async_wait<0>();

  float* const part_b = p.part_b + static_cast<int64_t>(blockIdx.y) * (p.wide * p.r);
#pragma unroll
  for (int cc = 0; cc < NC; ++cc) {
    if (cc >= nc) break;
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int i = 0; i < R / 8; ++i)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int64_t n = n0 + cc * kPairBN + warp * 32 + mt * 16 + g + (c >> 1) * 8;
          const int j = i * 8 + 2 * q + (c & 1);
          if (n < p.wide && j < p.r) part_b[n * p.r + j] = accB[cc][mt][i][c];
        }
  }
}

// ---------------------------------------------------------------- swiglu with the LoRA terms of gate and up
// h = silu(g') u' (forward) or dg', du' from dh' (backward), g' = g + sg xg Bg^T, u' = u + su xu Bu^T,
// dh' = dh + sd xd Bd (the down projection's input-gradient term dxa A, xd [M, r], Bd [r, N];
// optional): the gate and up projections' rank-r terms are made in the tile (two expand products) and never
// stored; g and u are the base GEMMs' outputs. x* are the group's transposed xa [r, M], B* [N, r].
// Block b: the 64 x 128 tile (b / tiles_n, b % tiles_n), warps as in expand_kernel (rows 32 (w % 2)
// .., columns 64 (w / 2) ..). One cp.async group brings the four factor tiles and the g, u (and dh)
// tiles; each thread turns its fragments into results in place in the g (and u) tiles' shared
// copies, then the block writes them out in 16-byte rows. The arithmetic per element is
// swiglu_forward_kernel's / swiglu_backward_kernel's on g', u' in f32.
struct SwigluLoraArgs {
  const bf16* g;
  const bf16* u;
  const bf16* dh;  // backward only
  const bf16* xg;  // [r, M]
  const bf16* xu;
  const bf16* bg;  // [N, r]
  const bf16* bu;
  const bf16* xd;  // [M, r] (backward, rd > 0)
  const bf16* bd;  // [r, N]
  bf16* out0;  // h (forward) or dg
  bf16* out1;  // du (backward)
  int64_t M, N, tiles_n;
  int rg, ru, rd;  // the terms' ranks (0: no term: its factors are not read)
  float sg, su, sd;
};
template <int RK, bool kBackward>
__host__ __device__ constexpr size_t swiglu_lora_smem() {
  return sizeof(bf16) * (2 * exp_p_elems<RK, true>() + 2 * exp_w_elems<RK, true>() +
                         (kBackward ? exp_p_elems<RK, false>() + exp_w_elems<RK, false>() : 0) +
                         (kBackward ? 3 : 2) * kExpBM * kExpLDC);
}

// acc = P W (k < r, 16 a step; steps at or past r skipped: uniform over the block) for this warp's
// 16 x 64 part (rows m.., columns 64 wn..) of a 64 x 128 tile, as in expand_kernel: P stored [k][m]
// (P_KMAJ) or [m][k], W stored [k][n] (W_KMAJ) or [n][k]. One 16-row slice at a time keeps a
// term's accumulators at 32 registers (the whole 32 x 64 part took 64 a term and capped the
// kernel at 2 blocks an SM: session 15 measured it 2.3x slower than swiglu_forward_kernel).
template <int RK, bool P_KMAJ, bool W_KMAJ>
__device__ __forceinline__ void tile_product(float (&acc)[8][4], const bf16* ps, int ldp, const bf16* ws, int ldw,
                                             int r, int m, int wn, int lane) {
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int c = 0; c < 4; ++c) acc[i][c] = 0.0f;
#pragma unroll
  for (int kk = 0; kk < RK; kk += 16) {
    if (r <= kk) break;
    uint32_t a[4], b[4];
    frag_a<P_KMAJ>(a, ps, ldp, m, kk, lane);
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      frag_b2<W_KMAJ>(b, ws, ldw, wn * 64 + np * 16, kk, lane);
      mma_bf16(acc[2 * np], a, b[0], b[1]);
      mma_bf16(acc[2 * np + 1], a, b[2], b[3]);
    }
  }
}

// Blocks an H100 SM holds by shared memory (227 KiB, 1 KiB reserved a block), at most 4 forward
// and 3 backward (r 16: 50.5 / 74.8 KiB, 4 / 3 blocks; r 32: 3 / 2; r 64: 2 / 1): the register
// bound asked of ptxas.
template <int RK, bool kBackward>
constexpr int swiglu_lora_min_blocks() {
  constexpr size_t fit = (227 * 1024) / (swiglu_lora_smem<RK, kBackward>() + 1024);
  constexpr size_t most = kBackward ? 3 : 4;
  return static_cast<int>(fit < 1 ? 1 : fit > most ? most : fit);
}

template <int RK, bool kBackward>
__global__ void __launch_bounds__(kThreads, swiglu_lora_min_blocks<RK, kBackward>()) swiglu_lora_kernel(const SwigluLoraArgs p) {
  constexpr int LDP = exp_ldp<RK, true>(), LDW = exp_ldw<RK, true>();
  constexpr int PE = exp_p_elems<RK, true>(), WE = exp_w_elems<RK, true>(), TE = kExpBM * kExpLDC;
  extern __shared__ __align__(16) unsigned char smem[];
  bf16* const pg = reinterpret_cast<bf16*>(smem);
  bf16* const pu = pg + PE;
  bf16* const wg = pu + PE;
  bf16* const wu = wg + WE;
  bf16* const gs = wu + WE;
  bf16* const us = gs + TE;
  bf16* const ds = us + TE;  // dh (backward)
  bf16* const pd = ds + TE;   // backward: xd [64 tokens][RK], then Bd [RK][128 columns]
  bf16* const wd = pd + exp_p_elems<RK, false>();
  constexpr int LDPD = exp_ldp<RK, false>(), LDWD = exp_ldw<RK, false>();
  static_assert((2 * PE + 2 * WE) % 8 == 0 && TE % 8 == 0 && exp_p_elems<RK, false>() % 8 == 0, "16-byte tile alignment");
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x / p.tiles_n) * kExpBM;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x % p.tiles_n) * kExpBN;

  // Factor rows past a term's rank are zero-filled (it is instantiated at the larger one).
  if (p.rg > 0) {
    load_tile<bf16, RK, kExpBM, LDP>(pg, p.xg, p.M, p.rg, p.M, 0, m0, tid);
    load_tile<bf16, kExpBN, RK, LDW>(wg, p.bg, p.rg, p.N, p.rg, n0, 0, tid);
  }
  if (p.ru > 0) {
    load_tile<bf16, RK, kExpBM, LDP>(pu, p.xu, p.M, p.ru, p.M, 0, m0, tid);
    load_tile<bf16, kExpBN, RK, LDW>(wu, p.bu, p.ru, p.N, p.ru, n0, 0, tid);
  }
  load_tile<bf16, kExpBM, kExpBN, kExpLDC>(gs, p.g, p.N, p.M, p.N, m0, n0, tid);
  load_tile<bf16, kExpBM, kExpBN, kExpLDC>(us, p.u, p.N, p.M, p.N, m0, n0, tid);
  if constexpr (kBackward) {
    load_tile<bf16, kExpBM, kExpBN, kExpLDC>(ds, p.dh, p.N, p.M, p.N, m0, n0, tid);
    if (p.rd > 0) {
      load_tile<bf16, kExpBM, RK, LDPD>(pd, p.xd, p.rd, p.M, p.rd, m0, 0, tid);
      load_tile<bf16, RK, kExpBN, LDWD>(wd, p.bd, p.N, p.rd, p.N, 0, n0, tid);
    }
  }
  cp_async_commit();
  cp_async_wait<0>();
  __syncthreads();

  const int wm = warp & 1, wn = warp >> 1;
  const int g = lane >> 2, q = lane & 3;
#pragma unroll 1
  for (int mt = 0; mt < 2; ++mt) {  // the warp's two 16-row slices, one after the other
    const int m = wm * 32 + mt * 16;
    if constexpr (kBackward) {
      // dh' = dh + sd xd Bd, into dh's tile (rounded to bf16 there, as the unfused path rounds dh):
      // each thread rewrites only its own fragment elements, which it alone reads below.
      if (p.rd > 0) {
        float ad[8][4];
        tile_product<RK, false, true>(ad, pd, LDPD, wd, LDWD, p.rd, m, wn, lane);
#pragma unroll
        for (int i = 0; i < 8; ++i)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int off = (m + g + hh * 8) * kExpLDC + wn * 64 + i * 8 + 2 * q;
            const float2 d = load2(ds + off);
            store2(ds + off, make_float2(d.x + p.sd * ad[i][2 * hh], d.y + p.sd * ad[i][2 * hh + 1]));
          }
      }
    }
    float ag[8][4], au[8][4];
    tile_product<RK, true, false>(ag, pg, LDP, wg, LDW, p.rg, m, wn, lane);
    tile_product<RK, true, false>(au, pu, LDP, wu, LDW, p.ru, m, wn, lane);
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int off = (m + g + hh * 8) * kExpLDC + wn * 64 + i * 8 + 2 * q;
        const float2 gb = load2(gs + off), ub = load2(us + off);
        const float g0 = gb.x + p.sg * ag[i][2 * hh], g1 = gb.y + p.sg * ag[i][2 * hh + 1];
        const float u0 = ub.x + p.su * au[i][2 * hh], u1 = ub.y + p.su * au[i][2 * hh + 1];
        if constexpr (!kBackward) {
          store2(gs + off, make_float2(g0 / (1.0f + __expf(-g0)) * u0, g1 / (1.0f + __expf(-g1)) * u1));
        } else {
          const float2 d = load2(ds + off);
          const float s0 = 1.0f / (1.0f + __expf(-g0)), s1 = 1.0f / (1.0f + __expf(-g1));
          store2(gs + off, make_float2(d.x * u0 * (s0 + g0 * s0 * (1.0f - s0)), d.y * u1 * (s1 + g1 * s1 * (1.0f - s1))));
          store2(us + off, make_float2(d.x * g0 * s0, d.y * g1 * s1));
        }
      }
  }
  __syncthreads();
  constexpr int V = 8, VPR = kExpBN / V;
#pragma unroll
  for (int it = 0; it < kExpBM * VPR / kThreads; ++it) {
    const int v = tid + it * kThreads, row = v / VPR, col = (v % VPR) * V;
    const int64_t gm = m0 + row, gn = n0 + col;
    if (gm < p.M && gn < p.N) {  // N is a multiple of 8: the vector is whole
      *reinterpret_cast<uint4*>(p.out0 + gm * p.N + gn) = *reinterpret_cast<const uint4*>(gs + row * kExpLDC + col);
      if constexpr (kBackward)
        *reinterpret_cast<uint4*>(p.out1 + gm * p.N + gn) = *reinterpret_cast<const uint4*>(us + row * kExpLDC + col);
    }
  }
}

#ifndef ST_CUDA_EMU  // the host side: launchers and the public functions
// ---------------------------------------------------------------- launchers
// The device's shared memory per block with opt-in (A100 163 KiB, H100 227 KiB, sm_86 99 KiB).
size_t smem_limit() {
  static const size_t limit = [] {
    int dev = 0, v = 0;
    ST_CUDA_CHECK(cudaGetDevice(&dev));
    ST_CUDA_CHECK(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
    return static_cast<size_t>(v);
  }();
  return limit;
}

// Each instantiation's dynamic shared memory is fixed; above 48 KiB it must be allowed once.
template <typename Kernel>
void allow_smem(Kernel kernel, size_t bytes) {
  if (bytes > 48 * 1024)
    ST_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

// Launchers: false (nothing launched) when the device has too little shared memory for the kernel.
template <int R, bool W_KR, typename TC>
bool run_thin(const ThinArgs& a) {
  constexpr size_t smem = thin_smem<R, W_KR>();
  if (smem > smem_limit()) return false;
  static const bool once = (allow_smem(thin_kernel<R, W_KR, TC>, smem), true);
  (void)once;
  const int64_t blocks = ceil_div(a.rows, ThinCfg<R>::BM);
  thin_kernel<R, W_KR, TC><<<static_cast<unsigned>(blocks), kThreads, smem, stream()>>>(a);
  ST_CUDA_LAUNCH_CHECK("skinny thin_kernel");
  return true;
}

template <int R, bool P_RM>
void run_reduce(const ReduceArgs& a, int splits) {
  constexpr size_t smem = red_smem<R, P_RM>();
  static const bool once = (allow_smem(reduce_kernel<R, P_RM>, smem), true);
  (void)once;
  const dim3 grid(static_cast<unsigned>(ceil_div(a.wide, kRedBN)), static_cast<unsigned>(splits));
  reduce_kernel<R, P_RM><<<grid, kThreads, smem, stream()>>>(a);
  ST_CUDA_LAUNCH_CHECK("skinny reduce_kernel");
}

template <int RK, bool P_RM, bool W_NR, typename TC, bool kRope = false>
bool run_expand(const ExpandArgs& a) {
  constexpr size_t smem = exp_smem<RK, P_RM, W_NR, TC>();
  if (smem > smem_limit()) return false;
  static const bool once = (allow_smem(expand_kernel<RK, P_RM, W_NR, TC, kRope>, smem), true);
  (void)once;
  const int64_t blocks = ceil_div(a.M, kExpBM) * a.tiles_n;
  if (blocks > 0x7fffffff) return false;
  expand_kernel<RK, P_RM, W_NR, TC, kRope><<<static_cast<unsigned>(blocks), kThreads, smem, stream()>>>(a);
  ST_CUDA_LAUNCH_CHECK("skinny expand_kernel");
  return true;
}

// The instantiated r: 8, 16, 32, 64 (thin, reduce: n-tiles of 8) and 16, 32, 64 (expand: k steps of 16).
int inst_r(int r) { return r <= 8 ? 8 : r <= 16 ? 16 : r <= 32 ? 32 : 64; }

template <typename TC>
bool thin(const ThinArgs& a, bool w_kr) {
  switch (inst_r(a.r)) {
    case 8: return w_kr ? run_thin<8, true, TC>(a) : run_thin<8, false, TC>(a);
    case 16: return w_kr ? run_thin<16, true, TC>(a) : run_thin<16, false, TC>(a);
    case 32: return w_kr ? run_thin<32, true, TC>(a) : run_thin<32, false, TC>(a);
    default: return w_kr ? run_thin<64, true, TC>(a) : run_thin<64, false, TC>(a);
  }
}

template <int R, bool P_RM>
bool run_pair(const PairArgs& a, dim3 grid) {
  constexpr size_t smem = pair_smem<R, P_RM>();
  if (smem > smem_limit()) return false;
  static const bool once = (allow_smem(pair_kernel<R, P_RM>, smem), true);
  (void)once;
  pair_kernel<R, P_RM><<<grid, kThreads, smem, stream()>>>(a);
  ST_CUDA_LAUNCH_CHECK("skinny pair_kernel");
  return true;
}

// C[i] = alpha sum_s part[s][i] + beta Cin[i] (sum_splits_kernel) over count elements.
template <typename TC>
void sum_splits(const float* part, int64_t splits, int64_t count, TC* C, const TC* Cin, float alpha, float beta) {
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>(ceil_div(count / 4, threads), 8 * sm_count());
  sum_splits_kernel<TC><<<static_cast<unsigned>(blocks), threads, 0, stream()>>>(part, static_cast<int>(splits), count,
                                                                              C, Cin, alpha, beta);
  ST_CUDA_LAUNCH_CHECK("skinny sum_splits_kernel");
}

template <int RK, bool kBackward>
bool run_swiglu_lora(const SwigluLoraArgs& a) {
  constexpr size_t smem = swiglu_lora_smem<RK, kBackward>();
  if (smem > smem_limit()) return false;
  static const bool once = (allow_smem(swiglu_lora_kernel<RK, kBackward>, smem), true);
  (void)once;
  const int64_t blocks = ceil_div(a.M, kExpBM) * a.tiles_n;
  if (blocks > 0x7fffffff) return false;
  swiglu_lora_kernel<RK, kBackward><<<static_cast<unsigned>(blocks), kThreads, smem, stream()>>>(a);
  ST_CUDA_LAUNCH_CHECK("skinny swiglu_lora_kernel");
  return true;
}

template <bool P_RM>
size_t red_smem_of(int r_inst) {
  return r_inst == 8 ? red_smem<8, P_RM>() : r_inst == 16 ? red_smem<16, P_RM>() : r_inst == 32 ? red_smem<32, P_RM>() : red_smem<64, P_RM>();
}

// Token slices: about two resident blocks per SM in one wave (each block <= 106 KiB of shared
// memory), slices a multiple of the 64-token stage. Depends on the shape and the SM count only.
template <typename TC>
bool reduce(ReduceArgs a, bool p_rm, TC* C, const TC* Cin, float alpha, float beta) {
  const int ri = inst_r(a.r);
  if ((p_rm ? red_smem_of<true>(ri) : red_smem_of<false>(ri)) > smem_limit()) return false;
  const int64_t tiles = ceil_div(a.wide, kRedBN), stages = ceil_div(a.tokens, kRedBT);
  int64_t splits = std::clamp<int64_t>((2 * sm_count()) / tiles, 1, stages);
  a.rows_per_split = ceil_div(stages, splits) * kRedBT;
  splits = ceil_div(a.tokens, a.rows_per_split);
  a.part_stride = a.wide * a.r;
  a.part = static_cast<float*>(raw_scratch(kScratchSkinny, static_cast<size_t>(splits * a.part_stride) * sizeof(float)));
  switch (ri) {
    case 8: p_rm ? run_reduce<8, true>(a, splits) : run_reduce<8, false>(a, splits); break;
    case 16: p_rm ? run_reduce<16, true>(a, splits) : run_reduce<16, false>(a, splits); break;
    case 32: p_rm ? run_reduce<32, true>(a, splits) : run_reduce<32, false>(a, splits); break;
    default: p_rm ? run_reduce<64, true>(a, splits) : run_reduce<64, false>(a, splits); break;
  }
  sum_splits<TC>(a.part, splits, a.part_stride, C, Cin, alpha, beta);
  return true;
}

template <int RK, typename TC, bool kRope>
bool expand_r(const ExpandArgs& a, bool p_rm, bool w_nr) {
  if (p_rm) return w_nr ? run_expand<RK, true, true, TC, kRope>(a) : run_expand<RK, true, false, TC, kRope>(a);
  return w_nr ? run_expand<RK, false, true, TC, kRope>(a) : run_expand<RK, false, false, TC, kRope>(a);
}
// kRope: the instantiations with the RoPE epilogue (a.rope_D > 0, bf16 C), apart so that the
// plain ones keep their registers.
template <typename TC, bool kRope = false>
bool expand(const ExpandArgs& a, bool p_rm, bool w_nr) {
  if (a.r <= 16) return expand_r<16, TC, kRope>(a, p_rm, w_nr);
  if (a.r <= 32) return expand_r<32, TC, kRope>(a, p_rm, w_nr);
  return expand_r<64, TC, kRope>(a, p_rm, w_nr);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
bool rank_like(int64_t d) { return d >= 8 && d <= 64 && d % 8 == 0; }

std::atomic<int> g_kinds_override{-1};  // -1: the environment's

}  // namespace

unsigned skinny_kinds() {
  const int o = g_kinds_override.load(std::memory_order_relaxed);
  if (o >= 0) return static_cast<unsigned>(o);
  static const unsigned env = [] {
    const char* e = std::getenv("SHARDTUNE_SKINNY");
    const std::string v = e ? e : "";
    // Unset: expand, rope and pair on shardtune's kernels, thin and reduce on cuBLASLt. Expand
    // measured 1.35-1.52x cuBLASLt per call on the H100 (session 10's CudaSkinnyBench) and 7B LoRA
    // without checkpointing 0.466-0.467 s/step against 0.468-0.469 with cuBLASLt (session 11);
    // thin and reduce were 0.89-0.98x cuBLASLt. Session 15 (H100, 7B LoRA per-op profile without
    // checkpointing, docs/bench/h100-2026-12-07-s15/): pair 16.6 ms/step against 23.3 for the
    // dB and dxa GEMMs it replaces, rope's expand + RoPE 5.8 against 6.6; swiglu's fused kernels
    // 30.1 against 23.6 for what they replace. Session 16 (H100, the same profile, after the
    // swiglu kernel went to 16-row slices: 119-164 registers): swiglu's kernels 21.1 ms against
    // 22.7 for the SwiGLU kernels and LoRA expands they replace, the profiled step 450.3 against
    // 454.1 ms, plain steps 0.4455 against 0.4465 s (docs/bench/h100-2026-12-08-s16/): on.
    // `cublaslt`: cuBLASLt for every kind.
    if (v.empty()) return static_cast<unsigned>(kSkinnyExpand | kSkinnyRope | kSkinnyPair | kSkinnySwiglu);
    if (v == "cublaslt") return 0u;
    if (v == "custom") return static_cast<unsigned>(kSkinnyAll);
    unsigned kinds = 0;
    size_t pos = 0;
    while (pos <= v.size()) {
      const size_t end = std::min(v.find(',', pos), v.size());
      const std::string k = v.substr(pos, end - pos);
      if (k == "thin") kinds |= kSkinnyThin;
      else if (k == "reduce") kinds |= kSkinnyReduce;
      else if (k == "expand") kinds |= kSkinnyExpand;
      else if (k == "rope") kinds |= kSkinnyRope;
      else if (k == "pair") kinds |= kSkinnyPair;
      else if (k == "swiglu") kinds |= kSkinnySwiglu;
      else
        ST_THROW_INPUT("SHARDTUNE_SKINNY=", v,
                       ": expected custom, cublaslt or a comma list (no spaces) of thin, reduce, expand, rope, pair, swiglu");
      pos = end + 1;
    }
    return kinds;
  }();
  return env;
}

void set_skinny_kinds(unsigned kinds) { g_kinds_override.store(static_cast<int>(kinds & kSkinnyAll), std::memory_order_relaxed); }
void clear_skinny_kinds() { g_kinds_override.store(-1, std::memory_order_relaxed); }

bool skinny_expand_rope_takes(DType a, DType b, DType c, int64_t M, int64_t N, int64_t K, int D) {
  return (skinny_kinds() & kSkinnyRope) && a == DType::bf16 && b == DType::bf16 && c == DType::bf16 && M > 0 &&
         rank_like(K) && N % 8 == 0 && (D == 16 || D == 32 || D == 64 || D == 128) && N % D == 0;
}

bool skinny_expand_rope(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha,
                        double beta, int64_t M, int64_t N, int64_t K, const float* cos, const float* sin,
                        const int32_t* pos, int64_t T, int D) {
  if (!skinny_expand_rope_takes(A.dtype(), B.dtype(), C.dtype(), M, N, K, D) || T <= 0) return false;
  const auto* a = static_cast<const bf16*>(A.data());
  const auto* b = static_cast<const bf16*>(B.data());
  if (!aligned16(a) || !aligned16(b) || !aligned16(C.data()) || !aligned16(cos) || !aligned16(sin) ||
      (trans_a ? M : K) % 8 != 0 || (trans_b ? K : N) % 8 != 0)
    return false;
  ExpandArgs e{a, b, C.data(), beta != 0.0 ? C.data() : nullptr, M, N, ceil_div(N, kExpBN), static_cast<int>(K),
               static_cast<float>(alpha), static_cast<float>(beta)};
  e.rope_cos = cos;
  e.rope_sin = sin;
  e.rope_pos = pos;
  e.rope_T = T;
  e.rope_D = D;
  return expand<bf16, true>(e, trans_a, trans_b);
}

bool skinny_pair_takes(DType dy, DType xa, DType B, DType dB, DType dxa, int64_t tokens, int64_t wide, int64_t r) {
  return (skinny_kinds() & kSkinnyPair) && dy == DType::bf16 && xa == DType::bf16 && B == DType::bf16 &&
         (dB == DType::f32 || dB == DType::bf16) && (dxa == DType::bf16 || dxa == DType::f32) && tokens > 0 &&
         tokens % 8 == 0 && wide > 0 && wide % 8 == 0 && r >= 8 && r <= 32 && r % 8 == 0;
}

bool skinny_lora_dy_pair(Tensor& dB, double beta_dB, Tensor& dxa, bool dxa_t, const Tensor& dy, const Tensor& xa,
                         bool xa_t, const Tensor& B, double alpha, int64_t tokens, int64_t wide, int64_t r) {
  if (!skinny_pair_takes(dy.dtype(), xa.dtype(), B.dtype(), dB.dtype(), dxa.dtype(), tokens, wide, r)) return false;
  if (!aligned16(dy.data()) || !aligned16(xa.data()) || !aligned16(B.data()) || !aligned16(dB.data()) ||
      !aligned16(dxa.data()))
    return false;
  const int ri = inst_r(static_cast<int>(r));
  const size_t smem = ri == 8    ? (xa_t ? pair_smem<8, true>() : pair_smem<8, false>())
                      : ri == 16 ? (xa_t ? pair_smem<16, true>() : pair_smem<16, false>())
                                 : (xa_t ? pair_smem<32, true>() : pair_smem<32, false>());
  if (smem > smem_limit()) return false;
  const SkinnyPairTiling tl = skinny_pair_tiling(tokens, wide, r);
  if (tl.cols_per_split != (ri <= 16 ? pair_nc<16>() : pair_nc<32>()) * kPairBN || tl.tokens_per_split % kPairBT != 0 ||
      tl.splits_t > 65535)
    return false;
  float* const part_b = static_cast<float*>(raw_scratch(kScratchSkinny, static_cast<size_t>(tl.scratch_bytes)));
  float* const part_d = part_b + tl.splits_t * wide * r;
  const PairArgs a{static_cast<const bf16*>(dy.data()), static_cast<const bf16*>(xa.data()),
                   static_cast<const bf16*>(B.data()), part_d, part_b, tokens, wide, tl.tokens_per_split,
                   dxa_t ? 1 : r, dxa_t ? tokens : 1, static_cast<int>(r)};
  const dim3 grid(static_cast<unsigned>(tl.splits_n), static_cast<unsigned>(tl.splits_t));
  const bool launched = ri == 8    ? (xa_t ? run_pair<8, true>(a, grid) : run_pair<8, false>(a, grid))
                        : ri == 16 ? (xa_t ? run_pair<16, true>(a, grid) : run_pair<16, false>(a, grid))
                                   : (xa_t ? run_pair<32, true>(a, grid) : run_pair<32, false>(a, grid));
  if (!launched) return false;
  const float fa = static_cast<float>(alpha), fb = static_cast<float>(beta_dB);
  if (dB.dtype() == DType::f32)
    sum_splits<float>(part_b, tl.splits_t, wide * r, static_cast<float*>(dB.data()),
                      fb != 0.0f ? static_cast<const float*>(dB.data()) : nullptr, fa, fb);
  else
    sum_splits<bf16>(part_b, tl.splits_t, wide * r, static_cast<bf16*>(dB.data()),
                     fb != 0.0f ? static_cast<const bf16*>(dB.data()) : nullptr, fa, fb);
  if (dxa.dtype() == DType::f32) sum_splits<float>(part_d, tl.splits_n, tokens * r, static_cast<float*>(dxa.data()), nullptr, fa, 0.0f);
  else sum_splits<bf16>(part_d, tl.splits_n, tokens * r, static_cast<bf16*>(dxa.data()), nullptr, fa, 0.0f);
  return true;
}

bool skinny_swiglu_takes(int64_t M, int64_t N, int64_t rg, int64_t ru, int64_t rd) {
  return (skinny_kinds() & kSkinnySwiglu) && M > 0 && M % 8 == 0 && N > 0 && N % 8 == 0 && (rg > 0 || ru > 0) &&
         (rg == 0 || rank_like(rg)) && (ru == 0 || rank_like(ru)) && (rd == 0 || rank_like(rd));
}

bool skinny_swiglu_lora(bool backward, const Tensor* dh, const Tensor& g, const Tensor& u, const Tensor& xg,
                        const Tensor& bg, double sg, const Tensor& xu, const Tensor& bu, double su, const Tensor* xd,
                        const Tensor* bd, double sd, Tensor& out0, Tensor* out1, int64_t M, int64_t N, int64_t rg,
                        int64_t ru, int64_t rd) {
  if (!skinny_swiglu_takes(M, N, rg, ru, rd)) return false;
  if (rd > 0 && (!backward || !xd || !bd)) return false;
  for (const Tensor* t : {dh, &g, &u, rg ? &xg : nullptr, rg ? &bg : nullptr, ru ? &xu : nullptr, ru ? &bu : nullptr,
                          rd ? xd : nullptr, rd ? bd : nullptr, static_cast<const Tensor*>(&out0),
                          static_cast<const Tensor*>(out1)})
    if (t && (t->dtype() != DType::bf16 || !aligned16(t->data()))) return false;
  if (backward && (!dh || !out1)) return false;
  SwigluLoraArgs a{};
  a.g = static_cast<const bf16*>(g.data());
  a.u = static_cast<const bf16*>(u.data());
  a.dh = dh ? static_cast<const bf16*>(dh->data()) : nullptr;
  a.xg = rg ? static_cast<const bf16*>(xg.data()) : nullptr;
  a.xu = ru ? static_cast<const bf16*>(xu.data()) : nullptr;
  a.bg = rg ? static_cast<const bf16*>(bg.data()) : nullptr;
  a.bu = ru ? static_cast<const bf16*>(bu.data()) : nullptr;
  a.xd = rd ? static_cast<const bf16*>(xd->data()) : nullptr;
  a.bd = rd ? static_cast<const bf16*>(bd->data()) : nullptr;
  a.out0 = static_cast<bf16*>(out0.data());
  a.out1 = out1 ? static_cast<bf16*>(out1->data()) : nullptr;
  a.M = M;
  a.N = N;
  a.tiles_n = ceil_div(N, kExpBN);
  a.rg = static_cast<int>(rg);
  a.ru = static_cast<int>(ru);
  a.rd = static_cast<int>(rd);
  a.sd = static_cast<float>(sd);
  const int64_t r = std::max({rg, ru, rd});
  a.sg = static_cast<float>(sg);
  a.su = static_cast<float>(su);
  if (r <= 16) return backward ? run_swiglu_lora<16, true>(a) : run_swiglu_lora<16, false>(a);
  if (r <= 32) return backward ? run_swiglu_lora<32, true>(a) : run_swiglu_lora<32, false>(a);
  return backward ? run_swiglu_lora<64, true>(a) : run_swiglu_lora<64, false>(a);
}

bool skinny_matmul(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha, double beta,
                   int64_t M, int64_t N, int64_t K, const Tensor* C_in, unsigned kinds) {
  if (M <= 0 || N <= 0 || K <= 0) return false;
  if (A.dtype() != DType::bf16 || B.dtype() != DType::bf16) return false;
  const bool c_f32 = C.dtype() == DType::f32;
  if (!c_f32 && C.dtype() != DType::bf16) return false;
  // r: the smallest of K, N, M that is a multiple of 8 in [8, 64] (ties: K, then N, then M).
  enum class Kind { none, expand, n_small, m_small } kind = Kind::none;
  int64_t r = 65;
  if (rank_like(K) && K < r) kind = Kind::expand, r = K;
  if (rank_like(N) && N < r) kind = Kind::n_small, r = N;
  if (rank_like(M) && M < r) kind = Kind::m_small, r = M;
  if (kind == Kind::none) return false;
  const bool thin_kind = kind == Kind::n_small ? !trans_a : kind == Kind::m_small && trans_b;
  const unsigned bit = kind == Kind::expand ? kSkinnyExpand : thin_kind ? kSkinnyThin : kSkinnyReduce;
  if (!(kinds & bit)) return false;
  const void* cin = beta != 0.0 ? (C_in ? C_in->data() : C.data()) : nullptr;
  const auto* a = static_cast<const bf16*>(A.data());
  const auto* b = static_cast<const bf16*>(B.data());
  // The 16-byte tile vectors: A and B 16-byte aligned with rows of whole vectors (A's row length
  // is ta ? M : K, B's is tb ? K : N).
  if (!aligned16(a) || !aligned16(b) || (trans_a ? M : K) % 8 != 0 || (trans_b ? K : N) % 8 != 0) return false;
  const float fa = static_cast<float>(alpha), fb = static_cast<float>(beta);
  const int ri = static_cast<int>(r);

  if (kind == Kind::expand) {  // C[M, N] = op(A)[M, r] op(B)[r, N]: P = A ([M, r] or, ta, [r, M]), W = B ([r, N] or, tb, [N, r])
    if (N % 8 != 0 || !aligned16(C.data()) || (cin && !aligned16(cin))) return false;
    const ExpandArgs e{a, b, C.data(), cin, M, N, ceil_div(N, kExpBN), ri, fa, fb};
    return c_f32 ? expand<float>(e, trans_a, trans_b) : expand<bf16>(e, trans_a, trans_b);
  }
  if (thin_kind) {
    ThinArgs t{};
    if (kind == Kind::n_small) {  // C[M, r] = A[M, K] op(B): W = B [K, r] or, tb, [r, K]
      t = ThinArgs{a, b, C.data(), cin, M, K, r, 1, ri, fa, fb};
      return c_f32 ? thin<float>(t, !trans_b) : thin<bf16>(t, !trans_b);
    } else {  // C[r, N] = op(A)[r, K] B[N, K]^T: X = B, W = A [r, K] or, ta, [K, r]; C^T is the thin output
      t = ThinArgs{b, a, C.data(), cin, N, K, 1, N, ri, fa, fb};
      return c_f32 ? thin<float>(t, trans_a) : thin<bf16>(t, trans_a);
    }
  }
  // reduce: sum over K (the tokens). The split sums use C's contiguous layout and float4 / 8-byte
  // vectors over it (r * wide is a multiple of 8).
  if (!aligned16(C.data()) || (cin && !aligned16(cin))) return false;
  ReduceArgs d{};
  bool p_rm = false;
  if (kind == Kind::n_small) {  // C[M, r] = A[K, M]^T op(B): X = A, P = B [K, r] or, tb, [r, K]
    d = ReduceArgs{a, b, nullptr, K, M, 0, r, 1, 0, ri};
    p_rm = trans_b;
  } else {  // C[r, N] = op(A)[r, K] B[K, N]: X = B, P = A [K, r] (ta) or [r, K]
    d = ReduceArgs{b, a, nullptr, K, N, 0, 1, N, 0, ri};
    p_rm = !trans_a;
  }
  return c_f32 ? reduce<float>(d, p_rm, static_cast<float*>(C.data()), static_cast<const float*>(cin), fa, fb)
               : reduce<bf16>(d, p_rm, static_cast<bf16*>(C.data()), static_cast<const bf16*>(cin), fa, fb);
}

#else
}  // namespace (the emulator's build: its kernels only)
#endif  // ST_CUDA_EMU

}  // namespace st::cuda
