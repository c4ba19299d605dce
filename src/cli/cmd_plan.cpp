// `shardtune plan`: per-rank memory of every strategy and method for N ranks, which fit in the
// GPU memory, and the fastest that fits (train/plan.hpp). Runs on any machine, GPU or not: the
// prediction is a dry run of the training code.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "cli/own_flags.hpp"
#include "config/run_config.hpp"
#include "core/allocator.hpp"
#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "train/comm_model.hpp"
#include "train/device_profile.hpp"
#include "train/plan.hpp"

namespace fs = std::filesystem;

namespace st {

namespace {

struct PlanFlags {
  int ranks = 1;
  int gpus_per_node = 8;
  std::string gpu, link, net, profile, comm_profile;
  std::string gpu_memory, reserve, json_path;
  std::vector<Method> methods;
  std::vector<Strategy> strategies;
  int64_t seq_len = 0, target_len = 0;
};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ','))
    if (!item.empty()) out.push_back(item);
  return out;
}

int64_t parse_int(const std::string& flag, const std::string& v) {
  try {
    size_t used = 0;
    const long long x = std::stoll(v, &used);
    if (used != v.size()) throw std::invalid_argument(v);
    return x;
  } catch (const std::exception&) {
    ST_THROW_INPUT("command line: ", flag, " '", v, "' is not an integer");
  }
}

// Take the planner's own flags out of argv; the rest are run options (deck and --key value).
std::vector<char*> take_plan_flags(int argc, char** argv, PlanFlags& f, bool& help) {
  std::vector<char*> rest = take_own_flags(argc, argv, [&](FlagArg& a) {
    if (a.is("--ranks") || a.is("--gpus")) {
      const int64_t r = parse_int(a.is("--ranks") ? "--ranks" : "--gpus", a.value());
      if (r < 1 || r > kMaxRanks) ST_THROW_INPUT("command line: --ranks/--gpus ", r, " must be in [1, ", kMaxRanks, "]");
      f.ranks = static_cast<int>(r);
    }
    else if (a.is("--gpus-per-node")) {
      const int64_t g = parse_int("--gpus-per-node", a.value());
      if (g < 1 || g > 64) ST_THROW_INPUT("command line: --gpus-per-node ", g, " must be in [1, 64]");
      f.gpus_per_node = static_cast<int>(g);
    }
    else if (a.is("--gpu")) f.gpu = a.value();
    else if (a.is("--link")) f.link = a.value();
    else if (a.is("--net")) f.net = a.value();
    else if (a.is("--profile")) f.profile = a.value();
    else if (a.is("--comm-profile")) f.comm_profile = a.value();
    else if (a.is("--gpu-memory")) f.gpu_memory = a.value();
    else if (a.is("--reserve")) f.reserve = a.value();
    else if (a.is("--methods"))
      for (const std::string& m : split_list(a.value())) f.methods.push_back(parse_method(m, "command line: --methods"));
    else if (a.is("--strategies"))
      for (const std::string& s : split_list(a.value())) {
        const Strategy x = parse_strategy(s, "command line: --strategies");
        if (x == Strategy::automatic) ST_THROW_INPUT("command line: --strategies: 'auto' is what the plan decides; list strategies (none, ddp, tp, zero3, tp+zero3)");
        f.strategies.push_back(x);
      }
    else if (a.is("--seq-len")) f.seq_len = parse_int("--seq-len", a.value());
    else if (a.is("--target-len")) f.target_len = parse_int("--target-len", a.value());
    else if (a.is("--json")) f.json_path = a.value();
    else {
      if (a.arg() == "--help" || a.arg() == "-h") help = true;
      return false;
    }
    return true;
  });
  if (f.ranks < 1) ST_THROW_INPUT("command line: --ranks must be >= 1");
  if (f.seq_len < 0 || f.seq_len > kMaxPositions)
    ST_THROW_INPUT("command line: --seq-len ", f.seq_len, " must be in [0, ", kMaxPositions, "] (0: from the shards)");
  if (f.target_len < 0 || f.target_len > kMaxPositions)
    ST_THROW_INPUT("command line: --target-len ", f.target_len, " must be in [0, ", kMaxPositions, "]");
  return rest;
}

