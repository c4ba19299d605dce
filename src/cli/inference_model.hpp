// A model for inference outside a training run (`export`, `generate`): the base through its
// family's runner, and the PEFT
// adapter `c.adapter` attached and loaded when there is one. One rank, no data.
#pragma once

#include <cstdint>
#include <memory>

#include "config/run_config.hpp"
#include "train/families.hpp"
#include "train/model_runner.hpp"

namespace st {

// Buffers for rows of up to seq_len tokens (target_len: a seq2seq decoder's), `rows` at a time;
// method lora (a dense base) or qlora (the NF4 base, as the deck's qlora_* keys say); `what`
// prefixes the log line ("export", "generate").
std::unique_ptr<ModelRunner> load_inference_model(RunConfig& c, const ModelFamily& fam, DType dtype, Device device,
                                                  int64_t rows, int64_t seq_len, int64_t target_len, Method method,
                                                  const char* what);

}  // namespace st
