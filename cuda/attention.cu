// Flash attention (FlashAttention-2 scheme) on tensor cores with mma.sync.m16n8k16 (bf16 in,
// f32 accumulate): the [T, T] score matrix never exists in device memory.
//
// Fragment layout of mma.m16n8k16 (g = lane / 4, t = lane % 4), which the kernels rely on:
//   A 16x16 (row-major): reg0 = A[g][2t..2t+1], reg1 = A[g+8][2t..], reg2 = A[g][2t+8..], reg3 = A[g+8][2t+8..]
//   B 16x8 given as Bt[n][k] (k contiguous): reg0 = Bt[g][2t..2t+1], reg1 = Bt[g][2t+8..]
//   C 16x8: c0, c1 = C[g][2t], C[g][2t+1]; c2, c3 = C[g+8][2t], C[g+8][2t+1]
// so a thread's C values of two adjacent n-tiles are exactly its A values of one k-step: the
// probabilities P go from the S accumulators to the A operand of P V without shared memory.
//
// Forward: block = 4 warps x 16 query rows (SHARDTUNE_ATTN_FWD_ROWS=128: x 32, two m16 tiles a
// warp, Q read from shared memory; attention_forward_kernel's MT); key/value tiles of 64 stream through shared memory,
// double-buffered with cp.async (the next tile loads while this one is computed); V is read as
// the col operand with ldmatrix.trans; running max, sum and the output stay in registers.
// Softmax in base 2: exp(scale s - scale m) = exp2(s scale log2 e - m scale log2 e), one FFMA and
// one ex2.approx a score (m, the running max, in units of s: hence scale > 0). Writes O / l (bf16)
// and lse = scale m + log l (f32, natural log); the backward's P = exp2(s scale log2 e - lse log2 e).
// Backward: block = 64 keys of one KV head; loops over the group's query heads and the query
// tiles that see those keys (sm_90: Q, dO, lse and D of the next tile load with cp.async into a
// second buffer while this one is computed); each warp owns 16 keys and accumulates their dK,
// dV in registers (no atomics, GQA included); dS goes through shared memory for dQ = dS K (stored
// transposed, [key][query]: the dK MMA's packed A fragment, 4 32-bit stores a part; read back
// with ldmatrix.trans), which is added to an f32 buffer with atomics (sm_90: 16-byte
// red.global.add.v4.f32, 4 contiguous columns a thread, when D % 4 == 0) and folded, times the
// scale, into the bf16 dq at the end. D = rowsum(dO * O) first. The hot loops address shared
// memory through 32-bit byte addresses set up once per lane (constant offsets a step), and the
// per-element masks run only in the masked copy of the softmax-gradient step.
// Masks: causal (key j > query i) and key padding (j >= lengths[b]), applied per element only
// where a warp's tile needs them (the causal diagonal, the last key tile): the forward runs a
// masked and an unmasked copy of its tile step, which also skips the MMAs of fully masked
// n-tiles; the backward skips the (16 keys, 16 queries) parts that the causal mask hides
// entirely, and masks rows past T or without any visible key through their exponent offset.
// The head dimension is padded with zeros to DP in {16, 32, 64, 128} in shared memory.
// Cross-attention (kCross): queries (q, out, lse, dq) have T positions per batch row, keys and
// values (k, v, dk, dv) Tk; the forward's grid runs over query tiles, the backward's over key
// tiles. Additive bias (kBias, T5's relative position bias) bias[h, i, j] (f32 [Hq, T, Tk]): the
// S accumulators start at bias / scale instead of 0, so that scale * S = scale q.k + bias comes
// out of the same scaling with no extra registers (hence scale != 0); the backward adds
// dS = P (dP - D) of every unmasked (i, j) to dbias[h, i, j] with f32 atomics (the batch rows are
// different blocks, so the sum order is not deterministic). With kBias = kCross = false the
// kernels are the plain self-attention ones, compiled without a trace of either feature.
#include <cstdlib>
#include <string>
#include <type_traits>

#include "cuda/attention.cuh"
#include "cuda/common.cuh"
#include "cuda/kernels.cuh"
#include "core/env.hpp"
#include "core/tensor.hpp"

