#include <cublasLt.h>

#include <algorithm>
#include <unordered_map>

#include "cuda/common.cuh"
#include "cuda/matmul.cuh"
#include "ops/matmul.hpp"

namespace st::cuda {

namespace {

#define ST_CUBLAS_CHECK(call)                                                                  \
  do {                                                                                         \
    cublasStatus_t st_s_ = (call);                                                             \
    if (st_s_ != CUBLAS_STATUS_SUCCESS)                                                        \
      ST_THROW("cuBLASLt error ", cublasGetStatusName(st_s_), " (", cublasGetStatusString(st_s_), ") in ", #call); \
  } while (0)

constexpr size_t kWorkspaceBytes = kCublasLtWorkspaceBytes;  // shared with the planner (ops/matmul.hpp)

struct Key {
  int64_t m, n, k;
  int opa, opb, atype, ctype, align_a, align_b, align_c;
  bool operator==(const Key& o) const {
    return m == o.m && n == o.n && k == o.k && opa == o.opa && opb == o.opb && atype == o.atype && ctype == o.ctype &&
           align_a == o.align_a && align_b == o.align_b && align_c == o.align_c;
  }
};
struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;
    for (int64_t v : {k.m, k.n, k.k, static_cast<int64_t>(k.opa), static_cast<int64_t>(k.opb),
                      static_cast<int64_t>(k.atype), static_cast<int64_t>(k.ctype), static_cast<int64_t>(k.align_a),
                      static_cast<int64_t>(k.align_b), static_cast<int64_t>(k.align_c)})
      h = (h ^ static_cast<uint64_t>(v)) * 1099511628211ull;
    return h;
  }
};
struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

struct Context {
  cublasLtHandle_t handle = nullptr;
  Tensor workspace;
  std::unordered_map<Key, Plan, KeyHash> plans;
  Context() {
    ST_CUBLAS_CHECK(cublasLtCreate(&handle));
    workspace = Tensor::empty({static_cast<int64_t>(kWorkspaceBytes)}, DType::u8, Device::cuda, MemCategory::workspace);
  }
};

Context& ctx() {
  static Context c;
  return c;
}

int alignment(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && (v % static_cast<uintptr_t>(a)) != 0) a /= 2;
  return a;
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::bf16: return CUDA_R_16BF;
    case DType::f32: return CUDA_R_32F;
    default: ST_THROW("matmul on CUDA: unsupported dtype ", dtype_name(t));
  }
}

Plan make_plan(const Key& key) {
  Plan p;
  const cudaDataType_t at = static_cast<cudaDataType_t>(key.atype), ct = static_cast<cudaDataType_t>(key.ctype);
  ST_CUBLAS_CHECK(cublasLtMatmulDescCreate(&p.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  const cublasOperation_t opa = static_cast<cublasOperation_t>(key.opa), opb = static_cast<cublasOperation_t>(key.opb);
  ST_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)));
  ST_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)));
  // Stored (column-major) shapes before the op: A is m x k (N) or k x m (T); B is k x n or n x k.
  const bool ta = opa == CUBLAS_OP_T, tb = opb == CUBLAS_OP_T;
  ST_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.a, at, ta ? key.k : key.m, ta ? key.m : key.k, ta ? key.k : key.m));
  ST_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.b, at, tb ? key.n : key.k, tb ? key.k : key.n, tb ? key.n : key.k));
  ST_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&p.c, ct, key.m, key.n, key.m));
  cublasLtMatmulPreference_t pref;
  ST_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = kWorkspaceBytes;
  ST_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  const uint32_t aa = static_cast<uint32_t>(key.align_a), ab = static_cast<uint32_t>(key.align_b),
                 ac = static_cast<uint32_t>(key.align_c);
  ST_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa)));
  ST_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab)));
  ST_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof(ac)));
  ST_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof(ac)));
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  ST_CUBLAS_CHECK(cublasLtMatmulAlgoGetHeuristic(ctx().handle, p.desc, p.a, p.b, p.c, p.c, pref, 1, &result, &found));
  cublasLtMatmulPreferenceDestroy(pref);
  if (found == 0)
    ST_THROW("cuBLASLt has no algorithm for m=", key.m, " n=", key.n, " k=", key.k, " (alignment ", key.align_a, "/",
             key.align_b, "/", key.align_c, ")");
  p.algo = result.algo;
  return p;
}

}  // namespace

void matmul(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha, double beta,
            int64_t M, int64_t N, int64_t K, const Tensor* C_in) {
  if (M == 0 || N == 0) return;
  if (A.dtype() != B.dtype()) ST_THROW("matmul on CUDA: A and B must share a dtype (", A.str(), ", ", B.str(), ")");
  if (K == 0) {  // C = beta C_in
    if (beta == 0.0) C.zero_();
    else if (beta != 1.0) ST_THROW("matmul on CUDA with K=0 and beta ", beta, " is not supported");
    else if (C_in) C.copy_from(*C_in);
    return;
  }
  const void* c_in = C_in ? C_in->data() : C.data();
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS "A" is our B.
  Key key{N, M, K, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
          static_cast<int>(cuda_type(A.dtype())), static_cast<int>(cuda_type(C.dtype())),
          alignment(B.data()), alignment(A.data()), std::min(alignment(C.data()), alignment(c_in))};
  Context& c = ctx();
  auto it = c.plans.find(key);
  if (it == c.plans.end()) it = c.plans.emplace(key, make_plan(key)).first;
  const Plan& p = it->second;
  const float a = static_cast<float>(alpha), b = static_cast<float>(beta);
  ST_CUBLAS_CHECK(cublasLtMatmul(c.handle, p.desc, &a, B.data(), p.a, A.data(), p.b, &b, c_in, p.c, C.data(), p.c,
                                 &p.algo, c.workspace.data(), kWorkspaceBytes, stream()));
  if (debug_sync()) ST_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace st::cuda
