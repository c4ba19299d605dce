#include "train/families.hpp"

#include <algorithm>
#include <filesystem>

#include "io/hf_checkpoint.hpp"
#include "io/hf_config.hpp"

namespace fs = std::filesystem;

namespace st {

// Each family's entry lives with its own files (train/family_*.cpp).
const ModelFamily& llama_family();
const ModelFamily& mistral_family();
const ModelFamily& qwen2_family();
const ModelFamily& t5_family();

const std::vector<const ModelFamily*>& model_families() {
  // The registry: one line per family.
  static const std::vector<const ModelFamily*> all = {
      &llama_family(),
      &mistral_family(),
      &qwen2_family(),
      &t5_family(),
  };
  return all;
}

namespace {

std::string known_names(bool model_types) {
  std::string out;
  for (const ModelFamily* f : model_families())
    for (const std::string& n : model_types ? f->model_types : std::vector<std::string>{f->name})
      out += (out.empty() ? "" : ", ") + n;
  return out;
}

std::string origin_of(const RunConfig& c, const char* key) {
  const auto it = c.origin.find(key);
  return it == c.origin.end() ? std::string("options") : it->second;
}

}  // namespace

const ModelFamily& family_by_name(const std::string& arch, const std::string& where) {
  for (const ModelFamily* f : model_families())
    if (f->name == arch) return *f;
  ST_THROW_INPUT(where, ": arch = '", arch, "' is not a model family shardtune trains (", known_names(false), ")");
}

const ModelFamily& family_by_model_type(const std::string& type, const std::string& where) {
  for (const ModelFamily* f : model_families())
    if (std::find(f->model_types.begin(), f->model_types.end(), type) != f->model_types.end()) return *f;
  ST_THROW_INPUT(where, ": model_type \"", type, "\" is not supported (", known_names(true), ")");
}

const ModelFamily& model_family(const RunConfig& c) {
  if (c.model.empty()) return family_by_name(c.arch, origin_of(c, "arch"));
  const fs::path p = fs::path(c.model) / "config.json";
  if (!fs::exists(p))
    ST_THROW_INPUT(origin_of(c, "model"), ": model = ", c.model, ": cannot read ", p.string());
  const json j = read_json_file(p.string());
  if (!j.is_object()) ST_THROW_INPUT(p.string(), ": must be a JSON object");
  const ConfigFields f(j, p.string());
  if (!f.get("model_type")) ST_THROW_INPUT(p.string(), ": field 'model_type' is missing");
  const ModelFamily& fam = family_by_model_type(f.optional_string("model_type", ""), p.string());
  const auto it = c.origin.find("arch");
  if (it != c.origin.end() && it->second != "default" && c.arch != fam.name)
    ST_THROW_INPUT(it->second, ": arch = ", c.arch, " but the checkpoint ", c.model, " is a ", fam.name);
  return fam;
}

const ModelFamily& resolve_family(const RunConfig& c, const ShardInfo& info) {
  const ModelFamily& fam = model_family(c);
  const bool seq2seq = info.arch == "seq2seq";
  if (fam.seq2seq && !seq2seq)
    ST_THROW_INPUT(c.data, ": a ", fam.name, " (encoder-decoder) model needs seq2seq shards, but these are '", info.arch,
                   "' (write them with `shardtune prepare --arch seq2seq`)");
  if (!fam.seq2seq && seq2seq)
    ST_THROW_INPUT(c.data, ": these are seq2seq shards (encoder-decoder); a ", fam.name, " decoder needs causal shards "
                   "(`shardtune prepare` without --arch seq2seq), or set arch = t5");
  return fam;
}

std::vector<std::string> lora_targets_for(const RunConfig& c, const ModelFamily& family) {
  const auto it = c.origin.find("lora_targets");
  if (it == c.origin.end() || it->second == "default") return family.default_lora_targets;
  return c.lora_target_list();
}

}  // namespace st
