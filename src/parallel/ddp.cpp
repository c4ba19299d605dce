#include "parallel/ddp.hpp"

#include "core/error.hpp"
#include "core/profile.hpp"

namespace st {

GradAllReduce::GradAllReduce(const std::vector<ParamRef>& params, Comm& dp, size_t bucket_bytes) : dp_(dp) {
  for (const ParamRef& p : params) {
    Tensor* g = p.grad;
    if (!g || !g->defined()) ST_THROW("ddp: parameter ", p.name, " has no gradient buffer");
    const size_t bytes = g->nbytes();
    const bool fits = !buckets_.empty() && buckets_.back().grads.front()->dtype() == g->dtype() &&
                      buckets_.back().grads.front()->device() == g->device() &&
                      static_cast<size_t>(buckets_.back().numel) * dtype_size(g->dtype()) + bytes <= bucket_bytes;
    if (!fits) buckets_.emplace_back();
    buckets_.back().grads.push_back(g);
    buckets_.back().numel += g->numel();
  }
  for (Bucket& b : buckets_) {
    const Tensor& g0 = *b.grads.front();
    b.flat = Tensor::empty({b.numel}, g0.dtype(), g0.device(), MemCategory::workspace);
    // The MPI backend would stage device buckets itself; a persistent host buffer saves the
    // allocation at every step. NCCL reduces device buckets where they are.
    if (g0.device() != dp_.native_device())
      b.host = Tensor::empty({b.numel}, g0.dtype(), Device::cpu, MemCategory::workspace);
  }
}

void GradAllReduce::sync() {
  if (dp_.size() == 1) return;
  for (Bucket& b : buckets_) {
    ProfileScope prof("ddp gradient all-reduce", b.flat.device());
    int64_t off = 0;
    for (Tensor* g : b.grads) {
      Tensor dst = b.flat.slice(off, off + g->numel());
      dst.copy_from(g->view({g->numel()}));
      off += g->numel();
    }
    if (b.host.defined()) {
      b.host.copy_from(b.flat);
      dp_.all_reduce_sum(b.host);
      b.flat.copy_from(b.host);
    } else {
      dp_.all_reduce_sum(b.flat);
    }
    off = 0;
    for (Tensor* g : b.grads) {
      Tensor flat_g = g->view({g->numel()});
      flat_g.copy_from(b.flat.slice(off, off + g->numel()));
      off += g->numel();
    }
  }
}

}  // namespace st
