#include <cublasLt.h>

#include <algorithm>
#include <cstdlib>
#include <string>
#include <vector>
#include <unordered_map>

#include "cuda/common.cuh"
#include "cuda/cublaslt.cuh"
#include "cuda/matmul.cuh"
#include "ops/matmul.hpp"

namespace st::cuda {

namespace {

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
    return hash_ints({k.m, k.n, k.k, k.opa, k.opb, k.atype, k.ctype, k.align_a, k.align_b, k.align_c});
  }
};
using Plan = CublasLtPlan;

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
  const cublasStatus_t st = find_algo(p, key.align_a, key.align_b, key.align_c);
  if (st == CUBLAS_STATUS_NOT_SUPPORTED)
    ST_THROW("cuBLASLt has no algorithm for m=", key.m, " n=", key.n, " k=", key.k, " (alignment ", key.align_a, "/",
             key.align_b, "/", key.align_c, ")");
  ST_CUBLAS_CHECK(st);
  return p;
}

}  // namespace

cublasLtHandle_t cublaslt_handle() { return ctx().handle; }
void* cublaslt_workspace() { return ctx().workspace.data(); }

int pointer_alignment(const void* p) {
  const uintptr_t v = reinterpret_cast<uintptr_t>(p);
  int a = 256;
  while (a > 1 && (v % static_cast<uintptr_t>(a)) != 0) a /= 2;
  return a;
}

namespace {

// Up to n of the heuristic's algorithms for plan's descriptor and layouts, best first; *found
// gets how many.
cublasStatus_t heuristic_algos(const CublasLtPlan& plan, int align_a, int align_b, int align_c,
                               cublasLtMatmulHeuristicResult_t* results, int n, int* found) {
  cublasLtMatmulPreference_t pref;
  ST_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&pref));
  const size_t ws = kWorkspaceBytes;
  ST_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
  const uint32_t aa = static_cast<uint32_t>(align_a), ab = static_cast<uint32_t>(align_b),
                 ac = static_cast<uint32_t>(align_c);
  ST_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &aa, sizeof(aa)));
  ST_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &ab, sizeof(ab)));
  ST_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &ac, sizeof(ac)));
  ST_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &ac, sizeof(ac)));
  *found = 0;
  const cublasStatus_t st =
      cublasLtMatmulAlgoGetHeuristic(ctx().handle, plan.desc, plan.a, plan.b, plan.c, plan.c, pref, n, results, found);
  cublasLtMatmulPreferenceDestroy(pref);
  return st;
}

// SHARDTUNE_GEMM_AUTOTUNE: 0 off (unset), 1 skinny shapes (a dimension <= 64), 2 every shape
// ("all"). Anything else is an input error.
int autotune_mode() {
  static const int mode = [] {
    const char* e = std::getenv("SHARDTUNE_GEMM_AUTOTUNE");
    const std::string v = e ? e : "";
    if (v.empty() || v == "0") return 0;
    if (v == "1") return 1;
    if (v == "all") return 2;
    ST_THROW_INPUT("SHARDTUNE_GEMM_AUTOTUNE=", v, ": expected 0, 1 (skinny GEMMs) or all");
  }();
  return mode;
}

