// Registry entry of the Llama family (model_type "llama": Llama 2, Llama 3.x with rotary scaling
// "llama3", TinyLlama, stories260K ...): the decoder runner with io/hf_llama's config reader.
#include "io/hf_llama.hpp"
#include "train/families.hpp"

namespace st {

const ModelFamily& llama_family() {
  static const ModelFamily f = decoder_family(
      "llama", {"llama"}, {read_llama_config, write_llama_config, nullptr},
      "attention_bias, mlp_bias, a hidden_act other than silu, pretraining_tp > 1, rope types other than "
      "default and llama3, partial rotary factors");
  return f;
}

}  // namespace st
