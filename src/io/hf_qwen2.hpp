// Hugging Face Qwen2 / Qwen2.5 checkpoints (model_type "qwen2"): the Llama decoder with biases on
// the q, k and v projections (LlamaConfig::qkv_bias; their weights are
// model.layers.N.self_attn.{q,k,v}_proj.bias), usually a large rope_theta and, in the small sizes,
// a tied head. Sliding-window attention (use_sliding_window, with the window on the layers from
// max_window_layers on, or layer_types) is kept as LlamaConfig::sliding_window /
// max_window_layers: runs on rows longer than the window are refused (it is not implemented).
#pragma once

#include <string>

#include "model/llama_config.hpp"

namespace st {

// Reads and validates <dir>/config.json (transformers' Qwen2Config defaults where a field is
// absent: use_sliding_window false, sliding_window 4096, max_window_layers 28). InputError naming
// the file and field.
LlamaConfig read_qwen2_config(const std::string& dir);
// Writes <dir>/config.json that transformers' Qwen2ForCausalLM loads.
void write_qwen2_config(const std::string& dir, const LlamaConfig& cfg);

}  // namespace st
