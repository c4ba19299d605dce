// cuBLASLt, opened on first use. Linked the usual way (-lcublasLt), the library's load-time
// initialisation costs every process of this binary ~0.35 s of CPU (0.5 s of wall on 2 cores),
// whether or not it ever multiplies on the GPU: each rank of every run, `prepare`, `plan`,
// `--help`, every CPU run (measured in docs/NOTES.md, "Test time"). So the binary does not link
// it: the functions the backend calls (cuda/matmul.cu, cuda/matmul_fp8.cu) are defined here with
// the header's own declarations (a signature that differs does not compile) and forward to the
// library, opened with dlopen on the first call and found as a linked library would be
// (LD_LIBRARY_PATH, then the binary's run path $(CUDA_HOME)/lib64). A cuBLASLt function not
// defined here is an undefined reference at link time: add it below with ST_LT_FORWARD.
#include <cublasLt.h>
#include <dlfcn.h>

#include <string>

#include "core/error.hpp"

namespace st::cuda {
namespace {

void* cublaslt_library() {
  static void* const handle = [] {
    const std::string name = "libcublasLt.so." + std::to_string(CUBLAS_VER_MAJOR);
    void* h = dlopen(name.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!h) ST_THROW("cannot load ", name, " (cuBLASLt, the GEMMs on the GPU): ", dlerror());
    return h;
  }();
  return handle;
}

template <typename Fn>
Fn cublaslt_symbol(const char* name) {
  void* p = dlsym(cublaslt_library(), name);
  if (!p) ST_THROW("cuBLASLt: no symbol ", name, " in libcublasLt.so.", CUBLAS_VER_MAJOR);
  return reinterpret_cast<Fn>(p);
}

}  // namespace
}  // namespace st::cuda

// The library's function, looked up once, called with the arguments.
#define ST_LT_FORWARD(fn, ...)                                                                  \
  static const auto real = ::st::cuda::cublaslt_symbol<decltype(&fn)>(#fn);                    \
  return real(__VA_ARGS__)

extern "C" {

const char* CUBLASWINAPI cublasLtGetStatusName(cublasStatus_t status) { ST_LT_FORWARD(cublasLtGetStatusName, status); }
const char* CUBLASWINAPI cublasLtGetStatusString(cublasStatus_t status) { ST_LT_FORWARD(cublasLtGetStatusString, status); }
size_t CUBLASWINAPI cublasLtGetVersion(void) { ST_LT_FORWARD(cublasLtGetVersion); }
cublasStatus_t CUBLASWINAPI cublasLtCreate(cublasLtHandle_t* handle) { ST_LT_FORWARD(cublasLtCreate, handle); }

cublasStatus_t CUBLASWINAPI cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                                     cudaDataType_t scale) {
  ST_LT_FORWARD(cublasLtMatmulDescCreate, desc, compute, scale);
}
cublasStatus_t CUBLASWINAPI cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                                           const void* buf, size_t bytes) {
  ST_LT_FORWARD(cublasLtMatmulDescSetAttribute, desc, attr, buf, bytes);
}
cublasStatus_t CUBLASWINAPI cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows,
                                                       uint64_t cols, int64_t ld) {
  ST_LT_FORWARD(cublasLtMatrixLayoutCreate, layout, type, rows, cols, ld);
}
cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceCreate(cublasLtMatmulPreference_t* pref) {
  ST_LT_FORWARD(cublasLtMatmulPreferenceCreate, pref);
}
cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceDestroy(cublasLtMatmulPreference_t pref) {
  ST_LT_FORWARD(cublasLtMatmulPreferenceDestroy, pref);
}
cublasStatus_t CUBLASWINAPI cublasLtMatmulPreferenceSetAttribute(cublasLtMatmulPreference_t pref,
                                                                 cublasLtMatmulPreferenceAttributes_t attr, const void* buf,
                                                                 size_t bytes) {
  ST_LT_FORWARD(cublasLtMatmulPreferenceSetAttribute, pref, attr, buf, bytes);
}
cublasStatus_t CUBLASWINAPI cublasLtMatmulAlgoGetHeuristic(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc,
                                                           cublasLtMatrixLayout_t a, cublasLtMatrixLayout_t b,
                                                           cublasLtMatrixLayout_t c, cublasLtMatrixLayout_t d,
                                                           cublasLtMatmulPreference_t pref, int requested,
                                                           cublasLtMatmulHeuristicResult_t results[], int* returned) {
  ST_LT_FORWARD(cublasLtMatmulAlgoGetHeuristic, handle, desc, a, b, c, d, pref, requested, results, returned);
}
cublasStatus_t CUBLASWINAPI cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha,
                                           const void* A, cublasLtMatrixLayout_t a, const void* B, cublasLtMatrixLayout_t b,
                                           const void* beta, const void* C, cublasLtMatrixLayout_t c, void* D,
                                           cublasLtMatrixLayout_t d, const cublasLtMatmulAlgo_t* algo, void* workspace,
                                           size_t workspace_bytes, cudaStream_t stream) {
  ST_LT_FORWARD(cublasLtMatmul, handle, desc, alpha, A, a, B, b, beta, C, c, D, d, algo, workspace, workspace_bytes, stream);
}

}  // extern "C"
