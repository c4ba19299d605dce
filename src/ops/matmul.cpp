#include "ops/matmul.hpp"

#include <algorithm>
#include <string>

#include "ops/cpu/cpu_kernels.hpp"
#include "core/error.hpp"
#include "core/profile.hpp"
#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "ops/dispatch.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/matmul.cuh"
#endif

namespace st {

namespace {
int64_t rows_of(const Tensor& t) { return t.numel() / t.dim(-1); }

// SHARDTUNE_PROFILE=2: "matmul M x N x K (A^T, B^T, +=)" with C's and A's dtypes.
std::string gemm_profile_name(const char* kind, const Tensor& C, const Tensor& A, bool ta, const Tensor& B, bool tb,
                              double beta) {
  const int64_t M = ta ? A.dim(-1) : rows_of(A), K = ta ? rows_of(A) : A.dim(-1), N = tb ? rows_of(B) : B.dim(-1);
  return str(kind, " ", M, "x", N, "x", K, ta ? " A^T" : "", tb ? " B^T" : "", beta != 0.0 ? " +=" : "", " ",
             dtype_name(A.dtype()), "->", dtype_name(C.dtype()));
}
}  // namespace

void matmul(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha,
            double beta, const Tensor* C_in) {
  const char* kind = std::min({A.dim(-1), B.dim(-1), C.dim(-1)}) <= 64 ? "matmul (skinny: LoRA)" : "matmul";
  std::string shaped;  // built only at SHARDTUNE_PROFILE=2
  if (profile_level() >= 2) shaped = gemm_profile_name(kind, C, A, trans_a, B, trans_b, beta);
  ProfileScope prof(shaped.empty() ? kind : shaped.c_str(), C.device());
  // CUDA: A and B share a dtype; C may be f32 (gradients accumulate in f32 from bf16 inputs).
  if (C.device() == Device::cuda) check_float_args("matmul", {&A, &B});
  else check_float_args("matmul", {&C, &A, &B});
  check_same_device(A, C, "matmul");
  check_same_device(B, C, "matmul");
  // A viewed as [rows_of(A), cols]; op(A) is [M, K].
  const int64_t a_rows = rows_of(A), a_cols = A.dim(-1);
  const int64_t b_rows = rows_of(B), b_cols = B.dim(-1);
  const int64_t M = trans_a ? a_cols : a_rows, K = trans_a ? a_rows : a_cols;
  const int64_t Kb = trans_b ? b_cols : b_rows, N = trans_b ? b_rows : b_cols;
  if (K != Kb || rows_of(C) != M || C.dim(-1) != N)
    ST_THROW("matmul: shapes ", A.shape().str(), (trans_a ? "^T" : ""), " x ", B.shape().str(),
             (trans_b ? "^T" : ""), " -> ", C.shape().str(), " do not agree");
  if (C_in && (C_in->numel() != C.numel() || C_in->dtype() != C.dtype() || C_in->device() != C.device()))
    ST_THROW("matmul: residual input ", C_in->str(), " does not match ", C.str());
  if (C_in && C_in->data() == C.data()) C_in = nullptr;
  const TracedOp traced = TracedOp::gemm(M, N, K, trans_a, trans_b, A, B, C);
  if (traced.dry()) {  // the planner: the cuBLASLt workspace the backend keeps, no compute
    dry_run_add_flops(2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K));
    if (C.device() == Device::cuda) dry_run_scratch("cublaslt workspace", kCublasLtWorkspaceBytes, Device::cuda, MemCategory::workspace);
    return;
  }
  if (C.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::matmul(C, A, trans_a, B, trans_b, alpha, beta, M, N, K, C_in);
    return;
#else
    no_cuda_kernel("matmul");
#endif
  }
  if (C_in) C.copy_from(*C_in);  // the CPU reference: copy, then accumulate
  ST_DISPATCH_CPU_FLOAT(C.dtype(), T,
                        cpu::gemm<T>(M, N, K, static_cast<T>(alpha), A.ptr<T>(), trans_a, B.ptr<T>(),
                                     trans_b, static_cast<T>(beta), C.ptr<T>()));
}

void matmul_add_rope(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha,
                     int64_t batch, int64_t T, const RopeTables& tables, const Tensor& positions) {
  rope_check(C, batch, T, tables, positions);
  if (C.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    const int64_t M = trans_a ? A.dim(-1) : rows_of(A), K = trans_a ? rows_of(A) : A.dim(-1);
    const int64_t N = trans_b ? rows_of(B) : B.dim(-1);
    const int D = static_cast<int>(tables.head_dim);
    if (M == rows_of(C) && N == C.dim(-1) && (trans_b ? B.dim(-1) : rows_of(B)) == K &&
        cuda::skinny_expand_rope_takes(A.dtype(), B.dtype(), C.dtype(), M, N, K, D)) {
      ProfileScope prof("lora expand + rope", C.device());
      check_same_device(A, C, "matmul_add_rope");
      check_same_device(B, C, "matmul_add_rope");
      const TracedOp traced = TracedOp::gemm(M, N, K, trans_a, trans_b, A, B, C);
      if (traced.dry()) {
        dry_run_add_flops(2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K));
        return;
      }
      if (cuda::skinny_expand_rope(C, A, trans_a, B, trans_b, alpha, 1.0, M, N, K, tables.cos.ptr<float>(),
                                   tables.sin.ptr<float>(), positions.defined() ? positions.ptr<int32_t>() : nullptr,
                                   T, D))
        return;
      // Not taken after all (alignment): the two passes below, outside this op's trace.
    }
#endif
  }
  matmul(C, A, trans_a, B, trans_b, alpha, 1.0);
  rope_forward(C, batch, T, tables, positions);
}

