#include "io/llama_io.hpp"

#include <algorithm>
#include <filesystem>

#include "core/atomic_file.hpp"
#include "core/log.hpp"
#include "io/hf_checkpoint.hpp"
#include "io/hf_tokenizer.hpp"
#include "io/hf_llama.hpp"
#include "io/safetensors.hpp"

namespace fs = std::filesystem;

namespace st {

LlamaModel load_llama(const std::string& dir, DType dtype, Device device, const LlamaQuant& quant,
                      const TpGroup& tp) {
  return load_decoder(dir, read_llama_config(dir), dtype, device, quant, tp);
}

LlamaModel load_decoder(const std::string& dir, const LlamaConfig& cfg, DType dtype, Device device,
                        const LlamaQuant& quant, const TpGroup& tp) {
  LlamaModel m = llama_build(cfg, dtype, device, quant, tp);
  CheckpointReader ckpt = CheckpointReader::open(dir);
  // One tensor at a time: NF4 and FP8 layers are quantized as they arrive, so the dense model
  // never exists in device memory as a whole.
  for (const LlamaWeightSlot& slot : llama_weight_slots(m)) {
    Tensor t = ckpt.read(slot.name, slot.full_shape, dtype, device, MemCategory::workspace);
    llama_set_weight(slot, slot.split == TpMode::none ? t : llama_shard_of(m, slot, t));
  }
  for (const std::string& extra : ckpt.unused_names()) {
    if (extra.find("rotary_emb.inv_freq") != std::string::npos) continue;
    if (extra == "lm_head.weight" && cfg.tie_word_embeddings) {
      ST_WARN(dir, ": ignoring lm_head.weight (config ties it to the embedding)");
      continue;
    }
    ST_THROW_INPUT(dir, ": unexpected tensor '", extra, "' in the checkpoint (not part of a ",
                   cfg.qkv_bias ? "decoder with q, k, v biases" : "Llama-style decoder", " with this config)");
  }
  return m;
}

void save_llama(LlamaModel& m, const std::string& dir, const std::string& tokenizer_path, uint64_t max_shard_bytes) {
  save_decoder(m, dir, tokenizer_path, max_shard_bytes, write_llama_config);
}

void save_decoder(LlamaModel& m, const std::string& dir, const std::string& tokenizer_path, uint64_t max_shard_bytes,
                  void (*write_config)(const std::string& dir, const LlamaConfig& cfg)) {
  for (Linear* lin : llama_linears(m))
    if (lin->adapter) ST_THROW("save_llama: ", lin->name, " still has an adapter; merge adapters first");
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const LlamaWeightSlot& slot : llama_weight_slots(m)) {
    if (slot.linear) ST_THROW(slot.not_dense());
    tensors.emplace_back(slot.name, llama_gather_full(m, slot));
  }
  if (m.tp.size > 1 && m.tp.rank != 0) return;
  // The whole directory at once: a failed save leaves the earlier one (or none), never a mix.
  replace_directory(
      dir,
      [&](const std::string& out) {
        write_hf_weights(out, tensors, max_shard_bytes);
        write_config(out, m.cfg);
        if (!tokenizer_path.empty())
          save_hf_tokenizer(tokenizer_path, out, HfTokenizerKind::llama, m.cfg.max_position_embeddings, m.cfg.vocab_size);
      },
      hf_save_file);
}

Tensor llama_gather_full(const LlamaModel& m, const LlamaWeightSlot& slot) {
  return gather_full(m.tp, slot, DType::f32);
}

}  // namespace st
