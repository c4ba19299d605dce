#include "io/hf_llama.hpp"

#include <filesystem>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/hf_checkpoint.hpp"
#include "io/hf_config.hpp"

namespace st {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// rope_scaling / rope_parameters (transformers 5's name; both may appear): the plain ("default")
// rotary embedding, or Llama 3.1's frequency scaling ("llama3"). Anything else is refused by
// name. Returns the rope_theta the block carries (or `theta`), and fills `scaling`.
double read_rope_block(const ConfigFields& f, const char* key, double theta, bool theta_given, int64_t max_positions,
                       int64_t top_original, RopeScaling& scaling) {
  const json* block = f.get(key);
  if (!block) return theta;
  if (!block->is_object()) ST_THROW_INPUT(f.path(), ": field '", key, "' must be an object or null");
  const char* type_key = block->contains("rope_type") ? "rope_type" : "type";  // "type": older transformers
  const auto type = block->find(type_key);
  std::string kind = "default";
  if (type != block->end() && !type->is_null()) {
    if (type->is_string()) kind = type->get<std::string>();
    if (!type->is_string() || (kind != "default" && kind != "llama3"))
      ST_THROW_INPUT(f.path(), ": field '", key, ".", type_key, "' is ", type->dump(),
                     "; only \"default\" and \"llama3\" rotary embeddings are implemented");
  }
  if (const auto prf = block->find("partial_rotary_factor"); prf != block->end() && !prf->is_null())
    if (!prf->is_number() || prf->get<double>() != 1.0)
      ST_THROW_INPUT(f.path(), ": field '", key, ".partial_rotary_factor' is ", prf->dump(),
                     "; only rotary embeddings over the whole head are implemented");
  if (kind == "llama3") {
    // transformers' _compute_llama3_parameters: factor, low_freq_factor and high_freq_factor are
    // required; original_max_position_embeddings falls back to the top-level field, then to
    // max_position_embeddings (RotaryEmbeddingConfigMixin.standardize_rope_params).
    auto number = [&](const char* name) {
      const auto it = block->find(name);
      if (it == block->end() || it->is_null())
        ST_THROW_INPUT(f.path(), ": field '", key, ".", type_key, "' is \"llama3\", which needs '", key, ".", name,
                       "' (missing)");
      if (!it->is_number()) ST_THROW_INPUT(f.path(), ": field '", key, ".", name, "' must be a number, got ", it->dump());
      return it->get<double>();
    };
    scaling.type = RopeScaling::Type::llama3;
    scaling.factor = number("factor");
    scaling.low_freq_factor = number("low_freq_factor");
    scaling.high_freq_factor = number("high_freq_factor");
    const auto orig = block->find("original_max_position_embeddings");
    scaling.original_max_position_embeddings =
        orig != block->end() && !orig->is_null() ? f.as_int(*orig, str(key, ".original_max_position_embeddings"))
        : top_original > 0                       ? top_original
                                                 : max_positions;
  }
  const auto t = block->find("rope_theta");
  if (t == block->end() || t->is_null()) return theta;
  if (!t->is_number()) ST_THROW_INPUT(f.path(), ": field '", key, ".rope_theta' must be a number");
  const double inner = t->get<double>();
  if (theta_given && inner != theta)
    ST_THROW_INPUT(f.path(), ": field '", key, ".rope_theta' (", inner, ") disagrees with 'rope_theta' (", theta, ")");
  return inner;
}

}  // namespace

HfConfigFile open_hf_config(const std::string& dir, const char* model_type) {
  HfConfigFile file;
  file.path = (fs::path(dir) / "config.json").string();
  file.j = read_json_file(file.path);
  if (!file.j.is_object()) ST_THROW_INPUT(file.path, ": must be a JSON object");
  const ConfigFields f(file.j, file.path);
  if (!f.get("model_type")) ST_THROW_INPUT(file.path, ": field 'model_type' is missing (expected \"", model_type, "\")");
  const std::string type = f.optional_string("model_type", "");
  if (type != model_type)
    ST_THROW_INPUT(file.path, ": field 'model_type' is \"", type, "\", expected \"", model_type, "\"");
  const std::string act = f.optional_string("hidden_act", "silu");
  if (act != "silu") ST_THROW_INPUT(file.path, ": field 'hidden_act' is \"", act, "\"; only \"silu\" is implemented");
  return file;
}

