#include "train/optimizer.hpp"

#include <cmath>

namespace st {

AdamW::AdamW(std::vector<ParamRef> params, double beta1, double beta2, double eps, double weight_decay)
    : params_(std::move(params)), beta1_(beta1), beta2_(beta2), eps_(eps), weight_decay_(weight_decay) {
  for (const ParamRef& p : params_) {
    m_.push_back(Tensor::zeros(p.value->shape(), p.value->dtype(), p.value->device(), MemCategory::optimizer));
    v_.push_back(Tensor::zeros(p.value->shape(), p.value->dtype(), p.value->device(), MemCategory::optimizer));
  }
}

void AdamW::zero_grad() {
  for (ParamRef& p : params_) p.grad->zero_();
}

double AdamW::clip_grad_norm(double max_norm) {
  double ss = 0;
  for (const ParamRef& p : params_) ss += sum_squares(*p.grad);
  const double norm = std::sqrt(ss);
  if (max_norm > 0 && norm > max_norm) {
    const double s = max_norm / (norm + 1e-6);  // torch adds 1e-6 to the norm
    for (ParamRef& p : params_) scale_inplace(*p.grad, s);
  }
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
    adamw_update(*params_[i].value, *params_[i].grad, m_[i], v_[i], h);
  }
}

int64_t AdamW::num_parameters() const {
  int64_t n = 0;
  for (const ParamRef& p : params_) n += p.value->numel();
  return n;
}

}  // namespace st
