// Unit hooks: how parallel/ (ZeRO-3, DDP) attaches to a model without the model knowing.
//
// A model's computation is cut into units (Llama: 0 the embedding, 1..L the blocks, L+1 the head;
// T5: see t5.hpp). The model calls before/after_forward for units 0, 1, ..., N-1 in its forward
// and before/after_backward for N-1, ..., 0 in its backward, on every rank in the same order
// (ZeRO-3 gathers a unit's parameters before it runs and releases them after). A unit's parameter
// tensors (and gradients in backward) must be usable between before_* and after_*.
#pragma once

#include <exception>

namespace st {

class ModelHooks {
 public:
  virtual ~ModelHooks() = default;
  virtual void before_forward(int unit) = 0;
  virtual void after_forward(int unit) = 0;
  virtual void before_backward(int unit) = 0;
  virtual void after_backward(int unit) = 0;
};

// Scope of one unit's forward or backward for a model's hooks (null: no-op). When an exception
// propagates the after_* call is skipped: it may be collective, and the other ranks may not come.
class UnitScope {
 public:
  UnitScope(ModelHooks* hooks, int unit, bool backward) : hooks_(hooks), unit_(unit), backward_(backward) {
    if (!hooks_) return;
    if (backward_) hooks_->before_backward(unit_);
    else hooks_->before_forward(unit_);
  }
  ~UnitScope() noexcept(false) {
    if (!hooks_ || std::uncaught_exceptions() > 0) return;
    if (backward_) hooks_->after_backward(unit_);
    else hooks_->after_forward(unit_);
  }
  UnitScope(const UnitScope&) = delete;
  UnitScope& operator=(const UnitScope&) = delete;

 private:
  ModelHooks* hooks_;
  int unit_;
  bool backward_;
};

}  // namespace st
