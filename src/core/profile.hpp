// Op-level profile: with SHARDTUNE_PROFILE=1 in the environment, every op of the op layer is
// timed (the device is synchronised before and after it, so the time is the op's own) and the
// totals per op are printed at the end of the run. SHARDTUNE_PROFILE=2 names every GEMM by its
// shape (M x N x K, transposes, accumulate) and times LoRA's GEMMs one by one instead of per
// adapter. Off, a scope costs one branch.
#pragma once

#include <string>

#include "core/dtype.hpp"

namespace st {

bool profiling_enabled();
int profile_level();  // 0 off, 1 per op, 2 per op with GEMM shapes
// Hook set by the CUDA build: synchronise the device (the timing of asynchronous kernels).
void set_profile_sync_hook(void (*sync)());
// Wait for the device's queued work (through that hook; nothing on the CPU): for timing.
void device_synchronize(Device d);

class ProfileScope {
 public:
  // A null name: no scope (the enclosed ops are timed on their own).
  ProfileScope(const char* name, Device device);
  ~ProfileScope();
  ProfileScope(const ProfileScope&) = delete;
  ProfileScope& operator=(const ProfileScope&) = delete;

 private:
  void enter();
  std::string name_;
  Device device_;
  double start_ = 0;
  bool active_ = false;
  bool counted_ = false;  // entered the nesting depth
};

// Reset the totals (e.g. after warm-up steps) and print them as a table (rank 0), with the
// number of steps they cover.
void profile_reset();
void profile_report(int64_t steps);

}  // namespace st
