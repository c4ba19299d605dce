// FP8 ops: argument checks, dry runs, dispatch to the CPU reference (src/ops/cpu/fp8_cpu.cpp)
// or to CUDA (cuda/fp8.cu, cuda/matmul_fp8.cu).
#include "ops/fp8.hpp"

#include <sstream>

#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "core/profile.hpp"
#include "ops/cpu/fp8_cpu.hpp"
#include "ops/dispatch.hpp"
#include "ops/matmul.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/fp8.cuh"
#endif

namespace st {

const char* fp8_scaling_name(Fp8Scaling s) { return s == Fp8Scaling::per_row ? "per_row" : "per_tensor"; }

size_t Fp8Tensor::nbytes() const { return codes.nbytes() + scale_inv.nbytes() + amax.nbytes(); }

std::string Fp8Tensor::str() const {
  std::ostringstream s;
  s << "fp8e4m3[" << rows << ", " << cols << "] " << fp8_scaling_name(scaling) << " "
    << (codes.defined() ? device_name(device()) : "undefined");
  return s.str();
}

Fp8Tensor fp8_allocate(int64_t rows, int64_t cols, Fp8Scaling scaling, Device device, MemCategory cat) {
  if (rows < 1 || cols < 1) ST_THROW("fp8_allocate: shape [", rows, ", ", cols, "] has no elements");
  Fp8Tensor q;
  q.rows = rows;
  q.cols = cols;
  q.scaling = scaling;
  q.codes = Tensor::empty({rows, cols}, DType::u8, device, cat);
  q.scale_inv = Tensor::empty({q.num_scales()}, DType::f32, device, cat);
  q.amax = Tensor::empty({q.num_scales()}, DType::f32, device, cat);
  return q;
}

namespace {

void check_fp8(const Fp8Tensor& q, const char* op, const char* what) {
  if (!q.codes.defined() || !q.scale_inv.defined() || !q.amax.defined())
    ST_THROW(op, ": ", what, " ", q.str(), " is not allocated (use fp8_allocate)");
  const Device d = q.device();
  if (q.rows < 1 || q.cols < 1 || q.codes.dtype() != DType::u8 || q.codes.numel() != q.rows * q.cols ||
      q.scale_inv.dtype() != DType::f32 || q.scale_inv.numel() != q.num_scales() || q.amax.dtype() != DType::f32 ||
      q.amax.numel() != q.num_scales() || q.scale_inv.device() != d || q.amax.device() != d)
    ST_THROW(op, ": ", what, " ", q.str(), " is inconsistent (codes ", q.codes.str(), ", scale_inv ", q.scale_inv.str(),
             ", amax ", q.amax.str(), ")");
}

void check_source(const Tensor& x, const Fp8Tensor& q, const char* op) {
  check_fp8(q, op, "output");
  if (x.numel() != q.rows * q.cols || x.device() != q.device())
    ST_THROW(op, ": input ", x.str(), " does not match ", q.str());
  const bool ok = x.dtype() == DType::f32 || x.dtype() == DType::bf16 ||
                  (x.dtype() == DType::f64 && x.device() == Device::cpu);
  if (!ok) ST_THROW(op, ": input ", x.str(), " must be f32 or bf16 (or f64 on the CPU)");
}

// The CPU kernels read f32: bf16 and f64 inputs are converted first (f64 rounded to f32).
Tensor as_f32(const Tensor& x) { return x.dtype() == DType::f32 ? x : x.to_cpu(DType::f32); }

void quantize(const Tensor& x, const Tensor* scale, Fp8Tensor& q, const char* op) {
  ProfileScope prof(op, q.device());
  check_source(x, q, op);
  if (scale && (scale->dtype() != DType::f32 || scale->numel() != q.num_scales() || scale->device() != q.device()))
    ST_THROW(op, ": scale ", scale->str(), " must be f32 [", q.num_scales(), "] on ", device_name(q.device()));
  const TracedOp traced(OpFamily::fp8_quant, {&x, &q.codes, &x});
  if (dry_run_active()) return;  // the planner: no compute
  if (q.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::fp8_quantize(x, scale, q);
    return;
#else
    no_cuda_kernel(op);
#endif
  }
  const Tensor xf = as_f32(x);
  cpu::fp8_quantize(q.rows, q.cols, xf.ptr<float>(), q.scaling == Fp8Scaling::per_row,
                    scale ? scale->ptr<float>() : nullptr, q.codes.ptr<uint8_t>(), q.scale_inv.ptr<float>(),
                    q.amax.ptr<float>());
}

}  // namespace

void fp8_quantize(const Tensor& x, Fp8Tensor& q) { quantize(x, nullptr, q, "fp8_quantize"); }

void fp8_quantize_scaled(const Tensor& x, const Tensor& scale, Fp8Tensor& q) {
  quantize(x, &scale, q, "fp8_quantize_scaled");
}

void fp8_dequantize(const Fp8Tensor& q, Tensor& out) {
  ProfileScope prof("fp8_dequantize", q.device());
  check_fp8(q, "fp8_dequantize", "input");
  const bool cpu_ok = out.dtype() == DType::f32 || out.dtype() == DType::f64 || out.dtype() == DType::bf16;
  const bool cuda_ok = out.dtype() == DType::f32 || out.dtype() == DType::bf16;
  if (out.numel() != q.rows * q.cols || out.device() != q.device() || !(out.device() == Device::cuda ? cuda_ok : cpu_ok))
    ST_THROW("fp8_dequantize: output ", out.str(), " must have ", q.rows * q.cols, " f32 or bf16 elements (CPU: or f64) on ",
             device_name(q.device()));
  const TracedOp traced(OpFamily::fp8_quant, {&q.codes, &out});
  if (dry_run_active()) return;
  if (q.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::fp8_dequantize(q, out);
    return;
#else
    no_cuda_kernel("fp8_dequantize");
#endif
  }
  const bool per_row = q.scaling == Fp8Scaling::per_row;
  if (out.dtype() == DType::bf16) {  // f32 values, then one rounding to bf16 (as the GPU)
    Tensor f = Tensor::empty(out.shape(), DType::f32);
    cpu::fp8_dequantize<float>(q.rows, q.cols, q.codes.ptr<uint8_t>(), per_row, q.scale_inv.ptr<float>(), f.ptr<float>());
    uint16_t* o = static_cast<uint16_t*>(out.data());
    for (int64_t i = 0; i < out.numel(); ++i) o[i] = f32_to_bf16(f.ptr<float>()[i]);
    return;
  }
  ST_DISPATCH_CPU_FLOAT(out.dtype(), T,
                        cpu::fp8_dequantize<T>(q.rows, q.cols, q.codes.ptr<uint8_t>(), per_row,
                                               q.scale_inv.ptr<float>(), out.ptr<T>()));
}

void fp8_transpose(const Fp8Tensor& q, Fp8Tensor& qt) {
  ProfileScope prof("fp8_transpose", q.device());
  check_fp8(q, "fp8_transpose", "input");
  check_fp8(qt, "fp8_transpose", "output");
  if (q.scaling != Fp8Scaling::per_tensor || qt.scaling != Fp8Scaling::per_tensor)
    ST_THROW("fp8_transpose: per-tensor scaling only (", q.str(), " -> ", qt.str(),
             "): a per-row scale of q would be a per-column scale of its transpose");
  if (qt.rows != q.cols || qt.cols != q.rows || qt.device() != q.device())
    ST_THROW("fp8_transpose: ", qt.str(), " is not the transpose of ", q.str());
  const TracedOp traced(OpFamily::fp8_quant, {&q.codes, &qt.codes});
  if (dry_run_active()) return;
  if (q.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::fp8_transpose(q, qt);
    return;
#else
    no_cuda_kernel("fp8_transpose");
#endif
  }
  cpu::fp8_transpose(q.rows, q.cols, q.codes.ptr<uint8_t>(), qt.codes.ptr<uint8_t>());
  qt.scale_inv.copy_from(q.scale_inv);
  qt.amax.copy_from(q.amax);
}

void fp8_update_scale(Tensor& history, const Tensor& amax, int64_t step, int margin, Tensor& scale) {
  ProfileScope prof("fp8_update_scale", history.device());
  const int64_t n = amax.numel();
  for (const Tensor* t : {static_cast<const Tensor*>(&history), &amax, static_cast<const Tensor*>(&scale)})
    if (t->dtype() != DType::f32 || t->device() != history.device())
      ST_THROW("fp8_update_scale: ", t->str(), " must be f32 on ", device_name(history.device()));
  if (history.ndim() != 2 || history.dim(1) != n || history.dim(0) < 1 || scale.numel() != n || n < 1)
    ST_THROW("fp8_update_scale: history ", history.str(), " must be [L, n] for amax ", amax.str(), " and scale ",
             scale.str());
  if (step < 0 || margin < 0 || margin > 64)
    ST_THROW("fp8_update_scale: step ", step, " must be >= 0 and margin ", margin, " in [0, 64]");
  const TracedOp traced(OpFamily::fp8_quant, {&history, &amax, &scale});
  if (dry_run_active()) return;
  if (history.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::fp8_update_scale(history, amax, step, margin, scale);
    return;
#else
    no_cuda_kernel("fp8_update_scale");
#endif
  }
  cpu::fp8_update_scale(history.dim(0), n, history.ptr<float>(), amax.ptr<float>(), step, margin, scale.ptr<float>());
}

void matmul_fp8(Tensor& C, const Fp8Tensor& A, const Fp8Tensor& B, double beta, const Tensor* C_in) {
  ProfileScope prof("matmul_fp8", C.device());
  check_fp8(A, "matmul_fp8", "A");
  check_fp8(B, "matmul_fp8", "B");
  const int64_t M = A.rows, N = B.rows, K = A.cols;
  if (B.cols != K || C.numel() != M * N || C.dim(-1) != N)
    ST_THROW("matmul_fp8: shapes ", A.str(), " x ", B.str(), "^T -> ", C.str(), " do not agree");
  if (A.device() != C.device() || B.device() != C.device())
    ST_THROW("matmul_fp8: ", A.str(), ", ", B.str(), " and ", C.str(), " must be on one device");
  if (A.scaling != B.scaling)
    ST_THROW("matmul_fp8: A is ", fp8_scaling_name(A.scaling), " and B ", fp8_scaling_name(B.scaling),
             ": both must use the same scaling (cuBLASLt's outer-vector mode scales both operands)");
  if (K % 16 != 0 || N % 16 != 0)
    ST_THROW("matmul_fp8: K = ", K, " and N = ", N, " must be multiples of 16 (cuBLASLt FP8: 16-byte aligned rows of "
             "A and B, and of the output)");
  const bool cuda_ok = C.dtype() == DType::bf16 || C.dtype() == DType::f32;
  const bool cpu_ok = C.dtype() == DType::f32 || C.dtype() == DType::f64;
  if (!(C.device() == Device::cuda ? cuda_ok : cpu_ok))
    ST_THROW("matmul_fp8: output ", C.str(), " must be ", C.device() == Device::cuda ? "bf16 or f32" : "f32 or f64");
  if (beta != 0.0 && beta != 1.0) ST_THROW("matmul_fp8: beta must be 0 or 1, not ", beta);
  if (beta == 0.0) C_in = nullptr;
  else if (!C_in) C_in = &C;
  if (C_in && (C_in->numel() != C.numel() || C_in->dtype() != C.dtype() || C_in->device() != C.device()))
    ST_THROW("matmul_fp8: residual input ", C_in->str(), " does not match ", C.str());
  const TracedOp traced = TracedOp::gemm(M, N, K, false, true, A.codes, B.codes, C);
  if (traced.dry()) {  // the planner: the cuBLASLt workspace shared with the bf16 GEMMs, no compute
    dry_run_add_flops(2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(K));
    if (C.device() == Device::cuda)
      dry_run_scratch("cublaslt workspace", kCublasLtWorkspaceBytes, Device::cuda, MemCategory::workspace);
    return;
  }
  if (C.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::matmul_fp8(C, A, B, C_in);
    return;
#else
    no_cuda_kernel("matmul_fp8");
#endif
  }
  const bool per_row = A.scaling == Fp8Scaling::per_row;
  ST_DISPATCH_CPU_FLOAT(C.dtype(), T,
                        cpu::gemm_fp8<T>(M, N, K, A.codes.ptr<uint8_t>(), A.scale_inv.ptr<float>(),
                                         B.codes.ptr<uint8_t>(), B.scale_inv.ptr<float>(), per_row,
                                         C_in ? C_in->ptr<T>() : nullptr, C.ptr<T>()));
}

Fp8Support fp8_support(Device d) {
  if (d == Device::cpu) {
    Fp8Support s;
    s.gemm = s.gemm_per_row = true;
    return s;
  }
  // The probe runs a GEMM through the backend's cuBLASLt context, whose workspace a dry run would
  // hand out as unbacked address space for good.
  if (dry_run_active()) ST_THROW("fp8_support(cuda) probes the GPU: ask before a dry run, not during one");
#ifdef SHARDTUNE_CUDA
  return cuda::fp8_support();
#else
  Fp8Support s;
  s.reason = "this build of shardtune has no CUDA backend";
  return s;
#endif
}

}  // namespace st
