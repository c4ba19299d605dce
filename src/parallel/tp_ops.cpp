#include "parallel/tp_ops.hpp"

#include <cmath>
#include <cstring>
#include <vector>

#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "core/profile.hpp"
#include "ops/dispatch.hpp"
#include "ops/init.hpp"
#include "ops/matmul.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/kernels.cuh"
#endif

namespace st {

// ---------------------------------------------------------------- gather of split tensors

Tensor gather_split_tensor(const Tensor& local_in, TpMode split, Comm& comm, DType dtype) {
  if (dtype != DType::f32 && dtype != DType::f64) ST_THROW("gather_split_tensor: f32 or f64 output, not ", dtype_name(dtype));
  const Tensor local = local_in.to_cpu(dtype);
  const int p = comm.size();
  if (split == TpMode::none || p == 1) return local;
  Shape full_shape = local.shape();
  full_shape.d[split == TpMode::column ? 0 : static_cast<size_t>(full_shape.ndim - 1)] *= p;
  Tensor all = Tensor::empty({p * local.numel()}, dtype, Device::cpu, MemCategory::workspace);
  comm.all_gather(local.view({local.numel()}), all);
  if (split == TpMode::column) return all.view(full_shape);  // row blocks in rank order
  // Column blocks: rank r's part holds columns [r c, (r+1) c) of every row.
  std::vector<Tensor> parts;
  for (int r = 0; r < p; ++r) parts.push_back(all.slice(r * local.numel(), (r + 1) * local.numel()).view(local.shape()));
  return concat_cols(parts);
}

Tensor Comm::gather_full(const Tensor& local, TpMode split, DType dtype) {
  return gather_split_tensor(local, split, *this, dtype);
}

double Comm::vocab_cross_entropy(Tensor& logits_shard, const Tensor& targets, const Tensor& weight, Tensor* losses,
                                 bool grad) {
  return vocab_parallel_cross_entropy(logits_shard, targets, weight, losses, grad, *this);
}

// ---------------------------------------------------------------- vocab-parallel cross-entropy

namespace {

// The CPU cross_entropy kernel (ops/cpu/cross_entropy_cpu.cpp) with its three row reductions
// (max, sum of exp, target logit) completed across the group.
template <typename T>
double vocab_parallel_ce(int64_t N, int64_t Vl, T* logits, const int32_t* targets, const float* weight, T* losses,
                         bool grad, Comm& comm) {
  const int64_t V = Vl * comm.size(), off = Vl * comm.rank();
  for (int64_t n = 0; n < N; ++n)
    if (targets[n] >= V) ST_THROW("target id ", targets[n], " at row ", n, " is outside the vocabulary [0, ", V, ")");
  auto active = [&](int64_t n) { return targets[n] >= 0 && weight[n] != 0.0f; };

  Tensor mx = Tensor::empty({N}, DType::f64, Device::cpu, MemCategory::workspace);
  double* m = mx.ptr<double>();
#pragma omp parallel for schedule(static) if (N * Vl > 65536)
  for (int64_t n = 0; n < N; ++n) {
    m[n] = 0;
    if (!active(n)) continue;
    const T* row = logits + n * Vl;
    double v = row[0];
    for (int64_t j = 1; j < Vl; ++j) v = row[j] > v ? row[j] : v;
    m[n] = v;
  }
  comm.all_reduce_max(mx);

  // [0, N): sum of exp(logit - global max) over this rank's columns; [N, 2N): the target logit
  // (non-zero only on the rank owning the target's column, so the sum is exact).
  Tensor st = Tensor::empty({2, N}, DType::f64, Device::cpu, MemCategory::workspace);
  double* s = st.ptr<double>();
  double* tl = s + N;
#pragma omp parallel for schedule(static) if (N * Vl > 65536)
  for (int64_t n = 0; n < N; ++n) {
    s[n] = 0;
    tl[n] = 0;
    if (!active(n)) continue;
    const T* row = logits + n * Vl;
    double sum = 0;
    for (int64_t j = 0; j < Vl; ++j) sum += std::exp(static_cast<double>(row[j]) - m[n]);
    s[n] = sum;
    const int64_t t = targets[n] - off;
    if (t >= 0 && t < Vl) tl[n] = static_cast<double>(row[t]);
  }
  comm.all_reduce_sum(st);

  std::vector<T> loss(static_cast<size_t>(N));
#pragma omp parallel for schedule(static) if (N * Vl > 65536)
  for (int64_t n = 0; n < N; ++n) {
    T* row = logits + n * Vl;
    if (!active(n)) {
      loss[static_cast<size_t>(n)] = T(0);
      if (grad)
        for (int64_t j = 0; j < Vl; ++j) row[j] = T(0);
      continue;
    }
    const double lse = m[n] + std::log(s[n]);
    loss[static_cast<size_t>(n)] = static_cast<T>(lse - tl[n]);
    if (grad) {
      const double w = weight[n];
      for (int64_t j = 0; j < Vl; ++j) row[j] = static_cast<T>(w * std::exp(static_cast<double>(row[j]) - lse));
      const int64_t t = targets[n] - off;
      if (t >= 0 && t < Vl) row[t] -= static_cast<T>(w);
    }
  }
  // The objective in double, in row order, from the rounded losses (as llama_forward sums them).
  double total = 0;
  for (int64_t n = 0; n < N; ++n) {
    const T l = loss[static_cast<size_t>(n)];
    if (losses) losses[n] = l;
    total += static_cast<double>(weight[n]) * static_cast<double>(l);
  }
  return total;
}

}  // namespace

double vocab_parallel_cross_entropy(Tensor& logits_shard, const Tensor& targets, const Tensor& weight,
                                    Tensor* losses, bool grad, Comm& comm) {
  ProfileScope prof("vocab_parallel_cross_entropy", logits_shard.device());
  if (losses && !losses->defined()) losses = nullptr;
  const TracedOp traced(OpFamily::loss, {&logits_shard, &logits_shard, &targets, &weight});
  if (traced.dry()) {  // the planner: the row statistics both paths allocate, no compute
    const bool cuda = logits_shard.device() == Device::cuda;
    const int64_t Vl = logits_shard.dim(-1), N = logits_shard.numel() / Vl;
    const DType stat = cuda ? DType::f32 : DType::f64;
    Tensor mx = Tensor::empty({N}, stat, logits_shard.device(), MemCategory::workspace);
    Tensor st = Tensor::empty({2 * N}, stat, logits_shard.device(), MemCategory::workspace);
    Tensor own = cuda && !losses ? Tensor::empty({N}, DType::f32, Device::cuda, MemCategory::workspace) : Tensor();
    comm.all_reduce_max(mx);  // the same two all-reduces as both paths (they move nothing here)
    comm.all_reduce_sum(st);
    return 0.0;
  }
  if (logits_shard.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    // f32 statistics on the device, the same two all-reduces; the objective from the f32
    // losses, summed on the host in double in row order.
    const int64_t Vl = logits_shard.dim(-1), N = logits_shard.numel() / Vl;
    if (targets.device() != Device::cuda || weight.device() != Device::cuda || targets.dtype() != DType::i32 ||
        weight.dtype() != DType::f32 || targets.numel() < N || weight.numel() < N)
      ST_THROW("vocab_parallel_cross_entropy: targets ", targets.str(), " weight ", weight.str(), " for logits ",
               logits_shard.str());
    Tensor mx = Tensor::empty({N}, DType::f32, Device::cuda, MemCategory::workspace);
    Tensor st = Tensor::empty({2 * N}, DType::f32, Device::cuda, MemCategory::workspace);
    Tensor own = losses ? Tensor() : Tensor::empty({N}, DType::f32, Device::cuda, MemCategory::workspace);
    Tensor& out = losses ? *losses : own;
    if (out.dtype() != DType::f32 || out.numel() < N) ST_THROW("vocab_parallel_cross_entropy: losses ", out.str());
    const int64_t off = Vl * comm.rank();
    cuda::vocab_parallel_ce_pass(0, N, Vl, off, logits_shard, targets, weight, mx, st, &out, grad);
    comm.all_reduce_max(mx);
    cuda::vocab_parallel_ce_pass(1, N, Vl, off, logits_shard, targets, weight, mx, st, &out, grad);
    comm.all_reduce_sum(st);
    cuda::vocab_parallel_ce_pass(2, N, Vl, off, logits_shard, targets, weight, mx, st, &out, grad);
    const Tensor lh = out.slice(0, N).to_cpu(DType::f64), wh = weight.slice(0, N).to_cpu(DType::f64);
    double total = 0;
    for (int64_t n = 0; n < N; ++n) total += wh.ptr<double>()[n] * lh.ptr<double>()[n];
    return total;
#else
    no_cuda_kernel("vocab_parallel_cross_entropy");
#endif
  }
  if (logits_shard.device() != Device::cpu || targets.device() != Device::cpu || weight.device() != Device::cpu)
    ST_THROW("vocab_parallel_cross_entropy: logits, targets and weights on one device (logits ", logits_shard.str(), ")");
  if (losses) check_stat_dtype("vocab_parallel_cross_entropy (losses)", logits_shard, *losses);
  const int64_t Vl = logits_shard.ndim() >= 1 ? logits_shard.dim(-1) : 0;
  if (Vl < 1) ST_THROW("vocab_parallel_cross_entropy: logits shard ", logits_shard.str(), " has no vocabulary columns");
  const int64_t N = logits_shard.numel() / Vl;
  if (targets.dtype() != DType::i32 || targets.numel() < N || weight.dtype() != DType::f32 || weight.numel() < N ||
      (losses && losses->numel() < N))
    ST_THROW("vocab_parallel_cross_entropy: logits ", logits_shard.str(), " targets ", targets.str(), " weight ",
             weight.str(), " losses ", losses ? losses->str() : std::string("(none)"));
  double total = 0;
  ST_DISPATCH_CPU_FLOAT(logits_shard.dtype(), T,
                        total = vocab_parallel_ce<T>(N, Vl, logits_shard.ptr<T>(), targets.ptr<int32_t>(),
                                                     weight.ptr<float>(), losses ? losses->ptr<T>() : nullptr, grad,
                                                     comm));
  return total;
}

}  // namespace st
