#include "ops/optim.hpp"

#include "ops/cpu/cpu_kernels.hpp"
#include "core/profile.hpp"
#include "ops/adamw_element.hpp"
#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "ops/dispatch.hpp"
#include "ops/init.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/kernels.cuh"
#endif

namespace st {

namespace {

// adamw_update's checks; returns the bytes it reads and writes.
double check_adamw(const char* op, const Tensor& param, const Tensor& grad, const Tensor& m, const Tensor& v,
                   const Tensor* working) {
  check_float_args(op, {&param, &grad, &m, &v});
  if (param.dtype() == DType::bf16 && working && working->defined())
    ST_THROW(op, ": a bf16 parameter (pure bf16) has no working copy, got ", working->str());
  const int64_t n = param.numel();
  if (grad.numel() != n || m.numel() != n || v.numel() != n || (working && working->numel() != n))
    ST_THROW(op, ": sizes differ");
  return tensor_bytes({&param, &grad, &m, &v, &param, &m, &v, working});
}

// The working copy, where the update's kernel did not write it (the CUDA kernels write bf16
// copies, the CPU kernel none).
void copy_working(const Tensor& param, Tensor* working) {
  if (!working || !working->defined() || working->data() == param.data()) return;
  if (param.device() == Device::cuda && working->dtype() == DType::bf16) return;
  convert_copy(*working, param);
}

uint16_t* bf16_bits(const Tensor& t) { return static_cast<uint16_t*>(t.data()); }

// index, first: the tensor's stream of the stochastic rounding and its element 0's place in it
// (pure bf16 only): element e draws splitmix64(key + first + e), so the key passed is key + first.
void adamw_cpu(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h, Tensor* working,
               uint64_t index, uint64_t first) {
  if (param.dtype() == DType::bf16) {
    cpu::adamw_update_bf16(param.numel(), bf16_bits(param), bf16_bits(grad), bf16_bits(m), bf16_bits(v), h.lr,
                           h.beta1, h.beta2, h.eps, h.weight_decay, h.step, h.grad_scale,
                           adamw::stochastic_key(h.seed, h.step, index) + first);
    return;
  }
  ST_DISPATCH_CPU_FLOAT(param.dtype(), T,
                        cpu::adamw_update<T>(param.numel(), param.ptr<T>(), grad.ptr<T>(), m.ptr<T>(), v.ptr<T>(),
                                             h.lr, h.beta1, h.beta2, h.eps, h.weight_decay, h.step, h.grad_scale));
  copy_working(param, working);
}

}  // namespace

bool AdamWTensors::pure_bf16() const { return param->dtype() == DType::bf16; }

void adamw_update(Tensor& param, const Tensor& grad, Tensor& m, Tensor& v, const AdamWHyper& h, Tensor* working) {
  ProfileScope prof("adamw", param.device());
  if (param.dtype() == DType::bf16)  // on either device: its rounding is keyed by the list index
    ST_THROW("adamw_update: a bf16 parameter (pure bf16) is updated by adamw_update_multi, which keys its stochastic "
             "rounding by the tensor's index; got ", param.str());
  const TracedOp traced(OpFamily::optimizer, check_adamw("adamw_update", param, grad, m, v, working), 0.0);
  if (dry_run_active()) return;  // the planner: no compute
  if (param.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::adamw_update(param, grad, m, v, working, h);
    copy_working(param, working);
    return;
#else
    no_cuda_kernel("adamw_update");
#endif
  }
  adamw_cpu(param, grad, m, v, h, working, 0, 0);
}

void adamw_update_multi(const std::vector<AdamWTensors>& ts, const AdamWHyper& h) {
  if (ts.empty()) return;
  const Device device = ts.front().param->device();
  ProfileScope prof("adamw", device);
  double bytes = 0;
  for (const AdamWTensors& t : ts) {
    if (t.param->device() != device) ST_THROW("adamw_update_multi: tensors on ", device_name(device), " and ", t.param->str());
    bytes += check_adamw("adamw_update_multi", *t.param, *t.grad, *t.m, *t.v, t.working);
  }
  const TracedOp traced(OpFamily::optimizer, bytes, 0.0);
  if (dry_run_active()) return;  // the planner: no compute
  const auto hyper = [&](const AdamWTensors& t) {
    AdamWHyper ht = h;
    if (!t.weight_decay) ht.weight_decay = 0;
    return ht;
  };
  if (device == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::adamw_update_multi(ts, h);
    for (const AdamWTensors& t : ts) copy_working(*t.param, t.working);
    return;
#else
    no_cuda_kernel("adamw_update_multi");
#endif
  }
  for (const AdamWTensors& t : ts) adamw_cpu(*t.param, *t.grad, *t.m, *t.v, hyper(t), t.working, t.index, t.first_element);
}

double sum_squares(const Tensor& x) {
  ProfileScope prof("grad_norm", x.device());
  TracedOp traced(OpFamily::optimizer, {&x});
  traced.host_waits();  // the result is read on the host
  if (dry_run_active()) return 0.0;  // the planner: no compute
  if (x.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    return cuda::sum_squares(x);
#else
    no_cuda_kernel("sum_squares");
#endif
  }
  if (x.dtype() == DType::bf16) return cpu::sum_squares_bf16(x.numel(), bf16_bits(x));
  double r = 0;
  ST_DISPATCH_CPU_FLOAT(x.dtype(), T, r = cpu::sum_squares<T>(x.numel(), x.ptr<T>()));
  return r;
}

double sum_squares_total(const std::vector<const Tensor*>& xs) {
  if (xs.empty()) return 0.0;
  ProfileScope prof("grad_norm", xs.front()->device());
  TracedOp traced(OpFamily::optimizer, [&] { double b = 0; for (const Tensor* x : xs) b += tensor_bytes({x}); return b; }(), 0.0);
  traced.host_waits();  // the result is read on the host
  if (dry_run_active()) return 0.0;  // the planner: no compute
  if (xs.front()->device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    return cuda::sum_squares_total(xs);
#else
    no_cuda_kernel("sum_squares_total");
#endif
  }
  double r = 0;
  for (const Tensor* x : xs) r += sum_squares(*x);
  return r;
}

void scale_inplace(Tensor& x, double s) {
  ProfileScope prof("grad_clip_scale", x.device());
  const TracedOp traced(OpFamily::optimizer, {&x, &x});
  if (dry_run_active()) return;  // the planner: no compute
  if (x.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::scale_inplace(x, s);
    return;
#else
    no_cuda_kernel("scale_inplace");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(x.dtype(), T, cpu::scale_inplace<T>(x.numel(), x.ptr<T>(), static_cast<T>(s)));
}

void axpy(double a, const Tensor& x, Tensor& y) {
  check_float_args("axpy", {&x, &y});
  if (x.numel() != y.numel()) ST_THROW("axpy: sizes differ");
  const TracedOp traced(OpFamily::optimizer, {&x, &y, &y});
  if (dry_run_active()) return;  // the planner: no compute
  if (y.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::axpy(a, x, y);
    return;
#else
    no_cuda_kernel("axpy");
#endif
  }
  if (y.dtype() == DType::bf16) {  // pure-bf16 gradients (ZeRO-3's shards): in f32, rounded once
    const uint16_t* xb = bf16_bits(x);
    uint16_t* yb = bf16_bits(y);
    const float af = static_cast<float>(a);
    for (int64_t i = 0; i < y.numel(); ++i) yb[i] = f32_to_bf16(bf16_to_f32(yb[i]) + af * bf16_to_f32(xb[i]));
    return;
  }
  ST_DISPATCH_CPU_FLOAT(y.dtype(), T, cpu::axpy<T>(x.numel(), static_cast<T>(a), x.ptr<T>(), y.ptr<T>()));
}

}  // namespace st
