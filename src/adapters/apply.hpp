// Attaching adapters to a built model (the model code itself never changes).
#pragma once

#include "adapters/lora.hpp"
#include "model/llama.hpp"
#include "model/t5.hpp"

namespace st {

// Attach a LoRA adapter to every linear layer whose short name is in cfg.targets; returns how
// many were attached. The base stays frozen unless the caller enabled base training.
// Llama short names: q, k, v, o, gate, up, down. T5 short names (the last part of the module
// name, in encoder and decoder self-attention, cross-attention and feed-forward): q, k, v, o,
// wi_0, wi_1, wo (gated-GELU) or wi, wo (ReLU). InputError for a name the family does not have.
int64_t attach_lora(LlamaModel& m, const LoraConfig& cfg, int64_t max_rows, uint64_t seed);
int64_t attach_lora(T5Model& m, const LoraConfig& cfg, int64_t max_rows, uint64_t seed);
// Fold every adapter into its base weight (W += scale B A) and detach it.
void merge_adapters(LlamaModel& m);
void merge_adapters(T5Model& m);

}  // namespace st