namespace st::cuda {

namespace {

using bf16 = __nv_bfloat16;

constexpr int kTile = 64, kWarps = 4, kThreads = kWarps * 32;
constexpr int kLdT = kTile + 8;  // row stride (bf16) of transposed tiles [d][64]

#ifdef ST_CUDA_EMU
// The CPU emulator's versions (tests/emu/cuda_emu.hpp).
alignas(128) unsigned char smem_raw[emu::kSharedBytes];  // the kernels' dynamic shared memory
const bool smem_registered = (emu::set_shared(smem_raw), true);
inline void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) { emu::mma_m16n8k16(c, a, b0, b1); }
inline uint32_t smem_addr(const void* p) { return emu::to_shared(smem_raw, p); }
inline void ldsm_x4_at(uint32_t r[4], uint32_t addr) { emu::ldmatrix(smem_raw, r, 4, false, addr); }
inline void ldsm_x4_trans_at(uint32_t r[4], uint32_t addr) { emu::ldmatrix(smem_raw, r, 4, true, addr); }
#else
__device__ __forceinline__ void mma16816(float c[4], const uint32_t a[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ldmatrix.x4 from a shared-memory byte address (the backward's hot loops set a lane's part up
// once and add compile-time offsets): four 8x8 blocks, lane l addressing row (l % 8) of block
// l / 8; .trans hands each thread the transposed pairs.
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
__device__ __forceinline__ void ldsm_x4_at(uint32_t r[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans_at(uint32_t r[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

#endif  // ST_CUDA_EMU

// B fragments of two adjacent n-tiles (n0 and n0 + 8) from a row-major tile X[k][n] (k = the
// contraction index, rows 16-byte aligned): ldmatrix.trans hands every thread X[2t..2t+1][g]
// of each 8x8 block, which is the col-operand layout of mma.m16n8k16.
__device__ __forceinline__ void ldsm_x4_trans(uint32_t& b0, uint32_t& b1, uint32_t& b2, uint32_t& b3, const bf16* tile,
                                              int ld, int k0, int n0, int lane) {
  uint32_t r[4];
  ldsm_x4_trans_at(r, smem_addr(tile + (k0 + (lane & 15)) * ld + n0 + (lane >> 4) * 8));
  b0 = r[0];
  b1 = r[1];
  b2 = r[2];
  b3 = r[3];
}

// Non-transposed ldmatrix.x4 at a generic pointer into shared memory.
__device__ __forceinline__ void ldsm_x4(uint32_t r[4], const bf16* p) { ldsm_x4_at(r, smem_addr(p)); }
// A fragment of the 16x16 block at (r0, c0) of a row-major tile (blocks: rows +0/+8 x cols +0/+8).
__device__ __forceinline__ void ldsm_a(uint32_t a[4], const bf16* tile, int ld, int r0, int c0, int lane) {
  const int blk = lane >> 3;
  ldsm_x4(a, tile + (r0 + (lane & 7) + (blk & 1) * 8) * ld + c0 + (blk >> 1) * 8);
}
// B fragments (col operand) of n-tiles n0 and n0 + 8 at k-step k0 from Bt[n][k] row-major:
// b[0], b[1] for n0; b[2], b[3] for n0 + 8.
__device__ __forceinline__ void ldsm_b2(uint32_t b[4], const bf16* tile, int ld, int n0, int k0, int lane) {
  const int blk = lane >> 3;
  ldsm_x4(b, tile + (n0 + (lane & 7) + (blk >> 1) * 8) * ld + k0 + (blk & 1) * 8);
}

#ifdef ST_CUDA_EMU
inline void cp_async16(void* dst, const void* src, int src_bytes) {
  emu::cp_async(smem_raw, emu::to_shared(smem_raw, dst), src, 16, src_bytes);
}
inline void cp_async4(void* dst, const void* src, int src_bytes) {
  emu::cp_async(smem_raw, emu::to_shared(smem_raw, dst), src, 4, src_bytes);
}
inline void cp_async_commit() { emu::cp_async_commit(); }
inline void cp_async_wait_all() { emu::cp_async_wait(0); }
#else
// 16-byte asynchronous copy global -> shared; src_bytes = 0 fills the 16 bytes with zeros.
__device__ __forceinline__ void cp_async16(void* dst, const void* src, int src_bytes) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(addr), "l"(src), "r"(src_bytes));
}
// 4-byte asynchronous copy (through L1: .ca is the only kind below 16 bytes); src_bytes = 0 writes 0.
__device__ __forceinline__ void cp_async4(void* dst, const void* src, int src_bytes) {
  const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;\n" ::"r"(addr), "l"(src), "r"(src_bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::); }

#endif  // ST_CUDA_EMU

// p[0..3] += v0..v3 (f32, global memory, p 16-byte aligned). sm_90 has a 16-byte vector
// reduction (one instruction, each element added atomically on its own, as four atomicAdds).
__device__ __forceinline__ void red_add_f32x4(float* p, float v0, float v1, float v2, float v3) {
#if defined(ST_CUDA_EMU)
  emu::atomic_add(p, v0);
  emu::atomic_add(p + 1, v1);
  emu::atomic_add(p + 2, v2);
  emu::atomic_add(p + 3, v3);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("red.global.add.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"l"(p), "f"(v0), "f"(v1), "f"(v2), "f"(v3)
               : "memory");
#else
  atomicAdd(p, v0);
  atomicAdd(p + 1, v1);
  atomicAdd(p + 2, v2);
  atomicAdd(p + 3, v3);
#endif
}

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<const uint32_t*>(&v);
}

// Rows [r0, r0 + 64) of one head of the sequence that starts at token `base` of a [tokens, H, D]
// tensor ([B, T, H, D]: base = b T) into a row-major tile [64][DP + 8], zero-filled past the
// sequence's T rows and past D.
template <int DP>
__device__ void load_rows(bf16* __restrict__ tile, const bf16* __restrict__ src, int64_t base, int64_t r0, int64_t T,
                          int64_t H, int64_t h, int64_t D) {
  constexpr int ld = DP + 8;
  if (D == DP) {  // 16-byte vectors (DP is a multiple of 8)
    constexpr int vpr = DP / 8;
    for (int idx = threadIdx.x; idx < kTile * vpr; idx += blockDim.x) {
      const int r = idx / vpr, v = idx % vpr;
      const int64_t tt = r0 + r;
      uint4 val = make_uint4(0, 0, 0, 0);
      if (tt < T) val = *reinterpret_cast<const uint4*>(src + ((base + tt) * H + h) * D + v * 8);
      *reinterpret_cast<uint4*>(tile + r * ld + v * 8) = val;
    }
    return;
  }
  for (int idx = threadIdx.x; idx < kTile * DP; idx += blockDim.x) {
    const int r = idx / DP, c = idx % DP;
    const int64_t tt = r0 + r;
    tile[r * ld + c] = (tt < T && c < D) ? src[((base + tt) * H + h) * D + c] : __float2bfloat16(0.0f);
  }
}

// load_rows with cp.async when the head dimension needs no padding (D == DP); otherwise the
// synchronous, zero-padding load. The caller commits, waits and synchronises. For a block of
// NT threads: thread x copies column vector x % vpr of rows x / vpr + i * kRows (i <
// kTile / kRows), so the address arithmetic is one 64-bit product a call and constant offsets
// after it (a loop over blockDim.x cost the forward 40% of its instructions).
template <int DP, int NT = kThreads>
__device__ void load_rows_async(bf16* __restrict__ tile, const bf16* __restrict__ src, int64_t base, int64_t r0,
                                      int64_t T, int64_t H, int64_t h, int64_t D) {
  if (D != DP) {
    load_rows<DP>(tile, src, base, r0, T, H, h, D);
    return;
  }
  constexpr int ld = DP + 8, vpr = DP / 8, kRows = NT / vpr;
  static_assert(NT % vpr == 0 && kTile % kRows == 0);
  const int r = static_cast<int>(threadIdx.x) / vpr, v = static_cast<int>(threadIdx.x) % vpr;
  const int64_t stride = H * D;  // elements between consecutive tokens
  const bf16* g = src + ((base + r0 + r) * H + h) * D + v * 8;
  bf16* s = tile + r * ld + v * 8;
  const int left = static_cast<int>(min(T - r0 - r, static_cast<int64_t>(kTile)));  // rows r + i kRows < left exist
#pragma unroll
  for (int i = 0; i < kTile / kRows; ++i) {
    const bool ok = i * kRows < left;
    cp_async16(s + i * kRows * ld, ok ? g + i * kRows * stride : src, ok ? 16 : 0);
  }
}

constexpr float kLog2e = 1.4426950408889634f;
// 2^x on the SFU (ex2.approx.ftz: 2^-inf = 0; what __expf uses after its multiplication by log2 e).
__device__ __forceinline__ float fast_exp2(float x) {
#ifdef ST_CUDA_EMU
  return std::exp2(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// The sequence a block works on. Batched: row b = blockIdx.z of [B, T] queries and [B, Tk]
// keys. Varlen (kVarlen): the segment of tile blockIdx.x of the tile table, in the stream of
// T = N tokens (lse [Hq, N]). All positions below are within the sequence. With last_first,
// block x takes tile gridDim.x - 1 - x of the row (batched) or of the table (varlen, whose
// tiles ascend within each segment): the causal forward's blocks then start roughly in the order
// of their work, longest first (blocks are dispatched in the order of their index, so the light
// ones fill the last wave). A batched block's tile spans kRows positions (the forward with MT = 2:
// 128 queries); varlen tiles are 64.
struct SeqView {
  int64_t row0, krow0;  // first query / key token of the sequence in q, out / k, v
  int64_t Tq, Tk;       // its queries and keys
  int64_t len;          // keys [0, len) are visible (before the causal mask)
  int64_t tile0;        // the block's tile: its first query (forward) or key (backward)
  int64_t lse_row;      // lse / delta index of query 0 of head 0; + h * lse_head for head h
  int64_t lse_head;
};

template <bool kCross, bool kVarlen, int kRows = kTile>
__device__ __forceinline__ SeqView seq_view(const int32_t* __restrict__ tiles, const int32_t* __restrict__ lengths,
                                            int64_t T, int64_t Tk_arg, int64_t Hq, bool last_first = false) {
  SeqView sv;
  if constexpr (kVarlen) {
    const unsigned entry = last_first ? gridDim.x - 1 - blockIdx.x : blockIdx.x;
    const int4 e = reinterpret_cast<const int4*>(tiles)[entry];  // begin, end, key end, tile start
    sv.row0 = sv.krow0 = e.x;
    sv.Tq = sv.Tk = e.y - e.x;
    sv.len = e.z - e.x;
    sv.tile0 = e.w - e.x;
    sv.lse_row = e.x;
    sv.lse_head = T;
  } else {
    const int64_t b = blockIdx.z;
    sv.Tq = T;
    sv.Tk = kCross ? Tk_arg : T;
    sv.row0 = b * T;
    sv.krow0 = b * sv.Tk;
    sv.len = lengths ? lengths[b] : sv.Tk;
    sv.tile0 = static_cast<int64_t>(last_first ? gridDim.x - 1 - blockIdx.x : blockIdx.x) * kRows;
    sv.lse_row = b * Hq * T;
    sv.lse_head = T;
  }
  return sv;
}

// Three blocks an SM (at most 168 registers), except the bias variants at DP = 128 (T5 with
// d_kv = 128): two, as their bias loads spilled 92 bytes under the bound of three on sm_90. MT = 2
// (two m16 tiles a warp, blocks of 128 queries): two at DP = 128 (104 KiB of shared memory a
// block), three below (sm_90 DP = 64: 168 registers, 140 bytes spilled); Blocks > 0 overrides
// (SHARDTUNE_ATTN_FWD_ROWS=128x2: two at DP = 64 too, 215 registers, no spill).
template <int DP, bool kBias, int MT = 1, int Blocks = 0>
constexpr int forward_min_blocks() {
  return Blocks > 0 ? Blocks : MT == 2 ? (DP >= 128 ? 2 : 3) : (kBias && DP >= 128 ? 2 : 3);
}

// MT: m16 tiles of queries a warp (1 or 2; 2 only for plain batched self-attention): a block
// takes 64 MT queries; warp w owns rows 16 w + 64 mt (mt < MT), so that on the causal diagonal
// every warp has as much work as the others. MT = 1 holds the warp's Q fragments in registers;
// MT = 2 reads them from a shared copy of the block's Q at each k-step, and each K and V fragment
// it loads feeds two MMAs instead of one (ldmatrix per MMA 0.31 instead of 0.5: FlashAttention-2's
// 128-query blocks of four warps), at 2 blocks an SM instead of 3.
template <int DP, bool kBias, bool kCross, bool kVarlen, int MT = 1, int Blocks = 0>
__global__ void __launch_bounds__(kThreads, forward_min_blocks<DP, kBias, MT, Blocks>()) attention_forward_kernel(
    const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v, const int32_t* __restrict__ lengths,
    const float* __restrict__ bias, bf16* __restrict__ out, float* __restrict__ lse, const int32_t* __restrict__ tiles,
    int64_t T_arg, int64_t Tk_arg, int64_t Hq, int64_t Hkv, int64_t D, float scale, float inv_scale, bool causal) {
  static_assert(MT == 1 || (MT == 2 && !kBias && !kCross && !kVarlen), "MT = 2: plain batched self-attention only");
  constexpr int BM = kTile * MT;  // queries a block
  // Causal: query tile m sees m + 1 key tiles, so the last tiles go first.
  const SeqView sv = seq_view<kCross, kVarlen, BM>(tiles, lengths, T_arg, Tk_arg, Hq, causal);
  const int64_t T = sv.Tq, Tk = sv.Tk;  // query and key/value positions of this sequence
  constexpr int LDH = DP + 8;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  // Two stages, each K then V tiles [64][LDH], row-major; MT = 1: stage 0's K first holds Q;
  // MT = 2: Q [BM][LDH] after the stages, for the whole kernel.
  bf16* const base = reinterpret_cast<bf16*>(smem_raw);
  auto k_stage = [&](int st) { return base + st * 2 * kTile * LDH; };
  auto v_stage = [&](int st) { return base + st * 2 * kTile * LDH + kTile * LDH; };
  bf16* const q_tile = MT == 1 ? base : base + 4 * kTile * LDH;

  const int64_t h = blockIdx.y, q0 = sv.tile0;
  const int64_t hk = h / (Hq / Hkv);
  const float scale_log2 = scale * kLog2e;
  const int64_t len = sv.len;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  auto row_of = [&](int mt) { return warp * 16 + mt * kTile; };  // the m-tile's first row in the block
  // The thread's rows of m-tile mt: i0 = q0 + row_of(mt) + g and i1 = i0 + 8 (values 0, 1 and 2, 3
  // of its accumulators), made where needed (64-bit arrays of them cost MT = 2 spills).
  auto i0_of = [&](int mt) { return q0 + row_of(mt) + g; };

#pragma unroll
  for (int mt = 0; mt < MT; ++mt) load_rows<DP>(q_tile + mt * kTile * LDH, q, sv.row0, q0 + mt * kTile, T, Hq, h, D);
  __syncthreads();
  uint32_t qa[MT == 1 ? DP / 16 : 1][4];
  if constexpr (MT == 1) {
#pragma unroll
    for (int kt = 0; kt < DP / 16; ++kt) ldsm_a(qa[kt], q_tile, LDH, row_of(0), kt * 16, lane);
    __syncthreads();  // Q fragments are in registers: stage 0 may be overwritten
  }

  float o[MT][DP / 8][4];
  float m0[MT], m1[MT], l0[MT], l1[MT];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
#pragma unroll
    for (int nd = 0; nd < DP / 8; ++nd) o[mt][nd][0] = o[mt][nd][1] = o[mt][nd][2] = o[mt][nd][3] = 0.0f;
    m0[mt] = m1[mt] = -INFINITY;
    l0[mt] = l1[mt] = 0.0f;
  }
  int64_t kv_end = len < Tk ? len : Tk;
  if (causal) kv_end = min(kv_end, q0 + BM);  // causal implies Tk == T

  if (kv_end > 0) {
    load_rows_async<DP>(k_stage(0), k, sv.krow0, 0, Tk, Hkv, hk, D);
    load_rows_async<DP>(v_stage(0), v, sv.krow0, 0, Tk, Hkv, hk, D);
    cp_async_commit();
  }
  int stage = 0;
  for (int64_t j0 = 0; j0 < kv_end; j0 += kTile, stage ^= 1) {
    cp_async_wait_all();
    __syncthreads();  // tile j0 is in this stage; everyone is done with the other stage
    if (j0 + kTile < kv_end) {  // prefetch the next tile while this one is computed
      load_rows_async<DP>(k_stage(stage ^ 1), k, sv.krow0, j0 + kTile, Tk, Hkv, hk, D);
      load_rows_async<DP>(v_stage(stage ^ 1), v, sv.krow0, j0 + kTile, Tk, Hkv, hk, D);
      cp_async_commit();
    }
    const bf16* Ks = k_stage(stage);
    const bf16* Vs = v_stage(stage);
    // This warp needs no mask on this tile when all its keys are visible (below kv_end) to all its
    // rows (causal: the tile's last key is at most the warp's first row). Masked tiles (the
    // causal diagonal, the key-padding edge) run a second copy of the code with the masks and
    // without the MMAs of fully masked n-tiles; both copies compute every visible score, its
    // exponential and its products with the same instructions.
    const bool full = j0 + kTile <= kv_end && !(causal && j0 + kTile - 1 > q0 + row_of(0));
    auto tile = [&](auto masked_tag) {
      constexpr bool kMasked = decltype(masked_tag)::value;
      // Masked: keys jr = j - j0 of row i0 (i1) of m-tile mt are visible iff jr < lim0 (lim1); its
      // n-tiles nt >= nt_end (pairs of them in the MMA loops) have no visible key in any of its
      // rows (<= 0: none at all, which MT = 2 meets above the diagonal).
      int lim0[MT], lim1[MT], nt_end[MT];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        lim0[mt] = lim1[mt] = kTile;
        nt_end[mt] = 8;
        if constexpr (kMasked) {
          const int64_t key_lim = kv_end - j0;  // > 0
          const int64_t vis0 = causal ? min(key_lim, i0_of(mt) - j0 + 1) : key_lim;
          const int64_t vis1 = causal ? min(key_lim, i0_of(mt) + 8 - j0 + 1) : key_lim;
          const int64_t vis_last = causal ? min(key_lim, q0 + row_of(mt) + 16 - j0) : key_lim;  // its row 15
          lim0[mt] = static_cast<int>(max(min(vis0, static_cast<int64_t>(kTile)), static_cast<int64_t>(0)));
          lim1[mt] = static_cast<int>(max(min(vis1, static_cast<int64_t>(kTile)), static_cast<int64_t>(0)));
          nt_end[mt] = static_cast<int>(max(min((vis_last + 7) / 8, static_cast<int64_t>(8)), static_cast<int64_t>(0)));
        }
      }
      float s[MT][8][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (kBias) {  // S starts at bias / scale (0 where masked or past the rows); MT = 1
          // Rows i0, i1 from column j0 + 2t on (only dereferenced for valid rows and columns).
          const int64_t i0 = i0_of(mt), i1 = i0 + 8;
          const float* b0 = bias + (h * T + i0) * Tk + j0 + 2 * t;
          const float* b1 = b0 + 8 * Tk;
#pragma unroll
          for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int64_t j = j0 + nt * 8 + 2 * t + e;
              s[mt][nt][e] = (i0 < T && j < kv_end) ? __ldg(b0 + nt * 8 + e) * inv_scale : 0.0f;  // causal: masked below
              s[mt][nt][2 + e] = (i1 < T && j < kv_end) ? __ldg(b1 + nt * 8 + e) * inv_scale : 0.0f;
            }
        } else {
#pragma unroll
          for (int nt = 0; nt < 8; ++nt) s[mt][nt][0] = s[mt][nt][1] = s[mt][nt][2] = s[mt][nt][3] = 0.0f;
        }
      }
      // k-steps outside, n-tiles inside: 8 MT independent accumulators between dependent MMAs;
      // each K fragment serves the warp's MT m-tiles.
#pragma unroll
      for (int kt = 0; kt < DP / 16; ++kt) {
        uint32_t qf[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          if constexpr (MT == 1) {
#pragma unroll
            for (int c = 0; c < 4; ++c) qf[mt][c] = qa[kt][c];
          } else {
            ldsm_a(qf[mt], q_tile, LDH, row_of(mt), kt * 16, lane);
          }
        }
#pragma unroll
        for (int nt = 0; nt < 8; nt += 2) {
          if constexpr (kMasked) {
            if (nt >= nt_end[MT - 1]) continue;  // n-tiles nt, nt + 1 fully masked in every m-tile
          }
          uint32_t kb[4];
          ldsm_b2(kb, Ks, LDH, nt * 8, kt * 16, lane);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            if constexpr (kMasked) {
              if (nt >= nt_end[mt]) continue;  // S stays, -inf below
            }
            mma16816(s[mt][nt], qf[mt], kb[0], kb[1]);
            mma16816(s[mt][nt + 1], qf[mt], kb[2], kb[3]);
          }
        }
      }
      // Mask, online softmax on the registers: rows i0 (values 0, 1) and i1 (values 2, 3). The
      // running max m is kept in units of S (scale > 0: the max of scale S is scale m), and
      // exp(scale S - scale m) = exp2(S scale_log2 - m scale_log2), one FFMA and one ex2 a value.
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) {
        if constexpr (kMasked) {
#pragma unroll
          for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int jr = nt * 8 + 2 * t + e;
              if (jr >= lim0[mt]) s[mt][nt][e] = -INFINITY;
              if (jr >= lim1[mt]) s[mt][nt][2 + e] = -INFINITY;
            }
        }
        float mx0 = -INFINITY, mx1 = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          mx0 = fmaxf(mx0, fmaxf(s[mt][nt][0], s[mt][nt][1]));
          mx1 = fmaxf(mx1, fmaxf(s[mt][nt][2], s[mt][nt][3]));
        }
        mx0 = quad_max(mx0);
        mx1 = quad_max(mx1);
        const float mn0 = fmaxf(m0[mt], mx0), mn1 = fmaxf(m1[mt], mx1);
        // The subtrahend of the exponents (0 for a row without any visible key so far: its values
        // are all -inf and give 0); a0, a1 rescale the old sums and outputs (1 exactly where the max
        // stayed).
        const float ms0 = mn0 == -INFINITY ? 0.0f : mn0 * scale_log2, ms1 = mn1 == -INFINITY ? 0.0f : mn1 * scale_log2;
        const float a0 = m0[mt] == -INFINITY ? 0.0f : fast_exp2((m0[mt] - mn0) * scale_log2);
        const float a1 = m1[mt] == -INFINITY ? 0.0f : fast_exp2((m1[mt] - mn1) * scale_log2);
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            s[mt][nt][e] = fast_exp2(__fmaf_rn(s[mt][nt][e], scale_log2, -ms0));
            s[mt][nt][2 + e] = fast_exp2(__fmaf_rn(s[mt][nt][2 + e], scale_log2, -ms1));
          }
        // l0, l1: this thread's part of the row sums (its 16 columns of each tile); the quad's four
        // parts are added once, after the last tile.
        l0[mt] *= a0;
        l1[mt] *= a1;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt) {
          l0[mt] += s[mt][nt][0] + s[mt][nt][1];
          l1[mt] += s[mt][nt][2] + s[mt][nt][3];
        }
        m0[mt] = mn0;
        m1[mt] = mn1;
#pragma unroll
        for (int nd = 0; nd < DP / 8; ++nd) {
          o[mt][nd][0] *= a0;
          o[mt][nd][1] *= a0;
          o[mt][nd][2] *= a1;
          o[mt][nd][3] *= a1;
        }
      }
      // O += P V, P straight from the registers (two n-tiles of S = one k-step of A), V as the
      // col operand read transposed from its row-major tile; each V fragment serves the MT m-tiles.
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) {
        if constexpr (kMasked) {
          if (2 * kk >= nt_end[MT - 1]) continue;  // P is 0 on this k-step in every m-tile
        }
        uint32_t pa[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          pa[mt][0] = pack_bf16(s[mt][2 * kk][0], s[mt][2 * kk][1]);
          pa[mt][1] = pack_bf16(s[mt][2 * kk][2], s[mt][2 * kk][3]);
          pa[mt][2] = pack_bf16(s[mt][2 * kk + 1][0], s[mt][2 * kk + 1][1]);
          pa[mt][3] = pack_bf16(s[mt][2 * kk + 1][2], s[mt][2 * kk + 1][3]);
        }
#pragma unroll
        for (int nd = 0; nd < DP / 8; nd += 2) {
          uint32_t b0, b1, b2, b3;
          ldsm_x4_trans(b0, b1, b2, b3, Vs, LDH, kk * 16, nd * 8, lane);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) {
            if constexpr (kMasked) {
              if (2 * kk >= nt_end[mt]) continue;  // P is 0 on this k-step of this m-tile
            }
            mma16816(o[mt][nd], pa[mt], b0, b1);
            mma16816(o[mt][nd + 1], pa[mt], b2, b3);
          }
        }
      }
    };
    if (full) tile(std::false_type{});
    else tile(std::true_type{});
  }
