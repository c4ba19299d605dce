#include "ops/activation.hpp"

#include "ops/cpu/cpu_kernels.hpp"
#include "core/rng.hpp"
#include "core/profile.hpp"
#include "core/dryrun.hpp"
#include "core/op_trace.hpp"
#include "ops/dispatch.hpp"
#include "ops/matmul.hpp"
#ifdef SHARDTUNE_CUDA
#include "cuda/kernels.cuh"
#include "cuda/matmul.cuh"
#endif

namespace st {

void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& h) {
  ProfileScope prof("swiglu_forward", h.device());
  check_float_args("swiglu_forward", {&gate, &up, &h});
  const int64_t n = h.numel();
  if (gate.numel() != n || up.numel() != n) ST_THROW("swiglu_forward: sizes differ");
  const TracedOp traced(OpFamily::activation, {&gate, &up, &h});
  if (dry_run_active()) return;  // the planner: no compute
  if (h.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::swiglu_forward(gate, up, h);
    return;
#else
    no_cuda_kernel("swiglu_forward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(h.dtype(), T, cpu::swiglu_forward<T>(n, gate.ptr<T>(), up.ptr<T>(), h.ptr<T>()));
}

void swiglu_backward(const Tensor& dh, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup,
                     bool accumulate) {
  ProfileScope prof("swiglu_backward", dh.device());
  check_float_args("swiglu_backward", {&dh, &gate, &up, &dgate, &dup});
  const int64_t n = dh.numel();
  if (gate.numel() != n || up.numel() != n || dgate.numel() != n || dup.numel() != n)
    ST_THROW("swiglu_backward: sizes differ");
  const TracedOp traced(OpFamily::activation, {&dh, &gate, &up, &dgate, &dup});
  if (dry_run_active()) return;  // the planner: no compute
  if (dh.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::swiglu_backward(dh, gate, up, dgate, dup, accumulate);
    return;
#else
    no_cuda_kernel("swiglu_backward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(dh.dtype(), T,
                        cpu::swiglu_backward<T>(n, dh.ptr<T>(), gate.ptr<T>(), up.ptr<T>(),
                                                dgate.ptr<T>(), dup.ptr<T>(), accumulate));
}

bool swiglu_lora_one_pass(const Tensor& gate, int64_t rg, int64_t ru, int64_t rd) {
#ifdef SHARDTUNE_CUDA
  return gate.device() == Device::cuda && gate.dtype() == DType::bf16 && gate.numel() > 0 &&
         cuda::skinny_swiglu_takes(gate.numel() / gate.dim(-1), gate.dim(-1), rg, ru, rd);
#else
  (void)gate, (void)rg, (void)ru, (void)rd;
  return false;
#endif
}

namespace {
// y + the term, formed (the CPU reference and the fallback): a new tensor.
Tensor with_term(const Tensor& y, const LowRankTerm& t) {
  Tensor out = y.clone(MemCategory::activations);
  if (t.defined()) matmul(out, t.xa, t.xa_t, t.B, !t.b_t, t.scale, 1.0);
  return out;
}
void check_term(const LowRankTerm& t, const Tensor& y, const char* what) {
  if (!t.defined()) return;
  const int64_t M = y.numel() / y.dim(-1), N = y.dim(-1), r = t.rank();
  if (t.B.numel() != N * r || t.B.dim(-1) != (t.b_t ? N : r) || t.xa.numel() != M * r || t.xa.dim(-1) != (t.xa_t ? M : r))
    ST_THROW(what, ": a LoRA term of xa ", t.xa.shape().str(), (t.xa_t ? "^T" : ""), " and B ", t.B.shape().str(),
             " does not fit an output ", y.shape().str());
}
#ifdef SHARDTUNE_CUDA
int64_t rank_of(const LowRankTerm& t) { return t.rank(); }
// The CUDA kernel's call: a term or two for gate and up, each with a transposed xa and B [N, r];
// dh's term (backward) with xa [M, r] and B [r, N].
bool kernel_shape(const Tensor& y, const LowRankTerm& tg, const LowRankTerm& tu, const LowRankTerm* td = nullptr) {
  if ((tg.defined() && (!tg.xa_t || tg.b_t)) || (tu.defined() && (!tu.xa_t || tu.b_t))) return false;
  const bool d = td && td->defined();
  if (d && (td->xa_t || !td->b_t)) return false;
  return cuda::skinny_swiglu_takes(y.numel() / y.dim(-1), y.dim(-1), rank_of(tg), rank_of(tu), d ? td->rank() : 0);
}
#endif
}  // namespace

void swiglu_lora_forward(const Tensor& gate, const Tensor& up, const LowRankTerm& tg, const LowRankTerm& tu, Tensor& h) {
  check_term(tg, gate, "swiglu_lora_forward");
  check_term(tu, up, "swiglu_lora_forward");
  if (h.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    if (kernel_shape(h, tg, tu)) {
      ProfileScope prof("swiglu_forward (+ LoRA terms)", h.device());
      check_float_args("swiglu_lora_forward", {&gate, &up, &h});
      if (gate.numel() != h.numel() || up.numel() != h.numel()) ST_THROW("swiglu_lora_forward: sizes differ");
      const int64_t M = h.numel() / h.dim(-1), N = h.dim(-1), rg = rank_of(tg), ru = rank_of(tu);
      const double flops = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(rg + ru);
      const TracedOp traced(OpFamily::activation, tensor_bytes({&gate, &up, &h, &tg.xa, &tu.xa, &tg.B, &tu.B}), flops);
      if (dry_run_active()) return;
      if (cuda::skinny_swiglu_lora(false, nullptr, gate, up, tg.xa, tg.B, tg.scale, tu.xa, tu.B, tu.scale, nullptr, nullptr,
                                   0.0, h, nullptr, M, N, rg, ru, 0))
        return;
      // Not taken after all (alignment): formed below, outside this op's trace.
    }
#endif
  }
  if (!tg.defined() && !tu.defined()) return swiglu_forward(gate, up, h);
  if (dry_run_active()) {  // the fallback's two formed copies
    const Tensor g2 = Tensor::empty(gate.shape(), gate.dtype(), gate.device(), MemCategory::activations);
    const Tensor u2 = Tensor::empty(up.shape(), up.dtype(), up.device(), MemCategory::activations);
    return swiglu_forward(g2, u2, h);
  }
  swiglu_forward(with_term(gate, tg), with_term(up, tu), h);
}

void swiglu_lora_backward(const Tensor& dh, const Tensor& gate, const Tensor& up, const LowRankTerm& tg,
                          const LowRankTerm& tu, Tensor& dgate, Tensor& dup, const LowRankTerm* tdh) {
  check_term(tg, gate, "swiglu_lora_backward");
  check_term(tu, up, "swiglu_lora_backward");
  if (tdh && !tdh->defined()) tdh = nullptr;
  if (tdh) check_term(*tdh, dh, "swiglu_lora_backward");
  if (dh.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    if (kernel_shape(dh, tg, tu, tdh)) {
      ProfileScope prof("swiglu_backward (+ LoRA terms)", dh.device());
      check_float_args("swiglu_lora_backward", {&dh, &gate, &up, &dgate, &dup});
      const int64_t n = dh.numel();
      if (gate.numel() != n || up.numel() != n || dgate.numel() != n || dup.numel() != n)
        ST_THROW("swiglu_lora_backward: sizes differ");
      const int64_t M = dh.numel() / dh.dim(-1), N = dh.dim(-1), rg = rank_of(tg), ru = rank_of(tu);
      const int64_t rd = tdh ? tdh->rank() : 0;
      const double flops = 2.0 * static_cast<double>(M) * static_cast<double>(N) * static_cast<double>(rg + ru + rd);
      const TracedOp traced(OpFamily::activation,
                            tensor_bytes({&dh, &gate, &up, &dgate, &dup, &tg.xa, &tu.xa, &tg.B, &tu.B}) +
                                (tdh ? tensor_bytes({&tdh->xa, &tdh->B}) : 0.0),
                            flops);
      if (dry_run_active()) return;
      if (cuda::skinny_swiglu_lora(true, &dh, gate, up, tg.xa, tg.B, tg.scale, tu.xa, tu.B, tu.scale,
                                   tdh ? &tdh->xa : nullptr, tdh ? &tdh->B : nullptr, tdh ? tdh->scale : 0.0, dgate,
                                   &dup, M, N, rg, ru, rd))
        return;
    }
#endif
  }
  if (dry_run_active()) {  // the fallback's formed copies
    const Tensor g2 = Tensor::empty(gate.shape(), gate.dtype(), gate.device(), MemCategory::activations);
    const Tensor u2 = Tensor::empty(up.shape(), up.dtype(), up.device(), MemCategory::activations);
    const Tensor d2 = Tensor::empty(dh.shape(), dh.dtype(), dh.device(), MemCategory::activations);
    return swiglu_backward(tdh ? d2 : dh, tg.defined() ? g2 : gate, tu.defined() ? u2 : up, dgate, dup, false);
  }
  const Tensor dh2 = tdh ? with_term(dh, *tdh) : dh;
  if (!tg.defined() && !tu.defined()) return swiglu_backward(dh2, gate, up, dgate, dup, false);
  swiglu_backward(dh2, with_term(gate, tg), with_term(up, tu), dgate, dup, false);
}

void geglu_forward(const Tensor& gate, const Tensor& up, Tensor& h) {
  ProfileScope prof("geglu_forward", h.device());
  check_float_args("geglu_forward", {&gate, &up, &h});
  const int64_t n = h.numel();
  if (gate.numel() != n || up.numel() != n) ST_THROW("geglu_forward: sizes differ");
  const TracedOp traced(OpFamily::activation, {&gate, &up, &h});
  if (dry_run_active()) return;  // the planner: no compute
  if (h.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::geglu_forward(gate, up, h);
    return;
#else
    no_cuda_kernel("geglu_forward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(h.dtype(), T, cpu::geglu_forward<T>(n, gate.ptr<T>(), up.ptr<T>(), h.ptr<T>()));
}

void geglu_backward(const Tensor& dh, const Tensor& gate, const Tensor& up, Tensor& dgate, Tensor& dup,
                    bool accumulate) {
  ProfileScope prof("geglu_backward", dh.device());
  check_float_args("geglu_backward", {&dh, &gate, &up, &dgate, &dup});
  const int64_t n = dh.numel();
  if (gate.numel() != n || up.numel() != n || dgate.numel() != n || dup.numel() != n)
    ST_THROW("geglu_backward: sizes differ");
  const TracedOp traced(OpFamily::activation, {&dh, &gate, &up, &dgate, &dup});
  if (dry_run_active()) return;  // the planner: no compute
  if (dh.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::geglu_backward(dh, gate, up, dgate, dup, accumulate);
    return;
#else
    no_cuda_kernel("geglu_backward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(dh.dtype(), T,
                        cpu::geglu_backward<T>(n, dh.ptr<T>(), gate.ptr<T>(), up.ptr<T>(), dgate.ptr<T>(),
                                               dup.ptr<T>(), accumulate));
}

void relu_forward(const Tensor& x, Tensor& h) {
  ProfileScope prof("relu_forward", h.device());
  check_float_args("relu_forward", {&x, &h});
  if (x.numel() != h.numel()) ST_THROW("relu_forward: sizes differ");
  const TracedOp traced(OpFamily::activation, {&x, &h});
  if (dry_run_active()) return;  // the planner: no compute
  if (h.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::relu_forward(x, h);
    return;
#else
    no_cuda_kernel("relu_forward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(h.dtype(), T, cpu::relu_forward<T>(h.numel(), x.ptr<T>(), h.ptr<T>()));
}

void relu_backward(const Tensor& dh, const Tensor& x, Tensor& dx, bool accumulate) {
  ProfileScope prof("relu_backward", dh.device());
  check_float_args("relu_backward", {&dh, &x, &dx});
  if (x.numel() != dh.numel() || dx.numel() != dh.numel()) ST_THROW("relu_backward: sizes differ");
  const TracedOp traced(OpFamily::activation, {&dh, &x, &dx});
  if (dry_run_active()) return;  // the planner: no compute
  if (dh.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::relu_backward(dh, x, dx, accumulate);
    return;
#else
    no_cuda_kernel("relu_backward");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(dh.dtype(), T, cpu::relu_backward<T>(dh.numel(), dh.ptr<T>(), x.ptr<T>(), dx.ptr<T>(), accumulate));
}

}  // namespace st

namespace st {
void dropout_apply(const Tensor& x, Tensor& out, double p, uint64_t seed, uint64_t stream, bool accumulate) {
  ProfileScope prof("dropout", x.device());
  check_float_args("dropout_apply", {&x, &out});
  if (x.numel() != out.numel()) ST_THROW("dropout_apply: sizes differ");
  const TracedOp traced(OpFamily::activation, {&x, &out});
  if (dry_run_active()) return;  // the planner: no compute
  if (x.device() == Device::cuda) {
#ifdef SHARDTUNE_CUDA
    cuda::dropout_apply(x, out, p, counter_key(seed, stream), accumulate);
    return;
#else
    no_cuda_kernel("dropout_apply");
#endif
  }
  ST_DISPATCH_CPU_FLOAT(x.dtype(), T,
                        cpu::dropout_apply<T>(x.numel(), x.ptr<T>(), out.ptr<T>(), p, seed, stream, accumulate));
}
}  // namespace st
