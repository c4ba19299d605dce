#include "ops/relbias.hpp"

#include <cmath>
#include <vector>

#include "core/profile.hpp"
#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "ops/dispatch.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/kernels.cuh"
#endif

namespace st {

int32_t t5_relative_bucket(int64_t relative_position, bool bidirectional, int64_t num_buckets, int64_t max_distance) {
  int64_t bucket = 0, n = num_buckets, rel = relative_position;
  if (bidirectional) {
    n /= 2;
    if (rel > 0) bucket += n;
    rel = rel < 0 ? -rel : rel;
  } else {
    rel = rel < 0 ? -rel : 0;  // -min(rel, 0): only keys in the past get distinct buckets
  }
  const int64_t max_exact = n / 2;
  if (rel < max_exact) return static_cast<int32_t>(bucket + rel);
  // torch: max_exact + (log(rel.float() / max_exact) / math.log(max_distance / max_exact) *
  // (num_buckets - max_exact)).to(long), in f32 with the Python doubles rounded to f32.
  const float ratio = static_cast<float>(rel) / static_cast<float>(max_exact);
  const float denom = static_cast<float>(std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)));
  const float scaled = std::log(ratio) / denom * static_cast<float>(n - max_exact);
  int64_t large = max_exact + static_cast<int64_t>(scaled);  // truncation, as .to(torch.long)
  if (large > n - 1) large = n - 1;
  return static_cast<int32_t>(bucket + large);
}

Tensor t5_relative_buckets(int64_t Tq, int64_t Tk, bool bidirectional, int64_t num_buckets, int64_t max_distance,
                           Device device) {
  if (num_buckets < 2 || max_distance < 1) ST_THROW_INPUT("relative attention: num_buckets ", num_buckets, ", max_distance ", max_distance);
  Tensor h = Tensor::empty({Tq * Tk}, DType::i32, Device::cpu, MemCategory::workspace);
  int32_t* p = h.ptr<int32_t>();
  for (int64_t q = 0; q < Tq; ++q)
    for (int64_t k = 0; k < Tk; ++k) p[q * Tk + k] = t5_relative_bucket(k - q, bidirectional, num_buckets, max_distance);
  if (device == Device::cpu) return h;
  Tensor d = Tensor::empty({Tq * Tk}, DType::i32, device, MemCategory::workspace);
  d.copy_from(h);
  return d;
}

namespace {
template <typename T>
void gather_cpu(const T* t, const int32_t* b, T* out, int64_t H, int64_t QK) {
#pragma omp parallel for schedule(static) if (H * QK > 65536)
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < QK; ++i) out[h * QK + i] = t[static_cast<int64_t>(b[i]) * H + h];
}

// Parallel over heads: each thread owns a column of the table.
template <typename T>
void scatter_cpu(const T* d, const int32_t* b, T* out, int64_t H, int64_t QK) {
#pragma omp parallel for schedule(static) if (H * QK > 65536)
  for (int64_t h = 0; h < H; ++h)
    for (int64_t i = 0; i < QK; ++i) out[static_cast<int64_t>(b[i]) * H + h] += d[h * QK + i];
}

void check(const char* what, const Tensor& table_like, const Tensor& buckets, int64_t Tq, int64_t Tk, const Tensor& bias) {
  const int64_t H = table_like.dim(-1);
  if (table_like.ndim() != 2 || buckets.dtype() != DType::i32 || buckets.numel() != Tq * Tk || bias.numel() != H * Tq * Tk ||
      buckets.device() != table_like.device() || bias.device() != table_like.device())
    ST_THROW(what, ": table ", table_like.str(), " buckets ", buckets.str(), " Tq ", Tq, " Tk ", Tk, " bias ", bias.str());
}
}  // namespace

void relative_bias_forward(const Tensor& table, const Tensor& buckets, int64_t Tq, int64_t Tk, Tensor& bias) {
  ProfileScope prof("relative_bias_forward", table.device());
  check("relative_bias_forward", table, buckets, Tq, Tk, bias);
  // The bias is an attention statistic: f32 on CUDA whatever the table's dtype (bf16 or f32),
  // the table's dtype on the CPU.
  check_stat_dtype("relative_bias_forward (bias)", table, bias);
  const TracedOp traced(OpFamily::elementwise, {&table, &buckets, &bias});
  if (dry_run_active()) return;  // the planner: no compute
  if (table.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::relative_bias_forward(table, buckets, Tq, Tk, bias);
    return;
#else
    no_cuda_kernel("relative_bias_forward");
#endif
  }
  const int64_t H = table.dim(1), NB = table.dim(0);
  const int32_t* b = buckets.ptr<int32_t>();
  for (int64_t i = 0; i < Tq * Tk; ++i)
    if (b[i] < 0 || b[i] >= NB) ST_THROW("relative_bias_forward: bucket ", b[i], " outside [0, ", NB, ")");
  ST_DISPATCH_CPU_FLOAT(table.dtype(), T, gather_cpu<T>(table.ptr<T>(), b, bias.ptr<T>(), H, Tq * Tk));
}

void relative_bias_backward(const Tensor& dbias, const Tensor& buckets, int64_t Tq, int64_t Tk, Tensor& dtable) {
  ProfileScope prof("relative_bias_backward", dtable.device());
  check("relative_bias_backward", dtable, buckets, Tq, Tk, dbias);
  check_grad_dtype("relative_bias_backward (table gradient)", dbias, dtable);
  // The CUDA kernels sum in f32 and add once into dtable (f32, or bf16 under master_weights =
  // none); the CPU's dtable has dbias's dtype.
  const TracedOp traced(OpFamily::elementwise, {&dbias, &buckets, &dtable});
  if (dry_run_active()) return;  // the planner: no compute
  if (dtable.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::relative_bias_backward(dbias, buckets, Tq, Tk, dtable);
    return;
#else
    no_cuda_kernel("relative_bias_backward");
#endif
  }
  const int64_t H = dtable.dim(1);
  const int32_t* b = buckets.ptr<int32_t>();
  ST_DISPATCH_CPU_FLOAT(dtable.dtype(), T, scatter_cpu<T>(dbias.ptr<T>(), b, dtable.ptr<T>(), H, Tq * Tk));
}

}  // namespace st
