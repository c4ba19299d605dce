#include "io/hf_qwen2.hpp"

#include <algorithm>

#include "io/hf_config.hpp"
#include "io/hf_llama.hpp"

namespace st {

LlamaConfig read_qwen2_config(const std::string& dir) {
  const HfConfigFile file = open_hf_config(dir, "qwen2");
  const ConfigFields f(file.j, file.path);
  LlamaConfig c = read_decoder_fields(file);
  c.qkv_bias = true;  // Qwen2Attention: q, k, v with biases, o without (no config field)
  // Which layers slide: layer_types when given (transformers 5), else use_sliding_window with
  // the layers from max_window_layers on (Qwen2Config's own rule).
  const bool use_window = f.optional_bool("use_sliding_window", false);
  const int64_t max_window_layers = f.optional_int("max_window_layers", 28);
  int64_t first_sliding = use_window ? max_window_layers : c.num_layers;
  if (const json* types = f.get("layer_types")) {
    if (!types->is_array() || static_cast<int64_t>(types->size()) != c.num_layers)
      ST_THROW_INPUT(file.path, ": field 'layer_types' must be a list of ", c.num_layers, " layer types");
    first_sliding = c.num_layers;
    for (int64_t l = 0; l < c.num_layers; ++l) {
      const json& t = (*types)[static_cast<size_t>(l)];
      const std::string s = t.is_string() ? t.get<std::string>() : t.dump();
      if (s != "full_attention" && s != "sliding_attention")
        ST_THROW_INPUT(file.path, ": field 'layer_types' holds \"", s, "\"; only full_attention and sliding_attention");
      if (s == "sliding_attention" && first_sliding == c.num_layers) first_sliding = l;
      if (s == "full_attention" && first_sliding < c.num_layers)
        ST_THROW_INPUT(file.path, ": field 'layer_types' has full_attention after sliding_attention (layer ", l,
                       "); only sliding layers from one layer on are supported");
    }
  }
  if (first_sliding < c.num_layers) {
    const auto it = file.j.find("sliding_window");
    c.sliding_window = it == file.j.end() ? 4096 : it->is_null() ? 0 : f.as_int(*it, "sliding_window");
    if (c.sliding_window < 1)
      ST_THROW_INPUT(file.path, ": field 'sliding_window' must be positive when layers slide (from layer ", first_sliding, ")");
    c.max_window_layers = std::max<int64_t>(0, first_sliding);
  }
  c.validate(file.path);
  return c;
}

void write_qwen2_config(const std::string& dir, const LlamaConfig& cfg) {
  if (!cfg.qkv_bias) ST_THROW("write_qwen2_config: a Qwen2 has q, k, v biases");
  nlohmann::ordered_json j = decoder_config_json(cfg, "Qwen2ForCausalLM", "qwen2");
  const bool window = cfg.sliding_window > 0;
  j["use_sliding_window"] = window;
  j["sliding_window"] = window ? nlohmann::ordered_json(cfg.sliding_window) : nlohmann::ordered_json(nullptr);
  j["max_window_layers"] = window ? cfg.max_window_layers : cfg.num_layers;
  write_config_json(dir, cfg, j);
}

}  // namespace st
