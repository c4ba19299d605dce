#include "cuda/device.cuh"

#include "core/allocator.hpp"
#include "core/log.hpp"
#include "core/profile.hpp"
#include "core/tensor.hpp"

namespace st {

namespace {

class CudaAllocator final : public Allocator {
 public:
  CudaAllocator() : Allocator(Device::cuda) {}

 protected:
  void* raw_allocate(size_t bytes) override {
    void* p = nullptr;
    const cudaError_t e = cudaMalloc(&p, bytes);
    if (e == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // clear the sticky error: out of memory is a result here
      return nullptr;
    }
    ST_CUDA_CHECK(e);
    return p;
  }
  void raw_release(void* ptr) override { ST_CUDA_CHECK(cudaFree(ptr)); }
};

}  // namespace

size_t cuda_total_memory() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    return 0;
  }
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, 0) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return p.totalGlobalMem;
}

std::string cuda_device_name() {
  int dev = 0;
  cudaDeviceProp p{};
  if (cudaGetDevice(&dev) != cudaSuccess || cudaGetDeviceProperties(&p, dev) != cudaSuccess) {
    (void)cudaGetLastError();
    return "";
  }
  return p.name;
}

size_t cuda_used_memory() {
  size_t free_b = 0, total_b = 0;
  if (cudaMemGetInfo(&free_b, &total_b) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return total_b - free_b;
}

Allocator* cuda_allocator() {
  static CudaAllocator a;
  return &a;
}

void device_memset_zero(void* ptr, size_t bytes, Device d) {
  if (d == Device::cpu) {
    std::memset(ptr, 0, bytes);
    return;
  }
  ST_CUDA_CHECK(cudaMemset(ptr, 0, bytes));
}

void device_memcpy(void* dst, Device dst_dev, const void* src, Device src_dev, size_t bytes) {
  if (dst_dev == Device::cpu && src_dev == Device::cpu) {
    std::memcpy(dst, src, bytes);
    return;
  }
  ST_CUDA_CHECK(cudaMemcpy(dst, src, bytes, cudaMemcpyDefault));
}

namespace cuda {

int device_count() {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return n;
}

void select_device(int local_rank) {
  set_profile_sync_hook([] { cudaDeviceSynchronize(); });
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess || n == 0) {
    (void)cudaGetLastError();
    ST_THROW_INPUT("device = cuda but no usable CUDA device is visible (", e == cudaSuccess ? "0 devices" : cudaGetErrorString(e), ")");
  }
  const int dev = local_rank % n;
  ST_CUDA_CHECK(cudaSetDevice(dev));
  cudaDeviceProp prop;
  ST_CUDA_CHECK(cudaGetDeviceProperties(&prop, dev));
  ST_LOG("cuda: device ", dev, " of ", n, ": ", prop.name, ", ", prop.multiProcessorCount, " SMs, ",
         format_bytes(static_cast<double>(prop.totalGlobalMem)), ", compute capability ", prop.major, ".", prop.minor);
}

}  // namespace cuda

void select_cuda_device(int local_rank) { cuda::select_device(local_rank); }

}  // namespace st

// ---------------------------------------------------------------------------- launch checks
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "cuda/common.cuh"

namespace st::cuda {

int sm_count() {
  static const int n = [] {
    int dev = 0, sms = 0;
    ST_CUDA_CHECK(cudaGetDevice(&dev));
    ST_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev));
    return sms;
  }();
  return n;
}

void* raw_scratch(int slot, size_t bytes) {
  static void* buf[kScratchSlots] = {};
  static size_t cap[kScratchSlots] = {};
  if (slot < 0 || slot >= kScratchSlots) ST_THROW("raw_scratch: slot ", slot);
  if (bytes > cap[slot]) {
    if (buf[slot]) ST_CUDA_CHECK(cudaFree(buf[slot]));  // synchronises: earlier users are done
    // The skinny slot grows to the request exactly (its sizes are few and the planner's dry run
    // reserves the largest of them); the others by doubling.
    cap[slot] = slot == kScratchSkinny ? bytes : std::max(bytes, 2 * cap[slot]);
    ST_CUDA_CHECK(cudaMalloc(&buf[slot], cap[slot]));
  }
  return buf[slot];
}

const void* device_table(int kind, const void* host, size_t bytes) {
  constexpr int kKept = 8;  // distinct tables kept per kind
  struct Entry {
    std::vector<unsigned char> bytes;  // the host copy the device copy was made from
    void* dev = nullptr;
    size_t cap = 0;
    uint64_t used = 0;  // when last returned (0: never)
  };
  static Entry kept[kTableKinds][kKept];
  static uint64_t clock = 0;
  if (kind < 0 || kind >= kTableKinds) ST_THROW("device_table: kind ", kind);
  if (bytes == 0) ST_THROW("device_table: empty table");
  ++clock;
  Entry* victim = &kept[kind][0];
  for (Entry& e : kept[kind]) {
    if (e.dev && e.bytes.size() == bytes && std::memcmp(e.bytes.data(), host, bytes) == 0) {
      e.used = clock;
      return e.dev;
    }
    if (e.used < victim->used) victim = &e;
  }
  // The least recently used entry (an unused one first) takes the new table.
  if (bytes > victim->cap) {
    if (victim->dev) ST_CUDA_CHECK(cudaFree(victim->dev));  // synchronises: earlier readers are done
    victim->cap = std::max(bytes, 2 * victim->cap);
    ST_CUDA_CHECK(cudaMalloc(&victim->dev, victim->cap));
  }
  // Pageable source: returns once the bytes are staged, so `host` may go out of scope.
  ST_CUDA_CHECK(cudaMemcpyAsync(victim->dev, host, bytes, cudaMemcpyHostToDevice, stream()));
  const unsigned char* h = static_cast<const unsigned char*>(host);
  victim->bytes.assign(h, h + bytes);
  victim->used = clock;
  return victim->dev;
}

bool debug_sync() {
  static const bool on = [] {
    const char* e = std::getenv("SHARDTUNE_CUDA_SYNC");
    return e && e[0] == '1';
  }();
  return on;
}

void check_launch(const char* kernel, const char* file, int line) {
  cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess && debug_sync()) e = cudaDeviceSynchronize();
  if (e != cudaSuccess)
    throw Error(str("CUDA kernel ", kernel, " failed: ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"), file, line);
}

}  // namespace st::cuda
