// GEMMs through cuBLASLt: bf16 (or f32) inputs, f32 accumulation, bf16 or f32 output, row-major
// operands as in src/ops/matmul.hpp. Algorithms are chosen by cuBLASLt's heuristic once per
// (shape, transposes, types, alignment) and cached; one 32 MiB workspace (Hopper's advice).
#pragma once

#include <cstdint>

#include "core/tensor.hpp"

namespace st::cuda {

// C[M,N] = alpha * op(A)[M,K] op(B)[K,N] + beta * C_in (C_in = C when null); beta == 0 does not
// read it.
void matmul(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha, double beta,
            int64_t M, int64_t N, int64_t K, const Tensor* C_in = nullptr);

// The same through cuBLASLt only (K > 0), whatever SHARDTUNE_SKINNY says: the skinny benchmark's
// baseline.
void matmul_cublaslt(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha,
                     double beta, int64_t M, int64_t N, int64_t K, const Tensor* C_in = nullptr);

// Skinny GEMMs (LoRA's rank-r products) by shardtune's kernels (cuda/skinny.cu) instead of
// cuBLASLt, by kind (see skinny_matmul): SHARDTUNE_SKINNY=custom (all kinds), a comma list of
// thin, reduce, expand, rope, pair, swiglu (those kinds), or cublaslt (none); unset: expand,rope,pair,swiglu. Read
// once. rope: LoRA's q / k update and RoPE in one pass (skinny_expand_rope; LoRA groups then run
// the base GEMM first); pair: dB and dxa from one pass over dy (skinny_lora_dy_pair); swiglu: the
// gate and up LoRA terms made inside SwiGLU's forward and backward instead of added to the
// projections' outputs (skinny_swiglu_lora; docs/NOTES.md, sessions 15 and 16).
enum SkinnyKind : unsigned {
  kSkinnyThin = 1,
  kSkinnyReduce = 2,
  kSkinnyExpand = 4,
  kSkinnyRope = 8,
  kSkinnyPair = 16,
  kSkinnySwiglu = 32,
  kSkinnyAll = 63
};
unsigned skinny_kinds();
// Tests and benchmarks: force the kinds for this process; clear_skinny_kinds returns to the environment's.
void set_skinny_kinds(unsigned kinds);
void clear_skinny_kinds();

// The custom kernels, when they take the call: bf16 A and B, bf16 or f32 C, one of K, N, M (the
// smallest such, ties in that order) a multiple of 8 in [8, 64] (r), A and B 16-byte aligned
// with row lengths (ta ? M : K, tb ? K : N) multiples of 8. Kinds: r = K: expand (C = P W, output-
// bound; needs N % 8 == 0); r = N with A not transposed or r = M with B transposed: thin (C's
// r columns or rows from a stream of X's rows along K); r = M with B not transposed or r = N with
// A transposed: reduce (a sum over K, the tokens). Expand and reduce also need C (and C_in) 16-byte
// aligned. Returns false, having done nothing, when the call is not one they take, its kind is
// not in `kinds` or the device has too little shared memory per block for the kernel. Same arguments and result as matmul, up to the order of the f32 sums.
bool skinny_matmul(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha, double beta,
                   int64_t M, int64_t N, int64_t K, const Tensor* C_in = nullptr, unsigned kinds = kSkinnyAll);

// C = rope(alpha op(A) op(B) + beta C) by the expand kernel with RoPE in its epilogue (LoRA's
// y += s xa B^T on the q / k outputs before attention; ops/rope.hpp lora_expand_rope): bf16
// A, B, C, K = r a multiple of 8 in [8, 64], head dim D in {16, 32, 64, 128} dividing N; row m of
// C is token m, at position pos[m] (pos may be null: m % T); cos / sin f32 [positions, D/2].
// Returns false, having done nothing, when it does not take the call (the rope kind off in
// SHARDTUNE_SKINNY, shapes, alignment); skinny_expand_rope_takes is the same test without the
// pointers (the planner's).
bool skinny_expand_rope_takes(DType a, DType b, DType c, int64_t M, int64_t N, int64_t K, int D);
bool skinny_expand_rope(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha,
                        double beta, int64_t M, int64_t N, int64_t K, const float* cos, const float* sin,
                        const int32_t* pos, int64_t T, int D);

// The pair kind: LoRA's two products of the output gradient dy [tokens, wide] from one pass over
// it (the reduce and thin kinds read dy once each):
//   dB  (+)= alpha dy^T xa      dB [wide, r] (f32 or bf16), beta_dB 0 or 1
//   dxa   = alpha dy B          dxa [tokens, r] or, dxa_t, [r, tokens] (bf16 or f32)
// xa [tokens, r] or, xa_t, [r, tokens]; B [wide, r]; dy, xa, B bf16. Block (x, y) streams dy's
// tile of cols_per_split columns x tokens_per_split tokens once and writes f32 partial sums: of dB
// over its tokens (splits_t of them) and of dxa over its columns (splits_n); two passes add them
// in a fixed order (deterministic, as the reduce kind). The split is a function of the shape only,
// so that the planner's dry run reserves the same scratch (scratch_bytes): about 256 blocks (two
// an SM on an H100), token splits a multiple of the 64-token stage.
struct SkinnyPairTiling {
  int64_t tokens_per_split = 0, cols_per_split = 0, splits_t = 0, splits_n = 0, scratch_bytes = 0;
};
inline SkinnyPairTiling skinny_pair_tiling(int64_t tokens, int64_t wide, int64_t r) {
  SkinnyPairTiling t;
  t.cols_per_split = (r <= 16 ? 4 : 2) * 128;  // 4 (r <= 16) or 2 (r <= 32) chunks of 128 columns
  t.splits_n = (wide + t.cols_per_split - 1) / t.cols_per_split;
  const int64_t want = (tokens * t.splits_n + 255) / 256;  // tokens a split for ~256 blocks
  t.tokens_per_split = want <= 64 ? 64 : (want + 63) / 64 * 64;
  t.splits_t = (tokens + t.tokens_per_split - 1) / t.tokens_per_split;
  t.scratch_bytes = static_cast<int64_t>(sizeof(float)) * r * (t.splits_t * wide + t.splits_n * tokens);
  return t;
}
// Whether skinny_lora_dy_pair takes a call of these types and shape (the pair kind on in
// SHARDTUNE_SKINNY, r a multiple of 8 in [8, 32], wide and tokens multiples of 8); it may still
// decline an unaligned one.
bool skinny_pair_takes(DType dy, DType xa, DType B, DType dB, DType dxa, int64_t tokens, int64_t wide, int64_t r);
// Returns false, having done nothing, when it does not take the call.
bool skinny_lora_dy_pair(Tensor& dB, double beta_dB, Tensor& dxa, bool dxa_t, const Tensor& dy, const Tensor& xa,
                         bool xa_t, const Tensor& B, double alpha, int64_t tokens, int64_t wide, int64_t r);

// The swiglu kind: h = silu(g + sg xg^T bg^T) (u + su xu^T bu^T) (forward, out0 = h) or the
// gradients of those two sums from dh + sd xd bd (backward: out0 = dg, out1 = du), g and u the
// base GEMMs' outputs [M, N], xg, xu the transposed xa [r*, M], bg, bu LoRA's B [N, r*]; xd [M, rd]
// and bd [rd, N] the down projection's dxa and A (backward only); all bf16. A rank of 0: no such
// term (its tensors are not read). skinny_swiglu_takes: the kind on, M and N multiples of 8, each
// rank 0 or a multiple of 8 in [8, 64], rg and ru not both 0. Returns false, having done nothing,
// when it does not take the call (also: a tensor not bf16 or not 16-byte aligned).
bool skinny_swiglu_takes(int64_t M, int64_t N, int64_t rg, int64_t ru, int64_t rd = 0);
bool skinny_swiglu_lora(bool backward, const Tensor* dh, const Tensor& g, const Tensor& u, const Tensor& xg,
                        const Tensor& bg, double sg, const Tensor& xu, const Tensor& bu, double su, const Tensor* xd,
                        const Tensor* bd, double sd, Tensor& out0, Tensor* out1, int64_t M, int64_t N, int64_t rg,
                        int64_t ru, int64_t rd);

}  // namespace st::cuda
