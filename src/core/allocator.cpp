#include "core/allocator.hpp"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <new>

#include "core/dryrun.hpp"
#include "core/error.hpp"

namespace st {

const char* mem_category_name(MemCategory c) {
  switch (c) {
    case MemCategory::weights: return "weights";
    case MemCategory::gradients: return "gradients";
    case MemCategory::optimizer: return "optimizer";
    case MemCategory::activations: return "activations";
    case MemCategory::communication: return "communication";
    case MemCategory::workspace: return "workspace";
    case MemCategory::other: return "other";
  }
  return "?";
}

void* Allocator::allocate(size_t bytes, MemCategory cat) {
  if (bytes == 0) bytes = 1;
  const int c = static_cast<int>(cat);
  if (limit_ != 0 && stats_.total_current + bytes > limit_) {
    throw OutOfMemory(str("out of memory on ", device_name(device_), ": ", format_bytes(bytes),
                          " for ", mem_category_name(cat), " in phase '", memory_phase(),
                          "' with ", format_bytes(stats_.total_current), " in use and a limit of ",
                          format_bytes(limit_)),
                      __FILE__, __LINE__, bytes, mem_category_name(cat), memory_phase());
  }
  void* p = raw_allocate(bytes);
  if (!p) {
    throw OutOfMemory(str("out of memory on ", device_name(device_), ": the system refused ",
                          format_bytes(bytes), " for ", mem_category_name(cat), " in phase '",
                          memory_phase(), "' with ", format_bytes(stats_.total_current), " in use"),
                      __FILE__, __LINE__, bytes, mem_category_name(cat), memory_phase());
  }
  stats_.current[c] += bytes;
  stats_.total_current += bytes;
  stats_.num_allocs++;
  if (stats_.current[c] > stats_.peak[c]) stats_.peak[c] = stats_.current[c];
  if (stats_.total_current > stats_.total_peak) {
    stats_.total_peak = stats_.total_current;
    stats_.at_total_peak = stats_.current;
  }
  return p;
}

void Allocator::release(void* ptr, size_t bytes, MemCategory cat) {
  if (!ptr) return;
  if (bytes == 0) bytes = 1;
  raw_release(ptr);
  stats_.current[static_cast<int>(cat)] -= bytes;
  stats_.total_current -= bytes;
}

void Allocator::reset_peak() {
  stats_.peak = stats_.current;
  stats_.total_peak = stats_.total_current;
  stats_.at_total_peak = stats_.current;
}

namespace {
class CpuAllocator final : public Allocator {
 public:
  CpuAllocator() : Allocator(Device::cpu) {}

 protected:
  void* raw_allocate(size_t bytes) override {
    // 64-byte alignment for vector loads; aligned_alloc needs a multiple of the alignment.
    const size_t rounded = (bytes + 63) / 64 * 64;
    return std::aligned_alloc(64, rounded);
  }
  void raw_release(void* ptr) override { std::free(ptr); }
};
}  // namespace

Allocator* cuda_allocator();  // defined in cuda builds (cuda/device.cu); nullptr otherwise

Allocator& allocator_for(Device d) {
  if (Allocator* dry = dry_run_allocator(d)) return *dry;
  if (d == Device::cpu) {
    static CpuAllocator cpu;
    return cpu;
  }
  Allocator* a = cuda_allocator();
  if (!a) ST_THROW_INPUT("device 'cuda' requested but this shardtune was built without CUDA (rebuild with CUDA=1)");
  return *a;
}

#ifndef SHARDTUNE_CUDA
Allocator* cuda_allocator() { return nullptr; }
size_t cuda_total_memory() { return 0; }
size_t cuda_used_memory() { return 0; }
std::string cuda_device_name() { return ""; }
void select_cuda_device(int) {
  ST_THROW_INPUT("device = cuda but this shardtune was built without CUDA (rebuild with CUDA=1 where nvcc exists)");
}
#endif

namespace {
thread_local const char* g_phase = "setup";
}
const char* memory_phase() { return g_phase; }
MemoryPhase::MemoryPhase(const char* phase) : previous_(g_phase) { g_phase = phase; }
MemoryPhase::~MemoryPhase() { g_phase = previous_; }

std::string format_bytes(double bytes) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  double v = bytes;
  while (std::fabs(v) >= 1024.0 && u < 4) {
    v /= 1024.0;
    ++u;
  }
  char buf[64];
  if (u == 0) std::snprintf(buf, sizeof(buf), "%.0f B", v);
  else std::snprintf(buf, sizeof(buf), "%.2f %s", v, units[u]);
  return buf;
}

size_t parse_bytes(const std::string& text, const std::string& what) {
  size_t i = 0;
  while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i;
  const char* begin = text.c_str() + i;
  char* end = nullptr;
  const double v = std::strtod(begin, &end);
  if (end == begin || !std::isfinite(v) || v < 0)
    ST_THROW_INPUT(what, ": '", text, "' is not a byte size (examples: 40GiB, 512MiB, 8e9, 0)");
  std::string unit(end);
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.back()))) unit.pop_back();
  while (!unit.empty() && std::isspace(static_cast<unsigned char>(unit.front()))) unit.erase(0, 1);
  double mult = 1;
  if (unit.empty() || unit == "B") mult = 1;
  else if (unit == "KiB" || unit == "K") mult = 1024.0;
  else if (unit == "MiB" || unit == "M") mult = 1024.0 * 1024;
  else if (unit == "GiB" || unit == "G") mult = 1024.0 * 1024 * 1024;
  else if (unit == "TiB" || unit == "T") mult = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "KB" || unit == "kB") mult = 1e3;
  else if (unit == "MB") mult = 1e6;
  else if (unit == "GB") mult = 1e9;
  else if (unit == "TB") mult = 1e12;
  else ST_THROW_INPUT(what, ": unknown unit '", unit, "' in '", text, "' (use B, KiB, MiB, GiB, TiB, KB, MB, GB, TB)");
  // Beyond 2^62 bytes (4 EiB) a size is a typo, and llround would overflow.
  if (!(v * mult <= 4.611686018427387904e18))
    ST_THROW_INPUT(what, ": '", text, "' is more than 4 EiB (examples: 40GiB, 512MiB, 8e9, 0)");
  return static_cast<size_t>(std::llround(v * mult));
}

}  // namespace st