const char* kPlanHelp =
    "Usage: shardtune plan --deck FILE [--ranks N] [--gpu-memory SIZE] [planner flags] [--key value ...]\n\n"
    "Predicts each rank's memory for every strategy (none/ddp/zero3/tp/tp+zero3 with every tp that\n"
    "divides N) and method (full/lora/qlora), by a dry run of the training code, says which fit in\n"
    "SIZE per GPU, predicts each layout's step time (the dry run's ops and collectives replayed on a\n"
    "compute and a communication stream), tokens/s per GPU, epoch time and scaling efficiency, and\n"
    "recommends the fastest that fits for each method.\n\n"
    "Planner flags:\n"
    "  --ranks N, --gpus N  ranks (GPUs) of the run (default 1)\n"
    "  --gpus-per-node G    GPUs per node (default 8): groups wider than a node cross the network\n"
    "  --gpu KIND           h100, h200, a100-40gb, a100-80gb: the built-in device profile and memory\n"
    "                       (default on cuda: h100)\n"
    "  --profile FILE       a device profile written by `shardtune calibrate` (replaces --gpu's times)\n"
    "  --link KIND          nvlink3, nvlink4, pcie4, pcie5 inside a node (default nvlink4; a100: nvlink3)\n"
    "  --net KIND           ib-hdr, ib-ndr, roce-100, roce-200, roce-400 between nodes (default ib-ndr)\n"
    "  --comm-profile FILE  measured collectives (jobs/measure_comm.sh) used where they match\n"
    "  --gpu-memory SIZE    memory per GPU, e.g. 80GiB, 40GB (default: --gpu's memory, else memory_limit of\n"
    "                       the deck; 0 = no limit)\n"
    "  --reserve SIZE       bytes a rank uses outside shardtune's allocator: CUDA context, cuBLAS, NCCL\n"
    "                       (default on cuda 1 GiB, 3 GiB for layouts with communicators; 0 on cpu)\n"
    "  --methods LIST       methods to plan, comma-separated (default full,lora,qlora)\n"
    "  --strategies LIST    strategies to plan (default all that apply)\n"
    "  --seq-len L          row length when the deck's shards do not exist (and --target-len for T5)\n"
    "  --json FILE          also write the plan as JSON\n\n"
    "Run options (the deck's keys, see `shardtune train --help`) set the model, data and batch.\n";

std::string gib(size_t b) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.2f", static_cast<double>(b) / (1024.0 * 1024 * 1024));
  return buf;
}
std::string mib(size_t b) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.1f", static_cast<double>(b) / (1024.0 * 1024));
  return buf;
}

std::string number_text(double x) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), x >= 100 ? "%.0f" : "%.3g", x);
  return buf;
}

// 45.6 ms, 1.23 s, 4321 s (1.2 h).
std::string seconds_text(double s) {
  char buf[48];
  if (s < 1) std::snprintf(buf, sizeof(buf), "%.3g ms", s * 1e3);
  else if (s < 600) std::snprintf(buf, sizeof(buf), "%.3g s", s);
  else std::snprintf(buf, sizeof(buf), "%.0f s (%.1f h)", s, s / 3600);
  return buf;
}

// The device profile (built in for --gpu or the deck's device, or --profile) and the
// communication model (--link, --net, --gpus-per-node, --comm-profile).
SpeedModel plan_speed_model(const RunConfig& cfg, const PlanFlags& f) {
  SpeedModel m = default_speed_model(cfg.device);
  if (!f.gpu.empty()) {
    if (cfg.device != "cuda")
      ST_THROW_INPUT("command line: --gpu ", f.gpu, " plans a GPU run, but the deck's device is ", cfg.device,
                     " (set --device cuda)");
    const GpuKind g = parse_gpu_kind(f.gpu, "command line: --gpu");
    m.device = builtin_device_profile(g);
    if (g == GpuKind::a100_40gb || g == GpuKind::a100_80gb) {
      m.comm.link = LinkKind::nvlink3;
      m.comm.net = NetKind::ib_hdr;
    }
  }
  if (!f.profile.empty()) m.device = read_device_profile(f.profile);
  if (!f.link.empty()) m.comm.link = parse_link_kind(f.link, "command line: --link");
  if (!f.net.empty()) m.comm.net = parse_net_kind(f.net, "command line: --net");
  m.comm.gpus_per_node = f.gpus_per_node;
  if (!f.comm_profile.empty()) m.comm.measured = read_comm_profile(f.comm_profile, &m.comm.source);
  return m;
}

