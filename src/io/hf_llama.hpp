// Hugging Face Llama checkpoints: config.json <-> LlamaConfig, and the weight names and shapes;
// and the config.json pieces every decoder family (Llama, Mistral, Qwen2) shares.
//
// Only what the model implements is accepted: SiLU MLP, no biases, plain ("default") or Llama 3.1
// ("llama3") rotary embeddings. Anything else is refused with a message naming config.json and
// the field, rather than silently training a different model.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/tensor.hpp"
#include "model/llama_config.hpp"

namespace st {

// A parsed config.json whose model_type is the family's and whose hidden_act is silu
// (InputError naming the file and field otherwise).
struct HfConfigFile {
  std::string path;
  nlohmann::json j;
};
HfConfigFile open_hf_config(const std::string& dir, const char* model_type);
// The fields every decoder family shares. Defaults follow transformers where a field is absent
// (num_key_value_heads = num_attention_heads, head_dim = hidden_size / heads,
// max_position_embeddings 2048, rms_norm_eps 1e-6, rope_theta 10000, untied, bos 1, eos 2).
// rope_theta may also come from "rope_parameters" (transformers 5.x); rope_scaling /
// rope_parameters may be "default" or "llama3" (factor, low_freq_factor, high_freq_factor,
// original_max_position_embeddings; any other rope_type is refused by name). A null bos/eos token
// id becomes -1; a list of eos ids keeps the first. Not validated: the family's reader does that.
LlamaConfig read_decoder_fields(const HfConfigFile& file);
// The config.json a decoder family writes (the shared fields; the family adds its own).
nlohmann::ordered_json decoder_config_json(const LlamaConfig& cfg, const char* architecture, const char* model_type);
// Validates `cfg` and writes `j` as <dir>/config.json (creating `dir`), through a temp file.
void write_config_json(const std::string& dir, const LlamaConfig& cfg, const nlohmann::ordered_json& j);

// Reads and validates <dir>/config.json of model_type "llama" (attention_bias, mlp_bias and a
// pretraining_tp other than 1 refused). InputError naming the file and field.
LlamaConfig read_llama_config(const std::string& dir);

// Writes <dir>/config.json (creating `dir`) that transformers' LlamaForCausalLM loads, through
// a temp file and rename. Validates `cfg` first.
void write_llama_config(const std::string& dir, const LlamaConfig& cfg);

// Weight names outside the layers.
inline constexpr const char* kHfLlamaEmbed = "model.embed_tokens.weight";  // [V, C]
inline constexpr const char* kHfLlamaFinalNorm = "model.norm.weight";      // [C]
inline constexpr const char* kHfLlamaLmHead = "lm_head.weight";            // [V, C], absent when tied
// Per-layer suffixes, for hf_llama_layer_name. Linear weights are stored [out, in].
inline constexpr const char* kHfLlamaInputNorm = "input_layernorm.weight";              // [C]
inline constexpr const char* kHfLlamaPostAttnNorm = "post_attention_layernorm.weight";  // [C]
inline constexpr const char* kHfLlamaQ = "self_attn.q_proj.weight";                     // [Hq*D, C]
inline constexpr const char* kHfLlamaK = "self_attn.k_proj.weight";                     // [Hkv*D, C]
inline constexpr const char* kHfLlamaV = "self_attn.v_proj.weight";                     // [Hkv*D, C]
inline constexpr const char* kHfLlamaO = "self_attn.o_proj.weight";                     // [C, Hq*D]
inline constexpr const char* kHfLlamaGate = "mlp.gate_proj.weight";                     // [I, C]
inline constexpr const char* kHfLlamaUp = "mlp.up_proj.weight";                         // [I, C]
inline constexpr const char* kHfLlamaDown = "mlp.down_proj.weight";                     // [C, I]

// "model.layers.<layer>.<suffix>".
std::string hf_llama_layer_name(int64_t layer, const std::string& suffix);

struct HfWeightSpec {
  std::string name;
  Shape shape;
};
// Every weight of a checkpoint for `cfg` with its shape: embedding, then per layer the input
// norm, q, k, v (each followed by its bias with qkv_bias), o, post-attention norm, gate, up,
// down, then the final norm and (untied) lm_head.
std::vector<HfWeightSpec> hf_llama_weights(const LlamaConfig& cfg);

}  // namespace st
