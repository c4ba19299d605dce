// `shardtune calibrate`: a device profile (train/device_profile.hpp) measured with the real
// kernels of the op layer. Each op family is run over a sweep of shapes (CUDA: up to 8192^3 GEMMs
// and 2^26-element tensors; CPU: small ones), plus, given a deck, every distinct GEMM shape of
// that deck's training step (from the planner's dry run). An op's work (FLOPs or bytes) is what
// the op trace records for it (core/op_trace.hpp), so the profile and the planner agree on what
// "work" means; its time is the mean over repetitions between two device synchronisations.
#pragma once

#include <vector>

#include "core/op_trace.hpp"
#include "train/device_profile.hpp"

namespace st {

struct CalibrateOptions {
  Device device = Device::cpu;
  double seconds = 20;               // the whole sweep's time budget (roughly)
  std::vector<TraceEvent> gemm_shapes;  // GEMM events to time at their exact shapes (m, n, k, dtype_bytes)
  // Attention events (forward and backward, batched: attention.B > 0) to time at their exact shapes.
  std::vector<TraceEvent> attention_shapes;
  bool small = false;                // CPU tests: the smallest sweep
  // Seconds of back-to-back GEMMs after the sweep, to measure sustained_compute_factor
  // (DeviceProfile); 0: not measured (factor 1).
  double sustain_seconds = 0;
};

DeviceProfile calibrate_device(const CalibrateOptions& o);

}  // namespace st