#pragma unroll
  for (int mt = 0; mt < MT; ++mt) {
    const int64_t i0 = i0_of(mt), i1 = i0 + 8;
    const float s0 = quad_sum(l0[mt]), s1 = quad_sum(l1[mt]);
    const float inv0 = s0 > 0.0f ? 1.0f / s0 : 0.0f, inv1 = s1 > 0.0f ? 1.0f / s1 : 0.0f;
#pragma unroll
    for (int nd = 0; nd < DP / 8; ++nd)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const int64_t c = nd * 8 + 2 * t + e;
        if (c >= D) continue;
        if (i0 < T) out[((sv.row0 + i0) * Hq + h) * D + c] = __float2bfloat16(o[mt][nd][e] * inv0);
        if (i1 < T) out[((sv.row0 + i1) * Hq + h) * D + c] = __float2bfloat16(o[mt][nd][2 + e] * inv1);
      }
    if (t == 0) {
      float* lse_h = lse + sv.lse_row + h * sv.lse_head;
      // lse in natural-log units: scale m + log l.
      if (i0 < T) lse_h[i0] = s0 > 0.0f ? m0[mt] * scale + logf(s0) : -INFINITY;
      if (i1 < T) lse_h[i1] = s1 > 0.0f ? m1[mt] * scale + logf(s1) : -INFINITY;
    }
  }
}

