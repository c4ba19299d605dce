#include "io/t5_io.hpp"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/atomic_file.hpp"
#include "io/hf_checkpoint.hpp"
#include "io/safetensors.hpp"

namespace fs = std::filesystem;

namespace st {

T5Model load_t5(const std::string& dir, DType dtype, Device device, const T5Quant& quant, const TpGroup& tp) {
  T5Model m = t5_build(read_t5_config(dir), dtype, device, quant, tp);
  CheckpointReader ckpt = CheckpointReader::open(dir);
  // One tensor at a time: NF4 and FP8 layers are quantized as they arrive.
  for (const T5WeightSlot& slot : t5_weight_slots(m)) {
    Tensor t = ckpt.read(slot.name, slot.full_shape, dtype, device, MemCategory::workspace);
    t5_set_weight(slot, slot.split == TpMode::none ? t : t5_shard_of(m, slot, t));
  }
  for (const std::string& extra : ckpt.unused_names()) {
    // transformers writes the shared table under these names too when it saves a T5.
    if (extra == "encoder.embed_tokens.weight" || extra == "decoder.embed_tokens.weight") continue;
    if (extra == "lm_head.weight" && m.cfg.tie_word_embeddings) continue;
    ST_THROW_INPUT(dir, ": unexpected tensor '", extra, "' in the checkpoint (not part of a T5 with this config)");
  }
  return m;
}

void write_t5_config(const std::string& dir, const T5Config& cfg) {
  const std::string path = (fs::path(dir) / "config.json").string();
  cfg.validate(path);
  auto token = [](int64_t id) { return id < 0 ? nlohmann::ordered_json(nullptr) : nlohmann::ordered_json(id); };
  nlohmann::ordered_json j;
  j["architectures"] = {"T5ForConditionalGeneration"};
  j["model_type"] = "t5";
  j["is_encoder_decoder"] = true;
  j["vocab_size"] = cfg.vocab_size;
  j["d_model"] = cfg.d_model;
  j["d_kv"] = cfg.d_kv;
  j["d_ff"] = cfg.d_ff;
  j["num_layers"] = cfg.num_layers;
  j["num_decoder_layers"] = cfg.num_decoder_layers;
  j["num_heads"] = cfg.num_heads;
  j["relative_attention_num_buckets"] = cfg.relative_attention_num_buckets;
  j["relative_attention_max_distance"] = cfg.relative_attention_max_distance;
  j["layer_norm_epsilon"] = cfg.layer_norm_epsilon;
  j["feed_forward_proj"] = cfg.gated ? "gated-gelu" : "relu";
  j["tie_word_embeddings"] = cfg.tie_word_embeddings;
  j["scale_decoder_outputs"] = cfg.scale_decoder_outputs;
  j["pad_token_id"] = token(cfg.pad_token_id);
  j["eos_token_id"] = token(cfg.eos_token_id);
  j["decoder_start_token_id"] = token(cfg.decoder_start_token_id);
  j["torch_dtype"] = "float32";
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) ST_THROW("cannot create directory ", dir, ": ", ec.message());
  write_text_file_atomic(path, j.dump(2) + "\n");
}

void save_t5(T5Model& m, const std::string& dir, uint64_t max_shard_bytes) {
  for (Linear* lin : t5_linears(m))
    if (lin->adapter) ST_THROW("save_t5: ", lin->name, " still has an adapter; merge adapters first");
  const bool writer = m.tp.size == 1 || m.tp.rank == 0;
  std::vector<std::pair<std::string, Tensor>> tensors;
  for (const T5WeightSlot& slot : t5_weight_slots(m)) {
    if (slot.linear) ST_THROW(slot.not_dense());
    tensors.emplace_back(slot.name, t5_gather_full(m, slot, DType::f32));  // collective when split
  }
  if (!writer) return;
  // The whole directory at once: a failed save leaves the earlier one (or none), never a mix.
  replace_directory(
      dir,
      [&](const std::string& out) {
        write_hf_weights(out, tensors, max_shard_bytes);
        write_t5_config(out, m.cfg);
      },
      hf_save_file);
}

}  // namespace st
