// Registry entry of the Qwen2 family (model_type "qwen2": Qwen2, Qwen2.5): the decoder runner
// with io/hf_qwen2's config reader (q, k, v biases); random init from a deck has the biases too.
#include "io/hf_qwen2.hpp"
#include "train/families.hpp"

namespace st {

const ModelFamily& qwen2_family() {
  static const ModelFamily f = decoder_family(
      "qwen2", {"qwen2"}, {read_qwen2_config, write_qwen2_config, [](LlamaConfig& c) { c.qkv_bias = true; }},
      "sliding-window layers whose window is shorter than the run's sequence length, a hidden_act other than "
      "silu, rope types other than default and llama3");
  return f;
}

}  // namespace st