// D[b, h, i] = sum_d dO[b, i, h, d] * O[b, i, h, d]: one warp per row; the row of the f32 dQ
// accumulator (the same index) is zeroed on the way (no separate memset pass). vec (D % 4 == 0,
// dout and out 8-byte aligned: every head dim the models use): 8-byte loads of 4 elements a lane
// (D <= 128: one each) and 16-byte zero stores.
__global__ void attention_delta_kernel(const bf16* __restrict__ dout, const bf16* __restrict__ out,
                                       float* __restrict__ delta, float* __restrict__ dq_acc, int64_t B, int64_t T,
                                       int64_t Hq, int64_t D, bool vec) {
  const int64_t row = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;  // (b*T + i)*Hq + h
  const int lane = threadIdx.x % 32;
  if (row >= B * T * Hq) return;
  float s = 0.0f;
  if (vec) {
    for (int64_t d = 4 * lane; d < D; d += 128) {
      const uint2 a = *reinterpret_cast<const uint2*>(dout + row * D + d);
      const uint2 b = *reinterpret_cast<const uint2*>(out + row * D + d);
      const float2 a0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&a.x));
      const float2 a1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&a.y));
      const float2 b0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&b.x));
      const float2 b1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&b.y));
      s += a0.x * b0.x + a0.y * b0.y + a1.x * b1.x + a1.y * b1.y;
      *reinterpret_cast<float4*>(dq_acc + row * D + d) = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    }
  } else {
    for (int64_t d = lane; d < D; d += 32) {
      s += __bfloat162float(dout[row * D + d]) * __bfloat162float(out[row * D + d]);
      dq_acc[row * D + d] = 0.0f;
    }
  }
  s = dev::warp_sum(s);
  if (lane == 0) {
    const int64_t hh = row % Hq, bt = row / Hq, i = bt % T, bb = bt / T;
    delta[(bb * Hq + hh) * T + i] = s;
  }
}

// Backward shared memory: lse and D of two stages, K, V, dS and `stages` stages of Q and dO.
// DP = 128: 1024 + 2 * 17408 + 9216 + 2 * 2 * 17408 = 114688 bytes (112 KiB) double-buffered
// (79872 single), under the 227 KiB opt-in limit of sm_90. Blocks an H100 SM (228 KiB, 1 KiB
// reserved a block; 64K registers) holds, by shared memory / by registers (ptxas -v, sm_90):
//   DP = 128: 114688 B -> 2 / ~240 regs -> 2     DP = 64: 65536 B -> 3 / <= 168 regs -> 3
//   DP = 32:   40960 B -> 5 / <= 128 regs -> 4   DP = 16: 28672 B -> 7 / ~90 regs -> 5
// so double buffering leaves the occupancy as it was (registers bound it). An A100 SM (164 KiB)
// would hold 1 double-buffered block at DP = 128 but 2 single-buffered: double buffers on sm_90
// only (kBackwardDoubleBuffer).
// KW: warps of 16 keys a block (4: 64 keys; 8: 128 keys, DP 64 or 128: SHARDTUNE_ATTN_BWD_KEYS=128).
// DP = 128, KW = 8: 1024 + 2 * 34816 + 18432 + 2 * 2 * 17408 = 158720 bytes (155 KiB), 1 block of
// 8 warps an H100 SM (as many warps as 2 blocks of 4); 124 KiB single-buffered.
template <int DP, int KW = 4> __host__ __device__ constexpr size_t backward_smem(int stages) {
  return sizeof(float) * 4 * kTile +
         sizeof(bf16) * (2 * KW * 16 * (DP + 8) + 2 * stages * kTile * (DP + 8) + KW * 16 * kLdT);
}
static_assert(backward_smem<128>(2) == 114688 && backward_smem<128>(1) == 79872);
static_assert(backward_smem<128, 8>(2) == 158720);

// The backward's query tiles are double-buffered on sm_90 (the host side tells by the device's
// compute capability: backward_double_buffer).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
constexpr bool kBackwardDoubleBuffer = false;
#else
constexpr bool kBackwardDoubleBuffer = true;
#endif

