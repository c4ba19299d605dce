// Device profiles: how long each op family takes on one GPU (or CPU), as a function of its work,
// for the planner's step-time model (train/step_time.hpp).
//
// A profile is either measured (`shardtune calibrate`, train/calibrate.hpp: each op family over a
// sweep of shapes with the real kernels, GEMMs also at the exact shapes of a deck's model) or
// built in per GPU kind from datasheet peaks and stated achievable fractions.
//
// JSON (format "shardtune-device-profile", version 1):
//   { "format": "shardtune-device-profile", "version": 1,
//     "device": "NVIDIA H100 80GB HBM3", "source": "calibrate ..." | "builtin: ...",
//     "gemm_peak_flops": 7.6e14,          // the best GEMM rate measured (or datasheet x fraction)
//     "memory_bytes_per_s": 3.0e12,       // the best copy rate measured (or datasheet x fraction)
//     "families": { "<family>": { "metric": "flops" | "bytes", "latency_s": 4e-6, "rate": 7e14,
//                                 "points": [[work, seconds], ...],
//                                 "host_s": 5e-6 }, ... },   // host_s optional (default 0)
//     "gemm_shapes": [ { "m": 8192, "n": 4096, "k": 4096, "dtype_bytes": 2, "trans_a": false, "trans_b": true,
//                        "seconds": 3.1e-4 }, ... ],   // trans_a / trans_b optional (default false / true)
//     "attention_shapes": [ { "backward": false, "B": 8, "T": 512, "Tk": 128, "Hq": 16, "Hkv": 16,
//                             "D": 64, "causal": false, "bias": true, "dbias": false,
//                             "seconds": 2e-4 }, ... ],   // optional
//     "sustained_compute_factor": 1.1,    // optional (default 1), in [0.5, 2]
//     "fp8_gemm_speedup": 1.9 }           // optional (default 1), in [1, 4]
// Families are those of core/op_trace.hpp (gemm, attention, norm, ...); gemm and attention are
// measured in FLOPs, the rest in bytes read + written. Every family must be present.
#pragma once

#include <array>
#include <string>
#include <utility>
#include <vector>

#include "core/op_trace.hpp"

namespace st {

// Time of one op of a family with `work` FLOPs or bytes: from the measured points (rate
// interpolated linearly in log(work) between them, the end rates beyond them), else work / rate;
// never less than latency_s (the launch and tail of one kernel).
struct FamilyProfile {
  std::vector<std::pair<double, double>> points;  // (work, seconds), work ascending
  double rate = 0;                                // work per second without points
  double latency_s = 0;
  // The host's time to issue one op of the family (launch, cuBLASLt's host work): the GPU times
  // above are measured with it hidden (calibrate enqueues behind a spinning kernel); the step's
  // schedule (train/step_time.hpp) runs a host timeline beside the GPU's. 0: not modelled.
  double host_s = 0;
  double seconds(double work) const;
};

// One GEMM shape measured exactly: op(A) [m, k] x op(B) [k, n] with its operands' layout (the
// transposes of core/op_trace.hpp's GEMM events: a skinny product's speed depends on which of its
// operands is read along rows or columns). Profiles written before the layout was recorded timed
// A [m, k] x B [n, k]^T.
struct GemmShapeTime {
  int64_t m = 0, n = 0, k = 0;
  int dtype_bytes = 2;
  double seconds = 0;
  bool trans_a = false, trans_b = false;
};

// One attention shape measured exactly (forward or backward): T5's biased and cross-attention
// kernels and each deck's own lengths are not on the sweep's plain self-attention curve.
struct AttentionShapeTime {
  bool backward = false;
  TraceEvent::AttentionKey key;
  double seconds = 0;
};

struct DeviceProfile {
  std::string device;   // e.g. "NVIDIA H100 80GB HBM3", "h100 (built in)", "cpu"
  std::string source;   // how it was made
  double gemm_peak_flops = 0;
  double memory_bytes_per_s = 0;
  std::array<FamilyProfile, kNumOpFamilies> families;
  std::vector<GemmShapeTime> gemm_shapes;  // exact GEMM shapes measured (looked up first)
  std::vector<AttentionShapeTime> attention_shapes;  // exact attention shapes (looked up first)
  // Sustained load: a GPU running a training step's continuous tensor-core load settles at lower
  // clocks than during the sweep's short runs (power and thermal limits). calibrate measures the
  // largest GEMM of its sweep again after seconds of back-to-back GEMMs; the ratio of the two
  // times multiplies every FLOP-bound op (gemm, attention). 1 for built-in profiles (their
  // fractions come from whole training steps) and the CPU.
  double sustained_compute_factor = 1.0;
  // FP8 GEMMs (GEMM events with 1-byte operands, base_precision = fp8) without an exact shape run
  // at the gemm curve's rate times this (their FLOPs divided by it). calibrate measures it on the
  // largest square GEMM where the device has FP8 kernels; built in: 1.9 on h100 / h200 (cuBLASLt
  // 8192 x 4096 x 4096: 1501 vs 791 TFLOP/s, docs/NOTES.md), 1 elsewhere (no FP8 tensor cores).
  double fp8_gemm_speedup = 1.0;

  FamilyProfile& family(OpFamily f) { return families[static_cast<size_t>(f)]; }
  const FamilyProfile& family(OpFamily f) const { return families[static_cast<size_t>(f)]; }
  // Seconds of one traced op (an op event of core/op_trace.hpp) on the device, and on the host.
  double op_seconds(const TraceEvent& e) const;
  double op_host_seconds(const TraceEvent& e) const { return family(e.family).host_s; }
};

// The GPU kinds the planner knows (`plan --gpu`).
enum class GpuKind { h100, h200, a100_40gb, a100_80gb };
GpuKind parse_gpu_kind(const std::string& name, const std::string& what);  // InputError naming `what`
const char* gpu_kind_name(GpuKind g);
std::vector<GpuKind> all_gpu_kinds();
// Memory of the GPU kind in bytes (for `plan --gpu` without --gpu-memory).
size_t gpu_kind_memory(GpuKind g);

// Datasheet figures of a GPU kind and the fractions of them our kernels reach (device_profile.cpp
// names the sources).
struct GpuDatasheet {
  const char* name;
  double dense_bf16_flops;  // tensor-core peak, dense (no sparsity)
  double hbm_bytes_per_s;
  size_t memory_bytes;
  const char* source;
};
const GpuDatasheet& gpu_datasheet(GpuKind g);
DeviceProfile builtin_device_profile(GpuKind g);
// The profile for `device = cpu` decks without a calibration: a few cores' f32 rates.
DeviceProfile builtin_cpu_profile();

// Read a profile written by write_device_profile (or by hand): InputError naming the file and
// the field on anything missing, of the wrong type, negative, unordered or unknown.
DeviceProfile read_device_profile(const std::string& path);
DeviceProfile parse_device_profile(const std::string& text, const std::string& what);
std::string device_profile_to_json(const DeviceProfile& p);
void write_device_profile(const std::string& path, const DeviceProfile& p);  // atomic

}  // namespace st
