// T5 weights <-> Hugging Face checkpoint directories (transformers' T5ForConditionalGeneration).
#pragma once

#include <string>

#include "model/t5.hpp"

namespace st {

// Read <dir>/config.json and model.safetensors (or shards), validating names and shapes (f32/
// bf16/f16 on disk, converted to `dtype`). Linears named in `quant` are quantized to NF4 or FP8
// as they are read. With tp.size > 1 every rank reads each full tensor and keeps its shard (t5_build).
// The copies of `shared` transformers writes (encoder/decoder.embed_tokens, a tied lm_head) are
// accepted; any other unexpected tensor is refused.
T5Model load_t5(const std::string& dir, DType dtype, Device device, const T5Quant& quant = {}, const TpGroup& tp = {});
// Write config.json + model.safetensors (f32, transformers' names) into dir (created), sharded
// with an index above max_shard_bytes (write_hf_weights in io/hf_checkpoint.hpp; 0: never). The
// model must carry no adapters (merge_adapters in adapters/apply.hpp), no NF4 layers
// (t5_dequantize) and no FP8 ones. Under tensor parallelism this is collective over the TP group:
// the shards are gathered and rank 0 writes.
void save_t5(T5Model& m, const std::string& dir, uint64_t max_shard_bytes = 5000000000ull);
// config.json for `cfg` (read back by read_t5_config into the same fields).
void write_t5_config(const std::string& dir, const T5Config& cfg);

}  // namespace st