// Skinny GEMMs (LoRA's rank-r products: a dimension <= 64, e.g. x A^T = [8192, 4096] x [4096, 16]
// or dA = dxa^T x with K = 8192 and a [16, 4096] output) are where the heuristic's first choice
// is weakest: the first call of such a shape times up to kCandidates of the heuristic's
// algorithms on the call's own operands (one untimed run, then kRuns timed) and keeps the
// fastest, unless it is within 10% of the heuristic's first (fewer flips between runs of the same
// job). C's content, when the call reads it (accumulate into C itself), is kept on the host
// meanwhile and put back. Opt-in (SHARDTUNE_GEMM_AUTOTUNE=1); on the H100 it gave no gain for 7B
// LoRA (session 9). SHARDTUNE_GEMM_AUTOTUNE=all tunes the large GEMMs too, keeping another
// algorithm only when it is 2% faster than the first (compute-bound: small, stable differences);
// not measured on a GPU yet.
// (The GPU's results were never bitwise reproducible: attention's dQ sums with atomics.)
void tune(CublasLtPlan& p, const Key& key, const void* a, const void* b, void* d, const void* c_in, size_t d_bytes,
          float alpha, float beta, float keep_below) {
  constexpr int kCandidates = 8, kRuns = 5;
  cublasLtMatmulHeuristicResult_t res[kCandidates];
  int found = 0;
  if (heuristic_algos(p, key.align_a, key.align_b, key.align_c, res, kCandidates, &found) != CUBLAS_STATUS_SUCCESS ||
      found <= 1)
    return;
  Context& c = ctx();
  cudaStream_t s = stream();
  std::vector<unsigned char> saved;
  const bool keep = beta != 0.0f && c_in == d;
  if (keep) {
    saved.resize(d_bytes);
    ST_CUDA_CHECK(cudaMemcpyAsync(saved.data(), d, d_bytes, cudaMemcpyDeviceToHost, s));
  }
  cudaEvent_t e0, e1;
  ST_CUDA_CHECK(cudaEventCreate(&e0));
  ST_CUDA_CHECK(cudaEventCreate(&e1));
  float first = -1, best = 0;
  int best_i = -1;
  for (int i = 0; i < found; ++i) {
    if (res[i].state != CUBLAS_STATUS_SUCCESS) continue;
    auto run = [&] {
      return cublasLtMatmul(c.handle, p.desc, &alpha, a, p.a, b, p.b, &beta, c_in, p.c, d, p.c, &res[i].algo,
                            c.workspace.data(), kWorkspaceBytes, s);
    };
    if (run() != CUBLAS_STATUS_SUCCESS) continue;  // an algorithm that does not launch here
    ST_CUDA_CHECK(cudaEventRecord(e0, s));
    for (int r = 0; r < kRuns; ++r) ST_CUBLAS_CHECK(run());
    ST_CUDA_CHECK(cudaEventRecord(e1, s));
    ST_CUDA_CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    ST_CUDA_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    if (i == 0) first = ms;
    if (best_i < 0 || ms < best) {
      best = ms;
      best_i = i;
    }
  }
  ST_CUDA_CHECK(cudaEventDestroy(e0));
  ST_CUDA_CHECK(cudaEventDestroy(e1));
  if (best_i > 0 && (first < 0 || best < keep_below * first)) p.algo = res[best_i].algo;
  if (keep) {
    ST_CUDA_CHECK(cudaMemcpyAsync(d, saved.data(), d_bytes, cudaMemcpyHostToDevice, s));
    ST_CUDA_CHECK(cudaStreamSynchronize(s));  // `saved` leaves scope
  }
}

}  // namespace

cublasStatus_t find_algo(CublasLtPlan& plan, int align_a, int align_b, int align_c) {
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = heuristic_algos(plan, align_a, align_b, align_c, &result, 1, &found);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  if (found == 0) return CUBLAS_STATUS_NOT_SUPPORTED;
  plan.algo = result.algo;
  return CUBLAS_STATUS_SUCCESS;
}

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
  if (std::min({M, N, K}) <= 64 && skinny_kinds() != 0 &&
      skinny_matmul(C, A, trans_a, B, trans_b, alpha, beta, M, N, K, C_in, skinny_kinds())) {
    if (debug_sync()) ST_CUDA_CHECK(cudaDeviceSynchronize());
    return;
  }
  matmul_cublaslt(C, A, trans_a, B, trans_b, alpha, beta, M, N, K, C_in);
}

void matmul_cublaslt(Tensor& C, const Tensor& A, bool trans_a, const Tensor& B, bool trans_b, double alpha,
                     double beta, int64_t M, int64_t N, int64_t K, const Tensor* C_in) {
  const void* c_in = C_in ? C_in->data() : C.data();
  // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T: cuBLAS "A" is our B.
  Key key{N, M, K, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N,
          static_cast<int>(cuda_type(A.dtype())), static_cast<int>(cuda_type(C.dtype())),
          pointer_alignment(B.data()), pointer_alignment(A.data()),
          std::min(pointer_alignment(C.data()), pointer_alignment(c_in))};
  Context& c = ctx();
  const float a = static_cast<float>(alpha), b = static_cast<float>(beta);
  auto it = c.plans.find(key);
  if (it == c.plans.end()) {
    Plan p = make_plan(key);
    const bool skinny = std::min({M, N, K}) <= 64;
    if (autotune_mode() == 2 || (autotune_mode() == 1 && skinny))
      tune(p, key, B.data(), A.data(), C.data(), c_in, C.nbytes(), a, b, skinny ? 0.9f : 0.98f);
    it = c.plans.emplace(key, p).first;
  }
  const Plan& p = it->second;
  ST_CUBLAS_CHECK(cublasLtMatmul(c.handle, p.desc, &a, B.data(), p.a, A.data(), p.b, &b, c_in, p.c, C.data(), p.c,
                                 &p.algo, c.workspace.data(), kWorkspaceBytes, stream()));
  if (debug_sync()) ST_CUDA_CHECK(cudaDeviceSynchronize());
}

}  // namespace st::cuda
