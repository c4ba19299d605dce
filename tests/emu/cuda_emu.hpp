// A CPU emulator for shardtune's CUDA kernels that use mma.sync, ldmatrix and cp.async (the
// skinny kernels of cuda/skinny.cu), so that a kernel can be run and tested on a machine without
// a GPU. Every CUDA thread of a block is a std::thread; blocks run one after another (the
// dynamic shared memory is one host buffer). __syncthreads is a barrier over the block's threads
// and every warp-collective instruction (ldmatrix, mma.sync, shfl) a rendezvous of the warp's 32
// threads, after which each thread computes its own result from what all lanes posted, by the
// PTX ISA's definitions (fragment layouts as documented at the top of cuda/skinny.cu). cp.async
// copies land when a wait_group covers their group (a missing or short wait reads stale bits). Arithmetic: mma's products of bf16 are exact
// in f32 and summed in k order in f32 (the tensor cores' order may differ: tests use bounds).
//
// Include it before the kernel source with ST_CUDA_EMU defined; the kernel source replaces its
// PTX wrappers by the emu:: functions below and leaves its host launchers out.
#pragma once

#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <atomic>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>

namespace emu {

struct ThreadState {
  dim3 thread_idx{0, 0, 0}, block_idx{0, 0, 0};
  int lane = 0, warp = 0;
};
inline ThreadState& tls() {
  thread_local ThreadState s;
  return s;
}
struct Launch {
  dim3 grid{1, 1, 1}, block{1, 1, 1};
};
inline Launch& launch_dims() {
  static Launch l;
  return l;
}

// The block's dynamic shared memory (one block at a time): each kernel source's own array (its
// kernels declare `extern __shared__ ... smem[]` in their namespace), registered with set_shared
// (launch fills every registered array with NaN bits before a block) and named by its wrappers.
constexpr size_t kSharedBytes = 256 * 1024;
inline std::vector<unsigned char*>& shared_arrays() {
  static std::vector<unsigned char*> v;
  return v;
}
inline void set_shared(unsigned char* p) { shared_arrays().push_back(p); }

struct Warp {
  std::barrier<> bar{32};
  uint32_t u[32][12];
  float f[32][4];
};
struct Block {
  std::unique_ptr<std::barrier<>> bar;
  std::vector<std::unique_ptr<Warp>> warps;
};
inline Block& block() {
  static Block b;
  return b;
}
inline Warp& warp() { return *block().warps[static_cast<size_t>(tls().warp)]; }

inline void sync_block() { block().bar->arrive_and_wait(); }

inline uint32_t to_shared(const unsigned char* base, const void* p) {
  const auto* c = static_cast<const unsigned char*>(p);
  if (c < base || c >= base + kSharedBytes) throw std::runtime_error("emu: not a shared-memory address");
  return static_cast<uint32_t>(c - base);
}
inline const uint16_t* at_shared(const unsigned char* base, uint32_t a) {
  if (a >= kSharedBytes || a % 2) throw std::runtime_error("emu: bad shared-memory address");
  return reinterpret_cast<const uint16_t*>(base + a);
}

// cp.async of 16 bytes (4 in the attention kernels), src_bytes 0 writing zeros, as the PTX ISA
// orders it: a thread's copies join its open group, commit_group closes it, and wait_group N
// completes all but the N most recent groups (the copies land then, not before: a kernel that
// reads shared memory before the wait that covers it reads the stale NaN bits).
struct CpAsync {
  unsigned char* dst;
  const void* src;
  int bytes, src_bytes;
};
struct CpAsyncState {
  std::vector<CpAsync> open;
  std::vector<std::vector<CpAsync>> committed;  // oldest first
};
inline CpAsyncState& cp_state() {
  thread_local CpAsyncState s;
  return s;
}
inline void cp_async(unsigned char* base, uint32_t dst, const void* src, int bytes, int src_bytes) {
  if (dst + static_cast<uint32_t>(bytes) > kSharedBytes || dst % static_cast<uint32_t>(bytes))
    throw std::runtime_error("emu: cp.async destination out of range or unaligned");
  cp_state().open.push_back(CpAsync{base + dst, src, bytes, src_bytes});
}
inline void cp_async_commit() {
  CpAsyncState& s = cp_state();
  s.committed.push_back(std::move(s.open));
  s.open.clear();
}
inline void cp_async_wait(int n) {
  CpAsyncState& s = cp_state();
  while (static_cast<int>(s.committed.size()) > n) {
    for (const CpAsync& c : s.committed.front()) {
      if (c.src_bytes == 0) std::memset(c.dst, 0, static_cast<size_t>(c.bytes));
      else std::memcpy(c.dst, c.src, static_cast<size_t>(c.bytes));
    }
    s.committed.erase(s.committed.begin());
  }
}

// ldmatrix .m8n8 .x1/.x2/.x4 (.trans): matrix i's 8 row addresses come from lanes 8i .. 8i + 7;
// thread t receives, of each matrix, row t / 4, elements 2 (t % 4), 2 (t % 4) + 1 (trans: of
// the transpose: stored rows 2 (t % 4), 2 (t % 4) + 1 at column t / 4).
inline void ldmatrix(const unsigned char* base, uint32_t* r, int nmat, bool trans, uint32_t addr) {
  Warp& w = warp();
  const int lane = tls().lane;
  w.u[lane][0] = addr;
  w.bar.arrive_and_wait();
  const int row = lane / 4, col = 2 * (lane % 4);
  for (int i = 0; i < nmat; ++i) {
    uint16_t e[2];
    for (int k = 0; k < 2; ++k) {
      if (!trans) {
        if (w.u[8 * i + row][0] % 16) throw std::runtime_error("emu: ldmatrix row address not 16-byte aligned");
        e[k] = at_shared(base, w.u[8 * i + row][0])[col + k];
      } else {
        e[k] = at_shared(base, w.u[8 * i + col + k][0])[row];
      }
    }
    r[i] = static_cast<uint32_t>(e[0]) | (static_cast<uint32_t>(e[1]) << 16);
  }
  w.bar.arrive_and_wait();
}

inline float bf16_bits_to_f(uint16_t b) {
  const uint32_t u = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 d = a b + d; fragments (g = lane / 4,
// t = lane % 4): a0 = A[g][2t..], a1 = A[g+8][2t..], a2 = A[g][2t+8..], a3 = A[g+8][2t+8..];
// b0 = B[2t..2t+1][g], b1 = B[2t+8..][g]; d0, d1 = D[g][2t, 2t+1], d2, d3 = D[g+8][2t, 2t+1].
inline void mma_m16n8k16(float* d, const uint32_t* a, uint32_t b0, uint32_t b1) {
  Warp& w = warp();
  const int lane = tls().lane;
  for (int i = 0; i < 4; ++i) w.u[lane][i] = a[i];
  w.u[lane][4] = b0;
  w.u[lane][5] = b1;
  w.bar.arrive_and_wait();
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int h = 0; h < 2; ++h) {  // the two bf16 of a register: element 2t + h
      auto el = [&](uint32_t reg) { return bf16_bits_to_f(static_cast<uint16_t>(reg >> (16 * h))); };
      A[g][2 * t + h] = el(w.u[l][0]);
      A[g + 8][2 * t + h] = el(w.u[l][1]);
      A[g][2 * t + 8 + h] = el(w.u[l][2]);
      A[g + 8][2 * t + 8 + h] = el(w.u[l][3]);
      B[2 * t + h][g] = el(w.u[l][4]);
      B[2 * t + 8 + h][g] = el(w.u[l][5]);
    }
  }
  w.bar.arrive_and_wait();
  const int g = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int m = g + (e / 2) * 8, n = 2 * t + e % 2;
    float s = d[e];
    for (int k = 0; k < 16; ++k) s += A[m][k] * B[k][n];
    d[e] = s;
  }
}

