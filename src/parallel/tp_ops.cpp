#include "parallel/tp_ops.hpp"

#include <cmath>
#include <cstring>
#include <vector>

#include "core/dryrun.hpp"
#include "core/profile.hpp"
#include "ops/dispatch.hpp"
#include "ops/init.hpp"
#include "ops/matmul.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/kernels.cuh"
#endif

namespace st {

// ---------------------------------------------------------------- shards of full tensors

namespace {

// p, i and the divisibility of dimension `dim` (size n) of W by p; throws InputError naming them.
int64_t shard_extent(const char* fn, const Tensor& W, int dim, int p, int i) {
  if (!W.defined()) ST_THROW_INPUT(fn, ": undefined tensor");
  if (W.device() != Device::cpu) ST_THROW_INPUT(fn, ": CPU tensors only (got ", W.str(), ")");
  if (W.ndim() < 1) ST_THROW_INPUT(fn, ": ", W.str(), " has no dimension to shard");
  if (p < 1) ST_THROW_INPUT(fn, ": number of shards p = ", p, " must be at least 1");
  if (i < 0 || i >= p) ST_THROW_INPUT(fn, ": shard index ", i, " outside [0, ", p, ")");
  const int64_t n = W.dim(dim);
  if (n % p != 0)
    ST_THROW_INPUT(fn, ": dimension ", dim < 0 ? W.ndim() + dim : dim, " (size ", n, ") of ", W.str(),
                   " is not divisible by p = ", p);
  return n / p;
}

}  // namespace

Tensor shard_rows(const Tensor& W, int p, int i) {
  const int64_t r = shard_extent("shard_rows", W, 0, p, i);
  return W.slice(i * r, (i + 1) * r).clone(W.category());
}

Tensor shard_cols(const Tensor& W, int p, int i) {
  const int64_t c = shard_extent("shard_cols", W, -1, p, i);
  const int64_t n = W.dim(-1), rows = n == 0 ? 0 : W.numel() / n;
  Shape s = W.shape();
  s.d[static_cast<size_t>(s.ndim - 1)] = c;
  Tensor out = Tensor::empty(s, W.dtype(), Device::cpu, W.category());
  if (dry_run_active()) return out;  // the planner: sizes only
  const size_t es = dtype_size(W.dtype());
  const auto* src = static_cast<const unsigned char*>(W.data());
  auto* dst = static_cast<unsigned char*>(out.data());
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(dst + static_cast<size_t>(r * c) * es, src + static_cast<size_t>(r * n + i * c) * es,
                static_cast<size_t>(c) * es);
  return out;
}

void check_tp_divisible(int p, std::initializer_list<TpDimension> dims) {
  if (p < 1) ST_THROW_INPUT("tp_size must be at least 1 (got ", p, ")");
  for (const TpDimension& d : dims)
    if (d.size % p != 0)
      ST_THROW_INPUT("tensor parallelism: ", d.what, " (", d.key, " = ", d.size, ") is not divisible by tp_size = ", p,
                     ": choose a tp_size that divides it");
}

Tensor tp_shard_of(const Tensor& full, TpMode split, const TpGroup& tp) {
  if (split == TpMode::none || tp.size == 1) return full.clone(MemCategory::workspace);
  if (split == TpMode::column) {
    const int64_t rows = full.dim(0) / tp.size;
    if (rows * tp.size != full.dim(0))
      ST_THROW_INPUT("tp_shard_of: ", full.str(), " has ", full.dim(0), " rows, not divisible by tp_size ", tp.size);
    return full.slice(rows * tp.rank, rows * (tp.rank + 1)).clone(MemCategory::workspace);
  }
  // Columns: a strided copy, done on the host (in f32/f64), then back to the device.
  if (full.device() == Device::cpu) return shard_cols(full, tp.size, tp.rank);
  const Tensor part = shard_cols(full.to_cpu(full.dtype() == DType::f64 ? DType::f64 : DType::f32), tp.size, tp.rank);
  Tensor staged = Tensor::empty(part.shape(), part.dtype(), full.device(), MemCategory::workspace);
  staged.copy_from(part);
  if (staged.dtype() == full.dtype()) return staged;
  Tensor out = Tensor::empty(part.shape(), full.dtype(), full.device(), MemCategory::workspace);
  convert_copy(out, staged);
  return out;
}

Tensor tp_gather_full(const Tensor& local_in, TpMode split, const TpGroup& tp, DType dtype) {
  if (dtype != DType::f32 && dtype != DType::f64) ST_THROW("tp_gather_full: f32 or f64 output, not ", dtype_name(dtype));
  const Tensor local = local_in.to_cpu(dtype);
  if (split == TpMode::none || tp.size == 1) return local;
  if (!tp.comm) ST_THROW("tp_gather_full: TP size ", tp.size, " without a communicator");
  const int p = tp.size;
  Shape full_shape = local.shape();
  const size_t d = split == TpMode::column ? 0 : static_cast<size_t>(full_shape.ndim - 1);
  full_shape.d[d] *= p;
  Tensor all = Tensor::empty({p * local.numel()}, dtype, Device::cpu, MemCategory::workspace);
  tp.comm->all_gather(local.view({local.numel()}), all);
  if (split == TpMode::column) return all.view(full_shape);  // row blocks in rank order
  // Column blocks: rank r holds columns [r c, (r+1) c) of every row.
  Tensor full = Tensor::empty(full_shape, dtype, Device::cpu, MemCategory::workspace);
  const int64_t c = local.dim(-1), rows = c == 0 ? 0 : local.numel() / c, n = c * p;
  const size_t es = dtype_size(dtype);
  const auto* src = static_cast<const unsigned char*>(all.data());
  auto* dst = static_cast<unsigned char*>(full.data());
  for (int r = 0; r < p; ++r)
    for (int64_t i = 0; i < rows; ++i)
      std::memcpy(dst + static_cast<size_t>(i * n + r * c) * es, src + static_cast<size_t>((r * rows + i) * c) * es,
                  static_cast<size_t>(c) * es);
  return full;
}

// ---------------------------------------------------------------- column-parallel linear

void column_parallel_forward(const Tensor& x, const Tensor& W_i, Tensor& y_i, bool accumulate) {
  linear_forward(x, W_i, y_i, accumulate);
}

void column_parallel_backward(const Tensor& x, const Tensor& W_i, const Tensor& dy_i, Tensor* dx, Tensor* dW_i,
                              Comm& comm, bool dx_accumulate) {
  const bool want_dx = dx && dx->defined();
  // Rank 0 keeps dx's (replicated) prior content when accumulating; the others contribute
  // only their partial product, so the sum holds the prior exactly once.
  linear_backward(x, W_i, dy_i, want_dx ? dx : nullptr, dW_i, dx_accumulate && comm.rank() == 0);
  if (want_dx) comm.all_reduce_sum(*dx);
}

// ---------------------------------------------------------------- row-parallel linear

void row_parallel_forward(const Tensor& x_i, const Tensor& W_i, Tensor& y, Comm& comm, const Tensor* residual) {
  if (residual && !residual->defined()) residual = nullptr;
  if (residual && (residual->numel() != y.numel() || residual->dtype() != y.dtype() || residual->device() != y.device()))
    ST_THROW("row_parallel_forward: residual ", residual->str(), " does not match y ", y.str());
  // The residual enters once: on rank 0, inside its GEMM (y = residual + x_0 W_0^T).
  linear_forward(x_i, W_i, y, false, comm.rank() == 0 ? residual : nullptr);
  comm.all_reduce_sum(y);
}

void row_parallel_backward(const Tensor& x_i, const Tensor& W_i, const Tensor& dy, Tensor* dx_i, Tensor* dW_i,
                           bool dx_accumulate) {
  linear_backward(x_i, W_i, dy, dx_i, dW_i, dx_accumulate);
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
  if (dry_run_active()) {  // the planner: the row statistics both paths allocate, no compute
    const bool cuda = logits_shard.device() == Device::cuda;
    const int64_t Vl = logits_shard.dim(-1), N = logits_shard.numel() / Vl;
    const DType stat = cuda ? DType::f32 : DType::f64;
    Tensor mx = Tensor::empty({N}, stat, logits_shard.device(), MemCategory::workspace);
    Tensor st = Tensor::empty({2 * N}, stat, logits_shard.device(), MemCategory::workspace);
    Tensor own = cuda && !losses ? Tensor::empty({N}, DType::f32, Device::cuda, MemCategory::workspace) : Tensor();
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