void matmul_dy_pair(Tensor& dB, double beta_dB, Tensor& dxa, bool dxa_t, const Tensor& dy, const Tensor& xa, bool xa_t,
                    const Tensor& B, double alpha) {
  const int64_t M = rows_of(dy), out = dy.dim(-1), r = B.dim(-1);
  if (rows_of(B) != out || dB.numel() != out * r || dB.dim(-1) != r || xa.numel() != M * r ||
      xa.dim(-1) != (xa_t ? M : r) || dxa.numel() != M * r || dxa.dim(-1) != (dxa_t ? M : r))
    ST_THROW("matmul_dy_pair: shapes dy ", dy.shape().str(), ", xa ", xa.shape().str(), (xa_t ? "^T" : ""), ", B ",
             B.shape().str(), " -> dB ", dB.shape().str(), ", dxa ", dxa.shape().str(), (dxa_t ? "^T" : ""),
             " do not agree");
  if (dy.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    if (cuda::skinny_pair_takes(dy.dtype(), xa.dtype(), B.dtype(), dB.dtype(), dxa.dtype(), M, out, r)) {
      std::string shaped;
      if (profile_level() >= 2)
        shaped = str("matmul (skinny: LoRA dB + dxa) ", M, "x", out, "x", r, xa_t ? " xa^T" : "", dxa_t ? " dxa^T" : "", " ",
                     dtype_name(dy.dtype()), "->", dtype_name(dB.dtype()), ",", dtype_name(dxa.dtype()));
      ProfileScope prof(shaped.empty() ? "matmul (skinny: LoRA)" : shaped.c_str(), dy.device());
      for (const Tensor* t : {static_cast<const Tensor*>(&dB), static_cast<const Tensor*>(&dxa), &xa, &B})
        check_same_device(*t, dy, "matmul_dy_pair");
      // One pass over dy (timed by its bytes) doing the two GEMMs' FLOPs.
      const double flops = 4.0 * static_cast<double>(M) * static_cast<double>(out) * static_cast<double>(r);
      const cuda::SkinnyPairTiling tl = cuda::skinny_pair_tiling(M, out, r);
      const TracedOp traced(OpFamily::elementwise,
                            tensor_bytes({&dy, &xa, &B, &dB, &dxa}) + 2.0 * static_cast<double>(tl.scratch_bytes) +
                                (beta_dB != 0.0 ? tensor_bytes({&dB}) : 0.0),
                            flops);
      if (traced.dry()) {
        dry_run_add_flops(flops);
        dry_run_scratch("skinny partial sums", static_cast<size_t>(tl.scratch_bytes), Device::cuda, MemCategory::workspace);
        return;
      }
      if (cuda::skinny_lora_dy_pair(dB, beta_dB, dxa, dxa_t, dy, xa, xa_t, B, alpha, M, out, r)) return;
      // Not taken after all (alignment, shared memory): the two matmuls, outside this op's trace.
    }
#endif
  }
  matmul(dB, dy, true, xa, xa_t, alpha, beta_dB);
  if (dxa_t) matmul(dxa, B, true, dy, true, alpha, 0.0);  // dxa^T = alpha B^T dy^T
  else matmul(dxa, dy, false, B, false, alpha, 0.0);
}

bool matmul_add_rope_one_pass(Device device) {
#ifdef SHARDTUNE_CUDA
  return device == Device::cuda && (cuda::skinny_kinds() & cuda::kSkinnyRope) != 0;
#else
  (void)device;
  return false;
#endif
}

void linear_forward(const Tensor& x, const Tensor& W, Tensor& y, bool accumulate, const Tensor* residual) {
  matmul(y, x, false, W, true, 1.0, (accumulate || residual) ? 1.0 : 0.0, residual);
}

void linear_backward(const Tensor& x, const Tensor& W, const Tensor& dy, Tensor* dx, Tensor* dW, bool dx_accumulate) {
  if (dx && dx->defined()) matmul(*dx, dy, false, W, false, 1.0, dx_accumulate ? 1.0 : 0.0);
  if (dW && dW->defined()) matmul(*dW, dy, true, x, false, 1.0, 1.0);
}

}  // namespace st