struct Baseline {
  int ranks = 0;  // 0: nothing fits
  std::string name;
  double rows_per_second = 0;
};

// The fastest fitting layout of `m` on 1 GPU, else on the smallest of 2, 4, ... below N where
// one fits, else on N itself.
Baseline scaling_baseline(const RunConfig& cfg, const PlanData& data, const PlanRequest& req, Method m,
                          const std::vector<LayoutEstimate>& at_n) {
  std::vector<int> counts;
  for (int n = 1; n < req.ranks; n *= 2) counts.push_back(n);
  counts.push_back(req.ranks);
  for (int n : counts) {
    std::vector<LayoutEstimate> here;
    const LayoutEstimate* best = nullptr;
    if (n == req.ranks) {
      best = recommend(at_n, m);
    } else {
      PlanRequest r = req;
      r.ranks = n;
      r.methods = {m};
      r.strategies.clear();
      here = plan_layouts(cfg, data, r);
      best = recommend(here, m);
    }
    if (!best) continue;
    Baseline b;
    b.ranks = n;
    b.name = best->layout.parallel.name() +
             (best->layout.parallel.tp > 1 ? " (tp_size " + std::to_string(best->layout.parallel.tp) + ")" : std::string());
    b.rows_per_second = best->rows_per_second;
    return b;
  }
  return Baseline{};
}

int64_t typical_len_of(const std::vector<LayoutEstimate>& all) {
  for (const LayoutEstimate& e : all)
    if (e.applies) return e.epoch.typical_len;
  return 0;
}

// Per-GPU throughput against the baseline's.
double scaling_efficiency(const LayoutEstimate& e, const Baseline& b) {
  if (b.ranks == 0 || !e.applies || e.rows_per_second <= 0) return 0;
  return (e.rows_per_second / e.layout.parallel.world) / (b.rows_per_second / b.ranks);
}

}  // namespace

