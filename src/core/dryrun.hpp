// Dry runs: the memory planner executes the training path without computing anything.
//
// While a DryRun is alive (process-wide; one at a time, on one thread), allocator_for() hands
// out counting allocators instead of the real ones: their buffers are reserved address space
// (mmap with MAP_NORESERVE: never touched, so no physical memory, and reading one gives zeros)
// for every device, CUDA included, so a build without a GPU plans GPU runs. Every op, copy,
// collective (DryComm), quantization and checkpoint read returns without touching data, while
// the code around them allocates exactly what a real run allocates: the planner's figures are
// the bytes our own code asks for, not a re-derivation of shapes.
//
// Buffers the CUDA backend keeps for itself (the cuBLASLt workspace, attention scratch) are
// allocated by its kernels, which a dry run does not call: the op layer reserves them here with
// dry_run_scratch() at the same sizes (the sizes are shared constants with cuda/).
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>

#include "core/allocator.hpp"
#include "core/tensor.hpp"

namespace st {

// Work the active dry run has seen, for the planner's time estimate: GEMM and attention FLOPs
// (counted by the op layer) and collective bus bytes (counted by the dry communicator: the
// bytes each rank sends and receives over its links, e.g. 2 (n-1)/n x size for an all-reduce).
struct DryRunCounters {
  double flops = 0;
  double comm_bus_bytes = 0;
};
// No-ops when no dry run is active.
void dry_run_add_flops(double flops);
void dry_run_add_comm_bytes(double bus_bytes);
DryRunCounters dry_run_counters();

// True while a DryRun is alive.
bool dry_run_active();

class DryRun {
 public:
  DryRun();   // InputError if one is already active
  ~DryRun();  // restores the real allocators and the log level
  DryRun(const DryRun&) = delete;
  DryRun& operator=(const DryRun&) = delete;

  // The counting allocator of `d` for this dry run.
  Allocator& allocator(Device d);
  // Grow (never shrink) the backend-owned scratch buffer `name` on `d` to at least `bytes`, as
  // the backend's grow-on-demand buffers do; returns the buffer (u8, at least `bytes`).
  Tensor scratch(const std::string& name, size_t bytes, Device d, MemCategory cat);

 private:
  friend void dry_run_add_flops(double);
  friend void dry_run_add_comm_bytes(double);
  friend DryRunCounters dry_run_counters();
  std::map<std::string, Tensor> scratch_;
  DryRunCounters counters_;
  int saved_log_level_ = 1;
};

// The active DryRun's allocator for `d` (nullptr when none is active): used by allocator_for.
Allocator* dry_run_allocator(Device d);
// dry_run_active() ? the active run's scratch(name, ...) : an undefined tensor.
Tensor dry_run_scratch(const std::string& name, size_t bytes, Device d, MemCategory cat);

}  // namespace st
