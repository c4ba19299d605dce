// FP8 GEMM through cuBLASLt: E4M3 x E4M3, f32 accumulation (CUBLAS_COMPUTE_32F, no fast
// accumulation: the tensor cores' partial sums are promoted to f32 periodically), bf16 or f32
// output, dequantization factors through the A/B scale pointers (one scalar each, or per-row
// vectors in the outer-vector mode). Shares the handle and workspace of cuda/matmul.cu.
//
// Layout. Our row-major C [M, N] = A [M, K] B[N, K]^T is, column-major, C^T [N x M] =
// B' (K x N, op T) x A' (K x M, op N): cuBLASLt's A is our B, its B our A, and both have K
// contiguous, which is the one FP8 layout cuBLASLt takes on sm_89 / sm_90 ("TN"). Its per-row
// scale vectors are then our B's (length N, its "M") and our A's (length M, its "N").
#include <cuda_fp8.h>

#include <algorithm>
#include <unordered_map>

#include "cuda/common.cuh"
#include "cuda/cublaslt.cuh"
#include "cuda/fp8.cuh"
#include "ops/matmul.hpp"

namespace st::cuda {

namespace {

struct Key {
  int64_t m, n, k;  // cuBLASLt's: m = our N, n = our M
  int per_row, ctype, align_a, align_b, align_c, has_c;
  bool operator==(const Key& o) const {
    return m == o.m && n == o.n && k == o.k && per_row == o.per_row && ctype == o.ctype && align_a == o.align_a &&
           align_b == o.align_b && align_c == o.align_c && has_c == o.has_c;
  }
};
struct KeyHash {
  size_t operator()(const Key& k) const {
    return hash_ints({k.m, k.n, k.k, k.per_row, k.ctype, k.align_a, k.align_b, k.align_c, k.has_c});
  }
};
using Plan = CublasLtPlan;

void set_scale_pointers(cublasLtMatmulDesc_t desc, const void* a_scale, const void* b_scale) {
  ST_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &a_scale, sizeof(a_scale)));
  ST_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &b_scale, sizeof(b_scale)));
}

// The descriptor, layouts and heuristic's algorithm of one shape; throws (ST_CUBLAS_CHECK, or no
// algorithm) where cuBLASLt refuses the combination.
Plan make_plan(const Key& key, const void* a_scale, const void* b_scale) {
  Plan p;
  ST_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t op_t = CUBLAS_OP_T, op_n = CUBLAS_OP_N;
  ST_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &op_t, sizeof(op_t)));
  ST_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &op_n, sizeof(op_n)));
  const int8_t fast_accum = 0;
  ST_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_FAST_ACCUM, &fast_accum, sizeof(fast_accum)));
  if (key.per_row) {
    const int32_t mode = CUBLASLT_MATMUL_MATRIX_SCALE_OUTER_VEC_32F;
    ST_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &mode, sizeof(mode)));
    ST_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &mode, sizeof(mode)));
  }
  set_scale_pointers(p.desc, a_scale, b_scale);
  const cudaDataType_t ct = static_cast<cudaDataType_t>(key.ctype);
  ST_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, CUDA_R_8F_E4M3, key.k, key.m, key.k));
  ST_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, CUDA_R_8F_E4M3, key.k, key.n, key.k));
  ST_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, ct, key.m, key.n, key.m));
  const cublasStatus_t st = find_algo(p, key.align_a, key.align_b, key.align_c);
  if (st != CUBLAS_STATUS_SUCCESS)
    ST_THROW("cuBLASLt has no FP8 algorithm for m=", key.m, " n=", key.n, " k=", key.k,
             (key.per_row ? " with per-row" : " with per-tensor"), " scales and ", key.ctype == CUDA_R_16BF ? "bf16" : "f32",
             " output (alignment ", key.align_a, "/", key.align_b, "/", key.align_c, "; status ", cublasLtGetStatusName(st), ")");
  return p;
}

std::unordered_map<Key, Plan, KeyHash>& plans() {
  static std::unordered_map<Key, Plan, KeyHash> p;
  return p;
}

