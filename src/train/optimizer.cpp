#include "train/optimizer.hpp"

#include <cmath>

#include "ops/init.hpp"

namespace st {

AdamW::AdamW(std::vector<ParamRef> params, double beta1, double beta2, double eps, double weight_decay, uint64_t seed)
    : params_(std::move(params)), beta1_(beta1), beta2_(beta2), eps_(eps), weight_decay_(weight_decay), seed_(seed) {
  for (const ParamRef& p : params_) {
    // The gradient's dtype says which: the master precision, or bf16 for a bf16 value (pure bf16).
    const DType md = p.grad->dtype();
    if (md != master_dtype(p.value->dtype()) && md != grad_dtype(p.value->dtype(), MasterWeights::none))
      ST_THROW("AdamW: ", p.name, " has gradient ", p.grad->str(), " for value ", p.value->str());
    Tensor master;
    if (md != p.value->dtype()) {
      master = Tensor::empty(p.value->shape(), md, p.value->device(), MemCategory::optimizer);
      convert_copy(master, *p.value);
    }
    master_.push_back(master);
    m_.push_back(Tensor::zeros(p.value->shape(), md, p.value->device(), MemCategory::optimizer));
    v_.push_back(Tensor::zeros(p.value->shape(), md, p.value->device(), MemCategory::optimizer));
  }
}

void AdamW::zero_grad() {
  grad_scale_ = 1.0;
  std::vector<Tensor*> grads;
  grads.reserve(params_.size());
  for (ParamRef& p : params_) grads.push_back(p.grad);
  zero_tensors(grads);  // one op (one launch on CUDA)
}

double AdamW::clip_grad_norm(double max_norm, Comm* group, bool count_replicated) {
  std::vector<const Tensor*> grads;
  for (const ParamRef& p : params_)
    if (!group || count_replicated || p.tp_sharded) grads.push_back(p.grad);
  double sq = grads.empty() ? 0.0 : sum_squares_total(grads);
  if (group) sq = group->all_reduce_sum(sq);
  const double norm = std::sqrt(sq);
  // The clip factor is applied inside the next update (no separate pass over the gradients).
  grad_scale_ = (max_norm > 0 && norm > max_norm) ? max_norm / (norm + 1e-6) : 1.0;  // torch adds 1e-6
  return norm;
}

void AdamW::step(double lr) {
  ++step_;
  const AdamWHyper h{lr, beta1_, beta2_, eps_, weight_decay_, step_, grad_scale_, seed_};
  // One op over every parameter (one launch on CUDA). A bf16 value's f32 master is updated and
  // the value rewritten from it; otherwise the value is the master and its working copy (if any)
  // is rewritten.
  std::vector<AdamWTensors> ts(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    ParamRef& p = params_[i];
    const bool master = master_[i].defined();
    ts[i] = AdamWTensors{master ? &master_[i] : p.value, p.grad, &m_[i], &v_[i], master ? p.value : p.working,
                         p.weight_decay, i, p.first_element};
  }
  adamw_update_multi(ts, h);
}

std::vector<std::pair<std::string, Tensor*>> AdamW::state_tensors() {
  std::vector<std::pair<std::string, Tensor*>> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    const std::string base = str(i, ".", params_[i].name, ".");
    out.emplace_back(base + "value", params_[i].value);
    if (params_[i].working) out.emplace_back(base + "working", params_[i].working);
    if (master_[i].defined()) out.emplace_back(base + "master", &master_[i]);
    out.emplace_back(base + "m", &m_[i]);
    out.emplace_back(base + "v", &v_[i]);
  }
  return out;
}

int64_t AdamW::num_parameters() const {
  int64_t n = 0;
  for (const ParamRef& p : params_) n += p.value->numel();
  return n;
}

}  // namespace st
