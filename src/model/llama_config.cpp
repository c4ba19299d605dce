#include "model/llama_config.hpp"

#include "core/error.hpp"

namespace st {

int64_t LlamaConfig::num_parameters() const {
  const int64_t C = hidden_size, I = intermediate_size;
  const int64_t per_layer = 2 * C + C * q_dim() + 2 * C * kv_dim() + q_dim() * C + 3 * C * I;
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
}

std::string LlamaConfig::summary() const {
  return str("L=", num_layers, " C=", hidden_size, " I=", intermediate_size, " Hq=", num_heads,
             " Hkv=", num_kv_heads, " D=", head_dim, " V=", vocab_size,
             tie_word_embeddings ? " tied" : " untied", " params=", num_parameters());
}

}  // namespace st
