// Memory accounting: every tensor buffer is allocated through an Allocator that tracks current
// and peak bytes per category and refuses allocations over an optional cap (the memory limit
// that lets a large GPU, or a CPU test, reproduce a smaller device's out-of-memory honestly).
//
// The phase ("load", "forward", "backward", "optimizer", "eval") is recorded with an
// OutOfMemory so metrics.h5 can say where a run ran out.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/dtype.hpp"

namespace st {

// communication: buffers that exist for collectives (DDP buckets, ZeRO-3 gather and
// reduce-scatter pools, TP staging).
enum class MemCategory : uint8_t { weights, gradients, optimizer, activations, communication, workspace, other };
constexpr int kNumMemCategories = 7;
const char* mem_category_name(MemCategory c);

struct MemoryStats {
  std::array<size_t, kNumMemCategories> current{};
  std::array<size_t, kNumMemCategories> peak{};  // peak of each category on its own
  size_t total_current = 0;
  size_t total_peak = 0;
  // Category breakdown at the moment total_peak was reached.
  std::array<size_t, kNumMemCategories> at_total_peak{};
  size_t num_allocs = 0;
};

class Allocator {
 public:
  explicit Allocator(Device device) : device_(device) {}
  virtual ~Allocator() = default;
  Device device() const { return device_; }

  // Throws OutOfMemory when the cap would be exceeded or the system refuses.
  void* allocate(size_t bytes, MemCategory cat);
  void release(void* ptr, size_t bytes, MemCategory cat);

  void set_limit(size_t bytes) { limit_ = bytes; }  // 0 = no cap
  size_t limit() const { return limit_; }
  const MemoryStats& stats() const { return stats_; }
  void reset_peak();

 protected:
  virtual void* raw_allocate(size_t bytes) = 0;  // nullptr on failure
  virtual void raw_release(void* ptr) = 0;

 private:
  Device device_;
  size_t limit_ = 0;
  MemoryStats stats_;
};

// The process-wide allocator for a device (the CUDA one exists only in CUDA builds).
Allocator& allocator_for(Device d);
// Memory of the first visible GPU in bytes; 0 without CUDA or a GPU.
size_t cuda_total_memory();
// Memory in use on this process's GPU by every process (total - free); 0 without CUDA.
size_t cuda_used_memory();
// This process's GPU as cudaGetDeviceProperties names it ("NVIDIA H100 80GB HBM3"); "" without
// CUDA or a GPU.
std::string cuda_device_name();
// Bind this process to a GPU (local rank modulo the visible devices) before any CUDA memory is
// used. InputError when the build has no CUDA or no usable GPU is visible.
void select_cuda_device(int local_rank);

// The phase recorded with an OutOfMemory. Set by the trainer with a scoped guard.
const char* memory_phase();
class MemoryPhase {
 public:
  explicit MemoryPhase(const char* phase);
  ~MemoryPhase();
  MemoryPhase(const MemoryPhase&) = delete;
  MemoryPhase& operator=(const MemoryPhase&) = delete;

 private:
  const char* previous_;
};

// "1.50 GiB", "12.0 MiB", "512 B".
std::string format_bytes(double bytes);
// Parse "40GiB", "40GB", "512MiB", "1.5e9", "0": returns bytes; throws InputError naming `what`.
size_t parse_bytes(const std::string& text, const std::string& what);

}  // namespace st
