// Registry entry of the Mistral family (model_type "mistral"): the decoder runner with
// io/hf_mistral's config reader; a sliding window shorter than the run's rows is refused.
#include "io/hf_mistral.hpp"
#include "train/families.hpp"

namespace st {

const ModelFamily& mistral_family() {
  static const ModelFamily f = decoder_family(
      "mistral", {"mistral"}, {read_mistral_config, write_mistral_config, nullptr},
      "a sliding_window shorter than the run's sequence length, biases, a hidden_act other than silu, rope types "
      "other than default and llama3");
  return f;
}

}  // namespace st
