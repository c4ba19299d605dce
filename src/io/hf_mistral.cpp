#include "io/hf_mistral.hpp"

#include "io/hf_config.hpp"
#include "io/hf_llama.hpp"

namespace st {

LlamaConfig read_mistral_config(const std::string& dir) {
  const HfConfigFile file = open_hf_config(dir, "mistral");
  const ConfigFields f(file.j, file.path);
  for (const char* key : {"attention_bias", "mlp_bias"})
    if (f.optional_bool(key, false)) ST_THROW_INPUT(file.path, ": field '", key, "' is true; a Mistral has no biases");
  LlamaConfig c = read_decoder_fields(file);
  const auto it = file.j.find("sliding_window");
  c.sliding_window = it == file.j.end() ? 4096 : it->is_null() ? 0 : f.as_int(*it, "sliding_window");
  if (it != file.j.end() && !it->is_null() && c.sliding_window < 1)
    ST_THROW_INPUT(file.path, ": field 'sliding_window' must be positive or null (got ", c.sliding_window, ")");
  c.validate(file.path);
  return c;
}

void write_mistral_config(const std::string& dir, const LlamaConfig& cfg) {
  if (cfg.qkv_bias || cfg.max_window_layers != 0)
    ST_THROW("write_mistral_config: a Mistral has no ", cfg.qkv_bias ? "q, k, v biases" : "dense layers below a window");
  nlohmann::ordered_json j = decoder_config_json(cfg, "MistralForCausalLM", "mistral");
  j["sliding_window"] = cfg.sliding_window > 0 ? nlohmann::ordered_json(cfg.sliding_window) : nlohmann::ordered_json(nullptr);
  write_config_json(dir, cfg, j);
}

}  // namespace st