int cmd_plan(int argc, char** argv) {
  try {
    PlanFlags f;
    bool help = false;
    std::vector<char*> rest = take_plan_flags(argc, argv, f, help);
    if (help) {
      std::cout << kPlanHelp;
      return kExitOk;
    }
    RunConfig cfg;
    if (!parse_run_config(static_cast<int>(rest.size()), rest.data(), "plan", cfg)) return kExitOk;
    PlanData data;
    if (f.seq_len > 0) {
      data = plan_data_synthetic(cfg, f.seq_len, f.target_len);
    } else {
      try {
        data = plan_data_from_shards(cfg);
      } catch (const InputError& e) {
        ST_THROW_INPUT(e.what(), "\n(plan sizes the buffers from the shards; without them give --seq-len, and "
                                 "--target-len for T5)");
      }
    }
    PlanRequest req;
    req.ranks = f.ranks;
    req.speed = plan_speed_model(cfg, f);
    if (!f.gpu_memory.empty()) req.device_memory = parse_bytes(f.gpu_memory, "--gpu-memory");
    else if (!f.gpu.empty()) req.device_memory = gpu_kind_memory(parse_gpu_kind(f.gpu, "command line: --gpu"));
    else req.device_memory = parse_bytes(cfg.memory_limit, "memory_limit");
    if (!f.reserve.empty()) req.reserve = static_cast<int64_t>(parse_bytes(f.reserve, "--reserve"));
    req.methods = f.methods;
    req.strategies = f.strategies;
    const std::vector<LayoutEstimate> all = plan_layouts(cfg, data, req);
    const std::vector<Method>& methods = f.methods.empty() ? all_methods() : f.methods;
    // Scaling efficiency: per-GPU rows/s against the fastest layout that fits on one GPU, or on
    // the smallest count (1, 2, 4, ...) below N where one fits.
    std::map<Method, Baseline> base;
    for (Method m : methods) base[m] = scaling_baseline(cfg, data, req, m, all);

    const bool big = cfg.device == "cuda";
    auto fmt = [&](size_t b) { return big ? gib(b) : mib(b); };
    const char* unit = big ? "GiB" : "MiB";
    std::cout << "shardtune plan: " << cfg.run_id << " on " << f.ranks << " rank" << (f.ranks == 1 ? "" : "s") << " ("
              << cfg.device << "), micro-batch " << cfg.micro_batch_size << " x " << data.shape.seq_len
              << (data.shape.target_len ? " + " + std::to_string(data.shape.target_len) : std::string()) << " tokens"
              << ", activation_checkpointing = " << cfg.activation_checkpointing
              << (checkpointing_is_auto(cfg) ? " (planned with every block checkpointed)" : "") << "\n";
    std::cout << "memory per GPU: "
              << (req.device_memory ? format_bytes(static_cast<double>(req.device_memory)) : std::string("no limit"))
              << "; reserve outside the allocator "
              << (req.reserve >= 0 ? format_bytes(static_cast<double>(req.reserve))
                                   : cfg.device == "cuda" ? std::string("1 GiB, 3 GiB with NCCL communicators") : std::string("0"))
              << "\n";
    std::cout << "speed: " << req.speed.device.device << " (" << req.speed.device.source << ");\n       "
              << f.ranks << " GPU" << (f.ranks == 1 ? "" : "s") << ", " << req.speed.comm.gpus_per_node << " per node, "
              << link_kind_name(req.speed.comm.link) << " inside a node, " << net_kind_name(req.speed.comm.net)
              << " between nodes" << (req.speed.comm.measured.empty() ? "" : "; measured collectives: " + req.speed.comm.source)
              << "\n";
    std::cout << "per-rank " << unit << " at the training peak (largest rank); activations with / without checkpointing\n\n";
    // Rows per optimizer step of a layout: each data-parallel rank takes micro_batch_size x grad_accum.
    auto global_batch = [&](int dp) { return cfg.micro_batch_size * cfg.grad_accum * dp; };
    std::cout << "| strategy | tp | dp | method | weights | grads | optimizer | activations (ckpt / none) | comm | workspace | peak | load peak | fits | global batch | pred. step (compute + host-bound + exposed comm) | tokens/s per GPU | epoch | scaling eff. |\n";
    std::cout << "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    nlohmann::json js = nlohmann::json::array();
    for (const LayoutEstimate& e : all) {
      const PlanLayout& l = e.layout;
      const int tp = l.parallel.tp, dp = l.parallel.dp;
      std::cout << "| " << l.parallel.name() << " | " << tp << " | " << dp << " | " << method_name(l.method) << " | ";
      nlohmann::json j = {{"strategy", l.parallel.name()}, {"tp", tp}, {"dp", dp}, {"method", method_name(l.method)},
                          {"applies", e.applies}};
      if (!e.applies) {
        std::cout << "- | - | - | - | - | - | - | - | no: " << e.reason << " | " << global_batch(dp) << " | - | - | - | - |\n";
        j["reason"] = e.reason;
        js.push_back(j);
        continue;
      }
      auto cat = [&](MemCategory c) { return e.memory.at_peak[static_cast<size_t>(c)]; };
      std::cout << fmt(cat(MemCategory::weights)) << " | " << fmt(cat(MemCategory::gradients)) << " | "
                << fmt(cat(MemCategory::optimizer)) << " | " << fmt(e.activations_ckpt) << " / " << fmt(e.activations_full)
                << " | " << fmt(cat(MemCategory::communication)) << " | "
                << fmt(cat(MemCategory::workspace) + cat(MemCategory::other)) << " | " << fmt(e.memory.peak) << " | "
                << fmt(e.memory.setup_peak) << " | " << (e.fits ? "yes" : "OOM") << " | ";
      const double eff = scaling_efficiency(e, base[l.method]);
      std::cout << global_batch(dp) << " | " << seconds_text(e.step_seconds) << " (" << seconds_text(e.compute_seconds) << " + "
                << seconds_text(e.step.host_idle) << " + " << seconds_text(e.comm_seconds) << ") | " << number_text(e.tokens_per_second_per_gpu) << " | "
                << (e.epoch.steps > 0 ? seconds_text(e.epoch_seconds) : std::string("-")) << " | "
                << (eff > 0 ? number_text(100 * eff) + "%" : std::string("-")) << " |\n";
      j["global_batch"] = global_batch(dp);
      for (int c = 0; c < kNumMemCategories; ++c)
        j[mem_category_name(static_cast<MemCategory>(c))] = e.memory.at_peak[static_cast<size_t>(c)];
      j["activations_checkpointing"] = e.activations_ckpt;
      j["activations_no_checkpointing"] = e.activations_full;
      j["peak"] = e.memory.peak;
      j["load_peak"] = e.memory.setup_peak;
      j["fits"] = e.fits;
      j["reserve"] = e.reserve;
      j["step_seconds"] = e.step_seconds;
      j["rows_per_second"] = e.rows_per_second;
      j["tokens_per_second_per_gpu"] = e.tokens_per_second_per_gpu;
      j["compute_seconds"] = e.compute_seconds;
      j["exposed_comm_seconds"] = e.comm_seconds;
      j["comm_seconds"] = e.step.comm;
      j["host_bound_seconds"] = e.step.host_idle;
      j["typical_len"] = e.epoch.typical_len;
      j["epoch_steps"] = e.epoch.steps;
      j["epoch_seconds"] = e.epoch_seconds;
      j["scaling_efficiency"] = eff;
      nlohmann::json fam = nlohmann::json::object();
      for (int k = 0; k < kNumOpFamilies; ++k)
        if (e.step.by_family[static_cast<size_t>(k)] > 0)
          fam[op_family_name(static_cast<OpFamily>(k))] = e.step.by_family[static_cast<size_t>(k)];
      j["compute_seconds_by_family"] = fam;
      js.push_back(j);
    }
    std::cout << "\n";
    const Method deck_method = run_method(cfg);
    nlohmann::json rec = nlohmann::json::object();
    for (Method m : methods) {
      const LayoutEstimate* best = recommend(all, m);
      std::cout << "recommended for " << method_name(m) << ": ";
      if (!best) {
        std::cout << "none fits" << (req.device_memory ? " in " + format_bytes(static_cast<double>(req.device_memory)) : "") << "\n";
        rec[method_name(m)] = nullptr;
        continue;
      }
      const int tp = best->layout.parallel.tp, dp = best->layout.parallel.dp;
      // The same figures as the layout's row: training peak and load peak; the larger decides "fits".
      std::cout << "parallel = " << best->layout.parallel.name() << (tp > 1 ? ", tp_size = " + std::to_string(tp) : std::string())
                << " (" << number_text(best->rows_per_second) << " pred. rows/s at global batch " << global_batch(dp)
                << "; per rank: training peak " << fmt(best->memory.peak) << " " << unit << ", load peak "
                << fmt(best->memory.setup_peak) << " " << unit << ")" << (m == deck_method ? "   <- the deck's method" : "")
                << "\n";
      rec[method_name(m)] = {{"strategy", best->layout.parallel.name()}, {"tp", tp}};
    }
    for (Method m : methods)
      if (base[m].ranks > 0)
        std::cout << "scaling baseline for " << method_name(m) << ": " << base[m].name << " on " << base[m].ranks << " GPU"
                  << (base[m].ranks == 1 ? "" : "s") << ", " << number_text(base[m].rows_per_second) << " rows/s\n";
    std::cout << "\npred. step: rank 0's training step (its dry run's every op and collective) replayed on a compute\n"
              << "stream and a communication stream per group, each op at its device-profile time, each collective\n"
              << "latency + size x nccl-tests' bus factor / bus bandwidth, overlapped where the code overlaps (ZeRO-3\n"
              << "prefetch, DDP buckets), at the length the epoch's micro-batches are trimmed to ("
              << typical_len_of(all) << " tokens here).\n"
              << "The recommendation is the layout with the most predicted rows/s whose larger peak (training or load) fits.\n";
    if (!f.json_path.empty()) {
      nlohmann::json out = {{"run_id", cfg.run_id}, {"ranks", f.ranks}, {"device", cfg.device},
                            {"device_memory", req.device_memory},
                            {"layouts", js}, {"recommended", rec}};
      atomic_write_file(f.json_path, out.dump(1) + "\n");  // errors name the path and the cause
    }
    return kExitOk;
  } catch (const Error& e) {
    fatal(e);
  } catch (const std::exception& e) {
    fatal(__FILE__, __LINE__, e.what());
  }
}

}  // namespace st
