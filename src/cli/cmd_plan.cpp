// `shardtune plan`: per-rank memory of every strategy and method for N ranks, which fit in the
// GPU memory, and the fastest that fits (train/plan.hpp). Runs on any machine, GPU or not: the
// prediction is a dry run of the training code.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/commands.hpp"
#include "config/run_config.hpp"
#include "core/allocator.hpp"
#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "train/plan.hpp"

namespace fs = std::filesystem;

namespace st {

namespace {

struct PlanFlags {
  int ranks = 1;
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
  std::vector<char*> rest;
  for (int i = 0; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      const size_t eq = a.find('=');
      if (eq != std::string::npos) return a.substr(eq + 1);
      if (i + 1 >= argc) ST_THROW_INPUT("command line: ", a, " needs a value");
      return argv[++i];
    };
    auto is = [&](const char* name) { return a == name || a.rfind(std::string(name) + "=", 0) == 0; };
    if (is("--ranks")) {
      const int64_t r = parse_int("--ranks", value());
      if (r < 1 || r > kMaxRanks) ST_THROW_INPUT("command line: --ranks ", r, " must be in [1, ", kMaxRanks, "]");
      f.ranks = static_cast<int>(r);
    }
    else if (is("--gpu-memory")) f.gpu_memory = value();
    else if (is("--reserve")) f.reserve = value();
    else if (is("--methods"))
      for (const std::string& m : split_list(value())) f.methods.push_back(parse_method(m, "command line: --methods"));
    else if (is("--strategies"))
      for (const std::string& s : split_list(value())) {
        const Strategy x = parse_strategy(s, "command line: --strategies");
        if (x == Strategy::automatic) ST_THROW_INPUT("command line: --strategies: 'auto' is what the plan decides; list strategies (none, ddp, tp, zero3, tp+zero3)");
        f.strategies.push_back(x);
      }
    else if (is("--seq-len")) f.seq_len = parse_int("--seq-len", value());
    else if (is("--target-len")) f.target_len = parse_int("--target-len", value());
    else if (is("--json")) f.json_path = value();
    else {
      if (a == "--help" || a == "-h") help = true;
      rest.push_back(argv[i]);
    }
  }
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
    "SIZE per GPU and recommends the fastest that fits for each method.\n\n"
    "Planner flags:\n"
    "  --ranks N            ranks (GPUs) of the run (default 1)\n"
    "  --gpu-memory SIZE    memory per GPU, e.g. 80GiB, 40GB (default: memory_limit of the deck; 0 = no limit)\n"
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
    req.device_memory = parse_bytes(f.gpu_memory.empty() ? cfg.memory_limit : f.gpu_memory, "--gpu-memory");
    if (!f.reserve.empty()) req.reserve = static_cast<int64_t>(parse_bytes(f.reserve, "--reserve"));
    req.methods = f.methods;
    req.strategies = f.strategies;
    req.speed = default_speed_model(cfg.device);
    const std::vector<LayoutEstimate> all = plan_layouts(cfg, data, req);

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
    std::cout << "per-rank " << unit << " at the training peak (largest rank); activations with / without checkpointing\n\n";
    // Rows per optimizer step of a layout: each data-parallel rank takes micro_batch_size x grad_accum.
    auto global_batch = [&](int dp) { return cfg.micro_batch_size * cfg.grad_accum * dp; };
    std::cout << "| strategy | tp | dp | method | weights | grads | optimizer | activations (ckpt / none) | comm | workspace | peak | load peak | fits | global batch | est. step | est. rows/s |\n";
    std::cout << "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n";
    nlohmann::json js = nlohmann::json::array();
    for (const LayoutEstimate& e : all) {
      const PlanLayout& l = e.layout;
      const int tp = l.parallel.tp, dp = l.parallel.dp;
      std::cout << "| " << l.parallel.name() << " | " << tp << " | " << dp << " | " << method_name(l.method) << " | ";
      nlohmann::json j = {{"strategy", l.parallel.name()}, {"tp", tp}, {"dp", dp}, {"method", method_name(l.method)},
                          {"applies", e.applies}};
      if (!e.applies) {
        std::cout << "- | - | - | - | - | - | - | - | no: " << e.reason << " | " << global_batch(dp) << " | - | - |\n";
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
      char t[64];
      std::snprintf(t, sizeof(t), "%.3g s | %.3g", e.step_seconds, e.rows_per_second);
      std::cout << global_batch(dp) << " | " << t << " |\n";
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
      j["compute_seconds"] = e.compute_seconds;
      j["comm_seconds"] = e.comm_seconds;
      js.push_back(j);
    }
    std::cout << "\n";
    const std::vector<Method>& methods = f.methods.empty() ? all_methods() : f.methods;
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
      char rate[32];
      std::snprintf(rate, sizeof(rate), "%.3g", best->rows_per_second);
      // The same figures as the layout's row: training peak and load peak; the larger decides "fits".
      std::cout << "parallel = " << best->layout.parallel.name() << (tp > 1 ? ", tp_size = " + std::to_string(tp) : std::string())
                << " (" << rate << " est. rows/s at global batch " << global_batch(dp) << "; per rank: training peak "
                << fmt(best->memory.peak) << " " << unit << ", load peak " << fmt(best->memory.setup_peak) << " " << unit
                << ")" << (m == deck_method ? "   <- the deck's method" : "") << "\n";
      rec[method_name(m)] = {{"strategy", best->layout.parallel.name()}, {"tp", tp}};
    }
    std::cout << "\nest. step: this rank's counted GEMM/attention FLOPs at " << static_cast<int>(req.speed.efficiency * 100)
              << "% of the device peak + its collective bytes over the link + optimizer and NF4 memory traffic;\n"
              << "est. rows/s = global batch rows per step / est. step: layouts with different global batches (more\n"
              << "data-parallel ranks take more rows per step) are compared per sample by it, and the recommendation\n"
              << "is the layout with the most est. rows/s whose larger peak (training or load) fits (an estimate for\n"
              << "ranking, not a promise).\n";
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
