#include "core/dryrun.hpp"

#include <sys/mman.h>

#include <mutex>
#include <unordered_map>

#include "core/error.hpp"
#include "core/log.hpp"

namespace st {

namespace {

// Reserved, never-touched address space: the bytes are counted, no memory is used.
class DryAllocator final : public Allocator {
 public:
  explicit DryAllocator(Device d) : Allocator(d) {}

 protected:
  void* raw_allocate(size_t bytes) override {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) return nullptr;
    std::lock_guard<std::mutex> lock(mu_);
    sizes_[p] = bytes;
    return p;
  }
  void raw_release(void* ptr) override {
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = sizes_.find(ptr);
      if (it == sizes_.end()) return;
      bytes = it->second;
      sizes_.erase(it);
    }
    munmap(ptr, bytes);
  }

 private:
  std::mutex mu_;
  std::unordered_map<void*, size_t> sizes_;
};

// One allocator per device for the process: a tensor made in a dry run and released after it
// still finds its allocator (Storage keeps a pointer to it).
DryAllocator& dry_allocator(Device d) {
  static DryAllocator cpu(Device::cpu), cuda(Device::cuda);
  return d == Device::cpu ? cpu : cuda;
}

DryRun* g_active = nullptr;

}  // namespace

bool dry_run_active() { return g_active != nullptr; }

DryRun::DryRun() {
  if (g_active) ST_THROW("a dry run is already active");
  for (Device d : {Device::cpu, Device::cuda}) {
    Allocator& a = dry_allocator(d);
    if (a.stats().total_current != 0)
      ST_THROW("dry run: ", a.stats().total_current, " bytes of an earlier dry run on ", device_name(d),
               " are still allocated");
    a.set_limit(0);
    a.reset_peak();
  }
  saved_log_level_ = static_cast<int>(log_level());
  set_log_level(LogLevel::quiet);
  g_active = this;
}

DryRun::~DryRun() {
  scratch_.clear();
  g_active = nullptr;
  set_log_level(static_cast<LogLevel>(saved_log_level_));
}

Allocator& DryRun::allocator(Device d) { return dry_allocator(d); }

Tensor DryRun::scratch(const std::string& name, size_t bytes, Device d, MemCategory cat) {
  const std::string key = name + "@" + device_name(d);
  auto it = scratch_.find(key);
  if (it != scratch_.end() && it->second.nbytes() >= bytes) return it->second;
  // The larger buffer is made before the smaller one is released, as the backend does.
  Tensor grown = Tensor::empty({static_cast<int64_t>(bytes)}, DType::u8, d, cat);
  scratch_[key] = grown;
  return grown;
}

Allocator* dry_run_allocator(Device d) { return g_active ? &dry_allocator(d) : nullptr; }

void dry_run_add_flops(double flops) {
  if (g_active) g_active->counters_.flops += flops;
}
void dry_run_add_comm_bytes(double bus_bytes) {
  if (g_active) g_active->counters_.comm_bus_bytes += bus_bytes;
}
DryRunCounters dry_run_counters() { return g_active ? g_active->counters_ : DryRunCounters{}; }

Tensor dry_run_scratch(const std::string& name, size_t bytes, Device d, MemCategory cat) {
  return g_active ? g_active->scratch(name, bytes, d, cat) : Tensor();
}

}  // namespace st