// kBias: bias (may be null: a zero bias) is added to the scores and dbias (may be null) gets dS.
// DP <= 32: at most 128 registers, 4 blocks an SM (ptxas would otherwise take ~155 for the bias
// variants: 3 blocks); DP = 64: at most 168, 3 blocks, as many as its shared memory allows (ptxas
// takes 162-168 without a bound since the masks are per tile; 180 before: 2 blocks); DP = 128:
// as many as ptxas likes (~240: 2 blocks, the shared-memory limit too).
// KW = 8 (128 keys, 8 warps, DP 64 or 128, plain batched self-attention only): each warp as with KW = 4
// (16 keys, all 64 queries of a tile); dQ = dS K of a tile is shared as 4 query groups x 2 column
// halves, over all 128 keys, so each dQ element gets one f32 reduction per 128 keys (not per 64),
// and each Q / dO tile is loaded once per 128 keys.
template <int DP, bool kBias, bool kCross, bool kVarlen, int KW = 4>
__global__ void __launch_bounds__(KW * 32, KW == 8 ? 1 : (DP <= 32 ? 4 : (DP == 64 ? 3 : 1))) attention_backward_kernel(
    const bf16* __restrict__ q, const bf16* __restrict__ k, const bf16* __restrict__ v, const bf16* __restrict__ dout,
    const float* __restrict__ lse, const float* __restrict__ delta, const int32_t* __restrict__ lengths,
    const float* __restrict__ bias, float* __restrict__ dbias, float* __restrict__ dq_acc, bf16* __restrict__ dk,
    bf16* __restrict__ dv, const int32_t* __restrict__ tiles, int64_t T_arg, int64_t Tk_arg, int64_t Hq, int64_t Hkv,
    int64_t D, float scale, float inv_scale, bool causal, bool accumulate, const float* __restrict__ rope_cos,
    const float* __restrict__ rope_sin, const int32_t* __restrict__ rope_pos, int64_t rope_T,
    float* __restrict__ dk_acc, float* __restrict__ dv_acc, int hsplit) {
  static_assert(KW == 4 || (KW == 8 && DP >= 64 && !kBias && !kCross && !kVarlen), "128-key blocks: DP 64 or 128, plain");
  constexpr int kThr = KW * 32, kKeys = KW * 16;  // threads, keys a block
  constexpr bool dbuf = kBackwardDoubleBuffer;
  if constexpr (dbuf) {  // the launch sized the shared memory for two stages (not for one)
    uint32_t smem_bytes;
#ifdef ST_CUDA_EMU
    smem_bytes = static_cast<uint32_t>(emu::kSharedBytes);
#else
    asm("mov.u32 %0, %%dynamic_smem_size;" : "=r"(smem_bytes));
#endif
    if (smem_bytes < backward_smem<DP, KW>(2)) __trap();
  }
  const SeqView sv = seq_view<kCross, kVarlen>(tiles, lengths, T_arg, Tk_arg, Hq);
  const int64_t T = sv.Tq, Tk = sv.Tk;  // query and key/value positions of this sequence
  constexpr int LDH = DP + 8;
  extern __shared__ __align__(128) unsigned char smem_raw[];
  // Layout (backward_smem): lse and D of two query tiles [2][64] f32 each, K and V [kKeys][LDH],
  // dS^T [kKeys][kLdT] (queries contiguous), then stage 0 (and with dbuf stage 1) of the query
  // tile: Q and dO [64 queries][LDH] each.
  float* const lse_s = reinterpret_cast<float*>(smem_raw);  // [stage][64]
  float* const dl_s = lse_s + 2 * kTile;                      // [stage][64]
  bf16* const Ks = reinterpret_cast<bf16*>(dl_s + 2 * kTile);
  bf16* const Vs = Ks + kKeys * LDH;
  bf16* const dSt = Vs + kKeys * LDH;
  bf16* const q_stages = dSt + kKeys * kLdT;
  auto Qs_of = [&](int st) { return q_stages + st * 2 * kTile * LDH; };
  auto dOs_of = [&](int st) { return q_stages + st * 2 * kTile * LDH + kTile * LDH; };

  // The block's first key (KW = 8: blocks of 128 keys; seq_view's tiles are 64). With hsplit = 2
  // (GQA, attention_head_split) blocks y = 2 hk and 2 hk + 1 take each half of KV head hk's query
  // heads and add their dK (scaled, rotated) and dV sums to dk_acc, dv_acc (f32 [rows, Hkv, D],
  // zeroed): two addends onto zero, so the result does not depend on their order.
  const int64_t hk = blockIdx.y / hsplit, j0 = KW == 4 ? sv.tile0 : static_cast<int64_t>(blockIdx.x) * kKeys;
  const int64_t group = Hq / Hkv, heads = group / hsplit;
  const int64_t h_first = hk * group + static_cast<int64_t>(blockIdx.y % hsplit) * heads, h_end = h_first + heads;
  const float scale_log2 = scale * kLog2e;
  const int64_t len = sv.len;  // keys j < min(len, Tk) are visible (before the causal mask)
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  if (j0 >= len || j0 >= Tk) {  // no query sees these keys: zero gradient (and nothing for dbias)
    if (!accumulate && dk_acc == nullptr)  // (with dk_acc the fold writes the zero sums)
      for (int idx = threadIdx.x; idx < kKeys * D; idx += blockDim.x) {
        const int64_t j = j0 + idx / D;
        if (j < Tk) {
          const int64_t off = ((sv.krow0 + j) * Hkv + hk) * D + idx % D;
          dk[off] = __float2bfloat16(0.0f);
          dv[off] = __float2bfloat16(0.0f);
        }
      }
    return;
  }
  // dQ tiles are added 4 columns at a time on sm_90 (16-byte reductions; rows of D floats keep
  // the 16-byte alignment of the cudaMalloc'd buffer when D % 4 == 0); elsewhere one by one.
#if defined(ST_CUDA_EMU) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900)  // (the emulator: sm_90's code)
  const bool vec_dq = D % 4 == 0;
#else
  constexpr bool vec_dq = false;
#endif
  const int kr0 = warp * 16;                    // this warp's keys within the tile
  const int64_t kj0 = j0 + kr0 + g, kj1 = kj0 + 8;
  const int64_t key_end = min(Tk, len);  // keys j < key_end are visible (before the causal mask)
  const bool key_ok0 = kj0 < key_end, key_ok1 = kj1 < key_end, warp_keys_ok = j0 + kr0 + 16 <= key_end;

  const int64_t i_start = causal ? (j0 / kTile) * kTile : 0;  // causal implies Tk == T (varlen: j0 = 64 m)
  const bool any_tile = i_start < T;  // (always: causal i_start = j0 < T, else 0 < T)
  // Query tile (h, q0) into stage st: Q, dO (16-byte cp.async when D == DP), lse and D (4-byte
  // cp.async; rows past T get 0, which the i < T test masks), one commit group.
  auto load_tile = [&](int64_t th, int64_t tq0, int st) {
    load_rows_async<DP, kThr>(Qs_of(st), q, sv.row0, tq0, T, Hq, th, D);
    load_rows_async<DP, kThr>(dOs_of(st), dout, sv.row0, tq0, T, Hq, th, D);
    if (kThr == 2 * kTile || threadIdx.x < 2 * kTile) {  // thread x < 128 copies lse (x < 64) or D of query x % 64
      static_assert(kThr >= 2 * kTile);
      const int idx = static_cast<int>(threadIdx.x), r = idx % kTile;
      const int64_t i = tq0 + r;
      const float* src = (idx < kTile ? lse : delta) + sv.lse_row + th * sv.lse_head + (i < T ? i : 0);
      cp_async4((idx < kTile ? lse_s : dl_s) + st * kTile + r, src, i < T ? 4 : 0);
    }
    cp_async_commit();
  };
  // K and V join the first tile's group (double-buffered) or are waited for with it (single).
  if (any_tile) {
#pragma unroll
    for (int kb = 0; kb < kKeys; kb += kTile) {  // K and V in row blocks of 64
      load_rows_async<DP, kThr>(Ks + kb * LDH, k, sv.krow0, j0 + kb, Tk, Hkv, hk, D);
      load_rows_async<DP, kThr>(Vs + kb * LDH, v, sv.krow0, j0 + kb, Tk, Hkv, hk, D);
    }
    if (dbuf) load_tile(h_first, i_start, 0);
    else cp_async_commit();
  }
  float dkr[DP / 8][4], dvr[DP / 8][4];
#pragma unroll
  for (int nd = 0; nd < DP / 8; ++nd)
#pragma unroll
    for (int e = 0; e < 4; ++e) dkr[nd][e] = dvr[nd][e] = 0.0f;
  // Shared-memory byte addresses of this lane's fragment loads (ldsm_x4_at and ldsm_x4_trans_at
  // take them as they are; every step adds a constant): A fragments of K and V (this warp's 16
  // keys, rows kr0..), B fragments of Q and dO (stage 0; + 16 rows a part), their transposed
  // reads for dV and dK (rows: the part's queries), the transposed read of dS^T as dQ's A
  // operand (rows: this warp's 16 queries) and of K as dQ's B operand.
  uint32_t k_a, v_a, q_base_b, do_base_b, q_base_t, do_base_t, ds_a, k_t;
  {
    const int blk = lane >> 3;
    const uint32_t off_a = static_cast<uint32_t>(((lane & 7) + (blk & 1) * 8) * LDH + (blk >> 1) * 8) * 2;
    const uint32_t off_b = static_cast<uint32_t>(((lane & 7) + (blk >> 1) * 8) * LDH + (blk & 1) * 8) * 2;
    const uint32_t off_t = static_cast<uint32_t>((lane & 15) * LDH + (lane >> 4) * 8) * 2;
    k_a = smem_addr(Ks) + off_a + kr0 * LDH * 2;
    v_a = smem_addr(Vs) + off_a + kr0 * LDH * 2;
    q_base_b = smem_addr(Qs_of(0)) + off_b;
    do_base_b = smem_addr(dOs_of(0)) + off_b;
    q_base_t = smem_addr(Qs_of(0)) + off_t;
    do_base_t = smem_addr(dOs_of(0)) + off_t;
    // ldsm_a_trans pattern: lanes 8i..8i+7 read rows (keys) +8 (i >> 1), columns (queries) +8 (i & 1).
    ds_a = smem_addr(dSt) +
           static_cast<uint32_t>(((lane & 7) + (blk >> 1) * 8) * kLdT + (blk & 1) * 8 + (KW == 4 ? warp : warp % 4) * 16) * 2;
    k_t = smem_addr(Ks) + off_t;
  }
  // This thread's dS^T values of a part (16 keys x 16 queries of the warp) go to shared memory as
  // the dK MMA's A fragment (4 packed pairs: keys g, g + 8 x queries 2t, 2t + 1 and 8 + 2t, 9 + 2t).
  uint32_t* const dst_row = reinterpret_cast<uint32_t*>(dSt + (kr0 + g) * kLdT + 2 * t);
  auto store_dst = [&](int part, const uint32_t da[4]) {
    dst_row[part * 8] = da[0];
    dst_row[part * 8 + 4 * kLdT] = da[1];
    dst_row[part * 8 + 4] = da[2];
    dst_row[part * 8 + 4 * kLdT + 4] = da[3];
  };

  // Query tiles in the order of the group's heads h, then q0 = i_start, i_start + 64, ... < T.
  // dbuf: the next tile's loads are issued into the other stage right after the barrier that
  // starts this tile, so they run under this tile's MMAs; that stage was last read in the
  // previous tile, before the same barrier. Single stage: each tile loads after the barrier.
  int64_t h = h_first, q0 = i_start;
  int stage = 0;
  for (bool more = any_tile; more;) {
    int64_t nh = h, nq0 = q0 + kTile;  // the next tile
    if (nq0 >= T) {
      nq0 = i_start;
      ++nh;
    }
    const bool has_next = nh < h_end;
    if (!dbuf) {
      __syncthreads();  // the previous tile's shared data (Q, dO, lse, D, dS) is consumed
      load_tile(h, q0, 0);
    }
    cp_async_wait_all();  // this thread's copies of this tile (and of K, V) have landed
    __syncthreads();      // everyone's have; everyone is done with the previous tile
    if (dbuf && has_next) load_tile(nh, nq0, stage ^ 1);
    // Shared-memory addresses of this stage (bytes; the lane parts were set up before the loop).
    const uint32_t st_off = static_cast<uint32_t>(stage) * 2 * kTile * LDH * 2;
    const uint32_t q_b = q_base_b + st_off, do_b = do_base_b + st_off;  // B fragments of Q, dO
    const uint32_t q_t = q_base_t + st_off, do_t = do_base_t + st_off;  // their transposed reads
    const float* lse_t = lse_s + stage * kTile;
    const float* dl_t = dl_s + stage * kTile;
    // Queries qi < rows_left of the tile exist (rows past T get P = dS = 0 through their exponent).
    const int rows_left = static_cast<int>(min(T - q0, static_cast<int64_t>(kTile)));
#pragma unroll 1
    for (int part = 0; part < 4; ++part) {  // queries [16 part, 16 part + 16) of the tile
      const int64_t iq = q0 + part * 16;  // the part's first query
      if (causal && j0 + kr0 > iq + 15) {
        // Every key of this warp comes after every query of the part (causal diagonal tile):
        // P = dS = 0, nothing to add to dK, dV (or dbias); dS = 0 goes to shared memory for dQ.
        const uint32_t zero[4] = {0u, 0u, 0u, 0u};
        store_dst(part, zero);
        continue;
      }
      // Per-element masks only where some key of the warp is invisible (past the keys) or after
      // some query of the part (causal); rows past T and rows without any visible key (lse =
      // -inf) get P = 0 through an exponent offset of +inf instead.
      const bool masked = !warp_keys_ok || (causal && j0 + kr0 + 15 > iq);
      // This thread's four queries qi = 16 part + 8 nt + 2t + e: lse in log2 units (+inf: P = 0)
      // and D.
      float l2[2][2], dl[2][2];
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const int qi = part * 16 + nt * 8 + 2 * t;
        const float2 lv = *reinterpret_cast<const float2*>(lse_t + qi);
        const float2 dv2 = *reinterpret_cast<const float2*>(dl_t + qi);
        l2[nt][0] = qi < rows_left && lv.x != -INFINITY ? lv.x * kLog2e : INFINITY;
        l2[nt][1] = qi + 1 < rows_left && lv.y != -INFINITY ? lv.y * kLog2e : INFINITY;
        dl[nt][0] = dv2.x;
        dl[nt][1] = dv2.y;
      }
      float st[2][4], dpt[2][4];  // S^T and dP^T: this warp's 16 keys x 16 queries
#pragma unroll
      for (int nt = 0; nt < 2; ++nt)
#pragma unroll
        for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.0f;
      if constexpr (kBias) {  // S^T starts at bias / scale, as in the forward
        if (bias != nullptr)
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int64_t i = q0 + part * 16 + nt * 8 + 2 * t + e;
              if (i >= T) continue;
              const int64_t row = (h * T + i) * Tk;
              if (kj0 < Tk && kj0 < len && !(causal && kj0 > i)) st[nt][e] = __ldg(bias + row + kj0) * inv_scale;
              if (kj1 < Tk && kj1 < len && !(causal && kj1 > i)) st[nt][2 + e] = __ldg(bias + row + kj1) * inv_scale;
            }
      }
      // S^T = K Q^T and dP^T = V dO^T over the head dimension. DP = 128: unrolled by 2, not 8
      // (fully unrolled, ptxas schedules the fragment loads of many steps ahead and spills next
      // to the 128 dK, dV accumulators).
      const uint32_t qb = q_b + part * 16 * LDH * 2, dob = do_b + part * 16 * LDH * 2;
#pragma unroll(DP >= 128 ? 2 : DP / 16)
      for (int kt = 0; kt < DP / 16; ++kt) {
        uint32_t ka[4], va[4], fb[4];
        ldsm_x4_at(ka, k_a + kt * 32);
        ldsm_x4_at(va, v_a + kt * 32);
        ldsm_x4_at(fb, qb + kt * 32);
        mma16816(st[0], ka, fb[0], fb[1]);
        mma16816(st[1], ka, fb[2], fb[3]);
        ldsm_x4_at(fb, dob + kt * 32);
        mma16816(dpt[0], va, fb[0], fb[1]);
        mma16816(dpt[1], va, fb[2], fb[3]);
      }
      // P^T = exp(S^T scale - lse) = exp2(S^T scale_log2 - lse log2 e), dS^T = P^T (dP^T - D);
      // keys kj0 (values 0, 1), kj1 (2, 3). The masked copy sets invisible scores to -inf first.
      auto softmax_grad = [&](auto masked_tag) {
        constexpr bool kMasked = decltype(masked_tag)::value;
#pragma unroll
        for (int nt = 0; nt < 2; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            if constexpr (kMasked) {
              const int64_t i = q0 + part * 16 + nt * 8 + 2 * t + e;
              if (!(key_ok0 && !(causal && kj0 > i))) st[nt][e] = -INFINITY;
              if (!(key_ok1 && !(causal && kj1 > i))) st[nt][2 + e] = -INFINITY;
            }
            const float p0 = fast_exp2(__fmaf_rn(st[nt][e], scale_log2, -l2[nt][e]));
            const float p1 = fast_exp2(__fmaf_rn(st[nt][2 + e], scale_log2, -l2[nt][e]));
            st[nt][e] = p0;
            st[nt][2 + e] = p1;
            dpt[nt][e] = p0 * (dpt[nt][e] - dl[nt][e]);
            dpt[nt][2 + e] = p1 * (dpt[nt][2 + e] - dl[nt][e]);
          }
      };
      if (masked) softmax_grad(std::true_type{});
      else softmax_grad(std::false_type{});
      if constexpr (kBias) {  // dbias[h, i, j] += dS (f32, before the bf16 rounding)
        if (dbias != nullptr)
#pragma unroll
          for (int nt = 0; nt < 2; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const int qi = part * 16 + nt * 8 + 2 * t + e;
              const int64_t i = q0 + qi;
              const bool row_ok = i < T && lse_t[qi] != -INFINITY;
              const bool ok0 = row_ok && key_ok0 && !(causal && kj0 > i);
              const bool ok1 = row_ok && key_ok1 && !(causal && kj1 > i);
              if (ok0) atomicAdd(dbias + (h * T + i) * Tk + kj0, dpt[nt][e]);
              if (ok1) atomicAdd(dbias + (h * T + i) * Tk + kj1, dpt[nt][2 + e]);
            }
      }
      // dV += P^T dO and dK += dS^T Q over these 16 queries (one k-step); dS^T also goes to
      // shared memory (the same bf16 values) for dQ.
      {
        const uint32_t pa[4] = {pack_bf16(st[0][0], st[0][1]), pack_bf16(st[0][2], st[0][3]),
                                pack_bf16(st[1][0], st[1][1]), pack_bf16(st[1][2], st[1][3])};
        const uint32_t da[4] = {pack_bf16(dpt[0][0], dpt[0][1]), pack_bf16(dpt[0][2], dpt[0][3]),
                                pack_bf16(dpt[1][0], dpt[1][1]), pack_bf16(dpt[1][2], dpt[1][3])};
        store_dst(part, da);
        const uint32_t dot = do_t + part * 16 * LDH * 2, qt = q_t + part * 16 * LDH * 2;  // k-step: these 16 queries
#pragma unroll
        for (int nd = 0; nd < DP / 8; nd += 2) {
          uint32_t b[4];
          ldsm_x4_trans_at(b, dot + nd * 16);
          mma16816(dvr[nd], pa, b[0], b[1]);
          mma16816(dvr[nd + 1], pa, b[2], b[3]);
          ldsm_x4_trans_at(b, qt + nd * 16);
          mma16816(dkr[nd], da, b[0], b[1]);
          mma16816(dkr[nd + 1], da, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // dS^T of all the block's keys is in shared memory
    // dQ rows [16 w, 16 w + 16) of this tile (w = warp % 4) = dS K over the block's keys, in
    // passes over the head dimension, to bound the registers next to the dK and dV accumulators:
    // 64 columns a pass on sm_90 (half the dS fragment reloads; 250 registers at DP = 128, no
    // spills), 32 elsewhere (64 spilled 8-20 bytes on sm_80). KW = 8: warps w and w + 4 take the
    // two column halves of the same rows.
    const int64_t qi0 = q0 + (KW == 4 ? warp : warp % 4) * 16 + g, qi1 = qi0 + 8;
    constexpr int kColSplit = KW / 4, kWCols = DP / kColSplit;  // columns a warp
    const int cbase = KW == 4 ? 0 : (warp / 4) * kWCols;
    // vec_dq: the even lane of a quad adds row qi0, the odd lane row qi1 (see below).
    const int64_t qv = (t & 1) ? qi1 : qi0;
    float* const dq_v = dq_acc + ((sv.row0 + (qv < T ? qv : 0)) * Hq + h) * D + 4 * (t >> 1);
    float* const dq_r0 = dq_acc + ((sv.row0 + (qi0 < T ? qi0 : 0)) * Hq + h) * D + 2 * t;
    float* const dq_r1 = dq_acc + ((sv.row0 + (qi1 < T ? qi1 : 0)) * Hq + h) * D + 2 * t;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 900
    constexpr int kPasses = kWCols >= 32 ? kWCols / 32 : 1, kCols = kWCols / kPasses;
#else
    constexpr int kPasses = kWCols >= 64 ? kWCols / 64 : 1, kCols = kWCols / kPasses;
#endif
#pragma unroll
    for (int dh = 0; dh < kPasses; ++dh) {
      float acc[kCols / 8][4];
#pragma unroll
      for (int nd = 0; nd < kCols / 8; ++nd) acc[nd][0] = acc[nd][1] = acc[nd][2] = acc[nd][3] = 0.0f;
#pragma unroll
      for (int kk = 0; kk < KW; ++kk) {  // the block's keys, 16 a step
        uint32_t sa[4];
        ldsm_x4_trans_at(sa, ds_a + kk * 16 * kLdT * 2);
#pragma unroll
        for (int nd = 0; nd < kCols / 8; nd += 2) {
          uint32_t b[4];
          ldsm_x4_trans_at(b, k_t + (kk * 16 * LDH + cbase + dh * kCols + nd * 8) * 2);
          mma16816(acc[nd], sa, b[0], b[1]);
          mma16816(acc[nd + 1], sa, b[2], b[3]);
        }
      }
      if (vec_dq) {
        // 4 contiguous columns per thread: the quad's lanes t and t ^ 1 swap halves, so the even
        // lane holds row qi0, columns 2t..2t+3 (its own 2t, 2t+1 and the odd lane's) and the odd
        // lane row qi1, columns 2t-2..2t+1 (the even lane's and its own). Every element of the
        // 16 x 8 n-tile is added once, with the same f32 value as the scalar path.
        // (The scale multiplies the sums when they are folded into dq.)
        const bool odd = t & 1, row_ok = qv < T, all_cols = D == DP;
#pragma unroll
        for (int nd = 0; nd < kCols / 8; ++nd) {
          const float r0 = __shfl_xor_sync(0xffffffffu, odd ? acc[nd][0] : acc[nd][2], 1);
          const float r1 = __shfl_xor_sync(0xffffffffu, odd ? acc[nd][1] : acc[nd][3], 1);
          const int c = cbase + dh * kCols + nd * 8;  // + 4 (t >> 1) in dq_v; D % 4 == 0: c + 4 (t >> 1) < D covers all 4
          // even lane {own c0, c1, received c0, c1}; odd lane {received c2, c3, own c2, c3}
          if (row_ok && (all_cols || c + 4 * (t >> 1) < D))
            red_add_f32x4(dq_v + c, odd ? r0 : acc[nd][0], odd ? r1 : acc[nd][1], odd ? acc[nd][2] : r0,
                          odd ? acc[nd][3] : r1);
        }
      } else {
#pragma unroll
        for (int nd = 0; nd < kCols / 8; ++nd)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int c = cbase + dh * kCols + nd * 8 + e;  // + 2t in dq_r0, dq_r1
            if (c + 2 * t >= D) continue;
            if (qi0 < T) atomicAdd(dq_r0 + c, acc[nd][e]);
            if (qi1 < T) atomicAdd(dq_r1 + c, acc[nd][2 + e]);
          }
      }
    }
    more = has_next;
    h = nh;
    q0 = nq0;
    if (dbuf) stage ^= 1;
  }
  // dK (scaled) and dV of this warp's keys, added to the bf16 outputs. With rope_cos (D == DP,
  // accumulate false: the host sees to both) dK leaves through the inverse rotary embedding:
  // column c < D / 2 pairs with c + D / 2, which this thread holds too (n-tile nd + DP / 16), so
  // the rotation needs no exchange: dk[c] = a cos + b sin, dk[c + D/2] = b cos - a sin (a, b the
  // scaled sums of c and c + D / 2; rope_backward's arithmetic, in f32 before the one rounding).
  if (rope_cos != nullptr) {
    constexpr int kHalf = DP / 2, kHalfTiles = DP / 16;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int64_t kj = r ? kj1 : kj0;
      if (kj >= Tk) continue;
      const int64_t tok = sv.krow0 + kj;
      const int64_t p = rope_pos ? rope_pos[tok] : tok % rope_T;  // rope_forward's position of token tok
      const float* cs = rope_cos + p * kHalf;
      const float* sn = rope_sin + p * kHalf;
      bf16* const dk_row = dk + (tok * Hkv + hk) * DP;
      float* const acc_row = dk_acc ? dk_acc + (tok * Hkv + hk) * DP : nullptr;
#pragma unroll
      for (int nd = 0; nd < kHalfTiles; ++nd) {
        const int c = nd * 8 + 2 * t;
        const float2 co = *reinterpret_cast<const float2*>(cs + c), si = *reinterpret_cast<const float2*>(sn + c);
        const float a0 = scale * dkr[nd][2 * r], a1 = scale * dkr[nd][2 * r + 1];
        const float b0 = scale * dkr[nd + kHalfTiles][2 * r], b1 = scale * dkr[nd + kHalfTiles][2 * r + 1];
        if (acc_row) {  // the rotation is linear: the two halves' rotated sums add up to the rotated sum
          atomicAdd(acc_row + c, a0 * co.x + b0 * si.x);
          atomicAdd(acc_row + c + 1, a1 * co.y + b1 * si.y);
          atomicAdd(acc_row + c + kHalf, b0 * co.x - a0 * si.x);
          atomicAdd(acc_row + c + kHalf + 1, b1 * co.y - a1 * si.y);
          continue;
        }
        *reinterpret_cast<__nv_bfloat162*>(dk_row + c) = __floats2bfloat162_rn(a0 * co.x + b0 * si.x, a1 * co.y + b1 * si.y);
        *reinterpret_cast<__nv_bfloat162*>(dk_row + c + kHalf) =
            __floats2bfloat162_rn(b0 * co.x - a0 * si.x, b1 * co.y - a1 * si.y);
      }
    }
  }
#pragma unroll
  for (int nd = 0; nd < DP / 8; ++nd)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int64_t c = nd * 8 + 2 * t + e;
      if (c >= D) continue;
      if (dk_acc != nullptr) {  // dK (unless rotated above) and dV to the f32 sums
#pragma unroll
        for (int r = 0; r < 2; ++r) {
          const int64_t kj = r ? kj1 : kj0;
          if (kj >= Tk) continue;
          const int64_t off = ((sv.krow0 + kj) * Hkv + hk) * D + c;
          if (rope_cos == nullptr) atomicAdd(dk_acc + off, scale * dkr[nd][2 * r + e]);
          atomicAdd(dv_acc + off, dvr[nd][2 * r + e]);
        }
        continue;
      }
      if (rope_cos != nullptr) {
        if (kj0 < Tk) dv[((sv.krow0 + kj0) * Hkv + hk) * D + c] = __float2bfloat16(dvr[nd][e]);
        if (kj1 < Tk) dv[((sv.krow0 + kj1) * Hkv + hk) * D + c] = __float2bfloat16(dvr[nd][2 + e]);
        continue;
      }
      if (kj0 < Tk) {
        const int64_t off = ((sv.krow0 + kj0) * Hkv + hk) * D + c;
        dk[off] = __float2bfloat16((accumulate ? __bfloat162float(dk[off]) : 0.0f) + scale * dkr[nd][e]);
        dv[off] = __float2bfloat16((accumulate ? __bfloat162float(dv[off]) : 0.0f) + dvr[nd][e]);
      }
      if (kj1 < Tk) {
        const int64_t off = ((sv.krow0 + kj1) * Hkv + hk) * D + c;
        dk[off] = __float2bfloat16((accumulate ? __bfloat162float(dk[off]) : 0.0f) + scale * dkr[nd][2 + e]);
        dv[off] = __float2bfloat16((accumulate ? __bfloat162float(dv[off]) : 0.0f) + dvr[nd][2 + e]);
      }
    }
}

