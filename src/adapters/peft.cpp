#include "adapters/peft.hpp"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/atomic_file.hpp"
#include "core/dryrun.hpp"
#include "io/hf_checkpoint.hpp"
#include "io/safetensors.hpp"

namespace fs = std::filesystem;

namespace st {

namespace {

using json = nlohmann::json;

LoraAdapter* lora_of(const Linear& lin) { return dynamic_cast<LoraAdapter*>(lin.adapter.get()); }

// A's and B's split over the TP group: row-parallel layers split A's input columns (the last
// dimension: TpMode::row in tp_ops' terms), column-parallel layers split B's output rows.
TpMode split_of_a(const LoraAdapter& a) { return a.tp_mode == TpMode::row ? TpMode::row : TpMode::none; }
TpMode split_of_b(const LoraAdapter& a) { return a.tp_mode == TpMode::column ? TpMode::column : TpMode::none; }

// lora_alpha as the adapter holds it (scale = alpha / r), an integer when it was one.
double alpha_of(const LoraAdapter& a) {
  const double v = a.scale * static_cast<double>(a.r), k = std::round(v);
  return std::fabs(v - k) <= 1e-9 * std::fabs(v) ? k : v;
}

json number_json(double v) {
  if (std::isfinite(v) && v == std::floor(v) && std::fabs(v) < 1e15) return json(static_cast<int64_t>(v));
  return json(v);
}

}  // namespace

std::string peft_target_name(const PeftNames& names, const std::string& short_name) {
  for (const auto& [s, hf] : names.targets)
    if (short_name == s) return hf;
  ST_THROW("PEFT adapters: no ", names.family, " module '", short_name, "'");
}

std::string short_target_name(const PeftNames& names, const std::string& peft_name, const std::string& where) {
  std::string known;
  for (const auto& [s, hf] : names.targets) {
    if (peft_name == hf) return s;
    known += (known.empty() ? "" : ", ") + hf;
  }
  ST_THROW_INPUT(where, ": field 'target_modules' names '", peft_name, "', which is not a ", names.family,
                 " projection shardtune adapts (", known, ")");
}

std::string peft_tensor_name(const std::string& module, bool a) {
  return str("base_model.model.", module, a ? ".lora_A.weight" : ".lora_B.weight");
}

PeftConfig read_peft_config(const std::string& dir, const PeftNames& names) {
  const std::string path = (fs::path(dir) / kPeftConfigFile).string();
  if (!fs::exists(path)) ST_THROW_INPUT(dir, ": not a PEFT adapter directory (no ", kPeftConfigFile, ")");
  const json j = read_json_file(path);
  if (!j.is_object()) ST_THROW_INPUT(path, ": must be a JSON object");
  auto get = [&](const char* key) -> const json* {
    const auto it = j.find(key);
    return (it == j.end() || it->is_null()) ? nullptr : &*it;
  };
  auto refuse = [&](const char* key, const std::string& why) { ST_THROW_INPUT(path, ": field '", key, "' ", why); };
  auto flag = [&](const char* key) {
    const json* v = get(key);
    if (!v) return false;
    if (!v->is_boolean()) refuse(key, str("must be true or false, got ", v->dump()));
    return v->get<bool>();
  };
  auto nonempty = [&](const char* key) {
    const json* v = get(key);
    return v && !((v->is_object() || v->is_array() || v->is_string()) && v->empty());
  };

  const json* type = get("peft_type");
  if (!type || !type->is_string() || type->get<std::string>() != "LORA")
    refuse("peft_type", str("is ", type ? type->dump() : "missing", "; only \"LORA\" adapters are supported"));
  // What shardtune's LoRA does not compute: refused rather than silently dropped.
  if (flag("use_rslora")) refuse("use_rslora", "is true: rank-stabilized LoRA (scale alpha / sqrt(r)) is not supported");
  if (flag("use_dora")) refuse("use_dora", "is true: DoRA is not supported");
  if (flag("fan_in_fan_out")) refuse("fan_in_fan_out", "is true: only [out, in] linear layers are supported");
  if (flag("lora_bias")) refuse("lora_bias", "is true: LoRA biases are not supported");
  if (flag("use_qalora")) refuse("use_qalora", "is true: QA-LoRA is not supported");
  if (const json* b = get("bias"); b && (!b->is_string() || b->get<std::string>() != "none"))
    refuse("bias", str("is ", b->dump(), "; only \"none\" is supported (no trained biases)"));
  if (nonempty("modules_to_save"))
    refuse("modules_to_save", str("is ", get("modules_to_save")->dump(), "; fully trained extra modules are not supported"));
  if (nonempty("rank_pattern")) refuse("rank_pattern", "is set; per-module ranks are not supported");
  if (nonempty("alpha_pattern")) refuse("alpha_pattern", "is set; per-module alphas are not supported");
  if (nonempty("layers_to_transform")) refuse("layers_to_transform", "is set; adapters on a subset of layers are not supported");
  if (nonempty("layer_replication")) refuse("layer_replication", "is set; layer replication is not supported");
  if (nonempty("exclude_modules")) refuse("exclude_modules", "is set; list the adapted modules in target_modules instead");
  if (nonempty("target_parameters")) refuse("target_parameters", "is set; only linear modules are supported");
  if (nonempty("trainable_token_indices")) refuse("trainable_token_indices", "is set; trainable tokens are not supported");

  PeftConfig p;
  const json* r = get("r");
  if (!r || !r->is_number_integer() || r->get<int64_t>() < 1) refuse("r", "must be a positive integer");
  p.r = r->get<int64_t>();
  const json* alpha = get("lora_alpha");
  if (!alpha) {
    p.alpha = 8;  // PEFT's default
  } else {
    if (!alpha->is_number() || !(alpha->get<double>() > 0)) refuse("lora_alpha", "must be a positive number");
    p.alpha = alpha->get<double>();
  }
  if (const json* d = get("lora_dropout")) {
    if (!d->is_number() || d->get<double>() < 0 || d->get<double>() >= 1) refuse("lora_dropout", "must be a number in [0, 1)");
    p.dropout = d->get<double>();
  }
  const json* targets = get("target_modules");
  if (!targets) refuse("target_modules", "is missing");
  if (targets->is_string()) {
    std::string list;
    for (const auto& [s, hf] : names.targets) list += (list.empty() ? "" : ", ") + hf;
    refuse("target_modules", str("is the pattern ", targets->dump(), "; list the module names (", list, ")"));
  }
  if (!targets->is_array() || targets->empty()) refuse("target_modules", "must be a non-empty list of module names");
  std::set<std::string> listed;
  for (const json& t : *targets) {
    if (!t.is_string()) refuse("target_modules", str("must hold strings, got ", t.dump()));
    short_target_name(names, t.get<std::string>(), path);  // validates
    listed.insert(t.get<std::string>());
  }
  p.target_modules.assign(listed.begin(), listed.end());
  if (const json* t = get("task_type")) {
    if (!t->is_string()) refuse("task_type", "must be a string");
    p.task_type = t->get<std::string>();
    if (p.task_type != names.task_type)
      refuse("task_type", str("is \"", p.task_type, "\", but the model is a ", names.family, " (expected \"",
                              names.task_type, "\")"));
  }
  if (const json* b = get("base_model_name_or_path"); b && b->is_string()) p.base_model = b->get<std::string>();
  return p;
}

LoraConfig lora_config_from_peft(const PeftConfig& p, const PeftNames& names) {
  LoraConfig lc;
  lc.r = p.r;
  lc.alpha = p.alpha;
  lc.dropout = p.dropout;
  lc.targets.clear();
  for (const std::string& t : p.target_modules) lc.targets.push_back(short_target_name(names, t, "adapter"));
  return lc;
}

int64_t save_peft_adapter(const std::vector<Linear*>& linears, const PeftNames& names, const std::string& base_model,
                          const std::string& dir) {
  std::vector<std::pair<std::string, Tensor>> tensors;
  std::set<std::string> targets;
  const LoraAdapter* first = nullptr;
  bool writer = true;
  for (Linear* lin : linears) {
    const LoraAdapter* a = lora_of(*lin);
    if (!a) continue;
    if (!first) first = a;
    if (a->r != first->r || a->scale != first->scale || a->dropout != first->dropout)
      ST_THROW("save_peft_adapter: adapters of different r, alpha or dropout (", lin->name, ")");
    targets.insert(peft_target_name(names, names.short_name(lin->name)));
    // Collective over the layer's TP group when the factor is split.
    const DType dt = a->A.dtype() == DType::f64 ? DType::f64 : DType::f32;
    tensors.emplace_back(peft_tensor_name(lin->name, true), tp_gather_full(a->A, split_of_a(*a), a->tp, dt));
    tensors.emplace_back(peft_tensor_name(lin->name, false), tp_gather_full(a->B, split_of_b(*a), a->tp, dt));
    writer = !a->tp.active() || a->tp.rank == 0;
  }
  if (!first) ST_THROW_INPUT("save_peft_adapter: the model carries no LoRA adapters (method = lora or qlora)");
  const int64_t n = static_cast<int64_t>(tensors.size() / 2);
  if (!writer || dry_run_active()) return n;
  nlohmann::ordered_json j;
  j["alpha_pattern"] = json::object();
  j["base_model_name_or_path"] = base_model.empty() ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(peft_base_path(base_model));
  j["bias"] = "none";
  j["exclude_modules"] = nullptr;
  j["fan_in_fan_out"] = false;
  j["inference_mode"] = true;
  j["init_lora_weights"] = true;
  j["layer_replication"] = nullptr;
  j["layers_pattern"] = nullptr;
  j["layers_to_transform"] = nullptr;
  j["lora_alpha"] = number_json(alpha_of(*first));
  j["lora_bias"] = false;
  j["lora_dropout"] = first->dropout;
  j["modules_to_save"] = nullptr;
  j["peft_type"] = "LORA";
  j["r"] = first->r;
  j["rank_pattern"] = json::object();
  j["revision"] = nullptr;
  j["target_modules"] = std::vector<std::string>(targets.begin(), targets.end());
  j["task_type"] = names.task_type;
  j["use_dora"] = false;
  j["use_rslora"] = false;
  // Both files in one directory swap: a failed save never pairs a new config with old weights.
  replace_directory(
      dir,
      [&](const std::string& out) {
        write_safetensors((fs::path(out) / kPeftWeightsFile).string(), tensors, {{"format", "pt"}});
        write_text_file_atomic((fs::path(out) / kPeftConfigFile).string(), j.dump(2) + "\n");
      },
      [](const std::string& name) {
        // shardtune_adapter.json is rewritten by the trainer right after this save.
        for (const char* f : {kPeftWeightsFile, kPeftConfigFile, kShardtuneAdapterFile})
          if (name == f || name == std::string(f) + ".tmp") return true;
        return false;
      });
  return n;
}

int64_t load_peft_adapter(const std::vector<Linear*>& linears, const std::string& dir) {
  const std::string path = (fs::path(dir) / kPeftWeightsFile).string();
  if (!fs::exists(path)) {
    if (fs::exists(fs::path(dir) / "adapter_model.bin"))
      ST_THROW_INPUT(dir, ": holds adapter_model.bin (a pickle); save the adapter with safe_serialization=True "
                     "(adapter_model.safetensors)");
    ST_THROW_INPUT(dir, ": no ", kPeftWeightsFile);
  }
  const SafetensorsFile f = SafetensorsFile::open(path);
  std::set<std::string> used;
  int64_t n = 0;
  for (Linear* lin : linears) {
    LoraAdapter* a = lora_of(*lin);
    if (!a) continue;
    const Shape fa{a->r, lin->full_in()}, fb{lin->full_out(), a->r};
    for (bool is_a : {true, false}) {
      const std::string name = peft_tensor_name(lin->name, is_a);
      const SafetensorsEntry* e = f.find(name);
      if (!e) ST_THROW_INPUT(path, ": no tensor '", name, "' (the adapter does not cover ", lin->name, ")");
      const Shape& want = is_a ? fa : fb;
      const bool same = e->shape.size() == static_cast<size_t>(want.ndim) &&
                        std::equal(e->shape.begin(), e->shape.end(), want.d.begin());
      if (!same)
        ST_THROW_INPUT(path, ": tensor '", name, "' has shape ", shape_str(e->shape), ", expected ", want.str(),
                       is_a ? " ([r, in])" : " ([out, r])");
      used.insert(name);
      Tensor& dst = is_a ? a->A : a->B;
      if (dry_run_active()) continue;
      const Tensor full = f.read_float(name, dst.dtype(), Device::cpu, MemCategory::workspace);
      dst.copy_from(tp_shard_of(full, is_a ? split_of_a(*a) : split_of_b(*a), a->tp));
    }
    if (!dry_run_active()) a->sync_working();
    ++n;
  }
  for (const SafetensorsEntry& e : f.entries())
    if (!used.count(e.name))
      ST_THROW_INPUT(path, ": tensor '", e.name, "' is not a LoRA factor of an adapted module of this model "
                     "(target_modules and the tensors disagree, or the adapter is for another model)");
  return n;
}

std::string peft_base_path(const std::string& base_model) {
  std::error_code ec;
  if (base_model.empty() || !fs::is_directory(base_model, ec)) return base_model;  // e.g. a hub id
  const fs::path p = fs::weakly_canonical(fs::absolute(base_model, ec), ec);
  return ec ? base_model : p.string();
}

std::string peft_adapter_base(const std::string& adapter_dir) {
  const std::string path = (fs::path(adapter_dir) / kPeftConfigFile).string();
  if (!fs::exists(path)) ST_THROW_INPUT(adapter_dir, ": not a PEFT adapter directory (no ", kPeftConfigFile, ")");
  const json j = read_json_file(path);
  if (!j.is_object()) ST_THROW_INPUT(path, ": must be a JSON object");
  const auto it = j.find("base_model_name_or_path");
  if (it == j.end() || !it->is_string() || it->get<std::string>().empty())
    ST_THROW_INPUT(path, ": base_model_name_or_path is not set: name the base model with --model DIR");
  const fs::path base = it->get<std::string>();
  std::error_code ec;
  if (base.is_absolute()) {
    if (fs::is_directory(base, ec)) return base.string();
    ST_THROW_INPUT(path, ": base_model_name_or_path = ", base.string(),
                   " is not a directory here: name the base model with --model DIR");
  }
  const fs::path beside = fs::path(adapter_dir) / base;  // relative to the adapter directory
  if (fs::is_directory(beside, ec)) return beside.lexically_normal().string();
  if (fs::is_directory(base, ec)) return base.string();  // relative to the working directory (PEFT's reading)
  ST_THROW_INPUT(path, ": base_model_name_or_path = ", base.string(), " is neither a directory relative to the adapter (",
                 beside.string(), ") nor to the working directory (a Hugging Face hub id?): name the base model with --model DIR");
}

void write_adapter_training(const std::string& dir, const AdapterTraining& t) {
  nlohmann::ordered_json j;
  j["method"] = method_name(t.method);
  if (t.method == Method::qlora) {
    j["qlora_quantize"] = t.qlora_quantize;
    j["qlora_block_size"] = t.qlora_block_size;
    j["qlora_double_quant"] = t.qlora_double_quant;
  }
  j["run_id"] = t.run_id;
  j["steps"] = t.steps;
  if (dry_run_active()) return;
  write_text_file_atomic((fs::path(dir) / kShardtuneAdapterFile).string(), j.dump(2) + "\n");
}

std::optional<AdapterTraining> read_adapter_training(const std::string& dir) {
  const fs::path path = fs::path(dir) / kShardtuneAdapterFile;
  std::error_code ec;
  if (!fs::is_regular_file(path, ec)) return std::nullopt;
  AdapterTraining t;
  try {
    const json j = read_json_file(path.string());
    t.method = parse_method(j.at("method").get<std::string>(), path.string());
    if (t.method == Method::qlora) {
      t.qlora_quantize = j.at("qlora_quantize").get<std::string>();
      t.qlora_block_size = j.at("qlora_block_size").get<int64_t>();
      t.qlora_double_quant = j.at("qlora_double_quant").get<bool>();
    }
    t.run_id = j.value("run_id", std::string());
    t.steps = j.value("steps", int64_t{0});
  } catch (const json::exception& e) {
    ST_THROW_INPUT(path.string(), ": ", e.what());
  }
  if (t.method == Method::full)
    ST_THROW_INPUT(path.string(), ": method = 'full' (expected lora or qlora)");
  return t;
}

}  // namespace st