// The FP8 GEMM itself on raw device pointers (cuBLASLt's A = b, its B = a); c_in may be null.
void run(const Key& key, const void* a, const float* sa, const void* b, const float* sb, const void* c_in, void* c) {
  auto it = plans().find(key);
  if (it == plans().end()) it = plans().emplace(key, make_plan(key, sb, sa)).first;
  const Plan& p = it->second;
  set_scale_pointers(p.desc, sb, sa);
  const float alpha = 1.0f, beta = c_in ? 1.0f : 0.0f;
  ST_CUBLAS_CHECK(cublasLtMatmul(cublaslt_handle(), p.desc, &alpha, b, p.a, a, p.b, &beta, c_in ? c_in : c, p.c, c, p.c,
                                 &p.algo, cublaslt_workspace(), kCublasLtWorkspaceBytes, stream()));
  if (debug_sync()) ST_CUDA_CHECK(cudaDeviceSynchronize());
}

// Does this cuBLASLt run per-row (outer-vector) FP8 scales on this GPU? One 16 x 16 x 16 GEMM on
// buffers of its own (cudaMalloc: outside the allocator's accounting; freed again).
bool probe_per_row(std::string& why) {
  void* buf = nullptr;
  if (cudaMalloc(&buf, 4096) != cudaSuccess) {
    (void)cudaGetLastError();
    why = "could not allocate the probe's 4 KiB";
    return false;
  }
  bool ok = true;
  try {
    ST_CUDA_CHECK(cudaMemset(buf, 0, 4096));
    uint8_t* base = static_cast<uint8_t*>(buf);
    const float* scales = reinterpret_cast<const float*>(base + 512);  // 16 zeros: finite scales
    const Key key{16, 16, 16, 1, CUDA_R_16BF, 256, 256, 256, 0};
    run(key, base, scales, base + 256, scales, nullptr, base + 1024);
    ST_CUDA_CHECK(cudaDeviceSynchronize());
  } catch (const Error& e) {
    ok = false;
    why = e.what();
  }
  (void)cudaFree(buf);
  return ok;
}

Fp8Support detect() {
  Fp8Support s;
  int dev = 0, major = 0, minor = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    s.reason = "no usable CUDA device";
    return s;
  }
  s.compute_capability = major * 10 + minor;
  const size_t version = cublasLtGetVersion();
  if (s.compute_capability < 89) {
    s.reason = "FP8 tensor cores need compute capability 8.9 or newer (Ada, Hopper); this GPU has " +
               std::to_string(major) + "." + std::to_string(minor);
    return s;
  }
  if (version < 120103) {
    s.reason = "cuBLASLt " + std::to_string(version) + " has no FP8 GEMM on this GPU (12.1.3 or newer needed)";
    return s;
  }
  s.gemm = true;
  std::string why;
  s.gemm_per_row = probe_per_row(why);
  if (!s.gemm_per_row)
    s.reason = "cuBLASLt " + std::to_string(version) + " refuses per-row (outer-vector) FP8 scales on sm_" +
               std::to_string(s.compute_capability) + " (" + why + "): per-tensor scaling only";
  return s;
}

}  // namespace

Fp8Support fp8_support() {
  static const Fp8Support s = detect();
  return s;
}

void matmul_fp8(Tensor& C, const Fp8Tensor& A, const Fp8Tensor& B, const Tensor* C_in) {
  const Fp8Support& s = fp8_support();
  const bool per_row = A.scaling == Fp8Scaling::per_row;
  if (!s.gemm) ST_THROW("matmul_fp8: ", s.reason);
  if (per_row && !s.gemm_per_row) ST_THROW("matmul_fp8: ", s.reason);
  if (C.dtype() != DType::bf16 && C.dtype() != DType::f32)
    ST_THROW("matmul_fp8 on CUDA: output ", C.str(), " must be bf16 or f32");
  const void* c_in = C_in ? C_in->data() : nullptr;
  const Key key{B.rows, A.rows, A.cols, per_row ? 1 : 0, C.dtype() == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F,
                pointer_alignment(B.codes.data()), pointer_alignment(A.codes.data()),
                std::min(pointer_alignment(C.data()), c_in ? pointer_alignment(c_in) : 256), c_in ? 1 : 0};
  if (key.align_a < 16 || key.align_b < 16 || key.align_c < 16)
    ST_THROW("matmul_fp8: operands must be 16-byte aligned for cuBLASLt's FP8 kernels (", A.str(), " at ",
             key.align_b, ", ", B.str(), " at ", key.align_a, ", ", C.str(), " at ", key.align_c, " bytes)");
  run(key, A.codes.data(), A.scale_inv.ptr<float>(), B.codes.data(), B.scale_inv.ptr<float>(), c_in, C.data());
}

}  // namespace st::cuda
