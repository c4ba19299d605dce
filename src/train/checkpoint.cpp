#include "train/checkpoint.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <set>
#include <sstream>

#include "core/atomic_file.hpp"
#include "core/error.hpp"
#include "core/log.hpp"
#include "core/sha256.hpp"
#include "io/safetensors.hpp"
#include "io/shards.hpp"

namespace fs = std::filesystem;

namespace st {

namespace {

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) ST_THROW_INPUT(path, ": cannot read (an incomplete checkpoint?)");
  try {
    return nlohmann::json::parse(in);
  } catch (const std::exception& e) {
    ST_THROW_INPUT(path, ": not valid JSON: ", e.what());
  }
}

constexpr int kFormat = 2;  // 2: checksums of every file; the training data by content, not by path

// Options that do not change the numbers a run computes: they may differ on resume. (`data` is
// a path: the training data is identified by its content instead, as "train_data".)
const std::set<std::string>& free_options() {
  static const std::set<std::string> s = {
      "run_id", "output_dir", "threads", "log_every", "save_model", "val_split", "max_val_rows", "eval_every",
      "eval_at_start", "tokenizer", "watchdog_timeout", "memory_limit", "gpu_memory_limit", "zero3_prefetch", "parallel", "tp_size",
      "checkpoint_every", "checkpoint_dir", "resume", "keep_checkpoints", "data", "overwrite",
      "activation_checkpointing"};  // recomputation gives identical gradients
  return s;
}

// The training split's content identity, computed once per process (the shards do not change
// under a running run; a resume is a new process).
std::string train_data_identity(const RunConfig& c) {
  static std::mutex m;
  static std::map<std::string, std::string> cache;
  const std::string key = c.data + "\n" + c.train_split;
  std::lock_guard<std::mutex> lock(m);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, split_identity(c.data, c.train_split).str()).first;
  return it->second;
}

// A JSON document carrying its own checksum: "sha256" is the SHA-256 of the document's dump(1)
// without that field (numbers are integers and strings here, so parse and dump round-trip).
std::string dump_with_checksum(nlohmann::json j) {
  j.erase("sha256");
  j["sha256"] = sha256_hex(j.dump(1));
  return j.dump(1) + "\n";
}

void verify_checksum(const nlohmann::json& j, const std::string& path) {
  if (!j.is_object() || !j.contains("sha256") || !j["sha256"].is_string())
    ST_THROW_INPUT(path, ": field 'sha256' is missing (not a checkpoint file of this format)");
  nlohmann::json copy = j;
  copy.erase("sha256");
  if (sha256_hex(copy.dump(1)) != j["sha256"].get<std::string>())
    ST_THROW_INPUT(path, ": its content does not match its field 'sha256': the file was modified or damaged after it "
                   "was written (resume from another checkpoint, or set resume = none)");
}

// Field checks of a checkpoint's JSON: present and of the type the reader takes (InputError
// naming the file and the field, before any value is used).
enum class Kind { integer, natural, bits, boolean, string, object, array };

const nlohmann::json& field(const nlohmann::json& j, const std::string& path, const std::string& prefix, const char* key,
                            Kind kind) {
  const std::string name = prefix + key;
  if (!j.is_object() || !j.contains(key)) ST_THROW_INPUT(path, ": field '", name, "' is missing");
  const nlohmann::json& v = j.at(key);
  bool ok = false;
  const char* want = "";
  switch (kind) {
    case Kind::integer: ok = v.is_number_integer(); want = "an integer"; break;
    case Kind::natural: ok = v.is_number_integer() && (v.is_number_unsigned() || v.get<int64_t>() >= 0); want = "an integer >= 0"; break;
    case Kind::bits: ok = v.is_number_unsigned(); want = "an unsigned integer (a double's bit pattern)"; break;
    case Kind::boolean: ok = v.is_boolean(); want = "true or false"; break;
    case Kind::string: ok = v.is_string(); want = "a string"; break;
    case Kind::object: ok = v.is_object(); want = "an object"; break;
    case Kind::array: ok = v.is_array(); want = "an array"; break;
  }
  if (!ok) ST_THROW_INPUT(path, ": field '", name, "' must be ", want, ", got ", v.dump());
  return v;
}

