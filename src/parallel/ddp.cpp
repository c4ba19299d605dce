#include "parallel/ddp.hpp"

#include "core/error.hpp"
#include "core/profile.hpp"

namespace st {

GradAllReduce::GradAllReduce(const std::vector<std::vector<ParamRef>>& params_by_unit, Comm& dp, size_t bucket_bytes)
    : dp_(dp) {
  // Backward order: the last unit first.
  for (int u = static_cast<int>(params_by_unit.size()) - 1; u >= 0; --u) {
    for (const ParamRef& p : params_by_unit[static_cast<size_t>(u)]) {
      Tensor* g = p.grad;
      if (!g || !g->defined()) ST_THROW("ddp: parameter ", p.name, " has no gradient buffer");
      const size_t bytes = g->nbytes();
      const bool fits = !buckets_.empty() && buckets_.back().grads.front()->dtype() == g->dtype() &&
                        buckets_.back().grads.front()->device() == g->device() &&
                        static_cast<size_t>(buckets_.back().numel) * dtype_size(g->dtype()) + bytes <= bucket_bytes;
      if (!fits) buckets_.emplace_back();
      buckets_.back().grads.push_back(g);
      buckets_.back().numel += g->numel();
      buckets_.back().ready_after_unit = u;
    }
  }
  for (Bucket& b : buckets_) {
    const Tensor& g0 = *b.grads.front();
    b.flat = Tensor::empty({b.numel}, g0.dtype(), g0.device(), MemCategory::communication);
    // The MPI backend would stage device buckets itself; a persistent host buffer saves the
    // allocation at every step. NCCL reduces device buckets where they are.
    if (g0.device() != dp_.native_device())
      b.host = Tensor::empty({b.numel}, g0.dtype(), Device::cpu, MemCategory::communication);
  }
}

void GradAllReduce::start(Bucket& b) {
  ProfileScope prof("ddp gradient all-reduce (start)", b.flat.device());
  int64_t off = 0;
  for (Tensor* g : b.grads) {
    b.flat.slice(off, off + g->numel()).copy_from(g->view({g->numel()}));
    off += g->numel();
  }
  if (b.host.defined()) {
    b.host.copy_from(b.flat);
    b.request = dp_.all_reduce_sum_async(b.host);
  } else {
    b.request = dp_.all_reduce_sum_async(b.flat);
  }
}

void GradAllReduce::finish(Bucket& b) {
  ProfileScope prof("ddp gradient all-reduce (wait)", b.flat.device());
  b.request->wait();
  b.request.reset();
  if (b.host.defined()) b.flat.copy_from(b.host);
  int64_t off = 0;
  for (Tensor* g : b.grads) {
    g->view({g->numel()}).copy_from(b.flat.slice(off, off + g->numel()));
    off += g->numel();
  }
}

void GradAllReduce::after_backward(int unit) {
  if (!armed_ || dp_.size() == 1) return;
  // Every rank runs the same units in the same order, so the buckets start in the same order.
  for (Bucket& b : buckets_)
    if (!b.request && b.ready_after_unit >= unit) {
      start(b);
      ++overlapped_;
    }
}

void GradAllReduce::sync() {
  armed_ = false;
  if (dp_.size() == 1) return;
  for (Bucket& b : buckets_)
    if (!b.request) start(b);
  for (Bucket& b : buckets_) finish(b);
}

}  // namespace st
