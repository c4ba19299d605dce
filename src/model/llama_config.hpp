// Llama-family decoder hyper-parameters (Hugging Face LlamaConfig names in comments). The same
// decoder serves Llama 2/3.x, Mistral and Qwen2/Qwen2.5 (each family's config reader fills the
// fields its config.json has).
#pragma once

#include <cstdint>
#include <string>

#include "ops/rope.hpp"

namespace st {

struct LlamaConfig {
  int64_t vocab_size = 0;          // vocab_size
  int64_t hidden_size = 0;         // hidden_size (C)
  int64_t intermediate_size = 0;   // intermediate_size (I)
  int64_t num_layers = 0;          // num_hidden_layers (L)
  int64_t num_heads = 0;           // num_attention_heads (Hq)
  int64_t num_kv_heads = 0;        // num_key_value_heads (Hkv); Hq % Hkv == 0
  int64_t head_dim = 0;            // head_dim (D), default hidden_size / num_heads
  int64_t max_position_embeddings = 2048;
  double rms_norm_eps = 1e-5;      // rms_norm_eps
  double rope_theta = 10000.0;     // rope_theta
  RopeScaling rope_scaling;        // rope_scaling / rope_parameters (rope_type llama3)
  bool qkv_bias = false;           // q, k and v projections carry biases (Qwen2)
  int64_t sliding_window = 0;      // sliding-window attention span (Mistral, Qwen2); 0: none.
                                   // Runs are refused on sequences longer than the window.
  int64_t max_window_layers = 0;   // the window applies to layers >= this one (Qwen2; 0: all)
  bool tie_word_embeddings = false;
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;

  int64_t q_dim() const { return num_heads * head_dim; }
  int64_t kv_dim() const { return num_kv_heads * head_dim; }
  // Parameter count (tied embeddings counted once; biases included).
  int64_t num_parameters() const;
  // Throws InputError naming `source` (file or deck) if a field is missing or inconsistent.
  void validate(const std::string& source) const;
  std::string summary() const;  // "L=5 C=64 I=172 Hq=8 Hkv=4 D=8 V=512 tied"
};

}  // namespace st
