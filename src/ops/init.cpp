#include "ops/init.hpp"

#include <cmath>

#include "core/rng.hpp"
#include "core/profile.hpp"
#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "ops/dispatch.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/init.cuh"
#include "cuda/kernels.cuh"
#endif

namespace st {

namespace {

// 53-bit uniform in (0, 1): never 0, so log() is finite.
inline double open_uniform(uint64_t key, uint64_t i) {
  return (static_cast<double>(splitmix64(key + i) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

template <typename F>
void fill_cpu(Tensor& t, F value_of) {
  const int64_t n = t.numel();
  switch (t.dtype()) {
    case DType::f32: { float* p = t.ptr<float>();
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) p[i] = static_cast<float>(value_of(i));
      break; }
    case DType::f64: { double* p = t.ptr<double>();
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) p[i] = value_of(i);
      break; }
    case DType::bf16: { uint16_t* p = static_cast<uint16_t*>(t.data());
#pragma omp parallel for schedule(static) if (n > 65536)
      for (int64_t i = 0; i < n; ++i) p[i] = f32_to_bf16(static_cast<float>(value_of(i)));
      break; }
    default: ST_THROW("fill: unsupported dtype ", dtype_name(t.dtype()));
  }
}

}  // namespace

void fill_normal(Tensor& t, uint64_t key, double mean, double std) {
  const TracedOp traced(OpFamily::elementwise, {&t});
  if (dry_run_active()) return;  // the planner: no compute
  if (t.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::fill_normal(t, key, mean, std);
    return;
#else
    no_cuda_kernel("fill_normal");
#endif
  }
  fill_cpu(t, [&](int64_t i) {
    const double u1 = open_uniform(key, 2 * static_cast<uint64_t>(i));
    const double u2 = open_uniform(key, 2 * static_cast<uint64_t>(i) + 1);
    return mean + std * std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
  });
}

void fill_uniform(Tensor& t, uint64_t key, double lo, double hi) {
  const TracedOp traced(OpFamily::elementwise, {&t});
  if (dry_run_active()) return;  // the planner: no compute
  if (t.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::fill_uniform(t, key, lo, hi);
    return;
#else
    no_cuda_kernel("fill_uniform");
#endif
  }
  fill_cpu(t, [&](int64_t i) { return lo + (hi - lo) * open_uniform(key, static_cast<uint64_t>(i)); });
}

void fill_constant(Tensor& t, double value) {
  const TracedOp traced(OpFamily::elementwise, {&t});
  if (dry_run_active()) return;  // the planner: no compute
  if (t.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::fill_constant(t, value);
    return;
#else
    no_cuda_kernel("fill_constant");
#endif
  }
  fill_cpu(t, [&](int64_t) { return value; });
}

void convert_copy(Tensor& dst, const Tensor& src) {
  ProfileScope prof("convert_copy", dst.device());
  if (dst.numel() != src.numel() || dst.device() != src.device())
    ST_THROW("convert_copy: ", src.str(), " -> ", dst.str(), " needs equal sizes on one device");
  if (dst.dtype() == src.dtype()) {
    dst.copy_from(src);
    return;
  }
  const TracedOp traced(OpFamily::copy, {&dst, &src});
  if (dry_run_active()) return;  // the planner: no compute
  if (dst.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::convert_copy(dst, src);
    return;
#else
    no_cuda_kernel("convert_copy");
#endif
  }
  dst.copy_from(src.to_cpu(dst.dtype()));
}

void zero_tensors(const std::vector<Tensor*>& ts) {
  if (ts.empty()) return;
  const Device device = ts.front()->device();
  double bytes = 0;
  for (const Tensor* t : ts) {
    if (t->device() != device) ST_THROW("zero_tensors: tensors on ", device_name(device), " and ", t->str());
    bytes += static_cast<double>(t->nbytes());
  }
  if (bytes == 0) return;  // as Tensor::zero_: nothing to do, no op
  const TracedOp traced(OpFamily::copy, bytes, 0.0);
  if (dry_run_active()) return;  // the planner: no compute
  ProfileScope prof("zero_tensors", device);
  if (device == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::zero_tensors(ts);
    return;
#else
    no_cuda_kernel("zero_tensors");
#endif
  }
  for (Tensor* t : ts)
    if (t->numel() > 0) device_memset_zero(t->data(), t->nbytes(), device);
}

namespace {

// The f32 accumulator of accumulate_grad_in_f32: one buffer kept for the process (grown on
// demand, as the attention backward's scratch), so a step allocates nothing; in a dry run the
// planner's scratch of the same name and size.
Tensor f32_accumulator(const Shape& shape) {
  const int64_t n = shape.numel();
  const size_t bytes = static_cast<size_t>(n) * sizeof(float);
  if (dry_run_active())
    return dry_run_scratch("f32 gradient accumulator", bytes, Device::cuda, MemCategory::workspace)
        .view_as(DType::f32, 0, shape);
  static Tensor buf;
  if (!buf.defined() || buf.numel() < n) {
    buf = Tensor();  // released before the larger one is made
    buf = Tensor::empty({n}, DType::f32, Device::cuda, MemCategory::workspace);
  }
  return buf.view_as(DType::f32, 0, shape);
}

}  // namespace

void accumulate_grad_in_f32(Tensor& grad, const std::function<void(Tensor&)>& add) {
  if (grad.device() != Device::cuda || grad.dtype() != DType::bf16) {
    add(grad);
    return;
  }
  Tensor sum = f32_accumulator(grad.shape());
  sum.zero_();
  add(sum);
  const TracedOp traced(OpFamily::copy, {&sum, &grad, &grad});
  if (dry_run_active()) return;  // the planner: no compute
#ifdef SHARDTUNE_CUDA
  cuda::fold_f32_into_bf16(sum.ptr<float>(), grad.data(), grad.numel(), 1.0f, true);
#else
  no_cuda_kernel("accumulate_grad_in_f32");
#endif
}

}  // namespace st
