// What the cuBLASLt GEMMs of this backend share: the error check, and one handle and one
// workspace (kCublasLtWorkspaceBytes, made on first use by cuda/matmul.cu) for the bf16 GEMMs
// (cuda/matmul.cu) and the FP8 GEMM (cuda/matmul_fp8.cu), which run on the same stream.
#pragma once

#include <cublasLt.h>

#include <cstdint>
#include <initializer_list>

#include "core/error.hpp"

#define ST_CUBLAS_CHECK(call)                                                                   \
  do {                                                                                          \
    cublasStatus_t st_s_ = (call);                                                              \
    if (st_s_ != CUBLAS_STATUS_SUCCESS)                                                         \
      ST_THROW("cuBLASLt error ", cublasLtGetStatusName(st_s_), " (", cublasLtGetStatusString(st_s_), \
               ") in ", #call);                                                                 \
  } while (0)

namespace st::cuda {

cublasLtHandle_t cublaslt_handle();
void* cublaslt_workspace();  // kCublasLtWorkspaceBytes (src/ops/matmul.hpp) bytes on the device

// One cached GEMM shape: descriptor, layouts (C's serves for D) and the heuristic's algorithm.
struct CublasLtPlan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

// The largest power of two (at most 256) that divides the address: the alignment cuBLASLt is
// promised for an operand.
int pointer_alignment(const void* p);

// The heuristic's first algorithm for plan's descriptor and layouts within the shared workspace
// and the given minimum operand alignments (bytes; C's for D too) into plan.algo. Returns the
// heuristic's status, CUBLAS_STATUS_NOT_SUPPORTED where it succeeds but offers no algorithm.
cublasStatus_t find_algo(CublasLtPlan& plan, int align_a, int align_b, int align_c);

// FNV-1a over a list of integers: the hash of the plan caches' keys.
inline uint64_t hash_ints(std::initializer_list<int64_t> values) {
  uint64_t h = 1469598103934665603ull;
  for (int64_t v : values) h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ull;
  return h;
}

}  // namespace st::cuda
