// Attaching adapters to a built model (the model code itself never changes).
#pragma once

#include "adapters/lora.hpp"
#include "model/llama.hpp"

namespace st {

// Attach a LoRA adapter to every linear layer whose short name is in cfg.targets; returns how
// many were attached. The base stays frozen unless the caller enabled base training.
int64_t attach_lora(LlamaModel& m, const LoraConfig& cfg, int64_t max_rows, uint64_t seed);
// Fold every adapter into its base weight (W += scale B A) and detach it.
void merge_adapters(LlamaModel& m);

}  // namespace st
