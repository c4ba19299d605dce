// The model families shardtune trains, registered in one place (families.cpp: one line each).
//
// A family is what a Hugging Face config.json's model_type names: its config reader, its
// ModelRunner (model, method, activations, batches, saving), the short names of the linear
// layers LoRA adapts, how PEFT names them, and its default LoRA targets. Everything that depends
// on the family (set-up, the planner, adapters, PEFT files, export) looks it up here instead of
// comparing names. docs/HOWTO.md says how to add one.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "adapters/peft.hpp"
#include "config/run_config.hpp"
#include "io/shards.hpp"
#include "train/model_runner.hpp"

namespace st {

// What a checkpoint's config.json says of the model (the family's reader validates it): the
// sizes that size buffers, for the checks made before anything is allocated (train/preflight.hpp).
struct ModelShape {
  std::string summary;  // one line ("L=16 C=2048 ...")
  int64_t vocab = 0, hidden = 0, intermediate = 0, layers = 0, heads = 0, kv_heads = 0, head_dim = 0;
};

struct ModelFamily {
  std::string name;                      // the deck's `arch` ("llama", "mistral", "qwen2", "t5")
  std::vector<std::string> model_types;  // config.json model_type values it reads
  bool seq2seq = false;                  // encoder-decoder: trains on seq2seq shards
  std::vector<std::string> module_names;          // short names of the linear layers LoRA adapts
  std::vector<std::string> default_lora_targets;  // lora_targets when the deck does not set it
  PeftNames peft;                                 // PEFT task type and target names
  // Reads and validates <dir>/config.json (InputError naming the file and field): the model's
  // sizes and a one-line summary.
  std::function<ModelShape(const std::string& dir)> read_config;
  // The family's ModelRunner (model loaded from c.model or built randomly from the deck).
  std::function<std::unique_ptr<ModelRunner>(const RunnerSpec& spec)> make_runner;
  // A one-line description of what the family refuses (README, --help).
  std::string refuses;
};

// Every registered family, in registration order.
const std::vector<const ModelFamily*>& model_families();
// The family named `arch` / reading config.json model_type `type`; InputError naming `where` and
// listing the known ones otherwise.
const ModelFamily& family_by_name(const std::string& arch, const std::string& where);
const ModelFamily& family_by_model_type(const std::string& type, const std::string& where);

// The model family the options name: the checkpoint's model_type when `model` is set (InputError
// when it contradicts an explicit `arch`), else `arch`.
const ModelFamily& model_family(const RunConfig& c);
// The same, checked against the shards: InputError when a decoder meets seq2seq shards or an
// encoder-decoder causal ones.
const ModelFamily& resolve_family(const RunConfig& c, const ShardInfo& info);
// The LoRA targets of a run: lora_targets as the deck sets it, else the family's default.
std::vector<std::string> lora_targets_for(const RunConfig& c, const ModelFamily& family);

// ---------------------------------------------------------------- for the family entries
// A decoder family (train/llama_runner.cpp): the Llama decoder's module names, PEFT names
// (CAUSAL_LM, q_proj ... down_proj) and runner, with the family's config.json reader and writer.
ModelFamily decoder_family(std::string name, std::vector<std::string> model_types, DecoderConfigIo io,
                           std::string refuses);

}  // namespace st
