// LoRA adapters in Hugging Face PEFT's format, read and written by shardtune.
//
// A PEFT adapter directory holds
//   adapter_config.json        {"peft_type": "LORA", "r", "lora_alpha", "lora_dropout",
//                               "target_modules": [HF module names], "task_type", "bias": "none", ...}
//   adapter_model.safetensors  base_model.model.<module>.lora_A.weight [r, in]
//                              base_model.model.<module>.lora_B.weight [out, r]
// where <module> is the Hugging Face module name, which is shardtune's Linear::name
// ("model.layers.0.self_attn.q_proj", "encoder.block.0.layer.0.SelfAttention.q"). Target names
// are the modules' last parts, and a model family's registry entry (train/families.hpp) says how
// they map to shardtune's lora_targets (PeftNames): Llama, Mistral, Qwen2 q_proj, ..., down_proj
// (q, k, v, o, gate, up, down); T5 q, k, v, o, wi_0, wi_1, wi, wo (the same in both). The scale is
// lora_alpha / r (plain LoRA).
//
// Only what shardtune's LoRA computes is accepted: rsLoRA, DoRA, biases, modules_to_save,
// fan_in_fan_out, per-module rank/alpha patterns, layer subsets and other PEFT types are refused
// with an InputError naming the file and the field.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "adapters/lora.hpp"
#include "config/choices.hpp"
#include "model/linear.hpp"

namespace st {

inline constexpr const char* kPeftConfigFile = "adapter_config.json";
inline constexpr const char* kPeftWeightsFile = "adapter_model.safetensors";
// Beside PEFT's files (PEFT ignores it): how shardtune trained the adapter, so that `eval` can
// rebuild the base it was trained on (a QLoRA adapter on the NF4 base).
inline constexpr const char* kShardtuneAdapterFile = "shardtune_adapter.json";

struct PeftConfig {
  int64_t r = 0;
  double alpha = 0, dropout = 0;
  std::vector<std::string> target_modules;  // PEFT's (Hugging Face) names, sorted
  std::string task_type;                    // CAUSAL_LM, SEQ_2_SEQ_LM (may be empty)
  std::string base_model;                   // base_model_name_or_path (may be empty)
};

// How a model family names its adaptable modules in PEFT (its registry entry holds one).
struct PeftNames {
  std::string family;     // "llama" (for messages)
  std::string task_type;  // PEFT's task type: CAUSAL_LM, SEQ_2_SEQ_LM
  std::vector<std::pair<std::string, std::string>> targets;  // shardtune's short name -> PEFT target name
  // The short name of a module ("model.layers.3.mlp.up_proj" -> "up"; "" for none).
  std::string (*short_name)(const std::string& module) = nullptr;
};

// shardtune's short module name -> PEFT's target name (llama q -> q_proj; t5: the same), and back
// (InputError naming `where` for a name the family does not have).
std::string peft_target_name(const PeftNames& names, const std::string& short_name);
std::string short_target_name(const PeftNames& names, const std::string& peft_name, const std::string& where);
// "base_model.model.<module>.lora_A.weight" / lora_B.
std::string peft_tensor_name(const std::string& module, bool a);

// Reads and validates <dir>/adapter_config.json for a model of the family `names` describes.
PeftConfig read_peft_config(const std::string& dir, const PeftNames& names);
// The LoraConfig the adapter describes (targets as shardtune's short names).
LoraConfig lora_config_from_peft(const PeftConfig& p, const PeftNames& names);

// Writes the adapters attached to `linears` as a PEFT directory `dir` (created): the factors are
// gathered over their TP group (A is split by input columns in a row-parallel layer, B by output
// rows in a column-parallel one), so this is collective over that group, whose rank 0 writes.
// Tensors are stored in the adapters' master dtype (f32; f64 in f64 runs). Files are written
// atomically. Returns the number of adapters written; InputError when there are none.
int64_t save_peft_adapter(const std::vector<Linear*>& linears, const PeftNames& names, const std::string& base_model,
                          const std::string& dir);
// Loads <dir>/adapter_model.safetensors into the adapters already attached to `linears` (every
// rank reads the full factors and keeps its TP part), then refreshes their working copies.
// InputError naming the file for a missing tensor, a wrong shape, or a tensor no attached adapter
// takes. Returns the number of adapters loaded.
int64_t load_peft_adapter(const std::vector<Linear*>& linears, const std::string& dir);

// base_model_name_or_path as save_peft_adapter writes it: a local directory as an absolute path
// (usable from anywhere, by PEFT too); anything else (a hub id) as given.
std::string peft_base_path(const std::string& base_model);
// The base model directory an adapter names (<dir>/adapter_config.json base_model_name_or_path):
// absolute, or relative to the adapter directory, or (as PEFT reads it) to the working directory.
// InputError naming the file when it is unset or names no directory here.
std::string peft_adapter_base(const std::string& adapter_dir);

// <dir>/shardtune_adapter.json: the method (lora | qlora) and NF4 settings of the run that trained it.
struct AdapterTraining {
  Method method = Method::lora;  // lora or qlora
  std::string qlora_quantize = "adapted";
  int64_t qlora_block_size = 64;
  bool qlora_double_quant = true;
  std::string run_id;
  int64_t steps = 0;
};
void write_adapter_training(const std::string& dir, const AdapterTraining& t);
// None when the directory has no such file (a PEFT adapter, or one written before it existed).
std::optional<AdapterTraining> read_adapter_training(const std::string& dir);

}  // namespace st