// rank-<r>.json: the fields write_checkpoint writes and the trainer reads back.
void check_rank_json_fields(const nlohmann::json& j, const std::string& path) {
  for (const char* k : {"format", "step", "rank", "world_size", "tp", "dp", "optimizer_steps"}) field(j, path, "", k, Kind::natural);
  for (const char* k : {"parallel", "method", "options_sha256"}) field(j, path, "", k, Kind::string);
  for (const auto& [k, v] : field(j, path, "", "options", Kind::object).items())
    if (!v.is_string()) ST_THROW_INPUT(path, ": field 'options.", k, "' must be a string, got ", v.dump());
  for (const auto& [k, v] : field(j, path, "", "files", Kind::object).items()) {
    field(v, path, "files." + k + ".", "bytes", Kind::natural);
    field(v, path, "files." + k + ".", "sha256", Kind::string);
  }
  const nlohmann::json& t = field(j, path, "", "trainer", Kind::object);
  for (const char* k : {"step", "step_in_epoch", "epochs_done", "train_tokens", "epoch_targets", "epoch_steps"})
    field(t, path, "trainer.", k, Kind::natural);
  if (field(t, path, "trainer.", "epoch", Kind::natural).get<int64_t>() < 1)
    ST_THROW_INPUT(path, ": field 'trainer.epoch' must be >= 1");
  if (t.at("step") != j.at("step"))
    ST_THROW_INPUT(path, ": field 'trainer.step' (", t.at("step").dump(), ") differs from 'step' (", j.at("step").dump(), ")");
  field(t, path, "trainer.", "last_eval_step", Kind::integer);
  for (const char* k : {"step_time_sum", "epoch_loss_sum", "epoch_elapsed", "epoch_eval_time"}) field(t, path, "trainer.", k, Kind::bits);
  for (const char* k : {"finished", "have_initial_eval"}) field(t, path, "trainer.", k, Kind::boolean);
  for (const auto& e : field(t, path, "trainer.", "epoch_times", Kind::array))
    if (!e.is_number_unsigned()) ST_THROW_INPUT(path, ": field 'trainer.epoch_times' must hold unsigned integers, got ", e.dump());
  for (const char* k : {"initial_val_loss", "initial_val_accuracy", "final_val_loss", "final_val_accuracy"})
    if (t.contains(k)) field(t, path, "trainer.", k, Kind::bits);
  const nlohmann::json& le = field(t, path, "trainer.", "last_eval", Kind::object);
  for (const char* k : {"loss", "accuracy", "seconds"}) field(le, path, "trainer.last_eval.", k, Kind::bits);
  for (const char* k : {"tokens", "rows"}) field(le, path, "trainer.last_eval.", k, Kind::natural);
}

// The data file of a rank against the size and checksum its JSON records (each file once per
// process: loading after the early check does not hash it again).
void verify_rank_file(const nlohmann::json& j, const std::string& jpath, const std::string& file) {
  static std::mutex m;
  static std::set<std::string> verified;
  {
    std::lock_guard<std::mutex> lock(m);
    if (verified.count(file)) return;
  }
  const std::string name = fs::path(file).filename().string();
  const nlohmann::json& files = j.at("files");
  if (!files.contains(name)) ST_THROW_INPUT(jpath, ": field 'files' does not list ", name);
  const int64_t bytes = files[name].at("bytes").get<int64_t>();
  std::error_code ec;
  const uintmax_t size = fs::file_size(file, ec);
  if (ec) ST_THROW_INPUT(file, ": cannot read the checkpoint file: ", ec.message());
  if (static_cast<int64_t>(size) != bytes)
    ST_THROW_INPUT(file, ": ", size, " bytes, but ", jpath, " field 'files.", name, ".bytes' records ", bytes,
                   " (a truncated or replaced file)");
  const std::string sha = sha256_file_hex(file);
  if (sha != files[name].at("sha256").get<std::string>())
    ST_THROW_INPUT(file, ": its SHA-256 does not match ", jpath, " field 'files.", name, ".sha256': the file was "
                   "modified or damaged after it was written (resume from another checkpoint, or set resume = none)");
  std::lock_guard<std::mutex> lock(m);
  verified.insert(file);
}

std::string options_hash(const std::map<std::string, std::string>& opts) {
  std::string all;
  for (const auto& [k, v] : opts) all += k + "=" + v + "\n";
  return sha256_hex(all);
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
  m["train_data"] = train_data_identity(c);
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
  const std::string data_file = rank_file(dir, rank, ".safetensors");
  write_safetensors(data_file, tensors, {{"step", std::to_string(step)}});
  std::error_code size_ec;
  const nlohmann::json files = {{fs::path(data_file).filename().string(),
                                 {{"bytes", fs::file_size(data_file, size_ec)}, {"sha256", sha256_file_hex(data_file)}}}};
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
                      {"files", files},
                      {"trainer", trainer}};
  atomic_write_file(rank_file(dir, rank, ".json"), dump_with_checksum(j));
  world.barrier();  // every rank's files are durable
  if (rank == 0) {
    const nlohmann::json marker = {{"step", step},
                                   {"world_size", layout.parallel.world},
                                   {"tp", layout.parallel.tp},
                                   {"dp", layout.parallel.dp},
                                   {"parallel", layout.parallel.name()},
                                   {"method", method_name(layout.method)}};
    atomic_write_file((fs::path(dir) / "COMPLETE").string(), dump_with_checksum(marker));
    prune_checkpoints(c, step);
  }
  ST_LOG("checkpoint: step ", step, " -> ", dir);
}

