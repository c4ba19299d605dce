// Learning-rate schedule: linear warm-up from 0, then cosine or linear decay to
// lr * min_lr_ratio at the last step, or constant.
#pragma once

#include <cstdint>
#include <string>

namespace st {

struct LrSchedule {
  double lr = 0, min_lr_ratio = 0;
  int64_t warmup_steps = 0, total_steps = 1;
  std::string kind = "cosine";  // cosine | linear | constant
  double at(int64_t step) const;  // step is 1-based
};

}  // namespace st
