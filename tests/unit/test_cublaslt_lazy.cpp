// cuBLASLt is opened on first use (cuda/cublaslt_lazy.cpp), not linked: no process loads it
// before a cuBLASLt call, and every forwarded function reaches the library. Host-side calls
// only (descriptors, version, status names), so this runs without a GPU; the GEMMs themselves
// are tests/gpu's. CUDA-enabled builds only.
#include <gtest/gtest.h>

#ifdef SHARDTUNE_CUDA
#include <cublasLt.h>
#include <dlfcn.h>

#include <string>

namespace {

bool cublaslt_is_loaded() {
  const std::string name = "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR);
  void* h = dlopen(name.c_str(), RTLD_NOLOAD | RTLD_LAZY);
  if (h) dlclose(h);
  return h != nullptr;
}

TEST(CublasLtLazy, OpenedOnFirstUseAndEveryFunctionReachesTheLibrary) {
  // Nothing in the CPU unit tests calls cuBLASLt before this test: loaded now means linked.
  EXPECT_FALSE(cublaslt_is_loaded()) << "libcublasLt was loaded at start-up (linked?)";
  EXPECT_EQ(cublasLtGetVersion() / 10000, static_cast<size_t>(CUBLAS_VER_MAJOR));
  EXPECT_TRUE(cublaslt_is_loaded());
  EXPECT_STREQ(cublasLtGetStatusName(CUBLAS_STATUS_NOT_SUPPORTED), "CUBLAS_STATUS_NOT_SUPPORTED");
  EXPECT_FALSE(std::string(cublasLtGetStatusString(CUBLAS_STATUS_NOT_SUPPORTED)).empty());

  // Descriptors are host objects: made and set without a device.
  cublasLtMatmulDesc_t desc = nullptr;
  ASSERT_EQ(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
  const cublasOperation_t op = CUBLAS_OP_N;
  EXPECT_EQ(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &op, sizeof(op)), CUBLAS_STATUS_SUCCESS);
  cublasLtMatrixLayout_t layout = nullptr;
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&layout, CUDA_R_32F, 64, 64, 64), CUBLAS_STATUS_SUCCESS);  // A, B, C, D
  cublasLtMatmulPreference_t pref = nullptr;
  ASSERT_EQ(cublasLtMatmulPreferenceCreate(&pref), CUBLAS_STATUS_SUCCESS);
  const size_t ws = 1 << 20;
  EXPECT_EQ(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)),
            CUBLAS_STATUS_SUCCESS);

  // The handle needs a device: made where there is one (and the heuristic finds an algorithm
  // for a 64 x 64 x 64 f32 product on it), refused with a status where there is none.
  // cublasLtMatmul itself runs in every GEMM of tests/gpu.
  cublasLtHandle_t handle = nullptr;
  const cublasStatus_t created = cublasLtCreate(&handle);
  if (created == CUBLAS_STATUS_SUCCESS) {
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    EXPECT_EQ(cublasLtMatmulAlgoGetHeuristic(handle, desc, layout, layout, layout, layout, pref, 1, &result, &found),
              CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(found, 1);
  } else {
    EXPECT_STRNE(cublasLtGetStatusName(created), "CUBLAS_STATUS_SUCCESS");
  }
  EXPECT_EQ(cublasLtMatmulPreferenceDestroy(pref), CUBLAS_STATUS_SUCCESS);
}

}  // namespace
#endif