void check_checkpoint(const RunConfig& c, const CheckpointLayout& layout, const std::string& dir) {
  // The layout first, from the marker (every rank reads the same file: the same answer everywhere).
  const std::string mpath = (fs::path(dir) / "COMPLETE").string();
  const nlohmann::json marker = read_json(mpath);
  if (marker.is_object() && !marker.contains("sha256"))
    ST_THROW_INPUT(mpath, ": no field 'sha256': a checkpoint of an older format (1, without checksums); this build "
                   "resumes format ", kFormat, " only: set resume = none to start afresh");
  verify_checksum(marker, mpath);
  for (const char* k : {"step", "world_size", "tp", "dp"}) field(marker, mpath, "", k, Kind::natural);
  for (const char* k : {"parallel", "method"}) field(marker, mpath, "", k, Kind::string);
  CheckpointLayout was;
  was.parallel.world = marker.at("world_size").get<int>();
  was.parallel.tp = marker.at("tp").get<int>();
  was.parallel.dp = marker.at("dp").get<int>();
  was.parallel.strategy = parse_strategy(marker.at("parallel").get<std::string>(), mpath);
  was.method = parse_method(marker.at("method").get<std::string>(), mpath);
  if (!(was.parallel == layout.parallel) || was.method != layout.method)
    ST_THROW_INPUT("resume: checkpoint ", dir, " was written by a run of layout (", was.str(),
                   "), this run's layout is (", layout.str(), "): resuming needs the same world size, tp_size, "
                   "parallel and method (re-sharding is not supported); relaunch with the checkpoint's layout, "
                   "or set resume = none to start afresh");
  const int rank = layout.rank;
  const std::string jpath = rank_file(dir, rank, ".json");
  const nlohmann::json j = read_json(jpath);
  verify_checksum(j, jpath);
  check_rank_json_fields(j, jpath);
  if (j.at("format").get<int64_t>() != kFormat)
    ST_THROW_INPUT(jpath, ": field 'format' is ", j.at("format").dump(), ", this build reads ", kFormat);
  if (j.at("rank").get<int64_t>() != rank || j.at("step") != marker.at("step"))
    ST_THROW_INPUT(jpath, ": fields 'rank' ", j.at("rank").dump(), " and 'step' ", j.at("step").dump(),
                   " do not match the file's place (rank ", rank, ", step ", marker.at("step").dump(), " of ", mpath, ")");
  verify_rank_file(j, jpath, rank_file(dir, rank, ".safetensors"));
  // The options that shape the numbers, and the training data by content.
  const std::map<std::string, std::string> now = checkpoint_options(c);
  const std::map<std::string, std::string> then = j.at("options").get<std::map<std::string, std::string>>();
  const auto was_data = then.find("train_data");
  if (was_data != then.end() && was_data->second != now.at("train_data"))
    ST_THROW_INPUT("resume: checkpoint ", dir, " was written while training on other data: train_data = ",
                   was_data->second, " then, ", now.at("train_data"), " now (data = ", c.data, ", split ",
                   c.train_split, "; were the shards prepared again?): restore that data, or set resume = none to start afresh");
  const std::string diff = checkpoint_options_diff(then, now);
  if (!diff.empty())
    ST_THROW_INPUT("resume: checkpoint ", dir, " was written with other training options: ", diff,
                   " (resume with the same options, or set resume = none to start afresh)");
}

std::string checkpoint_options_diff(const std::map<std::string, std::string>& then,
                                    const std::map<std::string, std::string>& now) {
  // Keys added to the recorded options after checkpoints without them were written, each with
  // the value that the builds before it behaved as (fixed here: a later change of the key's
  // default must not change what an old checkpoint means). Any other missing key differs.
  static const std::map<std::string, std::string> implied_when_absent = {
      {"master_weights", "f32"},  // session 16: f32 master weights were the only kind before
  };
  std::string diff;
  std::set<std::string> keys;
  for (const auto& kv : then) keys.insert(kv.first);
  for (const auto& kv : now) keys.insert(kv.first);
  for (const std::string& k : keys) {
    const auto a = then.find(k);
    const auto b = now.find(k);
    const auto implied = implied_when_absent.find(k);
    std::string va = a == then.end() ? "(unset)" : a->second;
    if (a == then.end() && implied != implied_when_absent.end()) va = implied->second;
    const std::string vb = b == now.end() ? "(unset)" : b->second;
    if (va != vb) diff += str(diff.empty() ? "" : ", ", k, " = ", va, " in the checkpoint, ", vb, " now");
  }
  return diff;
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
  verify_checksum(j, path);
  check_rank_json_fields(j, path);
  return j["trainer"];
}

void prune_checkpoints(const RunConfig& c, int64_t step) {
  const std::string root = checkpoint_root(c);
  const auto all = list_steps(root, false);
  std::vector<std::string> complete;  // at or before step, oldest first
  for (const auto& [s, dir] : all) {
    if (step < 0) {
      if (checkpoint_complete(dir))
        ST_WARN("checkpoint: removing ", dir, " of an earlier run (this run starts afresh: ",
                c.resume == "none" ? std::string("resume = none") : str("resume = ", c.resume, " found no complete checkpoint"),
                c.overwrite ? ", overwrite = true" : "", ")");
      remove_dir(dir, checkpoint_complete(dir) ? "earlier run" : "incomplete");
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
