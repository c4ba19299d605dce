#include "model/t5_config.hpp"

#include <filesystem>

#include "core/error.hpp"
#include "io/hf_checkpoint.hpp"
#include "io/hf_config.hpp"

namespace st {

namespace fs = std::filesystem;

void T5Config::validate(const std::string& source) const {
  auto positive = [&](int64_t v, const char* key) {
    if (v < 1) ST_THROW_INPUT(source, ": ", key, " must be positive (got ", v, ")");
  };
  positive(vocab_size, "vocab_size");
  positive(d_model, "d_model");
  positive(d_kv, "d_kv");
  positive(d_ff, "d_ff");
  positive(num_layers, "num_layers");
  positive(num_decoder_layers, "num_decoder_layers");
  positive(num_heads, "num_heads");
  if (relative_attention_num_buckets < 2)
    ST_THROW_INPUT(source, ": relative_attention_num_buckets must be at least 2 (got ", relative_attention_num_buckets, ")");
  if (relative_attention_max_distance < 1)
    ST_THROW_INPUT(source, ": relative_attention_max_distance must be positive (got ", relative_attention_max_distance, ")");
  if (!(layer_norm_epsilon > 0)) ST_THROW_INPUT(source, ": layer_norm_epsilon must be positive");
  for (auto [v, key] : {std::pair<int64_t, const char*>{decoder_start_token_id, "decoder_start_token_id"},
                        {pad_token_id, "pad_token_id"}})
    if (v < 0 || v >= vocab_size) ST_THROW_INPUT(source, ": ", key, " ", v, " is outside the vocabulary [0, ", vocab_size, ")");
}

int64_t T5Config::num_parameters() const {
  const int64_t C = d_model, HD = inner_dim(), F = d_ff, V = vocab_size, NB = relative_attention_num_buckets;
  const int64_t attn = 4 * C * HD, ffn = (gated ? 3 : 2) * C * F;
  const int64_t enc = num_layers * (attn + ffn + 2 * C) + NB * num_heads + C;
  const int64_t dec = num_decoder_layers * (2 * attn + ffn + 3 * C) + NB * num_heads + C;
  return V * C + enc + dec + (tie_word_embeddings ? 0 : V * C);
}

std::string T5Config::summary() const {
  return str("enc ", num_layers, " dec ", num_decoder_layers, " C=", d_model, " D=", d_kv, " H=", num_heads, " F=", d_ff,
             " V=", vocab_size, gated ? " gated-gelu" : " relu", tie_word_embeddings ? " tied" : " untied",
             scale_decoder_outputs ? " scaled" : "");
}

std::vector<T5WeightName> t5_weight_names(const T5Config& c) {
  std::vector<T5WeightName> out;
  const int64_t C = c.d_model, HD = c.inner_dim(), F = c.d_ff;
  out.push_back({"shared.weight", {c.vocab_size, C}});
  auto attention = [&](const std::string& p, bool first, bool relative) {
    for (const char* w : {"q", "k", "v"}) out.push_back({p + w + ".weight", {HD, C}});
    out.push_back({p + "o.weight", {C, HD}});
    if (first && relative) out.push_back({p + "relative_attention_bias.weight", {c.relative_attention_num_buckets, c.num_heads}});
  };
  auto ffn = [&](const std::string& p) {
    if (c.gated) {
      out.push_back({p + "wi_0.weight", {F, C}});
      out.push_back({p + "wi_1.weight", {F, C}});
    } else {
      out.push_back({p + "wi.weight", {F, C}});
    }
    out.push_back({p + "wo.weight", {C, F}});
  };
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string b = str("encoder.block.", l, ".");
    attention(b + "layer.0.SelfAttention.", l == 0, true);
    out.push_back({b + "layer.0.layer_norm.weight", {C}});
    ffn(b + "layer.1.DenseReluDense.");
    out.push_back({b + "layer.1.layer_norm.weight", {C}});
  }
  out.push_back({"encoder.final_layer_norm.weight", {C}});
  for (int64_t l = 0; l < c.num_decoder_layers; ++l) {
    const std::string b = str("decoder.block.", l, ".");
    attention(b + "layer.0.SelfAttention.", l == 0, true);
    out.push_back({b + "layer.0.layer_norm.weight", {C}});
    attention(b + "layer.1.EncDecAttention.", l == 0, false);  // cross-attention: no relative bias
    out.push_back({b + "layer.1.layer_norm.weight", {C}});
    ffn(b + "layer.2.DenseReluDense.");
    out.push_back({b + "layer.2.layer_norm.weight", {C}});
  }
  out.push_back({"decoder.final_layer_norm.weight", {C}});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, C}});
  return out;
}

T5Config read_t5_config(const std::string& dir) {
  const std::string path = (fs::path(dir) / "config.json").string();
  const json j = read_json_file(path);
  if (!j.is_object()) ST_THROW_INPUT(path, ": must be a JSON object");
  const ConfigFields f(j, path);
  const std::string model_type = f.optional_string("model_type", "");
  if (model_type != "t5") ST_THROW_INPUT(path, ": field 'model_type' is \"", model_type, "\", expected \"t5\"");
  T5Config c;
  c.vocab_size = f.required_int("vocab_size");
  c.d_model = f.required_int("d_model");
  c.d_kv = f.required_int("d_kv");
  c.d_ff = f.required_int("d_ff");
  c.num_layers = f.required_int("num_layers");
  c.num_decoder_layers = f.optional_int("num_decoder_layers", c.num_layers);
  c.num_heads = f.required_int("num_heads");
  c.relative_attention_num_buckets = f.optional_int("relative_attention_num_buckets", 32);
  c.relative_attention_max_distance = f.optional_int("relative_attention_max_distance", 128);
  c.layer_norm_epsilon = f.optional_number("layer_norm_epsilon", 1e-6);
  const std::string ff = f.optional_string("feed_forward_proj", "relu");
  if (ff == "relu") c.gated = false;
  else if (ff == "gated-gelu" || ff == "gated-gelu_new") c.gated = true;
  else ST_THROW_INPUT(path, ": field 'feed_forward_proj' is \"", ff, "\"; implemented: relu, gated-gelu");
  if (f.optional_bool("is_encoder_decoder", true) == false)
    ST_THROW_INPUT(path, ": field 'is_encoder_decoder' is false; only the encoder-decoder model is implemented");
  c.tie_word_embeddings = f.optional_bool("tie_word_embeddings", true);  // transformers' T5Config default
  c.scale_decoder_outputs = f.optional_bool("scale_decoder_outputs", c.tie_word_embeddings);
  c.pad_token_id = read_token_id(j, f, "pad_token_id", 0);
  c.eos_token_id = read_token_id(j, f, "eos_token_id", 1);
  c.decoder_start_token_id = read_token_id(j, f, "decoder_start_token_id", c.pad_token_id);
  c.validate(path);
  return c;
}

}  // namespace st
