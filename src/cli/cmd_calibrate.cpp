// `shardtune calibrate`: measure this machine for the planner's step-time model.
//   calibrate --device cuda|cpu [--out FILE] [--seconds N] [--deck FILE [run options]]
//     times each op family over a sweep of shapes with the real kernels (train/calibrate.hpp)
//     and writes a device profile (train/device_profile.hpp); with a deck, also every GEMM shape
//     of its training step.
//   mpirun -np N shardtune calibrate --comm --device cuda|cpu [--out FILE] [--append]
//     nccl-tests-style loops of each collective through shardtune's own communicator (NCCL on
//     cuda, MPI on cpu) over sizes, fitted to latency + size x factor / bus bandwidth, written as
//     a communication profile (train/comm_model.hpp); --append merges into an existing file.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "cli/commands.hpp"
#include "cli/own_flags.hpp"
#include "config/run_config.hpp"
#include "core/allocator.hpp"
#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/profile.hpp"
#include "parallel/runtime.hpp"
#include "train/calibrate.hpp"
#include "train/comm_model.hpp"
#include "train/plan.hpp"

namespace st {

namespace {

struct CalibrateFlags {
  std::string device = "cpu", out, deck_method;
  double seconds = -1, sustain = -1;
  bool comm = false, append = false, small = false;
  int64_t seq_len = 0;
};

const char* kCalibrateHelp =
    "Usage: shardtune calibrate --device cuda|cpu [--out FILE] [--seconds N] [--deck FILE [--key value ...]]\n"
    "       mpirun -np N shardtune calibrate --comm --device cuda|cpu [--out FILE] [--append]\n\n"
    "Measures this machine for `shardtune plan`'s step-time model.\n"
    "  --device D     cuda (the real CUDA kernels) or cpu (the CPU kernels)\n"
    "  --out FILE     where to write (default device_profile.json, with --comm comm_profile.json)\n"
    "  --seconds N    the op sweep's time budget (default 20 on cuda, 5 on cpu)\n"
    "  --deck FILE    also time every GEMM and attention shape of this deck's training step (method and shapes from\n"
    "                 the deck; parallel none; --seq-len L when its shards do not exist)\n"
    "  --sustain-seconds S  after the sweep, S seconds of back-to-back GEMMs: how much slower the\n"
    "                 FLOP-bound ops run under a training step's continuous load (lower clocks) than in\n"
    "                 the sweep's short runs (default 4 on cuda, 0 on cpu; 0: not measured)\n"
    "  --small        the smallest sweep (tests)\n"
    "  --comm         time all-reduce, all-gather, reduce-scatter and broadcast over every rank of the\n"
    "                 job (run it under mpirun with N ranks) and write the fitted latency and bus bandwidth\n"
    "  --append       with --comm: merge into FILE's entries (other rank counts kept)\n";

double parse_double(const std::string& flag, const std::string& v) {
  try {
    size_t used = 0;
    const double x = std::stod(v, &used);
    if (used != v.size()) throw std::invalid_argument(v);
    return x;
  } catch (const std::exception&) {
    ST_THROW_INPUT("command line: ", flag, " '", v, "' is not a number");
  }
}

std::vector<char*> take_flags(int argc, char** argv, CalibrateFlags& f, bool& help, bool& deck) {
  std::vector<char*> rest = take_own_flags(argc, argv, [&](FlagArg& a) {
    if (a.is("--device")) f.device = a.value();
    else if (a.is("--out")) f.out = a.value();
    else if (a.is("--seconds")) f.seconds = parse_double("--seconds", a.value());
    else if (a.is("--sustain-seconds")) f.sustain = parse_double("--sustain-seconds", a.value());
    else if (a.arg() == "--comm") f.comm = true;
    else if (a.arg() == "--append") f.append = true;
    else if (a.arg() == "--small") f.small = true;
    else if (a.is("--seq-len")) f.seq_len = static_cast<int64_t>(parse_double("--seq-len", a.value()));
    else {
      if (a.arg() == "--help" || a.arg() == "-h") help = true;
      if (a.is("--deck")) deck = true;
      return false;
    }
    return true;
  });
  if (f.device != "cuda" && f.device != "cpu") ST_THROW_INPUT("command line: --device '", f.device, "' must be cuda or cpu");
  if (f.seconds == -1) f.seconds = f.device == "cuda" ? 20 : 5;
  if (!(f.seconds > 0) || f.seconds > 3600) ST_THROW_INPUT("command line: --seconds ", f.seconds, " must be in (0, 3600]");
  if (f.sustain == -1) f.sustain = f.device == "cuda" && !f.small ? 4 : 0;
  if (!(f.sustain >= 0) || f.sustain > 600) ST_THROW_INPUT("command line: --sustain-seconds ", f.sustain, " must be in [0, 600]");
  if (f.seq_len < 0) ST_THROW_INPUT("command line: --seq-len must be >= 2");
  if (f.out.empty()) f.out = f.comm ? "comm_profile.json" : "device_profile.json";
  return rest;
}

// The deck's training-step GEMMs and batched attention ops (a dry run: no GPU needed for this part).
struct DeckOps {
  std::vector<TraceEvent> gemms, attention;
};
DeckOps deck_ops(std::vector<char*> rest, const CalibrateFlags& f) {
  RunConfig cfg;
  rest.insert(rest.begin(), const_cast<char*>("calibrate"));
  if (!parse_run_config(static_cast<int>(rest.size()), rest.data(), "calibrate", cfg)) return {};
  if (cfg.device != f.device)
    ST_THROW_INPUT("calibrate: the deck's device is ", cfg.device, " but --device is ", f.device,
                   " (the GEMM shapes and dtypes must be those the device runs)");
  const PlanData data = f.seq_len > 0 ? plan_data_synthetic(cfg, f.seq_len, 0) : plan_data_from_shards(cfg);
  PlanLayout l;
  l.parallel = ParallelLayout::make(Strategy::none, 1, 1, "calibrate");
  l.method = run_method(cfg);
  l.checkpointing = checkpointing_is_auto(cfg) ? Checkpointed::all() : run_checkpointing(cfg);
  DeckOps ops;
  for (const TraceEvent& e : plan_step_trace(cfg, data, l)) {
    if (e.kind != TraceEvent::Kind::op) continue;
    if (e.family == OpFamily::gemm) ops.gemms.push_back(e);
    if ((e.family == OpFamily::attention || e.family == OpFamily::attention_backward) && e.attention.B > 0)
      ops.attention.push_back(e);
  }
  return ops;
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// One collective at one size: the slowest rank's mean time over 10 repetitions, the best of 3
// such trials (a shared machine's hiccups are not the link's).
double time_collective(Comm& comm, CollectiveKind kind, int64_t elems, Device d) {
  const int n = comm.size();
  Tensor full = Tensor::zeros({elems}, DType::f32, d), part = Tensor::zeros({elems / n}, DType::f32, d);
  auto once = [&] {
    switch (kind) {
      case CollectiveKind::all_reduce: comm.all_reduce_sum(full); break;
      case CollectiveKind::all_gather: comm.all_gather(part, full); break;
      case CollectiveKind::reduce_scatter: comm.reduce_scatter_sum(full, part); break;
      case CollectiveKind::broadcast: comm.broadcast(full, 0); break;
    }
  };
  for (int w = 0; w < 2; ++w) once();
  double best = 0;
  for (int trial = 0; trial < 3; ++trial) {
    device_synchronize(d);
    comm.barrier();
    const int reps = 10;
    const double t0 = now();
    for (int r = 0; r < reps; ++r) once();
    device_synchronize(d);
    const double slowest = comm.all_reduce_max((now() - t0) / reps);
    best = trial == 0 ? slowest : std::min(best, slowest);
  }
  return best;
}

int calibrate_comm(int argc, char** argv, const CalibrateFlags& f) {
  Runtime& rt = runtime_init(&argc, &argv);
  if (rt.world_size < 2) ST_THROW_INPUT("calibrate --comm: run it under mpirun with 2 or more ranks (got 1)");
  runtime_make_grid(rt, 1);
  const Device d = f.device == "cuda" ? Device::cuda : Device::cpu;
  if (d == Device::cuda) {
    select_cuda_device(rt.local_rank);
    if (!runtime_enable_device_comms(rt)) ST_THROW_INPUT("calibrate --comm: some node runs more ranks than it has GPUs");
  }
  Comm& comm = runtime_comm(rt, CommGroup::world, d);
  const int nodes = std::max(1, rt.world_size / std::max(1, rt.local_size));
  // Sizes in bytes of f32 buffers, multiples of the rank count (nccl-tests' -b 1M -e 256M -f 4).
  std::vector<int64_t> sizes = d == Device::cuda ? std::vector<int64_t>{1 << 20, 4 << 20, 16 << 20, 64 << 20, 256 << 20}
                                                 : std::vector<int64_t>{16 << 10, 64 << 10, 256 << 10, 1 << 20};
  if (f.small) sizes = {4 << 10, 16 << 10, 64 << 10};
  std::vector<MeasuredCollective> fitted;
  if (rt.world_rank == 0)
    std::printf("# %-14s %6s %12s %12s %10s %10s\n", "collective", "ranks", "size (B)", "time (us)", "algbw GB/s", "busbw GB/s");
  for (int k = 0; k < kNumCollectiveKinds; ++k) {
    const CollectiveKind kind = static_cast<CollectiveKind>(k);
    std::vector<std::pair<double, double>> samples;
    for (int64_t bytes : sizes) {
      const int64_t elems = bytes / 4 / rt.world_size * rt.world_size;
      const double t = time_collective(comm, kind, elems, d);
      const double size = static_cast<double>(elems) * 4;
      samples.emplace_back(size, t);
      if (rt.world_rank == 0)
        std::printf("  %-14s %6d %12.0f %12.1f %10.2f %10.2f\n", collective_kind_name(kind), rt.world_size, size, t * 1e6,
                    size / t / 1e9, size / t * bus_factor(kind, rt.world_size) / 1e9);
    }
    fitted.push_back(fit_collective(kind, rt.world_size, nodes, samples));
  }
  if (rt.world_rank == 0) {
    std::vector<MeasuredCollective> all;
    std::string source = str("shardtune calibrate --comm on ", d == Device::cuda ? cuda_device_name() : std::string("cpu"),
                             " (", comm.backend(), ")");
    if (f.append && std::filesystem::exists(f.out)) {
      std::string old_source;
      for (const MeasuredCollective& m : read_comm_profile(f.out, &old_source)) {
        const bool replaced = std::any_of(fitted.begin(), fitted.end(), [&](const MeasuredCollective& x) {
          return x.kind == m.kind && x.ranks == m.ranks && x.nodes == m.nodes;
        });
        if (!replaced) all.push_back(m);
      }
    }
    all.insert(all.end(), fitted.begin(), fitted.end());
    atomic_write_file(f.out, comm_profile_to_json(all, source));
    for (const MeasuredCollective& m : fitted)
      std::printf("fit %-14s ranks %d nodes %d: latency %.1f us, bus bandwidth %.2f GB/s\n", collective_kind_name(m.kind),
                  m.ranks, m.nodes, m.latency_s * 1e6, m.bus_bytes_per_s / 1e9);
    std::printf("wrote %s\n", f.out.c_str());
  }
  runtime_finalize();
  return kExitOk;
}

}  // namespace

int cmd_calibrate(int argc, char** argv) {
  try {
    CalibrateFlags f;
    bool help = false, deck = false;
    std::vector<char*> rest = take_flags(argc, argv, f, help, deck);
    if (help) {
      std::cout << kCalibrateHelp;
      return kExitOk;
    }
    if (f.comm) return calibrate_comm(argc, argv, f);
    if (rest.size() > 1 && !deck)
      ST_THROW_INPUT("calibrate: unknown argument '", rest[1], "' (see shardtune calibrate --help)");
    CalibrateOptions o;
    o.device = f.device == "cuda" ? Device::cuda : Device::cpu;
    o.seconds = f.seconds;
    o.small = f.small;
    o.sustain_seconds = f.sustain;
    if (deck) {
      DeckOps ops = deck_ops(std::vector<char*>(rest.begin() + 1, rest.end()), f);
      o.gemm_shapes = std::move(ops.gemms);
      o.attention_shapes = std::move(ops.attention);
    }
    if (o.device == Device::cuda) select_cuda_device(0);
    DeviceProfile p = calibrate_device(o);
    p.device = o.device == Device::cuda ? cuda_device_name() : std::string("cpu");
    p.source = str("shardtune calibrate --device ", f.device, " --seconds ", f.seconds,
                   o.gemm_shapes.empty() ? std::string()
                                         : str(" (+ ", p.gemm_shapes.size(), " GEMM and ", p.attention_shapes.size(),
                                               " attention shapes of the deck)"),
                   p.source.empty() ? std::string() : "; " + p.source);
    write_device_profile(f.out, p);
    std::printf("%s: GEMM peak %.4g TFLOP/s, copy %.1f GB/s, %zu exact GEMM and %zu attention shapes, sustained "
                "compute factor %.3f; wrote %s\n", p.device.c_str(), p.gemm_peak_flops / 1e12,
                p.memory_bytes_per_s / 1e9, p.gemm_shapes.size(), p.attention_shapes.size(),
                p.sustained_compute_factor, f.out.c_str());
    return kExitOk;
  } catch (const Error& e) {
    fatal(e);
  } catch (const std::exception& e) {
    fatal(__FILE__, __LINE__, e.what());
  }
}

}  // namespace st
