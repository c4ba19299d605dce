#include "io/hf_checkpoint.hpp"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/dryrun.hpp"

namespace st {

namespace fs = std::filesystem;
using json = nlohmann::json;

json read_json_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) ST_THROW_INPUT(path, ": cannot open");
  try {
    return json::parse(in);
  } catch (const json::exception& e) {
    ST_THROW_INPUT(path, ": not valid JSON: ", e.what());
  }
}

void write_text_file_atomic(const std::string& path, const std::string& text) { atomic_write_file(path, text); }

namespace {

// A shard name from the index must stay inside the checkpoint directory.
void check_shard_name(const std::string& shard, const std::string& index_path, const std::string& tensor) {
  const fs::path p(shard);
  bool escapes = shard.empty() || p.is_absolute();
  for (const auto& part : p) escapes |= (part == "..");
  if (escapes)
    ST_THROW_INPUT(index_path, ": weight_map entry for tensor '", tensor, "' names shard '", shard,
                   "', which is not a file inside the checkpoint directory");
}

}  // namespace

CheckpointReader CheckpointReader::open(const std::string& dir) {
  CheckpointReader r;
  r.dir_ = dir;
  const fs::path index_path = fs::path(dir) / "model.safetensors.index.json";
  const fs::path single_path = fs::path(dir) / "model.safetensors";

  if (fs::exists(index_path)) {
    const std::string index = index_path.string();
    const json j = read_json_file(index);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      ST_THROW_INPUT(index, ": field 'weight_map' missing or not an object");
    std::map<std::string, size_t> shard_index;  // shard file -> index into files_
    for (const auto& [tensor, shard_json] : j["weight_map"].items()) {
      if (!shard_json.is_string())
        ST_THROW_INPUT(index, ": weight_map entry for tensor '", tensor, "' must be a string");
      const std::string shard = shard_json.get<std::string>();
      check_shard_name(shard, index, tensor);
      auto it = shard_index.find(shard);
      if (it == shard_index.end()) {
        const fs::path shard_path = fs::path(dir) / shard;
        if (!fs::is_regular_file(shard_path))
          ST_THROW_INPUT(index, ": shard file '", shard, "' (for tensor '", tensor, "') does not exist in ", dir);
        r.files_.push_back(SafetensorsFile::open(shard_path.string()));
        it = shard_index.emplace(shard, r.files_.size() - 1).first;
      }
      if (!r.files_[it->second].find(tensor))
        ST_THROW_INPUT(index, ": tensor '", tensor, "' is listed in shard '", shard, "' but not stored there");
      r.file_of_[tensor] = it->second;
    }
    // Tensors a shard holds beyond the index are not part of the checkpoint (as in transformers).
  } else if (fs::exists(single_path)) {
    r.files_.push_back(SafetensorsFile::open(single_path.string()));
    for (const auto& e : r.files_[0].entries()) r.file_of_[e.name] = 0;
  } else {
    ST_THROW_INPUT(dir, ": no model.safetensors or model.safetensors.index.json");
  }
  return r;
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  out.reserve(file_of_.size());
  for (const auto& kv : file_of_) out.push_back(kv.first);
  return out;
}

const SafetensorsFile& CheckpointReader::file_or_throw(const std::string& name) const {
  const auto it = file_of_.find(name);
  if (it == file_of_.end()) ST_THROW_INPUT(dir_, ": checkpoint has no tensor '", name, "'");
  return files_[it->second];
}

const SafetensorsEntry& CheckpointReader::entry(const std::string& name) const {
  return *file_or_throw(name).find(name);  // present: checked when the index was opened
}

const std::string& CheckpointReader::file_of(const std::string& name) const { return file_or_throw(name).path(); }

