// Registry entry of the T5 family (model_type "t5": T5 v1.1, FlanT5, original T5): the
// encoder-decoder runner (train/t5_runner.cpp) with model/t5_config's reader.
#include "model/t5.hpp"
#include "model/t5_config.hpp"
#include "train/families.hpp"

namespace st {

const ModelFamily& t5_family() {
  static const ModelFamily f = [] {
    ModelFamily x;
    x.name = "t5";
    x.model_types = {"t5"};
    x.seq2seq = true;
    x.module_names = t5_module_names();
    x.default_lora_targets = t5_module_names();  // every projection the variant has
    x.peft.family = "t5";
    x.peft.task_type = "SEQ_2_SEQ_LM";
    for (const std::string& n : t5_module_names()) x.peft.targets.emplace_back(n, n);
    x.peft.short_name = t5_module_short_name;
    x.read_config = [](const std::string& dir) {
      const T5Config c = read_t5_config(dir);
      return ModelShape{c.summary(), c.vocab_size, c.d_model, c.d_ff, c.num_layers + c.num_decoder_layers,
                        c.num_heads,  c.num_heads,  c.d_kv};
    };
    x.make_runner = make_t5_runner;
    x.refuses = "a feed_forward_proj other than relu / gated-gelu, is_encoder_decoder false, other model_types (mt5, "
                "umt5, longt5)";
    return x;
  }();
  return f;
}

}  // namespace st
