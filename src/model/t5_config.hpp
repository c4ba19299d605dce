// T5 / T5 v1.1 / FlanT5 encoder-decoder hyper-parameters (transformers' T5Config names).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace st {

struct T5Config {
  int64_t vocab_size = 0;                 // vocab_size
  int64_t d_model = 0;                    // d_model (C)
  int64_t d_kv = 0;                       // d_kv (D, per head; not d_model / heads in general)
  int64_t d_ff = 0;                       // d_ff (F)
  int64_t num_layers = 0;                 // num_layers (encoder blocks)
  int64_t num_decoder_layers = 0;         // num_decoder_layers (default num_layers)
  int64_t num_heads = 0;                  // num_heads (H)
  int64_t relative_attention_num_buckets = 32;
  int64_t relative_attention_max_distance = 128;
  double layer_norm_epsilon = 1e-6;
  bool gated = true;                      // feed_forward_proj "gated-gelu" (wi_0, wi_1, wo) vs "relu" (wi, wo)
  bool tie_word_embeddings = false;       // lm_head shares `shared`
  // The decoder output is multiplied by d_model^-0.5 before the head (transformers 5's
  // scale_decoder_outputs; in older configs it follows tie_word_embeddings).
  bool scale_decoder_outputs = false;
  int64_t decoder_start_token_id = 0;
  int64_t pad_token_id = 0;
  int64_t eos_token_id = 1;

  int64_t inner_dim() const { return num_heads * d_kv; }  // H * D
  int64_t num_parameters() const;
  // Throws InputError naming `source` if a field is missing or inconsistent.
  void validate(const std::string& source) const;
  std::string summary() const;  // "enc 2 dec 2 C=64 D=16 H=4 F=128 V=512 gated-gelu untied"
};

// Every weight of a T5 checkpoint with its shape, in transformers' names (shared.weight,
// encoder.block.N.layer.M..., lm_head.weight unless tied); the relative attention bias table
// exists only in block 0 of each stack.
struct T5WeightName {
  std::string name;
  std::vector<int64_t> shape;
};
std::vector<T5WeightName> t5_weight_names(const T5Config& c);

// Reads and validates <dir>/config.json (model_type "t5"; feed_forward_proj "relu",
// "gated-gelu" or "gated-gelu_new"). InputError naming the file and field.
T5Config read_t5_config(const std::string& dir);

}  // namespace st
