#include "train/checkpoint.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/sha256.hpp"
#include "io/safetensors.hpp"

namespace fs = std::filesystem;

namespace st {

namespace {

constexpr int kFormat = 1;

// Options that do not change the numbers a run computes: they may differ on resume.
const std::set<std::string>& free_options() {
  static const std::set<std::string> s = {
      "run_id", "output_dir", "threads", "log_every", "save_model", "val_split", "max_val_rows", "eval_every",
      "eval_at_start", "tokenizer", "watchdog_timeout", "memory_limit", "gpu_memory_limit", "zero3_prefetch", "parallel", "tp_size",
      "checkpoint_every", "checkpoint_dir", "resume", "keep_checkpoints"};
  return s;
}

std::string options_hash(const std::map<std::string, std::string>& opts) {
  std::string all;
  for (const auto& [k, v] : opts) all += k + "=" + v + "\n";
  return sha256_hex(all);
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) ST_THROW_INPUT(path, ": cannot read (an incomplete checkpoint?)");
  try {
    return nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    ST_THROW_INPUT(path, ": not valid JSON: ", e.what());
  }
}

std::string rank_file(const std::string& dir, int rank, const char* ext) {
  return (fs::path(dir) / str("rank-", rank, ext)).string();
}

// Complete checkpoints in root, by step.
std::vector<std::pair<int64_t, std::string>> list_steps(const std::string& root, bool complete_only) {
  std::vector<std::pair<int64_t, std::string>> out;
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const int64_t s = checkpoint_dir_step(e.path().filename().string());
    if (s < 0 || !e.is_directory(ec)) continue;
    if (complete_only && !checkpoint_complete(e.path().string())) continue;
    out.emplace_back(s, e.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

void remove_dir(const std::string& dir, const char* why) {
  std::error_code ec;
  fs::remove_all(dir, ec);
  if (ec) ST_WARN("checkpoint: could not remove ", dir, " (", why, "): ", ec.message());
  else ST_DEBUG("checkpoint: removed ", dir, " (", why, ")");
}

}  // namespace

std::string CheckpointLayout::str() const {
  return st::str("world_size ", parallel.world, ", tp ", parallel.tp, ", dp ", parallel.dp, ", parallel ", parallel.name(),
                 ", method ", method_name(method));
}

std::string checkpoint_root(const RunConfig& c) {
  if (!c.checkpoint_dir.empty()) return c.checkpoint_dir;
  return (fs::path(c.output_dir) / c.run_id / "checkpoints").string();
}

std::string checkpoint_step_dir(const std::string& root, int64_t step) {
  char name[32];
  std::snprintf(name, sizeof(name), "step-%08lld", static_cast<long long>(step));
  return (fs::path(root) / name).string();
}

int64_t checkpoint_dir_step(const std::string& name) {
  if (name.size() < 6 || name.rfind("step-", 0) != 0) return -1;
  int64_t v = 0;
  for (size_t i = 5; i < name.size(); ++i) {
    if (name[i] < '0' || name[i] > '9' || v > (int64_t{1} << 50)) return -1;
    v = v * 10 + (name[i] - '0');
  }
  return v;
}

bool checkpoint_complete(const std::string& step_dir) {
  std::error_code ec;
  return fs::is_regular_file(fs::path(step_dir) / "COMPLETE", ec);
}

std::map<std::string, std::string> checkpoint_options(const RunConfig& c) {
  std::map<std::string, std::string> m;
  for (const auto& [k, v] : c.resolved())
    if (!free_options().count(k)) m[k] = v;
  return m;
}

std::string find_resume_checkpoint(const RunConfig& c) {
  if (c.resume == "none") return "";
  const std::string src = c.origin.count("resume") ? c.origin.at("resume") : "options";
  if (c.resume == "auto") {
    const auto steps = list_steps(checkpoint_root(c), true);
    if (steps.empty()) {
      ST_LOG("resume: no complete checkpoint in ", checkpoint_root(c), ": starting afresh");
      return "";
    }
    return steps.back().second;
  }
  std::error_code ec;
  if (!fs::is_directory(c.resume, ec)) ST_THROW_INPUT(src, ": resume = ", c.resume, ": no such checkpoint directory");
  if (!checkpoint_complete(c.resume))
    ST_THROW_INPUT(src, ": resume = ", c.resume, ": not a complete checkpoint (no COMPLETE marker: the run was "
                   "stopped while writing it); use resume = auto for the newest complete one");
  return c.resume;
}

void write_checkpoint(const RunConfig& c, const CheckpointLayout& layout, int64_t step, AdamW& opt,
                      const nlohmann::json& trainer, Comm& world) {
  const std::string root = checkpoint_root(c), dir = checkpoint_step_dir(root, step);
  const int rank = world.rank();
  if (rank == 0) {
    fs::create_directories(dir);
    std::error_code ec;
    fs::remove(fs::path(dir) / "COMPLETE", ec);  // a stale marker of an earlier run: never over new files
  }
  world.barrier();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (!fs::is_directory(dir)) ST_THROW_INPUT(dir, ": cannot create the checkpoint directory", ec ? ": " + ec.message() : "");
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const auto& [name, t] : opt.state_tensors()) tensors.emplace_back(name, *t);
  write_safetensors(rank_file(dir, rank, ".safetensors"), tensors, {{"step", std::to_string(step)}});
  const std::map<std::string, std::string> opts = checkpoint_options(c);
  nlohmann::json j = {{"format", kFormat},
                      {"step", step},
                      {"rank", rank},
                      {"world_size", layout.parallel.world},
                      {"tp", layout.parallel.tp},
                      {"dp", layout.parallel.dp},
                      {"parallel", layout.parallel.name()},
                      {"method", method_name(layout.method)},
                      {"optimizer_steps", opt.steps_taken()},
                      {"options_sha256", options_hash(opts)},
                      {"options", opts},
                      {"trainer", trainer}};
  atomic_write_file(rank_file(dir, rank, ".json"), j.dump(1) + "\n");
  world.barrier();  // every rank's files are durable
  if (rank == 0) {
    const nlohmann::json marker = {{"step", step},
                                   {"world_size", layout.parallel.world},
                                   {"tp", layout.parallel.tp},
                                   {"dp", layout.parallel.dp},
                                   {"parallel", layout.parallel.name()},
                                   {"method", method_name(layout.method)}};
    atomic_write_file((fs::path(dir) / "COMPLETE").string(), marker.dump(1) + "\n");
    prune_checkpoints(c, step);
  }
  ST_LOG("checkpoint: step ", step, " -> ", dir);
}

void check_checkpoint(const RunConfig& c, const CheckpointLayout& layout, const std::string& dir) {
  // The layout first, from the marker (every rank reads the same file: the same answer everywhere).
  const nlohmann::json marker = read_json((fs::path(dir) / "COMPLETE").string());
  const std::string marker_path = (fs::path(dir) / "COMPLETE").string();
  CheckpointLayout was;
  try {
    was.parallel.world = marker.at("world_size").get<int>();
    was.parallel.tp = marker.at("tp").get<int>();
    was.parallel.dp = marker.at("dp").get<int>();
    was.parallel.strategy = parse_strategy(marker.at("parallel").get<std::string>(), marker_path);
    was.method = parse_method(marker.at("method").get<std::string>(), marker_path);
  } catch (const nlohmann::json::exception& e) {
    ST_THROW_INPUT(marker_path, ": ", e.what());
  }
  if (!(was.parallel == layout.parallel) || was.method != layout.method)
    ST_THROW_INPUT("resume: checkpoint ", dir, " was written by a run of layout (", was.str(),
                   "), this run's layout is (", layout.str(), "): resuming needs the same world size, tp_size, "
                   "parallel and method (re-sharding is not supported); relaunch with the checkpoint's layout, "
                   "or set resume = none to start afresh");
  const int rank = layout.rank;
  const std::string jpath = rank_file(dir, rank, ".json");
  const nlohmann::json j = read_json(jpath);
  if (j.value("format", 0) != kFormat) ST_THROW_INPUT(jpath, ": checkpoint format ", j.value("format", 0), ", expected ", kFormat);
  // The options that shape the numbers.
  const std::map<std::string, std::string> now = checkpoint_options(c);
  std::map<std::string, std::string> then;
  try {
    then = j.at("options").get<std::map<std::string, std::string>>();
  } catch (const std::exception& e) {
    ST_THROW_INPUT(jpath, ": options: ", e.what());
  }
  if (then != now) {
    std::string diff;
    std::set<std::string> keys;
    for (const auto& kv : then) keys.insert(kv.first);
    for (const auto& kv : now) keys.insert(kv.first);
    for (const std::string& k : keys) {
      const auto a = then.find(k);
      const auto b = now.find(k);
      const std::string va = a == then.end() ? "(unset)" : a->second, vb = b == now.end() ? "(unset)" : b->second;
      if (va != vb) diff += str(diff.empty() ? "" : ", ", k, " = ", va, " in the checkpoint, ", vb, " now");
    }
    ST_THROW_INPUT("resume: checkpoint ", dir, " was written with other training options: ", diff,
                   " (resume with the same options, or set resume = none to start afresh)");
  }
}

nlohmann::json load_checkpoint(const RunConfig& c, const CheckpointLayout& layout, const std::string& dir,
                               AdamW& opt) {
  check_checkpoint(c, layout, dir);
  const int rank = layout.rank;
  const std::string jpath = rank_file(dir, rank, ".json");
  const nlohmann::json j = read_json(jpath);
  // The optimizer's state, in place.
  const SafetensorsFile f = SafetensorsFile::open(rank_file(dir, rank, ".safetensors"));
  const auto state = opt.state_tensors();
  if (f.entries().size() != state.size())
    ST_THROW_INPUT(f.path(), ": ", f.entries().size(), " tensors, this run's optimizer has ", state.size());
  for (const auto& [name, t] : state) {
    const SafetensorsEntry* e = f.find(name);
    if (!e) ST_THROW_INPUT(f.path(), ": no tensor '", name, "' (written by another model or method?)");
    if (e->numel() != t->numel()) ST_THROW_INPUT(f.path(), ": '", name, "' has shape ", shape_str(e->shape), ", this run's is ", t->shape().str());
    if (safetensors_dtype_size(e->dtype) != dtype_size(t->dtype()))
      ST_THROW_INPUT(f.path(), ": '", name, "' is ", e->dtype, ", this run's is ", dtype_name(t->dtype()));
    const Tensor host = f.read_float(name, t->dtype(), Device::cpu, MemCategory::other);
    t->copy_from(host);
  }
  opt.set_steps_taken(j.at("optimizer_steps").get<int64_t>());
  ST_LOG("resume: from ", dir, " (step ", j.at("step").get<int64_t>(), ")");
  return j.at("trainer");
}

nlohmann::json checkpoint_trainer_state(const std::string& dir, int rank) {
  const std::string path = rank_file(dir, rank, ".json");
  const nlohmann::json j = read_json(path);
  if (!j.contains("trainer") || !j["trainer"].is_object()) ST_THROW_INPUT(path, ": no trainer state");
  return j["trainer"];
}

void prune_checkpoints(const RunConfig& c, int64_t step) {
  const std::string root = checkpoint_root(c);
  const auto all = list_steps(root, false);
  std::vector<std::string> complete;  // at or before step, oldest first
  for (const auto& [s, dir] : all) {
    if (step < 0) {
      ST_WARN("checkpoint: removing ", dir, " of an earlier run (this run starts afresh: resume = none)");
      remove_dir(dir, "earlier run");
    } else if (s > step) {
      remove_dir(dir, "after the resumed step");
    } else if (!checkpoint_complete(dir)) {
      if (s != step) remove_dir(dir, "incomplete");
    } else {
      complete.push_back(dir);
    }
  }
  const size_t keep = static_cast<size_t>(std::max<int64_t>(1, c.keep_checkpoints));
  for (size_t i = 0; i + keep < complete.size(); ++i) remove_dir(complete[i], "beyond keep_checkpoints");
}

}  // namespace st