// dst (+)= scale * src: the backward's f32 dQ sums (of dS K, unscaled) into the bf16 dq; with
// vec (n % 4 == 0, dst 8-byte aligned; src is the scratch allocation) 4 elements a thread
// (16-byte loads, 8-byte stores).
__global__ void accumulate_f32_into_bf16(const float* __restrict__ src, bf16* __restrict__ dst, int64_t n, float scale,
                                         bool accumulate, bool vec) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (vec) {
    for (; i < n / 4; i += stride) {
      const float4 v = reinterpret_cast<const float4*>(src)[i];
      float2 lo = make_float2(scale * v.x, scale * v.y), hi = make_float2(scale * v.z, scale * v.w);
      uint2* d = reinterpret_cast<uint2*>(dst) + i;
      if (accumulate) {
        const uint2 old = *d;
        const float2 o0 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&old.x));
        const float2 o1 = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&old.y));
        lo.x += o0.x;
        lo.y += o0.y;
        hi.x += o1.x;
        hi.y += o1.y;
      }
      __nv_bfloat162 r[2] = {__float22bfloat162_rn(lo), __float22bfloat162_rn(hi)};
      *d = *reinterpret_cast<const uint2*>(r);
    }
    return;
  }
  for (; i < n; i += stride)
    dst[i] = __float2bfloat16((accumulate ? __bfloat162float(dst[i]) : 0.0f) + scale * src[i]);
}

