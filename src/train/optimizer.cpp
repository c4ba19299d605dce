#include "train/optimizer.hpp"

#include <cmath>

#include "ops/init.hpp"

namespace st {

AdamW::AdamW(std::vector<ParamRef> params, double beta1, double beta2, double eps, double weight_decay)
    : params_(std::move(params)), beta1_(beta1), beta2_(beta2), eps_(eps), weight_decay_(weight_decay) {
  for (const ParamRef& p : params_) {
    const DType md = master_dtype(p.value->dtype());
    if (p.grad->dtype() != md) ST_THROW("AdamW: ", p.name, " has gradient ", p.grad->str(), " for value ", p.value->str());
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
  for (ParamRef& p : params_) p.grad->zero_();
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
  for (size_t i = 0; i < params_.size(); ++i) {
    AdamWHyper h;
    h.lr = lr;
    h.beta1 = beta1_;
    h.beta2 = beta2_;
    h.eps = eps_;
    h.weight_decay = params_[i].weight_decay ? weight_decay_ : 0.0;
    h.step = step_;
    h.grad_scale = grad_scale_;
    ParamRef& p = params_[i];
    if (master_[i].defined()) adamw_update(master_[i], *p.grad, m_[i], v_[i], h, p.value);
    else adamw_update(*p.value, *p.grad, m_[i], v_[i], h, p.working);
  }
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
