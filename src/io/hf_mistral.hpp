// Hugging Face Mistral checkpoints (model_type "mistral": Mistral 7B v0.1-v0.3, Mistral Nemo):
// the Llama decoder (no biases) with its own config.json. A sliding window (v0.1: 4096) is kept
// in LlamaConfig::sliding_window: runs on rows longer than it are refused (sliding-window
// attention is not implemented); a null window is plain causal attention.
#pragma once

#include <string>

#include "model/llama_config.hpp"

namespace st {

// Reads and validates <dir>/config.json (transformers' MistralConfig defaults: sliding_window
// 4096 when absent). InputError naming the file and field.
LlamaConfig read_mistral_config(const std::string& dir);
// Writes <dir>/config.json that transformers' MistralForCausalLM loads.
void write_mistral_config(const std::string& dir, const LlamaConfig& cfg);

}  // namespace st