// dq = rope_backward(scale * src) in bf16 (AttentionRope): one thread per 4 pairs (c, c + D / 2)
// of one (token, head) row; D / 2 % 4 == 0. Token n = row / Hq sits at position pos[n], or n % T.
__global__ void fold_dq_rope(const float* __restrict__ src, bf16* __restrict__ dst, int64_t rows, int64_t Hq, int64_t T,
                             int D, float scale, const float* __restrict__ cos_t, const float* __restrict__ sin_t,
                             const int32_t* __restrict__ pos) {
  const int half = D / 2, quads = half / 4;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < rows * quads;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t row = idx / quads, n = row / Hq;
    const int c = static_cast<int>(idx % quads) * 4;
    const int64_t p = pos ? pos[n] : n % T;
    const float4 a = *reinterpret_cast<const float4*>(src + row * D + c);
    const float4 b = *reinterpret_cast<const float4*>(src + row * D + c + half);
    const float4 co = *reinterpret_cast<const float4*>(cos_t + p * half + c);
    const float4 si = *reinterpret_cast<const float4*>(sin_t + p * half + c);
    const float av[4] = {scale * a.x, scale * a.y, scale * a.z, scale * a.w};
    const float bv[4] = {scale * b.x, scale * b.y, scale * b.z, scale * b.w};
    const float cv[4] = {co.x, co.y, co.z, co.w}, sv[4] = {si.x, si.y, si.z, si.w};
    __nv_bfloat162 lo[2], hi[2];
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int i = 2 * e, j = 2 * e + 1;
      lo[e] = __floats2bfloat162_rn(av[i] * cv[i] + bv[i] * sv[i], av[j] * cv[j] + bv[j] * sv[j]);
      hi[e] = __floats2bfloat162_rn(bv[i] * cv[i] - av[i] * sv[i], bv[j] * cv[j] - av[j] * sv[j]);
    }
    *reinterpret_cast<uint2*>(dst + row * D + c) = *reinterpret_cast<const uint2*>(lo);
    *reinterpret_cast<uint2*>(dst + row * D + c + half) = *reinterpret_cast<const uint2*>(hi);
  }
}

template <int DP, int MT = 1> constexpr size_t forward_smem() {
  return sizeof(bf16) * (4 + (MT == 2 ? 2 : 0)) * kTile * (DP + 8);  // two stages of K and V (MT = 2: and Q)
}
static_assert(forward_smem<128, 2>() == 104448);

#ifndef ST_CUDA_EMU  // the host side: launchers and the public functions
// Whether the device runs the sm_90 code of the backward (kBackwardDoubleBuffer: the binary holds
// sm_80 and sm_90 code, and a device of compute capability 9.x runs the latter).
bool backward_double_buffer() {
  static const bool yes = [] {
    int dev = 0, major = 0;
    ST_CUDA_CHECK(cudaGetDevice(&dev));
    ST_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev));
    return major >= 9;
  }();
  return yes;
}

// Scratch kept between calls (D and the f32 dQ accumulator), grown on demand, counted as workspace.
// The planner reserves the same sizes (attention_scratch_bytes in ops/attention.hpp).
Tensor& scratch(int which, int64_t n) {
  static Tensor bufs[2];
  if (!bufs[which].defined() || bufs[which].numel() < n)
    bufs[which] = Tensor::empty({n}, DType::f32, Device::cuda, MemCategory::workspace);
  return bufs[which];
}

// Kernels with more than 48 KiB of dynamic shared memory must opt in, once per instantiation.
template <typename Kernel>
void allow_dynamic_smem(Kernel kernel, size_t smem, bool& configured) {
  if (configured) return;
  ST_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  configured = true;
}

// Batched: one block per 64 MT queries of one head and batch row. Varlen: one per tile-table entry and head.
template <int DP, bool kBias, bool kCross, bool kVarlen = false, int MT = 1, int Blocks = 0>
void launch_forward(const AttentionArgs& a) {
  const size_t smem = forward_smem<DP, MT>();
  static bool configured = false;
  allow_dynamic_smem(attention_forward_kernel<DP, kBias, kCross, kVarlen, MT, Blocks>, smem, configured);
  const dim3 grid = kVarlen ? dim3(static_cast<unsigned>(a.n_tiles), static_cast<unsigned>(a.Hq), 1u)
                            : dim3(static_cast<unsigned>(ceil_div(a.T, kTile * MT)), static_cast<unsigned>(a.Hq),
                                   static_cast<unsigned>(a.B));
  attention_forward_kernel<DP, kBias, kCross, kVarlen, MT, Blocks><<<grid, kThreads, smem, stream()>>>(
      static_cast<const bf16*>(a.q), static_cast<const bf16*>(a.k), static_cast<const bf16*>(a.v), a.lengths, a.bias,
      static_cast<bf16*>(a.out), a.lse, a.tiles, a.T, a.Tk, a.Hq, a.Hkv, a.D, a.scale, kBias ? 1.0f / a.scale : 0.0f,
      a.causal);
  ST_CUDA_LAUNCH_CHECK("attention_forward");
}