LlamaConfig read_decoder_fields(const HfConfigFile& file) {
  const ConfigFields f(file.j, file.path);
  LlamaConfig c;
  c.vocab_size = f.required_int("vocab_size");
  c.hidden_size = f.required_int("hidden_size");
  c.intermediate_size = f.required_int("intermediate_size");
  c.num_layers = f.required_int("num_hidden_layers");
  c.num_heads = f.required_int("num_attention_heads");
  c.num_kv_heads = f.optional_int("num_key_value_heads", c.num_heads);
  if (f.get("head_dim")) {
    c.head_dim = f.required_int("head_dim");
  } else if (c.num_heads > 0) {  // validate() reports a non-positive head count
    if (c.hidden_size % c.num_heads != 0)
      ST_THROW_INPUT(file.path, ": field 'head_dim' is absent and hidden_size (", c.hidden_size,
                     ") is not a multiple of num_attention_heads (", c.num_heads, ")");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.max_position_embeddings = f.optional_int("max_position_embeddings", 2048);
  c.rms_norm_eps = f.optional_number("rms_norm_eps", 1e-6);
  const bool theta_given = f.get("rope_theta") != nullptr;
  c.rope_theta = f.optional_number("rope_theta", 10000.0);
  const int64_t top_original = f.optional_int("original_max_position_embeddings", 0);
  for (const char* key : {"rope_parameters", "rope_scaling"})
    c.rope_theta = read_rope_block(f, key, c.rope_theta, theta_given, c.max_position_embeddings, top_original,
                                   c.rope_scaling);
  c.tie_word_embeddings = f.optional_bool("tie_word_embeddings", false);
  c.bos_token_id = read_token_id(file.j, f, "bos_token_id", 1);
  c.eos_token_id = read_token_id(file.j, f, "eos_token_id", 2);
  return c;
}

LlamaConfig read_llama_config(const std::string& dir) {
  const HfConfigFile file = open_hf_config(dir, "llama");
  const ConfigFields f(file.j, file.path);
  if (f.optional_bool("attention_bias", false))
    ST_THROW_INPUT(file.path, ": field 'attention_bias' is true; biases are not implemented");
  if (f.optional_bool("mlp_bias", false)) ST_THROW_INPUT(file.path, ": field 'mlp_bias' is true; biases are not implemented");
  if (f.optional_int("pretraining_tp", 1) != 1)
    ST_THROW_INPUT(file.path, ": field 'pretraining_tp' is ", f.optional_int("pretraining_tp", 1),
                   "; only 1 (unsliced projections) is implemented");
  LlamaConfig c = read_decoder_fields(file);
  c.validate(file.path);
  return c;
}

nlohmann::ordered_json decoder_config_json(const LlamaConfig& cfg, const char* architecture, const char* model_type) {
  auto token = [](int64_t id) { return id < 0 ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(id); };
  nlohmann::ordered_json j;
  j["architectures"] = {architecture};
  j["model_type"] = model_type;
  j["vocab_size"] = cfg.vocab_size;
  j["hidden_size"] = cfg.hidden_size;
  j["intermediate_size"] = cfg.intermediate_size;
  j["num_hidden_layers"] = cfg.num_layers;
  j["num_attention_heads"] = cfg.num_heads;
  j["num_key_value_heads"] = cfg.num_kv_heads;
  j["head_dim"] = cfg.head_dim;
  j["max_position_embeddings"] = cfg.max_position_embeddings;
  j["rms_norm_eps"] = cfg.rms_norm_eps;
  j["rope_theta"] = cfg.rope_theta;
  if (cfg.rope_scaling.type == RopeScaling::Type::llama3) {
    const RopeScaling& r = cfg.rope_scaling;
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", r.factor},
                         {"low_freq_factor", r.low_freq_factor},
                         {"high_freq_factor", r.high_freq_factor},
                         {"original_max_position_embeddings", r.original_max_position_embeddings}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  j["hidden_act"] = "silu";
  j["attention_dropout"] = 0.0;
  j["tie_word_embeddings"] = cfg.tie_word_embeddings;
  j["bos_token_id"] = token(cfg.bos_token_id);
  j["eos_token_id"] = token(cfg.eos_token_id);
  j["torch_dtype"] = "float32";
  return j;
}

void write_config_json(const std::string& dir, const LlamaConfig& cfg, const nlohmann::ordered_json& j) {
  const std::string path = (fs::path(dir) / "config.json").string();
  cfg.validate(path);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) ST_THROW("cannot create directory ", dir, ": ", ec.message());
  write_text_file_atomic(path, j.dump(2) + "\n");
}

void write_llama_config(const std::string& dir, const LlamaConfig& cfg) {
  if (cfg.qkv_bias || cfg.sliding_window > 0)
    ST_THROW("write_llama_config: a Llama has no ", cfg.qkv_bias ? "q, k, v biases" : "sliding window");
  nlohmann::ordered_json j = decoder_config_json(cfg, "LlamaForCausalLM", "llama");
  j["attention_bias"] = false;
  j["mlp_bias"] = false;
  write_config_json(dir, cfg, j);
}

std::string hf_llama_layer_name(int64_t layer, const std::string& suffix) {
  return str("model.layers.", layer, ".", suffix);
}

std::vector<HfWeightSpec> hf_llama_weights(const LlamaConfig& cfg) {
  const int64_t V = cfg.vocab_size, C = cfg.hidden_size, I = cfg.intermediate_size;
  const int64_t Q = cfg.q_dim(), KV = cfg.kv_dim();
  std::vector<HfWeightSpec> w;
  w.push_back({kHfLlamaEmbed, {V, C}});
  for (int64_t l = 0; l < cfg.num_layers; ++l) {
    auto add = [&](const char* suffix, Shape s) { w.push_back({hf_llama_layer_name(l, suffix), s}); };
    add(kHfLlamaInputNorm, {C});
    add(kHfLlamaQ, {Q, C});
    if (cfg.qkv_bias) add("self_attn.q_proj.bias", {Q});
    add(kHfLlamaK, {KV, C});
    if (cfg.qkv_bias) add("self_attn.k_proj.bias", {KV});
    add(kHfLlamaV, {KV, C});
    if (cfg.qkv_bias) add("self_attn.v_proj.bias", {KV});
    add(kHfLlamaO, {C, Q});
    add(kHfLlamaPostAttnNorm, {C});
    add(kHfLlamaGate, {I, C});
    add(kHfLlamaUp, {I, C});
    add(kHfLlamaDown, {C, I});
  }
  w.push_back({kHfLlamaFinalNorm, {C}});
  if (!cfg.tie_word_embeddings) w.push_back({kHfLlamaLmHead, {V, C}});
  return w;
}

}  // namespace st
