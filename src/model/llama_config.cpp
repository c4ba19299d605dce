#include "model/llama_config.hpp"

#include "core/error.hpp"

namespace st {

int64_t LlamaConfig::num_parameters() const {
  const int64_t C = hidden_size, I = intermediate_size;
  const int64_t per_layer = 2 * C + C * q_dim() + 2 * C * kv_dim() + q_dim() * C + 3 * C * I +
                            (qkv_bias ? q_dim() + 2 * kv_dim() : 0);
  const int64_t embed = vocab_size * C;
  return embed + (tie_word_embeddings ? 0 : embed) + num_layers * per_layer + C;
}

void LlamaConfig::validate(const std::string& source) const {
  auto positive = [&](int64_t v, const char* name) {
    if (v <= 0) ST_THROW_INPUT(source, ": ", name, " must be positive (got ", v, ")");
  };
  positive(vocab_size, "vocab_size");
  positive(hidden_size, "hidden_size");
  positive(intermediate_size, "intermediate_size");
  positive(num_layers, "num_hidden_layers");
  positive(num_heads, "num_attention_heads");
  positive(num_kv_heads, "num_key_value_heads");
  positive(head_dim, "head_dim");
  positive(max_position_embeddings, "max_position_embeddings");
  if (num_heads % num_kv_heads != 0)
    ST_THROW_INPUT(source, ": num_attention_heads (", num_heads, ") is not a multiple of num_key_value_heads (",
                   num_kv_heads, ")");
  if (head_dim % 2 != 0) ST_THROW_INPUT(source, ": head_dim (", head_dim, ") must be even for rotary embeddings");
  if (!(rms_norm_eps > 0)) ST_THROW_INPUT(source, ": rms_norm_eps must be positive");
  if (!(rope_theta > 0)) ST_THROW_INPUT(source, ": rope_theta must be positive");
  if (sliding_window < 0) ST_THROW_INPUT(source, ": sliding_window must be positive or absent (got ", sliding_window, ")");
  if (rope_scaling.type == RopeScaling::Type::llama3) {
    const RopeScaling& r = rope_scaling;
    if (!(r.factor >= 1.0)) ST_THROW_INPUT(source, ": rope_scaling.factor must be >= 1 (got ", r.factor, ")");
    if (!(r.low_freq_factor > 0) || !(r.high_freq_factor > r.low_freq_factor))
      ST_THROW_INPUT(source, ": rope_scaling needs 0 < low_freq_factor < high_freq_factor (got ", r.low_freq_factor, ", ",
                     r.high_freq_factor, ")");
    if (r.original_max_position_embeddings < 1)
      ST_THROW_INPUT(source, ": rope_scaling.original_max_position_embeddings must be positive (got ",
                     r.original_max_position_embeddings, ")");
  }
}

std::string LlamaConfig::summary() const {
  return str("L=", num_layers, " C=", hidden_size, " I=", intermediate_size, " Hq=", num_heads,
             " Hkv=", num_kv_heads, " D=", head_dim, " V=", vocab_size,
             tie_word_embeddings ? " tied" : " untied", qkv_bias ? " qkv-bias" : "",
             rope_scaling.type == RopeScaling::Type::llama3 ? str(" rope=llama3(x", rope_scaling.factor, ")") : std::string(),
             sliding_window > 0 ? str(" window=", sliding_window) : std::string(), " params=", num_parameters());
}

}  // namespace st