Tensor CheckpointReader::read(const std::string& name, const Shape& expected, DType dtype, Device device,
                              MemCategory cat) {
  const SafetensorsFile& f = file_or_throw(name);
  const SafetensorsEntry& e = *f.find(name);
  const bool same = e.shape.size() == static_cast<size_t>(expected.ndim) &&
                    std::equal(e.shape.begin(), e.shape.end(), expected.d.begin());
  if (!same)
    ST_THROW_INPUT(f.path(), ": tensor '", name, "' has shape ", shape_str(e.shape), ", expected ", expected.str());
  if (!safetensors_is_float(e.dtype))
    ST_THROW_INPUT(f.path(), ": tensor '", name, "' has dtype ", e.dtype, ", expected a float type");
  used_.insert(name);
  // The planner: the tensor as the load makes it, without reading the file.
  if (dry_run_active()) return Tensor::empty(expected, dtype, device, cat);
  Tensor t = f.read_float(name, dtype, device, cat);
  return t;
}

std::vector<std::string> CheckpointReader::unused_names() const {
  std::vector<std::string> out;
  for (const auto& kv : file_of_)
    if (!used_.count(kv.first)) out.push_back(kv.first);
  return out;
}

size_t write_hf_weights(const std::string& dir, const std::vector<std::pair<std::string, Tensor>>& tensors,
                        uint64_t max_shard_bytes) {
  const fs::path root(dir);
  uint64_t total = 0;
  for (const auto& [name, t] : tensors) total += static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype());
  std::set<std::string> keep;  // weight files of this save
  if (max_shard_bytes == 0 || total <= max_shard_bytes) {
    write_safetensors((root / "model.safetensors").string(), tensors, {{"format", "pt"}});
    keep.insert("model.safetensors");
  } else {
    std::vector<std::vector<std::pair<std::string, Tensor>>> shards(1);
    uint64_t cur = 0;
    for (const auto& nt : tensors) {
      const uint64_t b = static_cast<uint64_t>(nt.second.numel()) * dtype_size(nt.second.dtype());
      if (!shards.back().empty() && cur + b > max_shard_bytes) {
        shards.emplace_back();
        cur = 0;
      }
      shards.back().push_back(nt);
      cur += b;
    }
    const size_t n = shards.size();
    if (n > 99999) ST_THROW_INPUT(dir, ": ", n, " shards exceed the 5-digit shard names; raise the maximum shard size");
    nlohmann::ordered_json index;
    index["metadata"] = {{"total_size", total}};
    nlohmann::ordered_json map = nlohmann::ordered_json::object();
    for (size_t i = 0; i < n; ++i) {
      char name[64];
      std::snprintf(name, sizeof(name), "model-%05zu-of-%05zu.safetensors", i + 1, n);
      write_safetensors((root / name).string(), shards[i], {{"format", "pt"}});
      for (const auto& nt : shards[i]) map[nt.first] = name;
      keep.insert(name);
    }
    index["weight_map"] = map;
    write_text_file_atomic((root / "model.safetensors.index.json").string(), index.dump(2) + "\n");
    keep.insert("model.safetensors.index.json");
  }
  // Leftovers of an earlier save in another layout: the reader prefers an index, so a stale one
  // would shadow the new single file.
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string f = e.path().filename().string();
    const bool weights = f == "model.safetensors" || f == "model.safetensors.index.json" ||
                         (f.rfind("model-", 0) == 0 && f.find("-of-") != std::string::npos &&
                          f.size() > 12 && f.compare(f.size() - 12, 12, ".safetensors") == 0);
    if (weights && !keep.count(f)) fs::remove(e.path(), ec);
  }
  return keep.size() - (keep.count("model.safetensors.index.json") ? 1 : 0);
}

void copy_tokenizer(const std::string& tokenizer_path, const std::string& dir) {
  atomic_copy_file(tokenizer_path, (fs::path(dir) / "tokenizer.model").string());
}

bool hf_save_file(const std::string& name) {
  auto ends_with = [&](const char* suffix) {
    const std::string x(suffix);
    return name.size() >= x.size() && name.compare(name.size() - x.size(), x.size(), x) == 0;
  };
  if (ends_with(".tmp")) return true;  // an interrupted atomic write of one of these
  return name == "config.json" || name == "model.safetensors" || name == "model.safetensors.index.json" ||
         name == "tokenizer.model" || name == "tokenizer_config.json" || name == "special_tokens_map.json" ||
         name == "tokenizer.json" || (name.rfind("model-", 0) == 0 && name.find("-of-") != std::string::npos && ends_with(".safetensors"));
}

}  // namespace st
