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

// rope_scaling / rope_parameters: only the plain ("default") rotary embedding is implemented.
// Returns the rope_theta it carries, or `theta` when it has none.
double check_rope_block(const ConfigFields& f, const char* key, double theta, bool theta_given) {
  const json* block = f.get(key);
  if (!block) return theta;
  if (!block->is_object()) ST_THROW_INPUT(f.path(), ": field '", key, "' must be an object or null");
  const char* type_key = block->contains("rope_type") ? "rope_type" : "type";  // "type": older transformers
  const auto type = block->find(type_key);
  if (type != block->end() && !type->is_null()) {
    if (!type->is_string() || type->get<std::string>() != "default")
      ST_THROW_INPUT(f.path(), ": field '", key, ".", type_key, "' is ", type->dump(),
                     "; only \"default\" rotary embeddings are implemented");
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

LlamaConfig read_llama_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  const json j = read_json_file(path);
  if (!j.is_object()) ST_THROW_INPUT(path, ": must be a JSON object");
  const ConfigFields f(j, path);

  if (!f.get("model_type")) ST_THROW_INPUT(path, ": field 'model_type' is missing (expected \"llama\")");
  const std::string model_type = f.optional_string("model_type", "");
  if (model_type != "llama")
    ST_THROW_INPUT(path, ": field 'model_type' is \"", model_type, "\", expected \"llama\"");
  const std::string act = f.optional_string("hidden_act", "silu");
  if (act != "silu") ST_THROW_INPUT(path, ": field 'hidden_act' is \"", act, "\"; only \"silu\" is implemented");
  if (f.optional_bool("attention_bias", false))
    ST_THROW_INPUT(path, ": field 'attention_bias' is true; biases are not implemented");
  if (f.optional_bool("mlp_bias", false)) ST_THROW_INPUT(path, ": field 'mlp_bias' is true; biases are not implemented");

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
      ST_THROW_INPUT(path, ": field 'head_dim' is absent and hidden_size (", c.hidden_size,
                     ") is not a multiple of num_attention_heads (", c.num_heads, ")");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  c.max_position_embeddings = f.optional_int("max_position_embeddings", 2048);
  c.rms_norm_eps = f.optional_number("rms_norm_eps", 1e-6);
  const bool theta_given = f.get("rope_theta") != nullptr;
  c.rope_theta = f.optional_number("rope_theta", 10000.0);
  c.rope_theta = check_rope_block(f, "rope_parameters", c.rope_theta, theta_given);
  c.rope_theta = check_rope_block(f, "rope_scaling", c.rope_theta, theta_given);
  c.tie_word_embeddings = f.optional_bool("tie_word_embeddings", false);
  c.bos_token_id = read_token_id(j, f, "bos_token_id", 1);
  c.eos_token_id = read_token_id(j, f, "eos_token_id", 2);
  c.validate(path);
  return c;
}

void write_llama_config(const std::string& dir, const LlamaConfig& cfg) {
  const std::string path = (fs::path(dir) / "config.json").string();
  cfg.validate(path);
  auto token = [](int64_t id) { return id < 0 ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(id); };
  nlohmann::ordered_json j;
  j["architectures"] = {"LlamaForCausalLM"};
  j["model_type"] = "llama";
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
  j["rope_scaling"] = nullptr;
  j["hidden_act"] = "silu";
  j["attention_bias"] = false;
  j["attention_dropout"] = 0.0;
  j["mlp_bias"] = false;
  j["tie_word_embeddings"] = cfg.tie_word_embeddings;
  j["bos_token_id"] = token(cfg.bos_token_id);
  j["eos_token_id"] = token(cfg.eos_token_id);
  j["torch_dtype"] = "float32";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) ST_THROW("cannot create directory ", dir, ": ", ec.message());
  write_text_file_atomic(path, j.dump(2) + "\n");
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
    add(kHfLlamaK, {KV, C});
    add(kHfLlamaV, {KV, C});
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