// atomicAdd / red.global.add on f32 in global memory (the attention backward's dQ sums).
inline void atomic_add(float* p, float v) { std::atomic_ref<float>(*p).fetch_add(v); }

inline float shfl_xor(float v, int mask) {
  Warp& w = warp();
  const int lane = tls().lane;
  w.f[lane][0] = v;
  w.bar.arrive_and_wait();
  const float r = w.f[lane ^ mask][0];
  w.bar.arrive_and_wait();
  return r;
}

// Runs body() as the kernel <<<grid, block>>>: blocks one after another, the threads of a block
// together. A thread that returns leaves the block's and its warp's barriers.
inline void launch(dim3 grid, dim3 blk, const std::function<void()>& body) {
  const int nthreads = static_cast<int>(blk.x * blk.y * blk.z);
  if (nthreads % 32 != 0) throw std::runtime_error("emu: block size not a multiple of 32");
  launch_dims() = Launch{grid, blk};
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        Block& b = block();
        b.bar = std::make_unique<std::barrier<>>(nthreads);
        b.warps.clear();
        for (int i = 0; i < nthreads / 32; ++i) b.warps.push_back(std::make_unique<Warp>());
        for (unsigned char* sm : shared_arrays()) std::memset(sm, 0xff, kSharedBytes);  // stale: NaN bits
        std::vector<std::thread> threads;
        std::vector<std::exception_ptr> errors(static_cast<size_t>(nthreads));
        for (int t = 0; t < nthreads; ++t)
          threads.emplace_back([&, t] {
            ThreadState& s = tls();
            s.thread_idx = dim3(static_cast<unsigned>(t) % blk.x, (static_cast<unsigned>(t) / blk.x) % blk.y,
                                static_cast<unsigned>(t) / (blk.x * blk.y));
            s.block_idx = dim3(bx, by, bz);
            s.lane = t % 32;
            s.warp = t / 32;
            cp_state() = CpAsyncState{};
            try {
              body();
            } catch (...) {
              errors[static_cast<size_t>(t)] = std::current_exception();
            }
            b.warps[static_cast<size_t>(s.warp)]->bar.arrive_and_drop();
            b.bar->arrive_and_drop();
          });
        for (auto& th : threads) th.join();
        for (auto& e : errors)
          if (e) std::rethrow_exception(e);
      }
}

}  // namespace emu

// The CUDA names the kernels use.
using std::max;  // CUDA's device min / max overloads
using std::min;
#undef __launch_bounds__
#define threadIdx (::emu::tls().thread_idx)
#define blockIdx (::emu::tls().block_idx)
#define blockDim (::emu::launch_dims().block)
#define gridDim (::emu::launch_dims().grid)
#define __syncthreads() ::emu::sync_block()
#define __expf(x) std::exp(x)
#define __shfl_xor_sync(mask, v, o) ::emu::shfl_xor((v), (o))
#define __launch_bounds__(...)
#define __fmaf_rn(a, b, c) std::fma((a), (b), (c))
#define __ldg(p) (*(p))
#define __trap() throw std::runtime_error("emu: __trap")
#define atomicAdd(p, v) ::emu::atomic_add((p), (v))