template <int DP, bool kBias, bool kCross, bool kVarlen = false, int KW = 4>
void launch_backward(const AttentionArgs& a, const void* dout, void* dq, void* dk, void* dv, bool accumulate,
                     float* dbias) {
  const int64_t rows = a.B * a.T * a.Hq;
  const int hsplit = kBias || kCross ? 1 : a.head_split;
  const int64_t kv_n = a.B * a.Tk * a.Hkv * a.D;  // dK, dV elements
  float* delta = scratch(0, rows).ptr<float>();
  // The dQ sums, then (split) the dK and dV sums: attention_scratch_bytes' layout.
  float* dq_acc = scratch(1, rows * a.D + (hsplit > 1 ? 2 * kv_n : 0)).ptr<float>();
  float* dk_acc = hsplit > 1 ? dq_acc + rows * a.D : nullptr;
  float* dv_acc = hsplit > 1 ? dk_acc + kv_n : nullptr;
  if (hsplit > 1) ST_CUDA_CHECK(cudaMemsetAsync(dk_acc, 0, 2 * static_cast<size_t>(kv_n) * sizeof(float), stream()));
  auto aligned8 = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 8 == 0; };
  attention_delta_kernel<<<static_cast<unsigned>(ceil_div(rows * 32, 256)), 256, 0, stream()>>>(
      static_cast<const bf16*>(dout), static_cast<const bf16*>(a.out), delta, dq_acc, a.B, a.T, a.Hq, a.D,
      a.D % 4 == 0 && aligned8(dout) && aligned8(a.out));
  ST_CUDA_LAUNCH_CHECK("attention_delta");
  auto* kernel = attention_backward_kernel<DP, kBias, kCross, kVarlen, KW>;
  const size_t smem = backward_smem<DP, KW>(backward_double_buffer() ? 2 : 1);
  static bool configured = false;
  if (!configured) {
    // The blocks of an SM want all of its shared memory (2 of 112 KiB at DP = 128 on an H100).
    ST_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                       cudaSharedmemCarveoutMaxShared));
    allow_dynamic_smem(kernel, smem, configured);
  }
  // One block per 64 keys (KW = 8: 128) of one KV head and batch row; varlen: per tile-table
  // entry and KV head.
  const unsigned gy = static_cast<unsigned>(a.Hkv * hsplit);
  const dim3 grid = kVarlen ? dim3(static_cast<unsigned>(a.n_tiles), gy, 1u)
                            : dim3(static_cast<unsigned>(ceil_div(a.Tk, KW * 16)), gy, static_cast<unsigned>(a.B));
  kernel<<<grid, KW * 32, smem, stream()>>>(
      static_cast<const bf16*>(a.q), static_cast<const bf16*>(a.k), static_cast<const bf16*>(a.v),
      static_cast<const bf16*>(dout), a.lse, delta, a.lengths, a.bias, dbias, dq_acc, static_cast<bf16*>(dk),
      static_cast<bf16*>(dv), a.tiles, a.T, a.Tk, a.Hq, a.Hkv, a.D, a.scale, kBias ? 1.0f / a.scale : 0.0f, a.causal,
      accumulate, a.rope_cos, a.rope_sin, a.rope_pos, a.rope_T, dk_acc, dv_acc, hsplit);
  ST_CUDA_LAUNCH_CHECK("attention_backward");
  if (hsplit > 1) {  // dk, dv (+)= the f32 sums (scaled, and rotated, in the kernel)
    fold_f32_into_bf16(dk_acc, dk, kv_n, 1.0f, accumulate);
    fold_f32_into_bf16(dv_acc, dv, kv_n, 1.0f, accumulate);
  }
  if (a.rope_cos != nullptr) {
    const int64_t n = rows * (a.D / 8);
    fold_dq_rope<<<grid_1d(n, 256), 256, 0, stream()>>>(dq_acc, static_cast<bf16*>(dq), rows, a.Hq, a.rope_T,
                                                        static_cast<int>(a.D), a.scale, a.rope_cos, a.rope_sin,
                                                        a.rope_pos);
    ST_CUDA_LAUNCH_CHECK("attention_dq_rope");
    return;
  }
  fold_f32_into_bf16(dq_acc, dq, rows * a.D, a.scale, accumulate);
}

// Tk resolved (0 means T).
AttentionArgs resolved(const AttentionArgs& in) {
  AttentionArgs a = in;
  if (a.Tk <= 0) a.Tk = a.T;
  return a;
}
void check_args(const AttentionArgs& a, bool has_bias) {
  if (a.causal && a.Tk != a.T) ST_THROW("causal attention on CUDA needs Tk == T (T=", a.T, ", Tk=", a.Tk, ")");
  if (a.tiles && (a.B != 1 || !a.causal || has_bias || a.lengths))
    ST_THROW("varlen attention on CUDA is causal self-attention over B = 1 stream, without lengths or bias");
  if (a.D > 128) ST_THROW("attention on CUDA supports head_dim <= 128, got ", a.D);
  // The kernels take the row max of the unscaled scores (the max of scale S is scale max S).
  if (!(a.scale > 0.0f)) ST_THROW("attention on CUDA needs a positive scale, got ", a.scale);
}

// variant = 2 * bias + cross (Tk != T), or 4 for varlen (a tile table; no bias, no cross): the
// kernels without any are the self-attention ones of before, compiled without a trace of the
// bias, of a separate key count or of the tile table.
// SHARDTUNE_ATTN_FWD_ROWS=128: the forward of plain batched self-attention at head dims in
// (32, 128] (padded to 64 or 128) in blocks of 128 queries (two m16 tiles a warp: MT = 2);
// 128x2: the same held to two blocks an SM at DP = 64 too (no spill, against three blocks with
// 140 bytes spilled); opt-in until measured on a GPU. Unset or 64: blocks of 64.
int forward_rows_choice() {
  static const int choice = env_choice("SHARDTUNE_ATTN_FWD_ROWS", {"64", "128", "128x2"}, 0);
  return choice;
}

template <int DP>
void forward_variant(const AttentionArgs& a, int variant) {
  if constexpr (DP >= 64) {
    if (variant == 0 && forward_rows_choice() == 1) return launch_forward<DP, false, false, false, 2>(a);
    if (variant == 0 && forward_rows_choice() == 2) return launch_forward<DP, false, false, false, 2, 2>(a);
  }
  switch (variant) {
    case 0: launch_forward<DP, false, false>(a); break;
    case 4: launch_forward<DP, false, false, true>(a); break;
    case 1: launch_forward<DP, false, true>(a); break;
    case 2: launch_forward<DP, true, false>(a); break;
    default: launch_forward<DP, true, true>(a); break;
  }
}
// SHARDTUNE_ATTN_BWD_KEYS=128: the backward of plain batched self-attention at head dims in
// (32, 128] in blocks of 128 keys and 8 warps (half the dQ reductions and Q / dO tile loads); opt-in until
// measured on a GPU. Unset or 64: blocks of 64 keys.
bool backward_128_keys() {
  static const bool on = env_switch("SHARDTUNE_ATTN_BWD_KEYS", "64", "128", false);
  return on;
}

template <int DP>
void backward_variant(const AttentionArgs& a, int variant, const void* dout, void* dq, void* dk, void* dv,
                      bool accumulate, float* dbias) {
  if constexpr (DP >= 64) {
    if (variant == 0 && backward_128_keys()) return launch_backward<DP, false, false, false, 8>(a, dout, dq, dk, dv, accumulate, dbias);
  }
  switch (variant) {
    case 0: launch_backward<DP, false, false>(a, dout, dq, dk, dv, accumulate, dbias); break;
    case 4: launch_backward<DP, false, false, true>(a, dout, dq, dk, dv, accumulate, dbias); break;
    case 1: launch_backward<DP, false, true>(a, dout, dq, dk, dv, accumulate, dbias); break;
    case 2: launch_backward<DP, true, false>(a, dout, dq, dk, dv, accumulate, dbias); break;
    default: launch_backward<DP, true, true>(a, dout, dq, dk, dv, accumulate, dbias); break;
  }
}

}  // namespace

void fold_f32_into_bf16(const float* src, void* dst, int64_t n, float scale, bool accumulate) {
  if (n == 0) return;
  const bool vec = n % 4 == 0 && reinterpret_cast<uintptr_t>(dst) % 8 == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0;
  accumulate_f32_into_bf16<<<grid_1d(vec ? n / 4 : n, 256), 256, 0, stream()>>>(src, static_cast<bf16*>(dst), n, scale,
                                                                                 accumulate, vec);
  ST_CUDA_LAUNCH_CHECK("fold_f32_into_bf16");
}

void attention_forward(const AttentionArgs& args) {
  const AttentionArgs a = resolved(args);
  if (a.B == 0 || a.T == 0) return;
  check_args(a, a.bias != nullptr);
  if (a.tiles && a.n_tiles == 0) return;
  const int variant = a.tiles ? 4 : (a.bias != nullptr ? 2 : 0) + (a.Tk != a.T ? 1 : 0);
  if (a.D <= 16) forward_variant<16>(a, variant);
  else if (a.D <= 32) forward_variant<32>(a, variant);
  else if (a.D <= 64) forward_variant<64>(a, variant);
  else forward_variant<128>(a, variant);
}

void attention_backward(const AttentionArgs& args, const void* dout, void* dq, void* dk, void* dv, bool accumulate,
                        float* dbias) {
  const AttentionArgs a = resolved(args);
  if (a.B == 0 || a.T == 0) return;
  const bool bias = a.bias != nullptr || dbias != nullptr;
  check_args(a, bias);
  if (a.rope_cos != nullptr && (accumulate || a.Tk != a.T || a.rope_T <= 0 || !(a.D == 16 || a.D == 32 || a.D == 64 || a.D == 128) ||
                                reinterpret_cast<uintptr_t>(dq) % 8 != 0 || reinterpret_cast<uintptr_t>(dk) % 4 != 0))
    ST_THROW("attention backward with rope needs accumulate = false, self-attention, head_dim 16, 32, 64 or 128 and "
             "dq / dk aligned to 8 / 4 bytes (accumulate=", accumulate, ", T=", a.T, ", Tk=", a.Tk, ", D=", a.D, ")");
  if (a.tiles && a.n_tiles == 0) return;
  const int variant = a.tiles ? 4 : (bias ? 2 : 0) + (a.Tk != a.T ? 1 : 0);
  if (a.D <= 16) backward_variant<16>(a, variant, dout, dq, dk, dv, accumulate, dbias);
  else if (a.D <= 32) backward_variant<32>(a, variant, dout, dq, dk, dv, accumulate, dbias);
  else if (a.D <= 64) backward_variant<64>(a, variant, dout, dq, dk, dv, accumulate, dbias);
  else backward_variant<128>(a, variant, dout, dq, dk, dv, accumulate, dbias);
}

#else
}  // namespace (the emulator's build: its kernels only)
#endif  // ST_CUDA_EMU

}  // namespace st::cuda
