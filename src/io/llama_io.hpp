// Decoder weights (Llama, Mistral, Qwen2) <-> Hugging Face checkpoint directories.
#pragma once

#include <string>

#include "model/llama.hpp"

namespace st {

// Read config.json of a checkpoint directory and load every weight, validating names, shapes
// and dtypes (f32/bf16/f16 on disk, converted to the model's dtype). Unexpected tensors in the
// checkpoint are refused, except the known-harmless rotary inv_freq buffers. Linears named in
// `quant` are quantized to NF4 (QLoRA) or FP8 (base_precision = fp8) as they are read.
// With tp.size > 1 every rank reads each full tensor and keeps its shard (see llama_build).
LlamaModel load_llama(const std::string& dir, DType dtype, Device device, const LlamaQuant& quant = {},
                      const TpGroup& tp = {});
// The same for a config already read (by the family's reader: Mistral, Qwen2 read their own
// config.json into a LlamaConfig).
LlamaModel load_decoder(const std::string& dir, const LlamaConfig& cfg, DType dtype, Device device,
                        const LlamaQuant& quant = {}, const TpGroup& tp = {});
// Write config.json + model.safetensors (f32) into dir (created), sharded with an index above
// max_shard_bytes (write_hf_weights in io/hf_checkpoint.hpp; 0: never). The model must carry no
// adapters (merge them first). tokenizer_path, if non-empty, is copied as tokenizer.model.
// Under tensor parallelism this is collective over the TP group: the shards are gathered and
// the group's rank 0 writes.
void save_llama(LlamaModel& m, const std::string& dir, const std::string& tokenizer_path,
                uint64_t max_shard_bytes = 5000000000ull);
// The same with the family's config.json writer.
void save_decoder(LlamaModel& m, const std::string& dir, const std::string& tokenizer_path, uint64_t max_shard_bytes,
                  void (*write_config)(const std::string& dir, const LlamaConfig& cfg));
// The full (unsharded) tensor of a slot as an f32 CPU tensor, gathered over the TP group when
// the slot is split (collective then); every rank gets it.
Tensor llama_gather_full(const LlamaModel& m, const LlamaWeightSlot& slot);

}  // namespace st
